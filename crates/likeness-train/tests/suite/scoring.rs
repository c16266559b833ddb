//! IS/TS scoring on the tiny CLIP fixture: a concept photo scores highest likeness, the identifier
//! token does not change the text score, bad folders give clear errors.

use std::path::PathBuf;

use burn::backend::Flex;
use image::{Rgb, RgbImage};
use likeness_train::scoring::{Scorer, load_concept};

type B = Flex;

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/data"
    ))
    .join(rel)
}

fn picture(seed: u32) -> RgbImage {
    RgbImage::from_fn(40, 40, |x, y| {
        let v = (x * 7 + y * 13 + seed * 101) % 256;
        Rgb([
            v as u8,
            ((v * 3 + seed * 50) % 256) as u8,
            ((x * y + seed) % 256) as u8,
        ])
    })
}

#[test]
fn concept_photos_score_higher_likeness_than_other_pictures() {
    let concept = vec![picture(1), picture(2), picture(3)];
    let scorer = Scorer::<B>::new(
        &fixture("scoring/clip"),
        Some(&fixture("scoring/dino")),
        &concept,
        "sks",
        &Default::default(),
    )
    .unwrap();
    let images = vec![picture(1), RgbImage::from_pixel(40, 40, Rgb([250, 10, 10]))];
    let prompts = vec![
        "a photo of sks dog".to_string(),
        "a photo of sks dog".to_string(),
    ];
    let s = scorer.score(&images, &prompts).unwrap();
    println!("{s:?}");
    assert!(
        s[0].is > s[1].is,
        "a concept photo is more like the concept"
    );
    assert!(s[0].dino.unwrap() > s[1].dino.unwrap());
    for x in &s {
        assert!(x.is.abs() <= 1.0 + 1e-6 && x.ts.abs() <= 1.0 + 1e-6);
    }
    // TS is measured without the identifier token.
    let without = scorer
        .score(&images[..1], &["a photo of dog".to_string()])
        .unwrap();
    assert!((without[0].ts - s[0].ts).abs() < 1e-6);
    let other = scorer
        .score(&images[..1], &["a red square on a wall".to_string()])
        .unwrap();
    assert!((other[0].ts - s[0].ts).abs() > 1e-6, "the prompt matters");
}

#[test]
fn bad_folders_are_clear_errors() {
    let empty = std::env::temp_dir().join(format!("likeness-empty-concept-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let e = load_concept(&empty).unwrap_err().to_string();
    assert!(e.contains("no images"), "{e}");
    let _ = std::fs::remove_dir_all(&empty);
    let concept = vec![picture(1)];
    let e = Scorer::<B>::new(
        &fixture("pipeline_sd1_eps/text_encoder"),
        None,
        &concept,
        "sks",
        &Default::default(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("config.json"), "{e}");
    assert!(!e.contains('\n'));
}
