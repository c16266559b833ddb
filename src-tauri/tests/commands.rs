//! The app's commands through Tauri's IPC on the mock runtime (`tauri::test`): argument names
//! and result shapes as the front end sends and reads them, one-line errors, the first-start
//! demo project, and the picture scheme serving what the commands point at.

use std::path::{Path, PathBuf};

use likeness_app::{AppState, configure, scheme};
use likeness_models::device::{DeviceChoice, Precision};
use serde_json::{Value, json};
use tauri::test::{INVOKE_KEY, MockRuntime, mock_builder, mock_context, noop_assets};
use tauri::webview::InvokeRequest;
use tauri::{App, WebviewWindow, WebviewWindowBuilder};

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("likeness-app-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn open(dir: &Path) -> (App<MockRuntime>, WebviewWindow<MockRuntime>) {
    let state = AppState::open(dir.to_path_buf(), DeviceChoice::Cpu, Precision::F32).unwrap();
    let app = configure(mock_builder(), state)
        .build(mock_context(noop_assets()))
        .unwrap();
    let window = WebviewWindowBuilder::new(&app, "main", Default::default())
        .build()
        .unwrap();
    (app, window)
}

/// Invokes `cmd` with camelCase `args` as the front end does: the value, or the error value.
fn call(w: &WebviewWindow<MockRuntime>, cmd: &str, args: Value) -> Result<Value, Value> {
    tauri::test::get_ipc_response(
        w,
        InvokeRequest {
            cmd: cmd.into(),
            callback: tauri::ipc::CallbackFn(0),
            error: tauri::ipc::CallbackFn(1),
            url: "tauri://localhost".parse().unwrap(),
            body: tauri::ipc::InvokeBody::Json(args),
            headers: Default::default(),
            invoke_key: INVOKE_KEY.to_string(),
        },
    )
    .map(|body| body.deserialize::<Value>().unwrap())
}

