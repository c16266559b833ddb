//! Single-file checkpoints in the original LDM (CompVis / Stability) layout: the key map to
//! diffusers names and the architecture read off the tensor shapes.
//!
//! Keys: `model.diffusion_model.*` (UNet), `first_stage_model.*` (VAE),
//! `cond_stage_model.transformer.*` (SD1, transformers CLIP) or `cond_stage_model.model.*`
//! (SD2, OpenCLIP with fused attention in-projections).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::error::{ModelError, Result};
use crate::weights::{TensorRef, WeightStore};

const UNET: &str = "model.diffusion_model.";
const VAE: &str = "first_stage_model.";
const CLIP_SD1: &str = "cond_stage_model.transformer.";
const CLIP_SD2: &str = "cond_stage_model.model.";

/// Which family of Stable Diffusion a checkpoint belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Sd1,
    Sd2,
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::Sd1 => "SD 1.x",
            Family::Sd2 => "SD 2.x",
        })
    }
}

/// What the tensor shapes of a single file say about its networks, as diffusers configs.
#[derive(Debug, Clone)]
pub struct DetectedArchitecture {
    pub family: Family,
    pub unet: Value,
    pub vae: Value,
    pub text_encoder: Value,
    /// Number of OpenCLIP blocks present (SD2); diffusers uses all but the last.
    pub text_layers_in_file: usize,
}

/// A single-file checkpoint opened and mapped to diffusers keys, prefixed by component
/// (`unet.`, `vae.`, `text_encoder.`).
pub struct SingleFile {
    pub store: WeightStore,
    pub arch: DetectedArchitecture,
}

fn shapes(store: &WeightStore) -> BTreeMap<String, Vec<usize>> {
    store
        .file_keys(0)
        .into_iter()
        .filter_map(|k| store.file_shape(0, &k).map(|s| (k, s)))
        .collect()
}

fn layout_err(path: &Path, message: impl Into<String>) -> ModelError {
    ModelError::Layout {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Opens `path`, detects its architecture and maps every tensor it can place.
pub fn open(path: &Path) -> Result<SingleFile> {
    let mut store = WeightStore::open_unindexed(&[PathBuf::from(path)])?;
    let shapes = shapes(&store);
    let arch = detect(path, &shapes)?;
    let map = key_map(path, &shapes, &arch)?;
    for (wanted, src) in map {
        store.insert(wanted, src);
    }
    Ok(SingleFile { store, arch })
}

fn count_indices(shapes: &BTreeMap<String, Vec<usize>>, prefix: &str) -> usize {
    let set: BTreeSet<usize> = shapes
        .keys()
        .filter_map(|k| k.strip_prefix(prefix))
        .filter_map(|rest| rest.split('.').next())
        .filter_map(|i| i.parse().ok())
        .collect();
    set.into_iter().next_back().map(|m| m + 1).unwrap_or(0)
}

fn need<'a>(
    path: &Path,
    shapes: &'a BTreeMap<String, Vec<usize>>,
    key: &str,
) -> Result<&'a Vec<usize>> {
    shapes.get(key).ok_or_else(|| ModelError::MissingWeight {
        path: path.to_path_buf(),
        key: key.to_string(),
    })
}

