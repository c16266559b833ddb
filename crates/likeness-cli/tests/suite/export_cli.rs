//! DreamBooth a few steps → `likeness export-lora` in kohya and diffusers format → `likeness
//! generate --lora` accepts both files, and the kohya file carries kohya's metadata.

use crate::common;
use common::{fixture, likeness};

use std::process::Command;

fn ok(c: &mut Command) -> String {
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn dreambooth_export_then_generate_with_the_lora() {
    let dir = std::env::temp_dir().join(format!("likeness-cli-export-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let photos = dir.join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    for i in 0..3u32 {
        image::RgbImage::from_fn(20, 20, |x, y| {
            image::Rgb([(x * 12 + i * 30) as u8, (y * 12) as u8, 120])
        })
        .save(photos.join(format!("p{i}.png")))
        .unwrap();
    }
    let run = dir.join("run");
    ok(likeness()
        .args(["dreambooth", "--model"])
        .arg(fixture("pipeline_sd1_eps"))
        .arg("--images")
        .arg(&photos)
        .args([
            "--token", "sks", "--class", "dog", "--steps", "4", "--lr", "1e-2",
        ])
        .args([
            "--checkpoint-every",
            "2",
            "--sample-every",
            "0",
            "--device",
            "cpu",
            "--quiet",
        ])
        .arg("--out")
        .arg(&run));
    for (format, file, step) in [
        ("kohya", "sks_kohya.safetensors", "latest"),
        ("diffusers", "sks_diffusers.safetensors", "2"),
    ] {
        let out = dir.join(file);
        let said = ok(likeness()
            .args(["export-lora", "--run"])
            .arg(&run)
            .args(["--checkpoint", step, "--format", format, "--out"])
            .arg(&out));
        assert!(said.contains("LoRA layers written"), "{said}");
        let gen_dir = dir.join(format!("gen-{format}"));
        let o = likeness()
            .args(["generate", "--model"])
            .arg(fixture("pipeline_sd1_eps"))
            .args([
                "--prompt",
                "a photo of sks dog",
                "--steps",
                "2",
                "--device",
                "cpu",
                "--quiet",
            ])
            .arg("--lora")
            .arg(format!("{}:0.8", out.display()))
            .arg("--out")
            .arg(&gen_dir)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(
            !stderr.contains("warning"),
            "every layer found its place: {stderr}"
        );
        let index = std::fs::read_to_string(gen_dir.join("index.jsonl")).unwrap();
        assert!(index.contains(file), "{index}");
    }
    // kohya metadata as AUTOMATIC1111 / ComfyUI expect it.
    let bytes = std::fs::read(dir.join("sks_kohya.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert_eq!(meta["ss_network_module"], "networks.lora");
    assert_eq!(meta["ss_base_model_version"], "sd_v1");
    assert_eq!(meta["ss_resolution"], "(16, 16)");
    assert!(meta.contains_key("sshs_model_hash"));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert!(
        st.names()
            .iter()
            .all(|k| k.starts_with("lora_unet_") || k.starts_with("lora_te_"))
    );
    // A run that does not exist is a one-line error.
    let o = likeness()
        .args(["export-lora", "--run"])
        .arg(dir.join("nope"))
        .args(["--format", "kohya", "--out"])
        .arg(dir.join("x.safetensors"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stderr).trim().lines().count(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}
