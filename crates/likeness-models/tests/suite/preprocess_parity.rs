//! `Preprocessor` against transformers' slow `CLIPImageProcessor` / `ViTImageProcessor` (Pillow
//! resampling) on the scoring fixture images: every filter, odd sizes, padding crops.

use crate::common;

use common::{Io, fixture};
use likeness_models::image_preprocess::Preprocessor;
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    name: String,
    image: String,
    shape: Vec<usize>,
}

fn cases() -> Vec<Case> {
    let text =
        std::fs::read_to_string(fixture("scoring/preprocess/cases.json")).expect("cases.json");
    serde_json::from_str(&text).expect("cases.json parses")
}

/// Runs one case: (max |diff|, mean |diff|, max diff in 8-bit levels).
fn run(case: &Case, io: &Io) -> (f32, f32, f32) {
    let dir = fixture(&format!("scoring/preprocess/{}", case.name));
    let pre = Preprocessor::from_file(&dir.join("preprocessor_config.json")).expect("config");
    let img = image::open(fixture(&format!("scoring/preprocess/{}", case.image)))
        .expect("png")
        .to_rgb8();
    let out = pre.process(&img).expect("process");
    assert_eq!(
        vec![3, out.height, out.width],
        case.shape,
        "{}: shape",
        case.name
    );
    let expected = io.values(&case.name);
    let plane = out.height * out.width;
    let (mut max, mut sum, mut levels) = (0f32, 0f64, 0f32);
    for (i, (a, b)) in out.data.iter().zip(&expected).enumerate() {
        let d = (a - b).abs();
        max = max.max(d);
        sum += d as f64;
        // One 8-bit level is rescale·(1/std) after normalisation.
        let level = match (pre.rescale_factor, pre.normalize) {
            (Some(f), Some(n)) => (f / n.std[i / plane]) as f32,
            (Some(f), None) => f as f32,
            (None, Some(n)) => (1.0 / n.std[i / plane]) as f32,
            (None, None) => 1.0,
        };
        levels = levels.max(d / level);
    }
    (max, (sum / expected.len() as f64) as f32, levels)
}

#[test]
fn preprocessing_matches_transformers_pil() {
    let io = Io::open("scoring/preprocess/expected.safetensors");
    let cases = cases();
    assert!(cases.len() >= 9);
    for case in &cases {
        let (max, mean, levels) = run(case, &io);
        println!(
            "{:<16} max |diff| {max:.3e}  mean |diff| {mean:.3e}  max {levels:.3} levels",
            case.name
        );
        // Resampling is bit-exact with Pillow; what is left is f32 rounding of the normalisation.
        assert!(levels < 0.01, "{}: {levels} levels off", case.name);
    }
}

#[test]
fn defaults_match_the_classes() {
    let clip = Preprocessor::clip_default();
    let openai = Preprocessor::from_file(&fixture(
        "scoring/preprocess/openai_clip_224/preprocessor_config.json",
    ))
    .expect("openai config");
    assert_eq!(
        clip, openai,
        "openai/clip-vit-large-patch14's file is CLIPImageProcessor's defaults"
    );
    let dino =
        Preprocessor::from_file(&fixture("scoring/dino/preprocessor_config.json")).expect("dino");
    assert_eq!(dino.center_crop, None);
    assert_eq!(dino.normalize, Preprocessor::dino_default().normalize);
}

#[test]
fn bad_configs_and_images_are_errors() {
    let tmp = std::env::temp_dir().join(format!("likeness-pre-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let path = tmp.join("preprocessor_config.json");
    for (text, needle) in [
        ("{ not json", "preprocessor_config.json"),
        (r#"{"resample": 7}"#, "resample"),
        (r#"{"size": {"longest_edge": 3}}"#, "size"),
        (r#"{"crop_size": 0}"#, "crop_size"),
        (r#"{"image_mean": [0.5, 0.5]}"#, "image_mean"),
        (r#"{"image_std": 0}"#, "image_std"),
    ] {
        std::fs::write(&path, text).unwrap();
        let err = Preprocessor::from_file(&path).unwrap_err().to_string();
        println!("{err}");
        assert!(
            err.contains("preprocessor_config.json") && err.contains(needle),
            "{err}"
        );
        assert!(!err.contains('\n'), "one line: {err}");
    }
    std::fs::remove_dir_all(&tmp).ok();
    let pre = Preprocessor::clip_default();
    assert!(pre.process_rgb8(0, 5, &[]).is_err());
    assert!(pre.process_rgb8(2, 2, &[0; 11]).is_err());
}
