//! `ClipTextModel` against transformers' `CLIPTextModel` on the tiny fixture encoders.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::prelude::*;
use likeness_models::ModelError;
use likeness_models::clip_text::{ClipTextConfig, ClipTextModel};
use likeness_models::weights::{VarBuilder, WeightStore};
use safetensors::SafeTensors;

type B = burn::backend::Flex;

fn data() -> PathBuf {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/data"
    ))
    .to_path_buf()
}

/// A tensor of `io.safetensors` as f32 values (or i64 ids) with its shape.
struct Array {
    shape: Vec<usize>,
    f32: Vec<f32>,
    i64: Vec<i64>,
}

fn read_io(path: &Path) -> HashMap<String, Array> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let data = view.data();
            let (f32, i64) = match view.dtype() {
                safetensors::Dtype::F32 => (
                    data.chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                    Vec::new(),
                ),
                safetensors::Dtype::I64 => (
                    Vec::new(),
                    data.chunks_exact(8)
                        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                ),
                other => panic!("{name}: unexpected dtype {other:?}"),
            };
            (
                name,
                Array {
                    shape: view.shape().to_vec(),
                    f32,
                    i64,
                },
            )
        })
        .collect()
}

/// max |a - b| / max |b|, printed with its name.
fn rel_err<const D: usize>(name: &str, got: Tensor<B, D>, expected: &Array) -> f32 {
    assert_eq!(got.dims().to_vec(), expected.shape, "{name}: shape");
    let got = got.into_data().to_vec::<f32>().unwrap();
    let max_diff = got
        .iter()
        .zip(&expected.f32)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    let scale = expected.f32.iter().map(|b| b.abs()).fold(0.0f32, f32::max);
    let err = max_diff / scale.max(f32::MIN_POSITIVE);
    println!("{name}: rel err {err:.3e} (max |diff| {max_diff:.3e}, max |ref| {scale:.3e})");
    err
}

fn ids_tensor(a: &Array) -> Tensor<B, 2, Int> {
    Tensor::from_data(
        TensorData::new(a.i64.clone(), [a.shape[0], a.shape[1]]),
        &Default::default(),
    )
}

fn check_fixture(name: &str, expected_act: &str) {
    let dir = data().join(name);
    let (model, cfg) = ClipTextModel::<B>::from_dir(&dir, &Default::default()).unwrap();
    assert_eq!(cfg.hidden_act, expected_act);
    let io = read_io(&dir.join("io.safetensors"));
    let ids = ids_tensor(&io["input_ids"]);

    let out = model.forward(ids.clone()).unwrap();
    assert_eq!(out.hidden_states.len(), cfg.num_hidden_layers + 1);
    let tol = 1e-4;
    let n = out.hidden_states.len();
    let errs = [
        rel_err(
            &format!("{name}/last_hidden_state"),
            out.last_hidden_state.clone(),
            &io["last_hidden_state"],
        ),
        rel_err(
            &format!("{name}/hidden_states_m2"),
            out.hidden_states[n - 2].clone(),
            &io["hidden_states_m2"],
        ),
        rel_err(
            &format!("{name}/pooler_output"),
            out.pooler_output,
            &io["pooler_output"],
        ),
        rel_err(
            &format!("{name}/encode_prompt(clip_skip=0)"),
            model.encode_prompt(ids.clone(), 0).unwrap(),
            &io["last_hidden_state"],
        ),
        rel_err(
            &format!("{name}/encode_prompt(clip_skip=1)"),
            model.encode_prompt(ids, 1).unwrap(),
            &io["penultimate_normed"],
        ),
    ];
    for e in errs {
        assert!(e <= tol, "rel err {e} > {tol}");
    }
}

#[test]
fn quick_gelu_matches_transformers() {
    check_fixture("text_encoder_quick_gelu", "quick_gelu");
}

#[test]
fn gelu_matches_transformers() {
    check_fixture("text_encoder_gelu", "gelu");
}

#[test]
fn legacy_eos_id_pools_at_the_largest_id() {
    // eos_token_id == 2 (configs before transformers#24773): pool at argmax of the ids.
    let dir = data().join("text_encoder_quick_gelu");
    let mut cfg = ClipTextConfig::from_file(&dir.join("config.json")).unwrap();
    cfg.eos_token_id = 2;
    let store = Arc::new(WeightStore::open(&[dir.join("model.safetensors")]).unwrap());
    let model =
        ClipTextModel::<B>::load(&VarBuilder::new(store, &Default::default()), &cfg).unwrap();
    let ids: Vec<i64> = vec![5, 7, 900, 3, 3, 3, 1, 950, 950, 2];
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [2, 5]), &Default::default());
    let out = model.forward(ids).unwrap();
    let last = out.last_hidden_state.into_data().to_vec::<f32>().unwrap();
    let pooled = out.pooler_output.into_data().to_vec::<f32>().unwrap();
    let h = cfg.hidden_size;
    // Row 0: largest id at position 2; row 1: first of the two 950s, position 2.
    assert_eq!(&pooled[..h], &last[2 * h..3 * h]);
    assert_eq!(&pooled[h..], &last[(5 + 2) * h..(5 + 3) * h]);
}