/// Reads the architecture from tensor shapes; real SD checkpoints get the public configs' other
/// values (group norms of 32, 8 heads for SD1, 64-wide heads for SD2).
pub fn detect(path: &Path, shapes: &BTreeMap<String, Vec<usize>>) -> Result<DetectedArchitecture> {
    let has = |p: &str| shapes.keys().any(|k| k.starts_with(p));
    if !has(UNET) {
        return Err(layout_err(
            path,
            "unknown single-file layout: no `model.diffusion_model.*` tensors (not a Stable Diffusion 1.x/2.x checkpoint)",
        ));
    }
    if !has(VAE) {
        return Err(layout_err(
            path,
            "no `first_stage_model.*` (VAE) tensors in this checkpoint",
        ));
    }
    let family = if has(CLIP_SD2) {
        Family::Sd2
    } else if has(CLIP_SD1) {
        Family::Sd1
    } else {
        return Err(layout_err(
            path,
            "unknown text encoder layout: neither `cond_stage_model.transformer.*` (SD1) nor `cond_stage_model.model.*` (SD2)",
        ));
    };

    // UNet.
    let conv_in = need(path, shapes, &format!("{UNET}input_blocks.0.0.weight"))?;
    let in_channels = conv_in[1];
    let n_input = count_indices(shapes, &format!("{UNET}input_blocks."));
    let out_w = need(path, shapes, &format!("{UNET}out.2.weight"))?;
    // Levels: input blocks that hold a downsampler (`.0.op.weight`) end a level.
    let mut down_ends = Vec::new();
    for i in 1..n_input {
        if shapes.contains_key(&format!("{UNET}input_blocks.{i}.0.op.weight")) {
            down_ends.push(i);
        }
    }
    let levels = down_ends.len() + 1;
    let layers_per_block = if let Some(&first) = down_ends.first() {
        first - 1
    } else {
        n_input - 1
    };
    if layers_per_block == 0 || 1 + levels * (layers_per_block + 1) - 1 != n_input {
        return Err(layout_err(
            path,
            format!("UNet input blocks ({n_input}) do not form regular levels of equal depth"),
        ));
    }
    let mut block_out = Vec::new();
    let mut attn_levels = Vec::new();
    let mut cross_dim = None;
    let mut linear_proj = false;
    for level in 0..levels {
        let i = 1 + level * (layers_per_block + 1);
        let conv1 = need(
            path,
            shapes,
            &format!("{UNET}input_blocks.{i}.0.in_layers.2.weight"),
        )?;
        block_out.push(conv1[0]);
        let proj_in = format!("{UNET}input_blocks.{i}.1.proj_in.weight");
        let has_attn = shapes.contains_key(&proj_in);
        attn_levels.push(has_attn);
        if has_attn {
            linear_proj = shapes[&proj_in].len() == 2;
            let k = need(
                path,
                shapes,
                &format!("{UNET}input_blocks.{i}.1.transformer_blocks.0.attn2.to_k.weight"),
            )?;
            cross_dim = Some(k[1]);
        }
    }
    let cross_dim = cross_dim.ok_or_else(|| layout_err(path, "UNet has no cross-attention"))?;
    let down_types: Vec<&str> = attn_levels
        .iter()
        .map(|&a| {
            if a {
                "CrossAttnDownBlock2D"
            } else {
                "DownBlock2D"
            }
        })
        .collect();
    let up_types: Vec<&str> = attn_levels
        .iter()
        .rev()
        .map(|&a| if a { "CrossAttnUpBlock2D" } else { "UpBlock2D" })
        .collect();
    let head_dim: Value = match family {
        Family::Sd1 => json!(8),
        Family::Sd2 => json!(block_out.iter().map(|c| c / 64).collect::<Vec<_>>()),
    };
    let unet = json!({
        "_class_name": "UNet2DConditionModel",
        "in_channels": in_channels,
        "out_channels": out_w[0],
        "block_out_channels": block_out,
        "layers_per_block": layers_per_block,
        "down_block_types": down_types,
        "up_block_types": up_types,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "attention_head_dim": head_dim,
        "cross_attention_dim": cross_dim,
        "use_linear_projection": linear_proj,
        "upcast_attention": family == Family::Sd2,
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "flip_sin_to_cos": true,
        "freq_shift": 0,
        "act_fn": "silu",
        "sample_size": if family == Family::Sd2 { 96 } else { 64 },
    });

    // VAE.
    let vae_levels = count_indices(shapes, &format!("{VAE}encoder.down."));
    let vae_lpb = count_indices(shapes, &format!("{VAE}encoder.down.0.block."));
    let mut vae_out = Vec::new();
    for l in 0..vae_levels {
        let w = need(
            path,
            shapes,
            &format!("{VAE}encoder.down.{l}.block.0.conv1.weight"),
        )?;
        vae_out.push(w[0]);
    }
    let quant = need(path, shapes, &format!("{VAE}quant_conv.weight"))?;
    let vae_in = need(path, shapes, &format!("{VAE}encoder.conv_in.weight"))?;
    let vae = json!({
        "_class_name": "AutoencoderKL",
        "in_channels": vae_in[1],
        "out_channels": vae_in[1],
        "down_block_types": vec!["DownEncoderBlock2D"; vae_levels],
        "up_block_types": vec!["UpDecoderBlock2D"; vae_levels],
        "block_out_channels": vae_out,
        "layers_per_block": vae_lpb,
        "latent_channels": quant[0] / 2,
        "norm_num_groups": 32,
        "act_fn": "silu",
        "sample_size": if family == Family::Sd2 { 768 } else { 512 },
        "scaling_factor": 0.18215,
    });

    // Text encoder.
    let (text_encoder, layers_in_file) = match family {
        Family::Sd1 => {
            let p = sd1_text_prefix(shapes);
            let tok = need(
                path,
                shapes,
                &format!("{p}embeddings.token_embedding.weight"),
            )?;
            let pos = need(
                path,
                shapes,
                &format!("{p}embeddings.position_embedding.weight"),
            )?;
            let layers = count_indices(shapes, &format!("{p}encoder.layers."));
            let fc1 = need(path, shapes, &format!("{p}encoder.layers.0.mlp.fc1.weight"))?;
            let hidden = tok[1];
            (
                json!({
                    "architectures": ["CLIPTextModel"],
                    "vocab_size": tok[0],
                    "hidden_size": hidden,
                    "intermediate_size": fc1[0],
                    "num_hidden_layers": layers,
                    "num_attention_heads": hidden / 64,
                    "max_position_embeddings": pos[0],
                    "hidden_act": "quick_gelu",
                    "layer_norm_eps": 1e-5,
                    "bos_token_id": 0,
                    "eos_token_id": 2,
                    "pad_token_id": 1,
                }),
                layers,
            )
        }
        Family::Sd2 => {
            let tok = need(path, shapes, &format!("{CLIP_SD2}token_embedding.weight"))?;
            let pos = need(path, shapes, &format!("{CLIP_SD2}positional_embedding"))?;
            let blocks = count_indices(shapes, &format!("{CLIP_SD2}transformer.resblocks."));
            let fc = need(
                path,
                shapes,
                &format!("{CLIP_SD2}transformer.resblocks.0.mlp.c_fc.weight"),
            )?;
            let hidden = tok[1];
            if blocks < 2 {
                return Err(layout_err(
                    path,
                    "OpenCLIP text encoder has fewer than 2 blocks",
                ));
            }
            (
                json!({
                    "architectures": ["CLIPTextModel"],
                    "vocab_size": tok[0],
                    "hidden_size": hidden,
                    "intermediate_size": fc[0],
                    "num_hidden_layers": blocks - 1,
                    "num_attention_heads": hidden / 64,
                    "max_position_embeddings": pos[0],
                    "hidden_act": "gelu",
                    "layer_norm_eps": 1e-5,
                    "bos_token_id": 0,
                    "eos_token_id": 2,
                    "pad_token_id": 1,
                    "projection_dim": 512,
                }),
                blocks,
            )
        }
    };
    Ok(DetectedArchitecture {
        family,
        unet,
        vae,
        text_encoder,
        text_layers_in_file: layers_in_file,
    })
}

