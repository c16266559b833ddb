//! `likeness generate` end to end on the tiny fixture model: files, index, PNG parameters,
//! given/saved latents equal to diffusers', and one-line errors.

use crate::common;
use common::{fixture, likeness};

use std::path::PathBuf;

fn tmp(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("likeness-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

fn read_f32(path: &std::path::Path, key: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(key).unwrap();
    let v = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (t.shape().to_vec(), v)
}

#[test]
fn generates_into_a_folder_with_index_and_parameters() {
    let out = tmp("dir");
    let status = likeness()
        .args(["generate", "--model"])
        .arg(fixture("pipeline_sd1_eps"))
        .args([
            "--prompt",
            "a photo of sks dog",
            "--negative-prompt",
            "blurry",
            "--steps",
            "3",
            "--count",
            "2",
            "--seed",
            "7",
            "--scheduler",
            "euler-a",
            "--device",
            "cpu",
            "--quiet",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let index = std::fs::read_to_string(out.join("index.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = index
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["seed"], 7);
    assert_eq!(lines[1]["seed"], 8);
    assert_eq!(lines[0]["prompt"], "a photo of sks dog");
    assert_eq!(lines[0]["scheduler"], "euler-a");
    for l in &lines {
        let file = out.join(l["file"].as_str().unwrap());
        let img = image::open(&file).unwrap();
        assert_eq!((img.width(), img.height()), (16, 16));
        let params = likeness_models::png_meta::read_parameters(&file)
            .unwrap()
            .unwrap();
        assert!(params.starts_with("a photo of sks dog\nNegative prompt: blurry\nSteps: 3, Sampler: Euler a, CFG scale: 7.5, Seed: "), "{params}");
    }
    // The same seed gives the same picture; a second run appends to the index.
    let again = likeness()
        .args(["generate", "--model"])
        .arg(fixture("pipeline_sd1_eps"))
        .args([
            "--prompt",
            "a photo of sks dog",
            "--negative-prompt",
            "blurry",
            "--steps",
            "3",
            "--seed",
            "8",
            "--scheduler",
            "euler-a",
            "--device",
            "cpu",
            "--quiet",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(again.status.success());
    let index = std::fs::read_to_string(out.join("index.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = index
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    let a = image::open(out.join(lines[1]["file"].as_str().unwrap()))
        .unwrap()
        .to_rgb8();
    let b = image::open(out.join(lines[2]["file"].as_str().unwrap()))
        .unwrap()
        .to_rgb8();
    assert_eq!(
        a.as_raw(),
        b.as_raw(),
        "seed 8 alone equals seed 8 in a batch"
    );
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn given_latents_reproduce_diffusers() {
    let out = tmp("latents");
    let io = fixture("pipeline_sd2_v/io.safetensors");
    let (shape, init) = read_f32(&io, "init_latents");
    let latents_in = out.join("init.safetensors");
    let bytes: Vec<u8> = init.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), &bytes)
        .unwrap();
    std::fs::write(
        &latents_in,
        safetensors::serialize([("latents", view)], None).unwrap(),
    )
    .unwrap();
    let saved = out.join("final.safetensors");
    let png = out.join("pic.png");
    let run = likeness()
        .args(["generate", "--model"])
        .arg(fixture("pipeline_sd2_v"))
        .args([
            "--prompt",
            "a photo of sks dog",
            "--negative-prompt",
            "blurry, low quality",
            "--steps",
            "4",
            "--count",
            "2",
            "--scheduler",
            "dpmpp-2m",
            "--device",
            "cpu",
            "--quiet",
            "--latents",
        ])
        .arg(&latents_in)
        .arg("--save-latents")
        .arg(&saved)
        .arg("--out")
        .arg(&png)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let (s, got) = read_f32(&saved, "latents");
    let (_, want) = read_f32(&io, "final_latents_dpmpp-2m");
    assert_eq!(s, shape);
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = got
        .iter()
        .zip(&want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale;
    assert!(err <= 1e-4, "relative error {err}");
    assert!(out.join("pic-0.png").is_file() && out.join("pic-1.png").is_file());
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn bad_input_is_one_line_and_nonzero() {
    let out = tmp("bad");
    let cases: Vec<Vec<String>> = vec![
        vec!["--model".into(), "/nonexistent/model".into()],
        vec![
            "--model".into(),
            fixture("pipeline_sd1_eps").display().to_string(),
            "--width".into(),
            "17".into(),
        ],
        vec![
            "--model".into(),
            fixture("pipeline_sd1_eps").display().to_string(),
            "--latents".into(),
            fixture("vae/io.safetensors").display().to_string(),
        ],
    ];
    for extra in cases {
        let o = likeness()
            .arg("generate")
            .args(&extra)
            .args([
                "--prompt", "x", "--steps", "1", "--device", "cpu", "--quiet", "--out",
            ])
            .arg(out.join("x.png"))
            .output()
            .unwrap();
        assert!(!o.status.success(), "{extra:?} should fail");
        let err = String::from_utf8_lossy(&o.stderr);
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{extra:?}: {err}");
        assert!(lines[0].starts_with("error: "), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// One tiny generation through wgpu (in CI: Mesa's CPU Vulkan driver, lavapipe), so a shader
/// that fails to compile is caught without a GPU; the result must match the CPU backend.
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_generation_matches_cpu() {
    if std::env::var_os("LIKENESS_SKIP_WGPU").is_some() {
        eprintln!("LIKENESS_SKIP_WGPU set: skipping the wgpu smoke test");
        return;
    }
    let out = tmp("wgpu");
    let mut saved = Vec::new();
    for device in ["cpu", "wgpu"] {
        let path = out.join(format!("{device}.safetensors"));
        let o = likeness()
            .args(["generate", "--model"])
            .arg(fixture("pipeline_sd1_eps"))
            .args([
                "--prompt",
                "a photo of sks dog",
                "--steps",
                "2",
                "--scheduler",
                "euler",
                "--device",
                device,
                "--quiet",
                "--save-latents",
            ])
            .arg(&path)
            .arg("--out")
            .arg(out.join(format!("{device}.png")))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{device}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        saved.push(read_f32(&path, "latents").1);
    }
    let scale = saved[0].iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = saved[0]
        .iter()
        .zip(&saved[1])
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale;
    println!("wgpu vs cpu relative error {err:.3e}");
    assert!(err <= 1e-3, "wgpu differs from cpu: relative error {err}");
    let _ = std::fs::remove_dir_all(&out);
}
