//! LoRA files shared with diffusers, AUTOMATIC1111 and ComfyUI (fixtures from
//! `tests/fixtures/make_lora_fixtures.py`, `data/lora/<sd1|sd2>/`).
//!
//! - The same random LoRA (UNet attention, feed-forward and proj_in/proj_out — 1×1 convs in SD1 —
//!   at rank 4, alpha 8; text encoder attention and MLP at rank 2, alpha 1) as diffusers writes it
//!   (`save_lora_weights`, PEFT keys + `lora_adapter_metadata`), in diffusers' older key styles,
//!   and in kohya's layout reads to identical layers, and merged into the model gives diffusers'
//!   final latents (DDIM, 4 steps, guidance 7.5) at scale 1 and 0.5.
//! - A kohya file written by `write_lora_file` has exactly the keys, shapes, dtypes and tensor
//!   bytes of the kohya file the fixture script writes with its own re-implementation of
//!   sd-scripts' naming, the same `ss_*` values and the same `sshs_model_hash`. That script loads
//!   its kohya file with diffusers 0.35.2 / peft 0.17.1 `load_lora_weights`: zero unmatched keys
//!   (nothing logged at WARNING, no key left by diffusers' kohya conversion), all 48 + 18 layers
//!   with identical A, B and scaling, and latents equal (relative error 0) to the pipeline the
//!   adapters were attached to, at scale 1 and 0.5, for SD1 and SD2. So a Likeness kohya export
//!   loads into diffusers unchanged. (Checked once by hand as well: kohya and diffusers files
//!   written by `write_lora_file` load into diffusers with no warning and identical A/B; a layer
//!   with its own alpha keeps it in the diffusers file (`alpha_pattern`), while diffusers 0.35.2
//!   itself drops a per-layer alpha of a kohya *attention* layer — its alpha key for
//!   `processor.to_k_lora` names no module — so exports keep one alpha per network.)
//! - Round trips through both writers, metadata, and what cannot be placed is reported by name.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{B, Io, assert_close, fixture, values};
use likeness_models::lora::{Linears, LoraLayer, LoraSet};
use likeness_models::lora_files::{
    ExportInfo, LoraFormat, kohya_name, merge_lora, open_lora_file, py_float, read_lora_file,
    write_lora_file,
};
use likeness_models::pipeline::{GenerateParams, NoiseSource};
use likeness_models::schedulers::SchedulerKind;
use likeness_models::sd::{LoadOptions, StableDiffusion};
use likeness_models::single_file::Family;
use sha2::{Digest, Sha256};

const FILES: [&str; 3] = [
    "lora_diffusers.safetensors",
    "lora_diffusers_legacy.safetensors",
    "lora_kohya.safetensors",
];

struct NoNoise;

impl NoiseSource for NoNoise {
    fn initial(&mut self, _count: usize, _per_image: usize) -> Vec<f32> {
        unreachable!("initial latents are given")
    }
    fn step(&mut self, _step: usize, _count: usize, _per_image: usize) -> Vec<f32> {
        unreachable!("DDIM draws no noise")
    }
}