/// SD1 files from older transformers lack the `text_model.` level.
fn sd1_text_prefix(shapes: &BTreeMap<String, Vec<usize>>) -> String {
    if shapes
        .keys()
        .any(|k| k.starts_with(&format!("{CLIP_SD1}text_model.")))
    {
        format!("{CLIP_SD1}text_model.")
    } else {
        CLIP_SD1.to_string()
    }
}

fn resnet_ldm_to_diffusers(rest: &str) -> String {
    const RENAMES: [(&str, &str); 6] = [
        ("in_layers.0.", "norm1."),
        ("in_layers.2.", "conv1."),
        ("emb_layers.1.", "time_emb_proj."),
        ("out_layers.0.", "norm2."),
        ("out_layers.3.", "conv2."),
        ("skip_connection.", "conv_shortcut."),
    ];
    for (from, to) in RENAMES {
        if let Some(tail) = rest.strip_prefix(from) {
            return format!("{to}{tail}");
        }
    }
    rest.to_string()
}

fn vae_resnet(rest: &str) -> String {
    rest.replacen("nin_shortcut.", "conv_shortcut.", 1)
}

fn vae_attention(rest: &str) -> String {
    const RENAMES: [(&str, &str); 5] = [
        ("norm.", "group_norm."),
        ("q.", "to_q."),
        ("k.", "to_k."),
        ("v.", "to_v."),
        ("proj_out.", "to_out.0."),
    ];
    for (from, to) in RENAMES {
        if let Some(tail) = rest.strip_prefix(from) {
            return format!("{to}{tail}");
        }
    }
    rest.to_string()
}

fn split_idx(s: &str) -> Option<(usize, &str)> {
    let (i, rest) = s.split_once('.')?;
    Some((i.parse().ok()?, rest))
}

