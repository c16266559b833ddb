//! `ClipModel` (both towers and projections) against transformers' `CLIPModel` on the tiny scoring
//! fixture, end to end from PNG files, and its errors on folders that are not CLIP models.

use crate::common;

use std::path::{Path, PathBuf};

use burn::prelude::*;
use common::{B, Io, assert_close, fixture, values};
use likeness_models::clip_model::{ClipModel, cosine, l2_normalize};

fn load() -> ClipModel<B> {
    ClipModel::<B>::from_dir(&fixture("scoring/clip"), &Default::default()).expect("load CLIP")
}

fn ids(io: &Io, key: &str) -> Tensor<B, 2, Int> {
    let shape = io.shape(key);
    let ids: Vec<i64> = io.values(key).iter().map(|v| *v as i64).collect();
    Tensor::from_data(
        TensorData::new(ids, [shape[0], shape[1]]),
        &Default::default(),
    )
}

fn png(name: &str) -> image::RgbImage {
    image::open(fixture(&format!("scoring/preprocess/{name}")))
        .expect("png")
        .to_rgb8()
}

#[test]
fn towers_and_projections_match_transformers() {
    let io = Io::open("scoring/clip/io.safetensors");
    let model = load();
    let pixels = io.tensor::<4>("pixel_values");
    let vision = model.vision_model.forward(pixels.clone()).expect("vision");
    assert_close(
        "vision last_hidden_state",
        &values(vision.last_hidden_state),
        &io.values("vision_last_hidden_state"),
    );
    assert_close(
        "vision pooler_output",
        &values(vision.pooler_output),
        &io.values("vision_pooler_output"),
    );
    let image = model.image_embeds(pixels).expect("image embeds");
    assert_eq!(image.dims(), [2, 16]);
    assert_close("image_embeds", &values(image), &io.values("image_embeds"));
    let text = model
        .text_embeds(ids(&io, "input_ids"))
        .expect("text embeds");
    assert_eq!(text.dims(), [2, 16]);
    assert_close("text_embeds", &values(text), &io.values("text_embeds"));
    assert!((model.logit_scale - (1.0f32 / 0.07).ln()).abs() < 1e-5);
}

#[test]
fn images_and_prompts_end_to_end() {
    let io = Io::open("scoring/clip/io.safetensors");
    let model = load();
    let images = [png("photo_300x200.png"), png("odd_64x97.png")];
    let pixels = model
        .preprocessor
        .batch::<B>(&images, &Default::default())
        .expect("preprocess");
    assert_close(
        "e2e pixel_values",
        &values(pixels),
        &io.values("e2e_pixel_values"),
    );
    let image = model.embed_images(&images).expect("embed images");
    assert_close(
        "e2e image_embeds",
        &values(image.clone()),
        &io.values("e2e_image_embeds"),
    );

    let prompts: Vec<String> = serde_json::from_str(
        &std::fs::read_to_string(fixture("scoring/clip/prompts.json")).expect("prompts"),
    )
    .expect("prompts.json");
    let expected_ids: Vec<u32> = io.values("input_ids").iter().map(|v| *v as u32).collect();
    let our_ids: Vec<u32> = prompts
        .iter()
        .flat_map(|p| model.tokenizer.encode(p))
        .collect();
    assert_eq!(our_ids, expected_ids, "tokenizer ids");
    let text = model.embed_prompts(&prompts).expect("embed prompts");
    assert_close(
        "e2e text_embeds",
        &values(text.clone()),
        &io.values("text_embeds"),
    );

    let sim = cosine(image, text);
    assert_eq!(sim.dims(), [2, 2]);
    assert_close("e2e cosine", &values(sim), &io.values("e2e_cosine"));
}

#[test]
fn normalize_gives_unit_rows() {
    let x = Tensor::<B, 2>::from_data([[3.0, 4.0], [0.0, 0.0]], &Default::default());
    let n = values(l2_normalize(x));
    assert_eq!(n, vec![0.6, 0.8, 0.0, 0.0]);
}