#[test]
fn position_ids_buffer_is_ignored() {
    // Older checkpoints carry `text_model.embeddings.position_ids`; it must not get in the way.
    let dir = data().join("text_encoder_quick_gelu");
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, safetensors::tensor::TensorView)> = st.tensors();
    let pos: Vec<u8> = (0..77i64).flat_map(|i| i.to_le_bytes()).collect();
    tensors.push((
        "text_model.embeddings.position_ids".to_string(),
        safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![1, 77], &pos).unwrap(),
    ));
    let out = std::env::temp_dir().join(format!(
        "likeness-clip-posids-{}.safetensors",
        std::process::id()
    ));
    safetensors::serialize_to_file(tensors, None, &out).unwrap();
    let cfg = ClipTextConfig::from_file(&dir.join("config.json")).unwrap();
    let store = Arc::new(WeightStore::open(std::slice::from_ref(&out)).unwrap());
    let model = ClipTextModel::<B>::load(&VarBuilder::new(store, &Default::default()), &cfg);
    std::fs::remove_file(&out).ok();
    assert!(model.is_ok(), "{:?}", model.err());
}

#[test]
fn missing_weight_names_the_key() {
    let dir = data().join("text_encoder_gelu");
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let missing = "text_model.encoder.layers.1.self_attn.k_proj.weight";
    let tensors: Vec<_> = st
        .tensors()
        .into_iter()
        .filter(|(k, _)| k != missing)
        .collect();
    let out = std::env::temp_dir().join(format!(
        "likeness-clip-missing-{}.safetensors",
        std::process::id()
    ));
    safetensors::serialize_to_file(tensors, None, &out).unwrap();
    let cfg = ClipTextConfig::from_file(&dir.join("config.json")).unwrap();
    let store = Arc::new(WeightStore::open(std::slice::from_ref(&out)).unwrap());
    let err =
        ClipTextModel::<B>::load(&VarBuilder::new(store, &Default::default()), &cfg).unwrap_err();
    std::fs::remove_file(&out).ok();
    assert!(
        matches!(&err, ModelError::MissingWeight { key, .. } if key == missing),
        "{err}"
    );
    assert!(err.to_string().contains(missing), "{err}");
}

#[test]
fn unsupported_hidden_act_names_the_field() {
    let dir = std::env::temp_dir().join(format!("likeness-clip-act-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.json");
    std::fs::write(
        &path,
        r#"{"hidden_size": 32, "num_attention_heads": 4, "hidden_act": "relu"}"#,
    )
    .unwrap();
    let err = ClipTextConfig::from_file(&path).unwrap_err();
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        matches!(&err, ModelError::Unsupported { field, .. } if field == "hidden_act"),
        "{err}"
    );
    assert!(err.to_string().contains("hidden_act"), "{err}");
}

#[test]
fn nested_text_config_is_read() {
    let value = serde_json::json!({
        "projection_dim": 768,
        "text_config": {"hidden_size": 768, "num_attention_heads": 12, "hidden_act": "gelu",
                        "eos_token_id": 2},
        "vision_config": {"hidden_size": 1024}
    });
    let cfg = ClipTextConfig::from_value(&value, Path::new("config.json")).unwrap();
    assert_eq!(cfg.hidden_size, 768);
    assert_eq!(cfg.num_attention_heads, 12);
    assert_eq!(cfg.hidden_act, "gelu");
    assert_eq!(cfg.eos_token_id, 2);
    // Absent fields take CLIPTextConfig's defaults.
    assert_eq!(cfg.num_hidden_layers, 12);
    assert_eq!(cfg.intermediate_size, 2048);
    assert_eq!(cfg.vocab_size, 49408);
}

#[test]
fn too_long_input_is_an_error() {
    let dir = data().join("text_encoder_gelu");
    let (model, _) = ClipTextModel::<B>::from_dir(&dir, &Default::default()).unwrap();
    let ids = Tensor::<B, 2, Int>::zeros([1, 78], &Default::default());
    assert!(model.forward(ids.clone()).is_err());
    assert!(model.encode_prompt(ids, 0).is_err());
}