/// Maps each LDM key to the diffusers key it stands for, prefixed by component.
pub fn key_map(
    path: &Path,
    shapes: &BTreeMap<String, Vec<usize>>,
    arch: &DetectedArchitecture,
) -> Result<Vec<(String, TensorRef)>> {
    let lpb = arch.unet["layers_per_block"].as_u64().unwrap_or(2) as usize;
    let levels = arch.unet["block_out_channels"]
        .as_array()
        .map(|a| a.len())
        .unwrap_or(0);
    let vae_levels = arch.vae["block_out_channels"]
        .as_array()
        .map(|a| a.len())
        .unwrap_or(0);
    let r = |key: &str| TensorRef {
        file: 0,
        key: key.to_string(),
        rows: None,
    };
    let mut out = Vec::new();
    let sd1_prefix = sd1_text_prefix(shapes);
    for key in shapes.keys() {
        if let Some(rest) = key.strip_prefix(UNET) {
            if let Some(mapped) = unet_key(rest, lpb, levels, shapes) {
                out.push((format!("unet.{mapped}"), r(key)));
            }
        } else if let Some(rest) = key.strip_prefix(VAE) {
            if let Some(mapped) = vae_key(rest, vae_levels) {
                out.push((format!("vae.{mapped}"), r(key)));
            }
        } else if arch.family == Family::Sd1 {
            if let Some(rest) = key.strip_prefix(sd1_prefix.as_str()) {
                if rest.ends_with("position_ids") {
                    continue;
                }
                out.push((format!("text_encoder.text_model.{rest}"), r(key)));
            }
        } else if let Some(rest) = key.strip_prefix(CLIP_SD2) {
            for (mapped, rows) in open_clip_key(rest, shapes.get(key), arch.text_layers_in_file - 1)
            {
                let mut t = r(key);
                t.rows = rows;
                out.push((format!("text_encoder.text_model.{mapped}"), t));
            }
        }
    }
    if out.is_empty() {
        return Err(layout_err(path, "no tensor could be placed"));
    }
    Ok(out)
}

fn unet_key(
    rest: &str,
    lpb: usize,
    levels: usize,
    shapes: &BTreeMap<String, Vec<usize>>,
) -> Option<String> {
    let simple = [
        ("time_embed.0.", "time_embedding.linear_1."),
        ("time_embed.2.", "time_embedding.linear_2."),
        ("input_blocks.0.0.", "conv_in."),
        ("out.0.", "conv_norm_out."),
        ("out.2.", "conv_out."),
    ];
    for (from, to) in simple {
        if let Some(tail) = rest.strip_prefix(from) {
            return Some(format!("{to}{tail}"));
        }
    }
    if let Some(s) = rest.strip_prefix("input_blocks.") {
        let (i, tail) = split_idx(s)?;
        let level = (i - 1) / (lpb + 1);
        let layer = (i - 1) % (lpb + 1);
        let (part, inner) = split_idx(tail)?;
        if layer == lpb {
            let conv = inner.strip_prefix("op.")?;
            return Some(format!("down_blocks.{level}.downsamplers.0.conv.{conv}"));
        }
        return Some(match part {
            0 => format!(
                "down_blocks.{level}.resnets.{layer}.{}",
                resnet_ldm_to_diffusers(inner)
            ),
            _ => format!("down_blocks.{level}.attentions.{layer}.{inner}"),
        });
    }
    if let Some(s) = rest.strip_prefix("middle_block.") {
        let (part, inner) = split_idx(s)?;
        return Some(match part {
            0 => format!("mid_block.resnets.0.{}", resnet_ldm_to_diffusers(inner)),
            1 => format!("mid_block.attentions.0.{inner}"),
            _ => format!("mid_block.resnets.1.{}", resnet_ldm_to_diffusers(inner)),
        });
    }
    if let Some(s) = rest.strip_prefix("output_blocks.") {
        let (i, tail) = split_idx(s)?;
        let level = i / (lpb + 1);
        let layer = i % (lpb + 1);
        let (part, inner) = split_idx(tail)?;
        if part == 0 {
            return Some(format!(
                "up_blocks.{level}.resnets.{layer}.{}",
                resnet_ldm_to_diffusers(inner)
            ));
        }
        // Upsamplers sit after the resnet (index 1) or after the attention (index 2).
        if let Some(conv) = inner.strip_prefix("conv.")
            && level + 1 < levels
        {
            return Some(format!("up_blocks.{level}.upsamplers.0.conv.{conv}"));
        }
        let attn_key = format!("{UNET}output_blocks.{i}.1.proj_in.weight");
        if part == 1 && shapes.contains_key(&attn_key) {
            return Some(format!("up_blocks.{level}.attentions.{layer}.{inner}"));
        }
        return None;
    }
    None
}

