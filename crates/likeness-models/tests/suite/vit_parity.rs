//! `ViTModel` (DINO layout) against transformers' `ViTModel` on the tiny scoring fixture.

use crate::common;

use common::{B, Io, assert_close, fixture, values};
use likeness_models::vit::ViTModel;

fn load() -> ViTModel<B> {
    ViTModel::<B>::from_dir(&fixture("scoring/dino"), &Default::default()).expect("load ViT")
}

#[test]
fn cls_embeddings_match_transformers() {
    let io = Io::open("scoring/dino/io.safetensors");
    let model = load();
    let pixels = io.tensor::<4>("pixel_values");
    let hidden = model.forward(pixels.clone()).expect("forward");
    assert_close(
        "last_hidden_state",
        &values(hidden),
        &io.values("last_hidden_state"),
    );
    let cls = model.cls_embeds(pixels).expect("cls");
    assert_eq!(cls.dims(), [2, 32]);
    assert_close("cls_embeds", &values(cls), &io.values("cls_embeds"));
}

#[test]
fn images_end_to_end() {
    let io = Io::open("scoring/dino/io.safetensors");
    let model = load();
    let images: Vec<image::RgbImage> = ["photo_300x200.png", "odd_64x97.png"]
        .iter()
        .map(|n| {
            image::open(fixture(&format!("scoring/preprocess/{n}")))
                .expect("png")
                .to_rgb8()
        })
        .collect();
    let pixels = model
        .preprocessor
        .batch::<B>(&images, &Default::default())
        .expect("preprocess");
    assert_close(
        "e2e pixel_values",
        &values(pixels),
        &io.values("e2e_pixel_values"),
    );
    let cls = model.embed_images(&images).expect("embed");
    assert_close("e2e cls_embeds", &values(cls), &io.values("e2e_cls_embeds"));
}

#[test]
fn folders_that_are_not_vit_models_are_refused() {
    for (dir, needle) in [
        ("scoring/clip", "vision_config"),
        ("text_encoder_quick_gelu", "model_type"),
        ("pipeline_sd1_eps", "config.json"),
    ] {
        let err = match ViTModel::<B>::from_dir(&fixture(dir), &Default::default()) {
            Ok(_) => panic!("{dir} loaded as a ViT"),
            Err(e) => e.to_string(),
        };
        println!("{err}");
        assert!(err.contains(dir) && err.contains(needle), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }
}