fn tmp(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("likeness-lora-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

fn pipeline(tag: &str) -> &'static str {
    if tag == "sd1" {
        "pipeline_sd1_eps"
    } else {
        "pipeline_sd2_v"
    }
}

fn load(tag: &str) -> StableDiffusion<B> {
    StableDiffusion::<B>::load(
        &fixture(pipeline(tag)),
        &LoadOptions::default(),
        &Default::default(),
    )
    .expect("load pipeline")
}

fn resolved(tag: &str, file: &str, model: &mut StableDiffusion<B>) -> LoraSet {
    let f = open_lora_file(&fixture(&format!("lora/{tag}/{file}"))).expect("read LoRA");
    assert!(f.skipped.is_empty(), "{file}: {:?}", f.skipped);
    let mut set = f.set;
    let left = set.resolve_kohya(&model.unet.linears(), &model.text_encoder.linears());
    assert!(left.is_empty(), "{file}: {left:?}");
    set
}

type Layers = BTreeMap<(String, String), LoraLayer>;

fn by_path(set: &LoraSet) -> Layers {
    set.layers
        .iter()
        .map(|l| ((l.network.clone(), l.path.clone()), l.clone()))
        .collect()
}

fn sample(model: &StableDiffusion<B>, tag: &str) -> Vec<f32> {
    let io = Io::open(&format!("{}/io.safetensors", pipeline(tag)));
    let p = GenerateParams {
        prompt: "a photo of sks dog".into(),
        negative_prompt: "blurry, low quality".into(),
        steps: 4,
        guidance: 7.5,
        scheduler: SchedulerKind::Ddim,
        seed: 0,
        count: 2,
        width: 16,
        height: 16,
        clip_skip: 0,
    };
    let init = io.tensor::<4>("init_latents");
    values(
        model
            .sample(&p, Some(init), &mut NoNoise, &mut |_, _| {})
            .expect("sampling"),
    )
}

#[test]
fn every_layout_reads_to_the_same_layers() {
    for tag in ["sd1", "sd2"] {
        let mut model = load(tag);
        let sets: Vec<Layers> = FILES
            .iter()
            .map(|f| by_path(&resolved(tag, f, &mut model)))
            .collect();
        let formats: Vec<LoraFormat> = FILES
            .iter()
            .map(|f| {
                open_lora_file(&fixture(&format!("lora/{tag}/{f}")))
                    .unwrap()
                    .format
            })
            .collect();
        assert_eq!(
            formats,
            [
                LoraFormat::Diffusers,
                LoraFormat::Diffusers,
                LoraFormat::Kohya
            ]
        );
        let unet = sets[0].values().filter(|l| l.network == "unet").count();
        assert_eq!((unet, sets[0].len() - unet), (48, 18), "{tag}");
        for l in sets[0].values() {
            let (rank, alpha) = if l.network == "unet" {
                (4, 8.0)
            } else {
                (2, 1.0)
            };
            assert_eq!((l.rank, l.alpha), (rank, alpha), "{tag} {}", l.path);
        }
        // SD1's proj_in is a 1×1 conv in diffusers: its [r, in, 1, 1] weights are squeezed.
        let proj_in = &sets[0][&(
            "unet".to_string(),
            "down_blocks.0.attentions.0.proj_in".into(),
        )];
        assert_eq!((proj_in.d_in, proj_in.d_out), (8, 8));
        for (f, s) in FILES.iter().zip(&sets).skip(1) {
            assert_eq!(s, &sets[0], "{tag}: {f} differs from {}", FILES[0]);
        }
    }
}

#[test]
fn merged_lora_matches_diffusers() {
    for (tag, file, scale) in [
        ("sd1", "lora_kohya.safetensors", 1.0),
        ("sd1", "lora_diffusers.safetensors", 0.5),
        ("sd2", "lora_diffusers_legacy.safetensors", 1.0),
        ("sd2", "lora_kohya.safetensors", 0.5),
    ] {
        let mut model = load(tag);
        let set = read_lora_file(&fixture(&format!("lora/{tag}/{file}"))).unwrap();
        let report = merge_lora(&set, &mut model.unet, &mut model.text_encoder, scale);
        assert!(report.unplaced.is_empty(), "{:?}", report.unplaced);
        assert_eq!(report.merged, 66);
        let key = if scale == 1.0 {
            "final_latents_ddim".to_string()
        } else {
            format!("final_latents_ddim_scale_{scale}")
        };
        let want = Io::open(&format!("lora/{tag}/io.safetensors")).values(&key);
        assert_close(
            &format!("{tag} {file} at {scale}"),
            &sample(&model, tag),
            &want,
        );
    }
}

/// Each tensor's shape, dtype and bytes, by key.
type FileTensors = BTreeMap<String, (Vec<usize>, String, Vec<u8>)>;

fn tensors(path: &Path) -> (FileTensors, BTreeMap<String, String>) {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let metadata = meta
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st
        .tensors()
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                (
                    v.shape().to_vec(),
                    format!("{:?}", v.dtype()),
                    v.data().to_vec(),
                ),
            )
        })
        .collect();
    (t, metadata)
}

