//! `likeness dreambooth` end to end on the tiny fixture model: a run folder, resume with more
//! steps, Ctrl-C (SIGINT) writing a checkpoint, and one-line errors.

use crate::common;
use common::{fixture, likeness};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn tmp(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("likeness-cli-db-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

fn photos(tag: &str) -> PathBuf {
    let dir = tmp(tag);
    for i in 0..3u32 {
        image::RgbImage::from_fn(24, 24, |x, y| {
            if (x + i).abs_diff(12) < 6 && y.abs_diff(12) < 6 {
                image::Rgb([250, 140, 20])
            } else {
                image::Rgb([30, 60, 200])
            }
        })
        .save(dir.join(format!("{i}.png")))
        .unwrap();
    }
    dir
}

fn new_run(images: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    likeness()
        .args(["dreambooth", "--model"])
        .arg(fixture("pipeline_sd1_eps"))
        .arg("--images")
        .arg(images)
        .args([
            "--token", "sks", "--class", "dog", "--device", "cpu", "--quiet",
        ])
        .args(extra)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

fn loss_lines(out: &Path) -> usize {
    std::fs::read_to_string(out.join("loss.jsonl"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

#[test]
fn trains_checkpoints_samples_and_resumes() {
    let images = photos("photos");
    let out = tmp("run");
    let r = new_run(
        &images,
        &out,
        &[
            "--steps",
            "3",
            "--lr",
            "1e-3",
            "--checkpoint-every",
            "2",
            "--sample-every",
            "3",
            "--sample-steps",
            "2",
            "--sample-seeds",
            "5,6",
        ],
    );
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(stdout.trim().ends_with("step-000003"), "{stdout}");
    for f in [
        "config.json",
        "checkpoints/step-000002/adapters.safetensors",
        "checkpoints/step-000003/state.json",
        "samples/step-000000/p00-seed5.png",
        "samples/step-000003/p00-seed6.png",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    assert_eq!(loss_lines(&out), 3);

    let r = likeness()
        .args([
            "dreambooth",
            "--quiet",
            "--device",
            "cpu",
            "--steps",
            "5",
            "--resume",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(loss_lines(&out), 5);
    assert!(out.join("checkpoints/step-000005/state.json").is_file());
}

#[test]
fn errors_are_one_line() {
    let empty = tmp("empty");
    let r = new_run(&empty, &tmp("empty-out"), &["--steps", "1"]);
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("no usable images"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let images = photos("mismatch-photos");
    let out = tmp("mismatch-out");
    let r = new_run(&images, &out, &["--steps", "1", "--sample-every", "0"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let r = likeness()
        .args(["dreambooth", "--quiet", "--device", "cpu", "--model"])
        .arg(fixture("pipeline_sd2_v"))
        .arg("--resume")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("refusing to resume"), "{err}");

    let r = likeness()
        .args(["dreambooth", "--resume"])
        .arg(&out)
        .args(["--token", "x"])
        .output()
        .unwrap();
    assert!(!r.status.success(), "--resume takes the run's own settings");
}

#[test]
fn ctrl_c_writes_a_checkpoint_before_exiting() {
    let images = photos("sigint-photos");
    let out = tmp("sigint-out");
    let child = likeness()
        .args(["dreambooth", "--model"])
        .arg(fixture("pipeline_sd1_eps"))
        .arg("--images")
        .arg(&images)
        .args([
            "--token",
            "sks",
            "--class",
            "dog",
            "--device",
            "cpu",
            "--quiet",
            "--steps",
            "1000000",
            "--checkpoint-every",
            "0",
            "--sample-every",
            "0",
            "--out",
        ])
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while loss_lines(&out) < 2 {
        assert!(started.elapsed() < Duration::from_secs(120), "no steps");
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let r = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{err}");
    assert!(err.contains("stopped at step"), "{err}");
    let checkpoints: Vec<String> = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(checkpoints.len(), 1, "{checkpoints:?}");
    let step: usize = checkpoints[0]["step-".len()..].parse().unwrap();
    assert!(step >= 2);
    assert!(
        out.join("checkpoints")
            .join(&checkpoints[0])
            .join("state.json")
            .is_file()
    );
    assert_eq!(loss_lines(&out), step);
}