#[test]
fn wrong_pixels_and_ids_are_errors() {
    let model = load();
    let bad = Tensor::<B, 4>::zeros([1, 3, 16, 16], &Default::default());
    let err = model.image_embeds(bad).unwrap_err().to_string();
    assert!(err.contains("[N, 3, 32, 32]"), "{err}");
    let ids = Tensor::<B, 2, Int>::from_data([[1212, 5000, 1213]], &Default::default());
    let err = model.text_embeds(ids).unwrap_err().to_string();
    assert!(err.contains("5000") && err.contains("1214"), "{err}");
}

/// A temporary folder removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("likeness-clip-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn load_err(dir: &Path) -> String {
    match ClipModel::<B>::from_dir(dir, &Default::default()) {
        Ok(_) => panic!("{} loaded as a CLIP model", dir.display()),
        Err(e) => {
            let msg = e.to_string();
            println!("{msg}");
            assert!(!msg.contains('\n'), "one line: {msg}");
            msg
        }
    }
}

#[test]
fn folders_that_are_not_clip_models_are_refused() {
    // A CLIPTextModel folder: config without vision_config.
    let msg = load_err(&fixture("text_encoder_quick_gelu"));
    assert!(
        msg.contains("config.json") && msg.contains("vision_config"),
        "{msg}"
    );
    // A ViT (DINO) folder: no text_config.
    let msg = load_err(&fixture("scoring/dino"));
    assert!(
        msg.contains("config.json") && msg.contains("text_config"),
        "{msg}"
    );
    // A diffusers pipeline root: no config.json at all.
    let msg = load_err(&fixture("pipeline_sd1_eps"));
    assert!(
        msg.contains("pipeline_sd1_eps") && msg.contains("config.json"),
        "{msg}"
    );
    // Not a folder.
    let msg = load_err(&fixture("scoring/clip/io.safetensors"));
    assert!(msg.contains("not a folder"), "{msg}");

    // The CLIP config with another model's weights: the first missing key is named.
    let tmp = TempDir::new("wrong-weights");
    std::fs::copy(
        fixture("scoring/clip/config.json"),
        tmp.0.join("config.json"),
    )
    .unwrap();
    std::fs::copy(
        fixture("scoring/dino/model.safetensors"),
        tmp.0.join("model.safetensors"),
    )
    .unwrap();
    for f in [
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        std::fs::copy(fixture(&format!("scoring/clip/{f}")), tmp.0.join(f)).unwrap();
    }
    let msg = load_err(&tmp.0);
    assert!(
        msg.contains("model.safetensors") && msg.contains("missing weight `"),
        "{msg}"
    );

    // No weights at all.
    std::fs::remove_file(tmp.0.join("model.safetensors")).unwrap();
    let msg = load_err(&tmp.0);
    assert!(msg.contains("no model.safetensors"), "{msg}");
}

#[test]
fn sharded_weights_load_through_the_index() {
    let tmp = TempDir::new("sharded");
    for f in [
        "config.json",
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        std::fs::copy(fixture(&format!("scoring/clip/{f}")), tmp.0.join(f)).unwrap();
    }
    let shard = "model-00001-of-00001.safetensors";
    std::fs::copy(fixture("scoring/clip/model.safetensors"), tmp.0.join(shard)).unwrap();
    let index = serde_json::json!({
        "metadata": {},
        "weight_map": {"logit_scale": shard, "visual_projection.weight": shard},
    });
    std::fs::write(
        tmp.0.join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let io = Io::open("scoring/clip/io.safetensors");
    let model = ClipModel::<B>::from_dir(&tmp.0, &Default::default()).expect("sharded load");
    let image = model
        .image_embeds(io.tensor::<4>("pixel_values"))
        .expect("embeds");
    assert_close(
        "sharded image_embeds",
        &values(image),
        &io.values("image_embeds"),
    );
}

#[test]
fn without_tokenizer_files_the_bundled_bpe_is_used() {
    // The tiny model's vocabulary is smaller than CLIP's, so the bundled BPE is refused, by name.
    let tmp = TempDir::new("no-tokenizer");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture(&format!("scoring/clip/{f}")), tmp.0.join(f)).unwrap();
    }
    let msg = load_err(&tmp.0);
    assert!(
        msg.contains("bundled CLIP tokenizer") && msg.contains("49408"),
        "{msg}"
    );
}
