//! The workspace database: migrations, projects and base models.

use crate::common;

use common::{TempDir, fixture};
use likeness_studio::{BaseModelKind, SCHEMA_VERSION, StudioError, Workspace};

#[test]
fn migrations_create_the_schema_and_reopening_is_a_no_op() {
    let dir = TempDir::new("migrate");
    let ws_dir = dir.join("ws");
    {
        let mut ws = Workspace::open(&ws_dir).expect("open new workspace");
        assert_eq!(ws.schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(SCHEMA_VERSION, 2);
        ws.create_project("Rex", "sks", "dog").unwrap();
    }
    assert!(ws_dir.join("likeness.db").is_file());

    let ws = Workspace::open(&ws_dir).expect("reopen");
    assert_eq!(ws.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(ws.projects().unwrap().len(), 1, "data survives reopening");
    drop(ws);

    let conn = rusqlite::Connection::open(ws_dir.join("likeness.db")).unwrap();
    let applied: i64 = conn
        .query_row("SELECT COUNT(*) FROM schema_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(applied, 2, "reopening applies no migration twice");
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for t in [
        "base_models",
        "exports",
        "galleries",
        "gallery_images",
        "jobs",
        "photos",
        "projects",
        "runs",
        "schema_version",
        "settings",
    ] {
        assert!(
            tables.iter().any(|x| x == t),
            "table {t} missing: {tables:?}"
        );
    }
}

#[test]
fn a_database_from_a_newer_version_is_refused() {
    let dir = TempDir::new("future");
    let ws_dir = dir.join("ws");
    drop(Workspace::open(&ws_dir).unwrap());
    let conn = rusqlite::Connection::open(ws_dir.join("likeness.db")).unwrap();
    conn.execute(
        "INSERT INTO schema_version (version, applied_at) VALUES (?1, 0)",
        [SCHEMA_VERSION + 1],
    )
    .unwrap();
    drop(conn);

    let err = Workspace::open(&ws_dir).expect_err("newer schema must be refused");
    assert!(
        matches!(err, StudioError::NewerSchema { found, known, .. } if found == SCHEMA_VERSION + 1 && known == SCHEMA_VERSION),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("likeness.db") && msg.contains("newer"),
        "{msg}"
    );
    assert!(!msg.contains('\n'));
}

#[test]
fn a_file_that_is_not_a_database_is_an_error_naming_it() {
    let dir = TempDir::new("notdb");
    std::fs::write(dir.join("likeness.db"), vec![b'x'; 4096]).unwrap();
    let err = Workspace::open(dir.path()).expect_err("garbage db");
    assert!(err.to_string().contains("likeness.db"), "{err}");
}

#[test]
fn project_crud_and_validation() {
    let dir = TempDir::new("projects");
    let mut ws = Workspace::open(dir.path()).unwrap();

    let rex = ws.create_project("  Rex  ", "sks", "dog").unwrap();
    assert_eq!(
        (rex.name.as_str(), rex.token.as_str(), rex.class.as_str()),
        ("Rex", "sks", "dog")
    );
    let ann = ws.create_project("Ann", "ohwx", "woman").unwrap();
    assert_eq!(ws.projects().unwrap(), vec![rex.clone(), ann.clone()]);

    let renamed = ws.rename_project(rex.id, "Rex the dog").unwrap();
    assert_eq!(renamed.name, "Rex the dog");
    assert_eq!(ws.project(rex.id).unwrap().name, "Rex the dog");

    for (name, token, class, needle) in [
        ("", "sks", "dog", "name"),
        ("   ", "sks", "dog", "name"),
        ("A", "", "dog", "token"),
        ("A", "sk s", "dog", "one word"),
        ("A", "sks", " ", "class"),
    ] {
        let err = ws.create_project(name, token, class).expect_err(needle);
        assert!(matches!(err, StudioError::Invalid(_)));
        assert!(err.to_string().contains(needle), "{err}");
    }
    assert!(matches!(
        ws.rename_project(rex.id, ""),
        Err(StudioError::Invalid(_))
    ));
    assert!(matches!(
        ws.rename_project(999, "x"),
        Err(StudioError::NotFound {
            what: "project",
            id: 999
        })
    ));

    // Deleting removes the rows and the project's folder.
    let project_dir = ws.project_dir(rex.id);
    std::fs::create_dir_all(project_dir.join("photos/original")).unwrap();
    std::fs::write(project_dir.join("photos/original/x.jpg"), b"x").unwrap();
    ws.delete_project(rex.id).unwrap();
    assert!(!project_dir.exists());
    assert_eq!(ws.projects().unwrap(), vec![ann]);
    assert!(matches!(
        ws.delete_project(rex.id),
        Err(StudioError::NotFound { .. })
    ));
}

#[test]
fn the_tiny_sd1_pipeline_is_detected_as_a_base_model() {
    let dir = TempDir::new("models");
    let mut ws = Workspace::open(dir.path()).unwrap();
    let model = ws
        .add_base_model(&fixture("pipeline_sd1_eps"))
        .expect("add fixture");
    assert_eq!(model.kind, BaseModelKind::Folder);
    assert_eq!(model.summary["family"], "sd1", "{}", model.summary);
    assert_eq!(model.summary["v_prediction"], false);
    assert!(model.path.is_absolute());
    assert_eq!(ws.base_models().unwrap(), vec![model.clone()]);

    // The same folder twice is refused; the built-in kind is kept as such.
    let err = ws
        .add_base_model(&fixture("pipeline_sd1_eps"))
        .expect_err("duplicate");
    assert!(
        matches!(err, StudioError::DuplicateModel { id, .. } if id == model.id),
        "{err}"
    );
    ws.remove_base_model(model.id).unwrap();
    assert!(ws.base_models().unwrap().is_empty());
    let builtin = ws.add_builtin(&fixture("pipeline_sd2_v")).unwrap();
    assert_eq!(builtin.kind, BaseModelKind::Builtin);
    assert_eq!(builtin.summary["v_prediction"], true);
    assert_eq!(ws.base_models().unwrap()[0].kind, BaseModelKind::Builtin);
}

#[test]
fn a_folder_that_is_not_a_model_is_an_error_with_the_loaders_message() {
    let dir = TempDir::new("notmodel");
    let not_model = dir.join("holiday-photos");
    std::fs::create_dir_all(&not_model).unwrap();
    std::fs::write(not_model.join("readme.txt"), "hello").unwrap();
    let mut ws = Workspace::open(&dir.join("ws")).unwrap();
    let err = ws.add_base_model(&not_model).expect_err("not a model");
    let msg = err.to_string();
    assert!(matches!(err, StudioError::NotAModel(_)));
    assert!(
        msg.contains("holiday-photos") && msg.contains("unet"),
        "{msg}"
    );
    assert!(!msg.contains('\n'));
    assert!(ws.base_models().unwrap().is_empty());

    let missing = ws.add_base_model(&dir.join("nope")).expect_err("missing");
    assert!(missing.to_string().contains("nope"), "{missing}");
}