#[test]
fn first_start_has_the_demo_project_and_the_builtin_model() {
    let dir = tmp("first");
    let (_app, w) = open(&dir);
    let projects = call(&w, "list_projects", json!({})).unwrap();
    let projects = projects.as_array().unwrap();
    assert_eq!(projects.len(), 1, "{projects:?}");
    let demo = &projects[0];
    assert!(demo["name"].as_str().unwrap().starts_with("Demo: "));
    assert_eq!(demo["token"], "sks");
    assert!(demo["photoCount"].as_u64().unwrap() >= 3);
    let cover = demo["coverThumb"].as_str().unwrap();
    let served = scheme::serve(
        &dir,
        &format!("likeness://localhost/{cover}").parse().unwrap(),
    );
    assert_eq!(served.status(), 200);
    assert!(served.body().starts_with(b"\x89PNG"));

    let models = call(&w, "list_base_models", json!({})).unwrap();
    assert_eq!(models[0]["kind"], "builtin", "{models}");
    assert_eq!(models[0]["architecture"], "built-in world");

    // A second start of the same workspace adds no second demo project.
    let again = likeness_app::prepare_workspace(&dir).unwrap();
    assert_eq!(again.projects().unwrap().len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn projects_photos_and_crops_through_ipc() {
    let dir = tmp("projects");
    let (_app, w) = open(&dir);
    let p = call(
        &w,
        "create_project",
        json!({"name": "Rex", "token": "sks", "className": "dog"}),
    )
    .unwrap();
    assert_eq!(p["className"], "dog");
    assert_eq!(p["photoCount"], 0);
    let id = p["id"].as_i64().unwrap();

    let concepts = call(&w, "list_builtin_concepts", json!({})).unwrap();
    let first = concepts[0]["name"].as_str().unwrap().to_string();
    assert!(concepts[0]["classNoun"].is_string());
    let report = call(
        &w,
        "import_builtin_concept",
        json!({"projectId": id, "concept": first}),
    )
    .unwrap();
    let imported = report["imported"].as_array().unwrap();
    assert!(imported.len() >= 3, "{report}");

    let photos = call(&w, "list_photos", json!({"projectId": id})).unwrap();
    let photo = &photos[0];
    assert_eq!(photo["projectId"], id);
    let thumb = photo["thumb"].as_str().unwrap();
    assert!(
        !thumb.starts_with('/') && thumb.ends_with(".png"),
        "{thumb}"
    );

    let crop = call(
        &w,
        "crop_preview",
        json!({"photoId": photo["id"], "resolution": 128}),
    )
    .unwrap();
    let crop = crop.as_str().unwrap();
    let png = image::open(dir.join(crop)).unwrap();
    assert_eq!((png.width(), png.height()), (128, 128));

    let renamed = call(&w, "rename_project", json!({"id": id, "name": "Rex II"})).unwrap();
    assert_eq!(renamed["name"], "Rex II");
    call(&w, "delete_project", json!({"id": id})).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_input_answers_one_line() {
    let dir = tmp("bad");
    let (_app, w) = open(&dir);
    let p = call(
        &w,
        "create_project",
        json!({"name": "Box", "token": "sks", "className": "box"}),
    )
    .unwrap();
    let id = p["id"].as_i64().unwrap();

    // A folder of files that are not photos: each skipped with its reason, nothing imported.
    let junk = dir.join("junk");
    std::fs::create_dir_all(&junk).unwrap();
    std::fs::write(junk.join("notes.jpg"), b"not a picture at all").unwrap();
    std::fs::write(junk.join("tiny.png"), {
        let mut bytes = Vec::new();
        image::RgbImage::new(8, 8)
            .write_to(
                &mut std::io::Cursor::new(&mut bytes),
                image::ImageFormat::Png,
            )
            .unwrap();
        bytes
    })
    .unwrap();
    let report = call(
        &w,
        "import_photos",
        json!({"projectId": id, "paths": [junk]}),
    )
    .unwrap();
    assert_eq!(report["imported"].as_array().unwrap().len(), 0);
    let skipped = report["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 2, "{report}");
    for s in skipped {
        let reason = s["reason"].as_str().unwrap();
        assert!(!reason.is_empty() && !reason.contains('\n'), "{reason}");
    }

    for (cmd, args) in [
        (
            "import_builtin_concept",
            json!({"projectId": id, "concept": "unicorn"}),
        ),
        ("crop_preview", json!({"photoId": 1, "resolution": 4})),
        ("add_base_model", json!({"path": dir.join("nowhere")})),
        ("rename_project", json!({"id": 9999, "name": "x"})),
    ] {
        let err = call(&w, cmd, args).unwrap_err();
        let err = err.as_str().unwrap_or_default();
        assert!(!err.is_empty() && !err.contains('\n'), "{cmd}: {err:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn compare_without_pictures_then_a_gallery_job_makes_them() {
    let dir = tmp("gallery");
    let (_app, w) = open(&dir);
    let projects = call(&w, "list_projects", json!({})).unwrap();
    let id = projects[0]["id"].as_i64().unwrap();
    // No gallery yet: Compare answers one line, which the front end turns into a "make
    // pictures" offer.
    let err = call(&w, "compare", json!({"projectId": id, "runIds": []})).unwrap_err();
    assert!(err.as_str().unwrap().contains("gallery"), "{err}");

    let job = call(
        &w,
        "start_gallery",
        json!({"projectId": id, "runIds": [], "onEvent": "__CHANNEL__:7"}),
    )
    .unwrap();
    assert_eq!(job["kind"], "gallery", "{job}");
    let job_id = job["id"].as_i64().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let status = loop {
        let jobs = call(&w, "list_jobs", json!({})).unwrap();
        let this = jobs
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["id"] == job_id)
            .cloned()
            .unwrap();
        let status = this["status"].as_str().unwrap().to_string();
        if !["queued", "running"].contains(&status.as_str()) {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gallery job still {status}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(status, "done");
    let table = call(&w, "compare", json!({"projectId": id, "runIds": []})).unwrap();
    assert_eq!(table["columns"].as_array().unwrap().len(), 1, "{table}");
    assert!(!table["cells"].as_array().unwrap().is_empty());

    // A run of another project is refused in one line.
    let err = call(
        &w,
        "start_gallery",
        json!({"projectId": id, "runIds": [424242], "onEvent": "__CHANNEL__:8"}),
    )
    .unwrap_err();
    assert!(!err.as_str().unwrap().contains('\n'), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
