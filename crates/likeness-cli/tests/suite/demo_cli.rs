//! `likeness demo` end to end in CI size: world models trained for a few steps, then DreamBooth,
//! two DPO stages inside the 20°–70° window and the evaluation; the report's files exist and its
//! numbers are finite. A second run with the same settings reuses everything; other settings in the
//! same folder are refused.

use crate::common;
use common::likeness;

#[test]
fn demo_writes_a_complete_report() {
    let dir = std::env::temp_dir().join(format!("likeness-cli-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let o = likeness()
        .args(["world", "train", "--vae-steps", "2", "--clip-steps", "2"])
        .args(["--unet-steps", "2", "--device", "cpu", "--quiet", "--out"])
        .arg(dir.join("models"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let demo = |extra: &[&str]| {
        likeness()
            .arg("demo")
            .arg("--model")
            .arg(dir.join("models/unet/pipeline"))
            .arg("--clip")
            .arg(dir.join("models/clip/clip"))
            .args(["--concept", "ring-creature", "--dreambooth-steps", "2"])
            .args(["--prompts-per-stage", "2", "--samples-per-prompt", "4"])
            .args(["--dpo-steps-per-stage", "1", "--eval-prompts", "2"])
            .args(["--eval-seeds", "2", "--sample-steps", "2"])
            .args(extra)
            .args(["--device", "cpu", "--quiet", "--out"])
            .arg(dir.join("demo"))
            .output()
            .unwrap()
    };
    let o = demo(&[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = dir.join("demo");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        out.join("report.md").display().to_string()
    );
    for file in [
        "eval/scatter.png",
        "eval/scatter.svg",
        "eval/eval.csv",
        "report/compare.png",
        "report/gallery-base.png",
        "report/gallery-dreambooth-step-2.png",
        "report/gallery-dpo-stage-1.png",
        "report/gallery-dpo-stage-2.png",
        "dpo/stage-1/pairs.jsonl",
        "dpo/stage-2/lora.safetensors",
        "prompts/eval.txt",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    for link in [
        "eval/scatter.png",
        "report/compare.png",
        "report/gallery-dpo-stage-2.png",
    ] {
        assert!(report.contains(link), "report.md does not show {link}");
    }
    // Every table row: a variant, then IS ± se, TS ± se and three rates, all finite.
    let rows: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| variant"))
        .collect();
    assert_eq!(rows.len(), 4, "{report}");
    for row in &rows {
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        for cell in &cells[1..6] {
            for number in cell.split(" ± ") {
                let v: f64 = number
                    .parse()
                    .unwrap_or_else(|_| panic!("`{number}` in {row}"));
                assert!(v.is_finite(), "{row}");
            }
        }
        assert_eq!(cells[6], "4", "{row}");
    }
    let compare = image::open(out.join("report/compare.png")).unwrap();
    assert!(compare.width() > compare.height(), "four columns, two rows");

    // Again with the same settings: everything is reused and the report is the same.
    let o = demo(&[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let again = std::fs::read_to_string(out.join("report.md")).unwrap();
    let table = |r: &str| {
        r.lines()
            .filter(|l| l.starts_with("| "))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(table(&again), table(&report));

    // Other settings in the same folder: refused with a one-line reason.
    let o = demo(&["--angle-min", "0"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("other settings"), "{err}");

    let o = likeness()
        .args([
            "demo",
            "--concept",
            "nope",
            "--model",
            "x",
            "--clip",
            "y",
            "--out",
        ])
        .arg(dir.join("bad"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown concept"));
    let _ = std::fs::remove_dir_all(&dir);
}
