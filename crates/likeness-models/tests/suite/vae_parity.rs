//! AutoencoderKL against diffusers 0.35.2 (fixture `tests/fixtures/data/vae`), config checks, and
//! a structural build of the SD preset.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::prelude::*;
use likeness_models::ModelError;
use likeness_models::vae::{AutoencoderKL, AutoencoderKLConfig, DiagonalGaussian};
use likeness_models::weights::{Init, VarBuilder, WeightStore};

type B = burn::backend::Flex;

const VAE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/data/vae");

fn io_tensor(name: &str) -> Tensor<B, 4> {
    let store = WeightStore::open(&[Path::new(VAE_DIR).join("io.safetensors")]).unwrap();
    let shape = store.shape(name).unwrap();
    let values = store.load_f32(name, &shape, Init::Zeros).unwrap();
    let shape: [usize; 4] = shape.try_into().unwrap();
    Tensor::from_data(TensorData::new(values, shape), &Default::default())
}

/// max |a - b| / max |b|, printed so that the test log records the measured error.
fn rel_err(name: &str, got: Tensor<B, 4>, want: Tensor<B, 4>) -> f32 {
    assert_eq!(got.dims(), want.dims(), "{name}: shape");
    let got = got.into_data().to_vec::<f32>().unwrap();
    let want = want.into_data().to_vec::<f32>().unwrap();
    let diff = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    let scale = want.iter().map(|b| b.abs()).fold(0.0f32, f32::max);
    let err = diff / scale.max(f32::MIN_POSITIVE);
    println!("{name}: max abs diff {diff:.3e}, rel err {err:.3e}");
    err
}

fn fixture_vae() -> AutoencoderKL<B> {
    AutoencoderKL::load_from_dir(Path::new(VAE_DIR), &Default::default()).unwrap()
}

#[test]
fn encode_matches_diffusers() {
    let vae = fixture_vae();
    let dist = vae.encode(io_tensor("image"));
    assert!(rel_err("latent_mean", dist.mean.clone(), io_tensor("latent_mean")) <= 1e-4);
    assert!(
        rel_err(
            "latent_logvar",
            dist.logvar.clone(),
            io_tensor("latent_logvar")
        ) <= 1e-4
    );
    assert!(rel_err("mode", dist.mode(), io_tensor("latent_mean")) <= 1e-4);
}

