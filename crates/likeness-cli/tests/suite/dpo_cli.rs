//! `likeness dpo` and `likeness eval` end to end on the tiny fixture models: a stage from a
//! kohya LoRA file whose LoRA `likeness generate --lora` loads, resume of a finished run, the
//! no-pair error, and the evaluation's table and plots.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/data"
    ))
    .join(rel)
}

fn likeness() -> Command {
    Command::new(env!("CARGO_BIN_EXE_likeness"))
}

fn tmp(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("likeness-cli-dpo-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

const MODEL: &str = "dreambooth/tiny_sd1_pretrained";

fn concept(dir: &Path) -> PathBuf {
    let c = dir.join("concept");
    std::fs::create_dir_all(&c).unwrap();
    for i in 0..3u32 {
        image::RgbImage::from_fn(24, 24, |x, y| {
            if (x + i).abs_diff(12) < 6 && y.abs_diff(12) < 6 {
                image::Rgb([250, 140, 20])
            } else {
                image::Rgb([30, 60, 200])
            }
        })
        .save(c.join(format!("{i}.png")))
        .unwrap();
    }
    c
}

fn dpo(dir: &Path, out: &Path, window: (&str, &str)) -> Output {
    likeness()
        .args(["dpo", "--model"])
        .arg(fixture(MODEL))
        .arg("--lora")
        .arg(fixture("lora/sd1/lora_kohya.safetensors"))
        .arg("--concept")
        .arg(concept(dir))
        .arg("--clip")
        .arg(fixture("scoring/clip"))
        .arg("--dino")
        .arg(fixture("scoring/dino"))
        .args([
            "--token",
            "sks",
            "--class",
            "dog",
            "--stages",
            "1",
            "--prompts-per-stage",
            "2",
            "--samples-per-prompt",
            "3",
            "--angle-min",
            window.0,
            "--angle-max",
            window.1,
            "--steps-per-stage",
            "2",
            "--sample-steps",
            "2",
            "--device",
            "cpu",
            "--quiet",
            "--out",
        ])
        .arg(out)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn a_stage_makes_a_lora_that_generate_loads_and_eval_compares() {
    let dir = tmp("stage");
    let out = dir.join("run");
    let r = dpo(&dir, &out, ("0", "180"));
    assert!(r.status.success(), "{}", text(&r.stderr));
    let lora = out.join("stage-1/lora.safetensors");
    assert_eq!(text(&r.stdout).trim(), lora.display().to_string());
    for f in [
        "scores.jsonl",
        "pairs.jsonl",
        "loss.jsonl",
        "images/index.jsonl",
    ] {
        assert!(out.join("stage-1").join(f).is_file(), "{f}");
    }

    let g = likeness()
        .args(["generate", "--model"])
        .arg(fixture(MODEL))
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
        .arg(&lora)
        .arg("--out")
        .arg(dir.join("gen"))
        .output()
        .unwrap();
    assert!(g.status.success(), "{}", text(&g.stderr));
    assert!(!text(&g.stderr).contains("warning"), "{}", text(&g.stderr));

    // A finished run resumes to nothing new.
    let r = likeness()
        .args(["dpo", "--device", "cpu", "--quiet", "--resume"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", text(&r.stderr));

    let prompts = dir.join("prompts.txt");
    std::fs::write(&prompts, "a photo of {}\n{} in the snow\n").unwrap();
    let e = likeness()
        .args(["eval", "--model"])
        .arg(fixture(MODEL))
        .arg("--runs")
        .arg(&out)
        .arg("--concept")
        .arg(dir.join("concept"))
        .arg("--clip")
        .arg(fixture("scoring/clip"))
        .args([
            "--token",
            "sks",
            "--class",
            "dog",
            "--seeds",
            "2",
            "--sample-steps",
            "2",
        ])
        .args(["--device", "cpu", "--quiet", "--prompts"])
        .arg(&prompts)
        .arg("--out")
        .arg(dir.join("eval"))
        .output()
        .unwrap();
    assert!(e.status.success(), "{}", text(&e.stderr));
    let csv = std::fs::read_to_string(dir.join("eval/eval.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    for line in csv.lines().skip(1) {
        let cells: Vec<&str> = line.split(',').collect();
        for c in &cells[3..7] {
            assert!(c.parse::<f64>().unwrap().is_finite(), "{line}");
        }
    }
    assert!(dir.join("eval/scatter.png").is_file());
    assert!(dir.join("eval/scatter.svg").is_file());
}

#[test]
fn no_pair_in_the_window_is_one_line_with_the_histogram() {
    let dir = tmp("nopairs");
    let r = dpo(&dir, &dir.join("run"), ("179", "180"));
    assert!(!r.status.success());
    let err = text(&r.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("no pair") && err.contains("°,"), "{err}");
}
