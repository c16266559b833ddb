//! `likeness world`: concept photos, and the VAE → CLIP → UNet chain (a few steps each) whose
//! pipeline `likeness generate` loads; running it again continues instead of starting over.

mod common;
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

    let o = likeness()
        .args(["world", "concepts", "--concept", "nope", "--out"])
        .arg(dir.join("c2"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown concept"));
    let _ = std::fs::remove_dir_all(&dir);
}