#[test]
fn decode_matches_diffusers() {
    let vae = fixture_vae();
    let out = vae.decode(io_tensor("latents_in"));
    assert!(rel_err("decoded", out, io_tensor("decoded")) <= 1e-4);
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("likeness-vae-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A pre-0.14 folder (mid attention named query/key/value/proj_attn), saved as the fp16 variant
/// file name, must load and decode as the fixture does.
#[test]
fn old_attention_names_and_fp16_file_name_load() {
    let src = Path::new(VAE_DIR);
    let bytes = std::fs::read(src.join("diffusion_pytorch_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut renamed = 0;
    let tensors: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| {
            let new = k
                .replace(".attentions.0.to_q.", ".attentions.0.query.")
                .replace(".attentions.0.to_k.", ".attentions.0.key.")
                .replace(".attentions.0.to_v.", ".attentions.0.value.")
                .replace(".attentions.0.to_out.0.", ".attentions.0.proj_attn.");
            if new != k {
                renamed += 1;
            }
            (new, v)
        })
        .collect();
    // encoder and decoder mid blocks: 4 linears × (weight, bias) each.
    assert_eq!(renamed, 16);
    let dir = temp_dir("old-names");
    safetensors::serialize_to_file(
        tensors,
        None,
        &dir.join("diffusion_pytorch_model.fp16.safetensors"),
    )
    .unwrap();
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();

    let vae = AutoencoderKL::<B>::load_from_dir(&dir, &Default::default()).unwrap();
    let out = vae.decode(io_tensor("latents_in"));
    assert!(rel_err("decoded (old names)", out, io_tensor("decoded")) <= 1e-4);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_weights_file_is_an_error() {
    let dir = temp_dir("no-weights");
    std::fs::copy(
        Path::new(VAE_DIR).join("config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    let err = AutoencoderKL::<B>::load_from_dir(&dir, &Default::default()).unwrap_err();
    assert!(err.to_string().contains("diffusion_pytorch_model"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn config_defaults_and_fixture() {
    let cfg: AutoencoderKLConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(cfg, AutoencoderKLConfig::default());
    assert_eq!(cfg.block_out_channels, vec![64]);
    assert_eq!(cfg.layers_per_block, 1);
    assert_eq!(cfg.scaling_factor, 0.18215);
    assert!(cfg.use_quant_conv && cfg.use_post_quant_conv && cfg.mid_block_add_attention);
    cfg.validate(Path::new("config.json")).unwrap();

    let cfg = AutoencoderKLConfig::from_file(&Path::new(VAE_DIR).join("config.json")).unwrap();
    assert_eq!(cfg.block_out_channels, vec![16, 32]);
    assert_eq!(cfg.norm_num_groups, 8);
    assert_eq!(cfg.downscale_factor(), 2);

    // Some configs write sample_size as a list.
    let cfg: AutoencoderKLConfig = serde_json::from_str(r#"{"sample_size": [768, 768]}"#).unwrap();
    assert_eq!(cfg.sample_size, 768);
}

fn check_err(json: &str) -> ModelError {
    let cfg: AutoencoderKLConfig = serde_json::from_str(json).unwrap();
    cfg.validate(Path::new("vae/config.json")).unwrap_err()
}

fn assert_unsupported(json: &str, want_field: &str) {
    match check_err(json) {
        ModelError::Unsupported { path, field, .. } => {
            assert_eq!(field, want_field);
            assert_eq!(path, Path::new("vae/config.json"));
        }
        other => panic!("expected unsupported {want_field}, got {other}"),
    }
}

#[test]
fn config_errors_name_the_field() {
    assert_unsupported(
        r#"{"down_block_types": ["AttnDownEncoderBlock2D"]}"#,
        "down_block_types",
    );
    assert_unsupported(
        r#"{"up_block_types": ["AttnUpDecoderBlock2D"]}"#,
        "up_block_types",
    );
    assert_unsupported(r#"{"act_fn": "gelu"}"#, "act_fn");
    assert_unsupported(r#"{"shift_factor": 0.1159}"#, "shift_factor");
    assert_unsupported(r#"{"scaling_factor": 0.0}"#, "scaling_factor");

    let msg = check_err(r#"{"block_out_channels": [64, 128]}"#).to_string();
    assert!(msg.contains("block_out_channels"), "{msg}");
    let msg = check_err(r#"{"block_out_channels": [48], "norm_num_groups": 32}"#).to_string();
    assert!(msg.contains("norm_num_groups"), "{msg}");
    assert!(matches!(
        check_err(r#"{"block_out_channels": [], "down_block_types": [], "up_block_types": []}"#),
        ModelError::Config { .. }
    ));

    // from_file names the file it read.
    let dir = temp_dir("bad-config");
    let path = dir.join("config.json");
    std::fs::write(&path, r#"{"act_fn": "relu"}"#).unwrap();
    match AutoencoderKLConfig::from_file(&path).unwrap_err() {
        ModelError::Unsupported {
            path: p,
            field,
            value,
        } => {
            assert_eq!(p, path);
            assert_eq!(field, "act_fn");
            assert_eq!(value, "relu");
        }
        other => panic!("{other}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();

    // load() validates too.
    let vb = VarBuilder::<B>::new(Arc::new(WeightStore::random(0)), &Default::default());
    let cfg: AutoencoderKLConfig = serde_json::from_str(r#"{"act_fn": "relu"}"#).unwrap();
    assert!(AutoencoderKL::load(&vb, &cfg).is_err());
}

#[test]
fn sd_preset_structure() {
    let cfg = AutoencoderKLConfig::sd();
    cfg.validate(Path::new("sd")).unwrap();
    assert_eq!(cfg.downscale_factor(), 8);
    let vb = VarBuilder::<B>::new(Arc::new(WeightStore::random(1)), &Default::default());
    let vae = AutoencoderKL::load(&vb, &cfg).unwrap();
    assert_eq!(vae.scaling_factor(), 0.18215);
    assert_eq!(vae.downscale_factor(), 8);
    assert_eq!(vae.latent_channels(), 4);

    let enc = &vae.encoder;
    assert_eq!(enc.conv_in.weight.dims(), [128, 3, 3, 3]);
    assert_eq!(enc.down_blocks.len(), 4);
    let downsamplers: Vec<usize> = enc
        .down_blocks
        .iter()
        .map(|b| b.downsamplers.len())
        .collect();
    assert_eq!(downsamplers, [1, 1, 1, 0]);
    assert!(enc.down_blocks.iter().all(|b| b.resnets.len() == 2));
    assert_eq!(
        enc.down_blocks[1].resnets[0]
            .conv_shortcut
            .as_ref()
            .unwrap()
            .weight
            .dims(),
        [256, 128, 1, 1]
    );
    assert!(enc.down_blocks[3].resnets[0].conv_shortcut.is_none());
    assert_eq!(
        enc.down_blocks[0].downsamplers[0].conv.weight.dims(),
        [128, 128, 3, 3]
    );
    assert_eq!(enc.mid_block.resnets.len(), 2);
    assert_eq!(enc.mid_block.attentions.len(), 1);
    assert_eq!(enc.mid_block.attentions[0].to_q.weight.dims(), [512, 512]);
    assert_eq!(
        enc.mid_block.attentions[0].to_out[0].weight.dims(),
        [512, 512]
    );
    assert_eq!(enc.conv_out.weight.dims(), [8, 512, 3, 3]);
    assert_eq!(vae.quant_conv.as_ref().unwrap().weight.dims(), [8, 8, 1, 1]);
    assert_eq!(
        vae.post_quant_conv.as_ref().unwrap().weight.dims(),
        [4, 4, 1, 1]
    );

    let dec = &vae.decoder;
    assert_eq!(dec.conv_in.weight.dims(), [512, 4, 3, 3]);
    assert_eq!(dec.up_blocks.len(), 4);
    assert!(dec.up_blocks.iter().all(|b| b.resnets.len() == 3));
    let upsamplers: Vec<usize> = dec.up_blocks.iter().map(|b| b.upsamplers.len()).collect();
    assert_eq!(upsamplers, [1, 1, 1, 0]);
    assert_eq!(
        dec.up_blocks[2].resnets[0].conv1.weight.dims(),
        [256, 512, 3, 3]
    );
    assert_eq!(
        dec.up_blocks[3].resnets[0].conv1.weight.dims(),
        [128, 256, 3, 3]
    );
    assert_eq!(dec.conv_norm_out.weight.dims(), [128]);
    assert_eq!(dec.conv_out.weight.dims(), [3, 128, 3, 3]);

    // Same parameter count as diffusers' SD VAE (83,653,863).
    assert_eq!(burn::module::Module::num_params(&vae), 83_653_863);
}

/// Options that drop modules: no quant convs, no mid attention; shapes still follow the config.
#[test]
fn tiny_variant_shapes() {
    let cfg: AutoencoderKLConfig = serde_json::from_str(
        r#"{"block_out_channels": [8, 16, 16], "norm_num_groups": 4, "layers_per_block": 1,
            "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
            "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
            "latent_channels": 2, "use_quant_conv": false, "use_post_quant_conv": false,
            "mid_block_add_attention": false}"#,
    )
    .unwrap();
    let vb = VarBuilder::<B>::new(Arc::new(WeightStore::random(2)), &Default::default());
    let vae = AutoencoderKL::load(&vb, &cfg).unwrap();
    assert!(vae.quant_conv.is_none() && vae.post_quant_conv.is_none());
    assert!(vae.encoder.mid_block.attentions.is_empty());
    assert_eq!(vae.downscale_factor(), 4);
    let x = Tensor::<B, 4>::random(
        [2, 3, 12, 8],
        burn::tensor::Distribution::Uniform(-1.0, 1.0),
        &Default::default(),
    );
    let dist = vae.encode(x.clone());
    assert_eq!(dist.mean.dims(), [2, 2, 3, 2]);
    assert_eq!(dist.logvar.dims(), [2, 2, 3, 2]);
    assert_eq!(vae.decode(dist.mode()).dims(), [2, 3, 12, 8]);
    assert_eq!(vae.forward(x).dims(), [2, 3, 12, 8]);
}

#[test]
fn gaussian_clamps_and_samples() {
    let dev = Default::default();
    let moments = Tensor::<B, 4>::from_data(
        TensorData::new(vec![1.0f32, -2.0, 0.5, -40.0, 25.0, 2.0], [1, 6, 1, 1]),
        &dev,
    );
    let dist = DiagonalGaussian::from_moments(moments);
    assert_eq!(
        dist.mean.to_data().to_vec::<f32>().unwrap(),
        [1.0, -2.0, 0.5]
    );
    assert_eq!(
        dist.logvar.to_data().to_vec::<f32>().unwrap(),
        [-30.0, 20.0, 2.0]
    );
    let noise =
        Tensor::<B, 4>::from_data(TensorData::new(vec![1.0f32, 0.0, -1.0], [1, 3, 1, 1]), &dev);
    let s = dist.sample(noise).into_data().to_vec::<f32>().unwrap();
    let want = [1.0 + (-15.0f32).exp(), -2.0, 0.5 - 1.0f32.exp()];
    for (a, b) in s.iter().zip(want) {
        assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{a} vs {b}");
    }
}
