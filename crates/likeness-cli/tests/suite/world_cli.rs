//! `likeness world`: concept photos, and the VAE → CLIP → UNet chain (a few steps each) whose
//! pipeline `likeness generate` loads; running it again continues instead of starting over.

use crate::common;
use common::likeness;

#[test]
fn concepts_and_a_short_training_chain() {
    let dir = std::env::temp_dir().join(format!("likeness-cli-world-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let o = likeness()
        .args(["world", "concepts", "--size", "32", "--out"])
        .arg(dir.join("concepts"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let photos = std::fs::read_dir(dir.join("concepts/star-creature"))
        .unwrap()
        .count();
    assert!((4..=6).contains(&photos), "{photos} photos");

    let train = |steps: &str| {
        likeness()
            .args([
                "world",
                "train",
                "--vae-steps",
                steps,
                "--clip-steps",
                steps,
            ])
            .args(["--unet-steps", steps, "--device", "cpu", "--quiet", "--out"])
            .arg(dir.join("models"))
            .output()
            .unwrap()
    };
    let o = train("2");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let pipeline = dir.join("models/unet/pipeline");
    assert!(pipeline.join("model_index.json").is_file());
    assert!(dir.join("models/clip/clip/config.json").is_file());
    let o = train("3");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let o = likeness()
        .args(["generate", "--model"])
        .arg(&pipeline)
        .args([
            "--prompt",
            "two red stars on a blue background",
            "--steps",
            "2",
        ])
        .args(["--device", "cpu", "--quiet", "--out"])
        .arg(dir.join("gen"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(dir.join("gen/index.jsonl").is_file());

    // Packing stores every tensor in f16 and keeps the folders loadable.
    let o = likeness()
        .args(["world", "pack", "--pipeline"])
        .arg(&pipeline)
        .arg("--clip")
        .arg(dir.join("models/clip/clip"))
        .arg("--out")
        .arg(dir.join("packed"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for file in [
        "world-sd/unet/diffusion_pytorch_model.safetensors",
        "world-sd/vae/diffusion_pytorch_model.safetensors",
        "world-sd/text_encoder/model.safetensors",
        "world-clip/model.safetensors",
    ] {
        let bytes = std::fs::read(dir.join("packed").join(file)).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header = String::from_utf8_lossy(&bytes[8..8 + n]).to_string();
        assert!(
            header.contains("\"F16\"") && !header.contains("\"F32\""),
            "{file}"
        );
    }
    assert!(dir.join("packed/world-sd/tokenizer/vocab.json").is_file());
    assert!(
        dir.join("packed/world-clip/preprocessor_config.json")
            .is_file()
    );

    // The CLIP-free quality check on held-out captions.
    let o = likeness()
        .args(["world", "check", "--model"])
        .arg(dir.join("packed/world-sd"))
        .args([
            "--pictures",
            "4",
            "--steps",
            "2",
            "--device",
            "cpu",
            "--quiet",
            "--out",
        ])
        .arg(dir.join("quality"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let q: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("quality/quality.json")).unwrap())
            .unwrap();
    for side in ["asked", "chance"] {
        let rate = q[side]["background"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&rate), "{side} {rate}");
        assert_eq!(q[side]["pictures"], 4);
    }
    assert_eq!(
        std::fs::read_dir(dir.join("quality/images"))
            .unwrap()
            .count(),
        5
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("background colour"));
    // The VAE's reconstruction error, on [-1, 1]: between 0 (exact) and 4 (every value opposite).
    for part in ["scenes", "concept_photos"] {
        let mse = q["reconstruction"][part].as_f64().unwrap();
        assert!(mse > 0.0 && mse < 4.0, "{part} {mse}");
    }
    assert!(String::from_utf8_lossy(&o.stdout).contains("VAE reconstruction MSE"));
    // The checks on the VAE's own decodings of the same 4 scenes: the ceiling of the rates above.
    let ceiling = &q["reconstruction"]["scene_checks"];
    assert_eq!(ceiling["pictures"], 4);
    for check in ["background", "object_colour", "both"] {
        let rate = ceiling[check].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&rate), "{check} {rate}");
    }
    assert!(String::from_utf8_lossy(&o.stdout).contains("own reconstructions"));

    let o = likeness()
        .args(["world", "concepts", "--concept", "nope", "--out"])
        .arg(dir.join("c2"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown concept"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--clip`: the UNet is conditioned on an already trained CLIP (the committed one) and no CLIP
/// run is made; a folder that is not a CLIP is refused in one line.
#[test]
fn training_on_a_given_clip() {
    let dir = std::env::temp_dir().join(format!("likeness-cli-world-clip-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let clip =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/models/world-clip");
    let train = |clip: &std::path::Path, out: &str| {
        likeness()
            .args([
                "world",
                "train",
                "--vae-steps",
                "2",
                "--unet-steps",
                "2",
                "--clip",
            ])
            .arg(clip)
            .args(["--device", "cpu", "--quiet", "--out"])
            .arg(dir.join(out))
            .output()
            .unwrap()
    };
    let o = train(&clip, "models");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(dir.join("models/unet/pipeline/model_index.json").is_file());
    assert!(!dir.join("models/clip").exists());
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("world-clip"), "{stdout}");

    let o = train(&dir.join("nowhere"), "models2");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("not a CLIP folder") && err.lines().count() == 1,
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `world clip-check`: the committed CLIP's binding rates as a table; a folder that is not a
/// CLIP is refused in one line.
#[test]
fn clip_check_prints_the_binding_rates() {
    let clip =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/models/world-clip");
    let o = likeness()
        .args([
            "world",
            "clip-check",
            "--scenes",
            "16",
            "--device",
            "cpu",
            "--clip",
        ])
        .arg(&clip)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    let rate = |label: &str| -> f32 {
        let line = out.lines().find(|l| l.contains(label)).expect(label);
        line.trim_end_matches(" |")
            .rsplit("| ")
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(rate("the background colour") >= 0.9, "{out}");
    assert!(rate("object group's colour") >= 0.9, "{out}");
    assert!(out.contains("scenes: 16"), "{out}");
    let o = likeness()
        .args(["world", "clip-check", "--device", "cpu", "--clip"])
        .arg(std::env::temp_dir())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