fn vae_key(rest: &str, levels: usize) -> Option<String> {
    let simple = [
        ("encoder.conv_in.", "encoder.conv_in."),
        ("encoder.conv_out.", "encoder.conv_out."),
        ("encoder.norm_out.", "encoder.conv_norm_out."),
        ("decoder.conv_in.", "decoder.conv_in."),
        ("decoder.conv_out.", "decoder.conv_out."),
        ("decoder.norm_out.", "decoder.conv_norm_out."),
        ("quant_conv.", "quant_conv."),
        ("post_quant_conv.", "post_quant_conv."),
    ];
    for (from, to) in simple {
        if let Some(tail) = rest.strip_prefix(from) {
            return Some(format!("{to}{tail}"));
        }
    }
    for coder in ["encoder", "decoder"] {
        if let Some(mid) = rest.strip_prefix(&format!("{coder}.mid.")) {
            if let Some(t) = mid.strip_prefix("block_1.") {
                return Some(format!("{coder}.mid_block.resnets.0.{}", vae_resnet(t)));
            }
            if let Some(t) = mid.strip_prefix("block_2.") {
                return Some(format!("{coder}.mid_block.resnets.1.{}", vae_resnet(t)));
            }
            if let Some(t) = mid.strip_prefix("attn_1.") {
                return Some(format!(
                    "{coder}.mid_block.attentions.0.{}",
                    vae_attention(t)
                ));
            }
            return None;
        }
    }
    if let Some(s) = rest.strip_prefix("encoder.down.") {
        let (level, tail) = split_idx(s)?;
        if let Some(t) = tail.strip_prefix("block.") {
            let (l, t) = split_idx(t)?;
            return Some(format!(
                "encoder.down_blocks.{level}.resnets.{l}.{}",
                vae_resnet(t)
            ));
        }
        if let Some(t) = tail.strip_prefix("downsample.") {
            return Some(format!("encoder.down_blocks.{level}.downsamplers.0.{t}"));
        }
        return None;
    }
    if let Some(s) = rest.strip_prefix("decoder.up.") {
        let (ldm_level, tail) = split_idx(s)?;
        let level = levels.checked_sub(1 + ldm_level)?;
        if let Some(t) = tail.strip_prefix("block.") {
            let (l, t) = split_idx(t)?;
            return Some(format!(
                "decoder.up_blocks.{level}.resnets.{l}.{}",
                vae_resnet(t)
            ));
        }
        if let Some(t) = tail.strip_prefix("upsample.") {
            return Some(format!("decoder.up_blocks.{level}.upsamplers.0.{t}"));
        }
    }
    None
}

/// OpenCLIP names to transformers CLIP names; fused in-projections become three row slices.
fn open_clip_key(
    rest: &str,
    shape: Option<&Vec<usize>>,
    layers_used: usize,
) -> Vec<(String, Option<(usize, usize)>)> {
    let one = |s: String| vec![(s, None)];
    match rest {
        "token_embedding.weight" => return one("embeddings.token_embedding.weight".into()),
        "positional_embedding" => return one("embeddings.position_embedding.weight".into()),
        _ => {}
    }
    if let Some(t) = rest.strip_prefix("ln_final.") {
        return one(format!("final_layer_norm.{t}"));
    }
    let Some(s) = rest.strip_prefix("transformer.resblocks.") else {
        return Vec::new();
    };
    let Some((i, tail)) = split_idx(s) else {
        return Vec::new();
    };
    if i >= layers_used {
        return Vec::new();
    }
    let base = format!("encoder.layers.{i}");
    let renames = [
        ("ln_1.", "layer_norm1."),
        ("ln_2.", "layer_norm2."),
        ("attn.out_proj.", "self_attn.out_proj."),
        ("mlp.c_fc.", "mlp.fc1."),
        ("mlp.c_proj.", "mlp.fc2."),
    ];
    for (from, to) in renames {
        if let Some(t) = tail.strip_prefix(from) {
            return one(format!("{base}.{to}{t}"));
        }
    }
    let kind = match tail {
        "attn.in_proj_weight" => "weight",
        "attn.in_proj_bias" => "bias",
        _ => return Vec::new(),
    };
    let Some(d) = shape.map(|s| s[0] / 3) else {
        return Vec::new();
    };
    ["q_proj", "k_proj", "v_proj"]
        .iter()
        .enumerate()
        .map(|(j, p)| {
            (
                format!("{base}.self_attn.{p}.{kind}"),
                Some((j * d, (j + 1) * d)),
            )
        })
        .collect()
}