fn info(tag: &str) -> ExportInfo {
    ExportInfo {
        base_model_family: Some(if tag == "sd1" {
            Family::Sd1
        } else {
            Family::Sd2
        }),
        v_prediction: tag == "sd2",
        resolution: Some([16, 16]),
        output_name: Some("lora_kohya".into()),
        ..Default::default()
    }
}

#[test]
fn kohya_export_equals_the_reference_writer_and_round_trips() {
    let dir = tmp("kohya");
    for tag in ["sd1", "sd2"] {
        let mut model = load(tag);
        let set = resolved(tag, "lora_diffusers.safetensors", &mut model);
        let out = dir.join(format!("{tag}.safetensors"));
        write_lora_file(&out, &set, LoraFormat::Kohya, &info(tag)).unwrap();
        let (ours, our_meta) = tensors(&out);
        let (reference, ref_meta) =
            tensors(&fixture(&format!("lora/{tag}/lora_kohya.safetensors")));
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            reference.keys().collect::<Vec<_>>(),
            "{tag}: key sets"
        );
        for (k, v) in &reference {
            assert_eq!(&ours[k], v, "{tag}: tensor {k}");
        }
        assert_eq!(
            ours[&format!(
                "{}.alpha",
                kohya_name("unet", "mid_block.attentions.0.proj_in")
            )]
                .0,
            Vec::<usize>::new()
        );
        for (k, v) in &ref_meta {
            assert_eq!(our_meta.get(k), Some(v), "{tag}: metadata {k}");
        }
        // Read back: kohya names resolve to the same layers.
        let mut back = read_lora_file(&out).unwrap();
        let left = back.resolve_kohya(&model.unet.linears(), &model.text_encoder.linears());
        assert!(left.is_empty(), "{left:?}");
        assert_eq!(by_path(&back), by_path(&set), "{tag}: round trip");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn diffusers_export_round_trips_with_diffusers_keys() {
    let dir = tmp("diffusers");
    for tag in ["sd1", "sd2"] {
        let mut model = load(tag);
        let mut set = resolved(tag, "lora_kohya.safetensors", &mut model);
        // One layer with its own alpha and rank goes through rank_pattern / alpha_pattern.
        let odd = set
            .layers
            .iter_mut()
            .find(|l| l.path.ends_with("attn2.to_k"))
            .unwrap();
        odd.alpha = 3.0;
        odd.rank = 1;
        odd.down.truncate(odd.d_in);
        odd.up = (0..odd.d_out).map(|i| i as f32 * 0.01).collect();
        let out = dir.join(format!("{tag}.safetensors"));
        write_lora_file(&out, &set, LoraFormat::Diffusers, &info(tag)).unwrap();
        let back = open_lora_file(&out).unwrap();
        assert_eq!(back.format, LoraFormat::Diffusers);
        assert_eq!(by_path(&back.set), by_path(&set), "{tag}: round trip");
        // Same keys and shapes as diffusers' own `save_lora_weights` (4-D 1×1 convs in SD1).
        let (ours, meta) = tensors(&out);
        let (reference, _) = tensors(&fixture(&format!("lora/{tag}/lora_diffusers.safetensors")));
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            reference.keys().collect::<Vec<_>>()
        );
        for (k, v) in &reference {
            if !k.contains("attn2.to_k") {
                assert_eq!(ours[k], *v, "{tag}: {k}");
            }
        }
        let cfg: serde_json::Value = serde_json::from_str(&meta["lora_adapter_metadata"]).unwrap();
        assert_eq!(cfg["unet.r"], 4);
        assert_eq!(cfg["unet.lora_alpha"], 8.0);
        assert_eq!(cfg["text_encoder.r"], 2);
        assert_eq!(cfg["text_encoder.lora_alpha"], 1.0);
        assert_eq!(cfg["unet.target_modules"].as_array().unwrap().len(), 48);
        assert_eq!(meta["format"], "pt");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn kohya_metadata_is_what_sd_scripts_writes() {
    let dir = tmp("meta");
    let set = read_lora_file(&fixture("lora/sd1/lora_diffusers.safetensors")).unwrap();
    let out = dir.join("meta.safetensors");
    let info = ExportInfo {
        base_model_family: Some(Family::Sd1),
        resolution: Some([512, 512]),
        steps: Some(800),
        output_name: Some("sks_dog".into()),
        base_model_name: Some("v1-5-pruned-emaonly.safetensors".into()),
        learning_rate: Some(1e-4),
        text_encoder_lr: Some(5e-5),
        num_train_images: Some(20),
        training_started_at: Some(1_700_000_000.25),
        trigger_phrase: Some("sks dog".into()),
        ..Default::default()
    };
    write_lora_file(&out, &set, LoraFormat::Kohya, &info).unwrap();
    let (t, m) = tensors(&out);
    for (k, v) in [
        ("ss_network_module", "networks.lora"),
        ("ss_network_dim", "4"),
        ("ss_network_alpha", "8.0"),
        ("ss_v2", "False"),
        ("ss_base_model_version", "sd_v1"),
        ("ss_resolution", "(512, 512)"),
        ("ss_steps", "800"),
        ("ss_output_name", "sks_dog"),
        ("ss_sd_model_name", "v1-5-pruned-emaonly.safetensors"),
        ("ss_learning_rate", "0.0001"),
        ("ss_text_encoder_lr", "5e-05"),
        ("ss_num_train_images", "20"),
        ("ss_training_started_at", "1700000000.25"),
        ("modelspec.architecture", "stable-diffusion-v1/lora"),
        ("modelspec.title", "sks_dog"),
        ("modelspec.date", "2023-11-14T22:13:20"),
        ("modelspec.trigger_phrase", "sks dog"),
        // Under 1 MiB the legacy hash reads nothing: SHA-256 of no bytes.
        ("sshs_legacy_hash", "e3b0c442"),
    ] {
        assert_eq!(m.get(k).map(String::as_str), Some(v), "{k}");
    }
    assert!(!m.contains_key("lora_adapter_metadata"));
    // sshs_model_hash: SHA-256 of everything after the header.
    let bytes = std::fs::read(&out).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let hash: String = Sha256::digest(&bytes[8 + n..])
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(m["sshs_model_hash"], hash);
    assert!(t.values().all(|(_, dtype, _)| dtype == "F32"));

    let sd2 = ExportInfo {
        base_model_family: Some(Family::Sd2),
        v_prediction: true,
        ..Default::default()
    }
    .kohya_metadata(&set);
    assert_eq!(sd2["ss_v2"], "True");
    assert_eq!(sd2["ss_base_model_version"], "sd_v2_v");
    assert_eq!(
        sd2["modelspec.architecture"],
        "stable-diffusion-v2-768-v/lora"
    );
    for (v, s) in [
        (8.0, "8.0"),
        (0.5, "0.5"),
        (1e-4, "0.0001"),
        (1e-5, "1e-05"),
        (2.5e-7, "2.5e-07"),
        (1e16, "1e+16"),
        (123.0, "123.0"),
    ] {
        assert_eq!(py_float(v), s);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn write_raw(path: &Path, entries: &[(&str, Vec<usize>)]) {
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = entries
        .iter()
        .map(|(k, s)| {
            let n: usize = s.iter().product();
            let v: Vec<u8> = (0..n)
                .flat_map(|i| (0.01 * (i % 7) as f32 + 0.01).to_le_bytes())
                .collect();
            (k.to_string(), s.clone(), v)
        })
        .collect();
    let views = data.iter().map(|(k, s, v)| {
        (
            k.clone(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), v).unwrap(),
        )
    });
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

#[test]
fn what_cannot_be_placed_is_reported_by_name() {
    let dir = tmp("skip");
    let mut model = load("sd1");
    let path = dir.join("mixed.safetensors");
    write_raw(
        &path,
        &[
            // A plain layer without alpha (alpha = rank), in the LDM names some trainers use.
            (
                "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q.lora_down.weight",
                vec![2, 8],
            ),
            (
                "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q.lora_up.weight",
                vec![8, 2],
            ),
            (
                "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_2.lora_down.weight",
                vec![2, 64],
            ),
            (
                "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_2.lora_up.weight",
                vec![16, 2],
            ),
            // LoCon 3×3 conv: unsupported.
            (
                "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight",
                vec![2, 8, 3, 3],
            ),
            (
                "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight",
                vec![8, 2, 1, 1],
            ),
            ("lora_unet_down_blocks_0_resnets_0_conv1.alpha", vec![]),
            // SDXL's second text encoder and DoRA: unsupported.
            (
                "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
                vec![2, 32],
            ),
            (
                "lora_unet_down_blocks_0_attentions_0_proj_in.dora_scale",
                vec![8, 1],
            ),
            // No such layer in this model, and a layer of the wrong size.
            (
                "lora_unet_down_blocks_7_attentions_0_proj_in.lora_down.weight",
                vec![2, 8],
            ),
            (
                "lora_unet_down_blocks_7_attentions_0_proj_in.lora_up.weight",
                vec![8, 2],
            ),
            (
                "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
                vec![2, 31],
            ),
            (
                "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight",
                vec![37, 2],
            ),
            // An up weight alone.
            (
                "lora_unet_up_blocks_1_attentions_0_proj_out.lora_up.weight",
                vec![8, 2],
            ),
        ],
    );
    let f = open_lora_file(&path).unwrap();
    assert_eq!(f.format, LoraFormat::Kohya);
    let skipped: BTreeMap<&str, &str> = f
        .skipped
        .iter()
        .map(|s| (s.key.as_str(), s.reason.as_str()))
        .collect();
    assert_eq!(skipped.len(), 6, "{skipped:#?}");
    assert!(skipped["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"].contains("LoCon"));
    assert!(skipped["lora_unet_down_blocks_0_resnets_0_conv1.alpha"].contains("LoCon"));
    assert!(
        skipped["lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"]
            .contains("second text encoder")
    );
    assert!(skipped["lora_unet_down_blocks_0_attentions_0_proj_in.dora_scale"].contains("DoRA"));
    assert!(
        skipped["lora_unet_up_blocks_1_attentions_0_proj_out.lora_up.weight"].contains("no down")
    );
    assert_eq!(f.set.layers.len(), 4);
    assert!(
        f.set.layers.iter().all(|l| l.alpha == 2.0),
        "alpha defaults to rank"
    );

    let report = merge_lora(&f.set, &mut model.unet, &mut model.text_encoder, 1.0);
    assert_eq!(report.merged, 2);
    assert_eq!(
        report.unplaced,
        [
            "lora_unet_down_blocks_7_attentions_0_proj_in".to_string(),
            "text_encoder.text_model.encoder.layers.0.mlp.fc1".to_string(),
        ]
    );
    let mut set = f.set.clone();
    set.resolve_kohya(&model.unet.linears(), &model.text_encoder.linears());
    assert!(
        set.layers
            .iter()
            .any(|l| l.path == "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")
    );

    // Files that are not LoRAs: one-line errors naming the file.
    let none = dir.join("none.safetensors");
    write_raw(&none, &[("model.diffusion_model.out.0.weight", vec![4])]);
    let bad = dir.join("bad.safetensors");
    std::fs::write(&bad, b"not a safetensors file").unwrap();
    for (p, want) in [
        (none.clone(), "no LoRA layers found"),
        (bad.clone(), "not a safetensors file"),
        (dir.join("missing.safetensors"), "no such file"),
        (dir.join("old.ckpt"), "pickle"),
    ] {
        let e = open_lora_file(&p).unwrap_err().to_string();
        assert!(
            e.contains(&p.display().to_string()) && e.contains(want),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1, "{e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
