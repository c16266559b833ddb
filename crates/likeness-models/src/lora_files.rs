//! LoRA files as other tools write and read them: kohya sd-scripts' layout (what AUTOMATIC1111
//! and ComfyUI load), diffusers' PEFT layout with its `lora_adapter_metadata`, and diffusers'
//! older key styles; converted from and to the format-neutral [`LoraSet`].
//!
//! Kohya names a layer by its diffusers path with `_` for `.` (`lora_unet_down_blocks_0_…_to_q`),
//! which cannot be read back unambiguously (`to_out_0`, `ff_net_0_proj`); such layers keep their
//! kohya stem as path until [`LoraSet::resolve_kohya`] matches them against the model's own
//! `Linear` paths.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::prelude::*;
use sha2::{Digest, Sha256};

use crate::clip_text::ClipTextModel;
use crate::error::{ModelError, Result};
use crate::lora::{Linears, LoraLayer, LoraSet};
use crate::png_meta::write_atomic;
use crate::schedulers::PredictionType;
use crate::sd::StableDiffusion;
use crate::single_file::Family;
use crate::unet::UNet2DConditionModel;
use crate::weights::{Init, WeightStore};

const UNET: &str = "unet";
const TEXT_ENCODER: &str = "text_encoder";
/// The safetensors metadata key under which diffusers stores each network's `LoraConfig`.
const ADAPTER_METADATA: &str = "lora_adapter_metadata";

/// The on-disk layouts Likeness writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoraFormat {
    /// kohya sd-scripts: `lora_unet_…` / `lora_te_…` keys with `ss_*` metadata (AUTOMATIC1111, ComfyUI).
    Kohya,
    /// diffusers/PEFT: `unet.<path>.lora_A.weight` with the `LoraConfig` in `lora_adapter_metadata`.
    Diffusers,
}

impl std::fmt::Display for LoraFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LoraFormat::Kohya => "kohya",
            LoraFormat::Diffusers => "diffusers",
        })
    }
}

impl std::str::FromStr for LoraFormat {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "kohya" | "a1111" | "comfyui" => Ok(LoraFormat::Kohya),
            "diffusers" | "peft" => Ok(LoraFormat::Diffusers),
            other => Err(format!(
                "unknown LoRA format `{other}` (kohya or diffusers)"
            )),
        }
    }
}

/// A tensor of a LoRA file that was not turned into a layer, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedKey {
    pub key: String,
    pub reason: String,
}

impl std::fmt::Display for SkippedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.key, self.reason)
    }
}

/// What [`open_lora_file`] found in a file.
#[derive(Debug, Clone)]
pub struct LoraFile {
    pub set: LoraSet,
    /// The layout the keys were in (the older diffusers styles count as diffusers).
    pub format: LoraFormat,
    /// Tensors that are not part of a supported LoRA layer.
    pub skipped: Vec<SkippedKey>,
}

/// Reads a LoRA file, logging the keys it could not use.
pub fn read_lora_file(path: &Path) -> Result<LoraSet> {
    let file = open_lora_file(path)?;
    if !file.skipped.is_empty() {
        tracing::warn!(
            "{}: {} LoRA tensors not used: {}",
            path.display(),
            file.skipped.len(),
            file.skipped
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(file.set)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Down,
    Up,
    Alpha,
}

/// One key of a file, understood: which network, which module, which part.
struct KeyRole {
    network: &'static str,
    module: String,
    part: Part,
    kohya: bool,
}

fn skip(key: &str, reason: impl Into<String>) -> SkippedKey {
    SkippedKey {
        key: key.to_string(),
        reason: reason.into(),
    }
}

fn kohya_role(key: &str) -> std::result::Result<Option<KeyRole>, SkippedKey> {
    let (network, rest) = if let Some(r) = key.strip_prefix("lora_unet_") {
        (UNET, r)
    } else if let Some(r) = key
        .strip_prefix("lora_te_")
        .or_else(|| key.strip_prefix("lora_te1_"))
    {
        (TEXT_ENCODER, r)
    } else if key.starts_with("lora_te2_") {
        return Err(skip(key, "second text encoder (SDXL) is not supported"));
    } else {
        return Ok(None);
    };
    let Some((stem, tail)) = rest.split_once('.') else {
        return Err(skip(key, "not a LoRA tensor"));
    };
    let part = match tail {
        "lora_down.weight" => Part::Down,
        "lora_up.weight" => Part::Up,
        "alpha" => Part::Alpha,
        "dora_scale" => return Err(skip(key, "DoRA is not supported")),
        t if t.starts_with("hada_") || t.starts_with("lokr_") => {
            return Err(skip(key, "LyCORIS LoHa/LoKr is not supported"));
        }
        "lora_mid.weight" => return Err(skip(key, "LoCon with a mid weight is not supported")),
        _ => return Err(skip(key, "not a LoRA tensor")),
    };
    Ok(Some(KeyRole {
        network,
        module: stem.to_string(),
        part,
        kohya: true,
    }))
}

/// diffusers' attention-processor names (`to_q_lora`) → the layer they adapt.
fn processor_leaf(network: &str, leaf: &str) -> Option<&'static str> {
    Some(match (network == UNET, leaf) {
        (true, "to_q_lora") => "to_q",
        (true, "to_k_lora") => "to_k",
        (true, "to_v_lora") => "to_v",
        (true, "to_out_lora") => "to_out.0",
        (false, "to_q_lora") => "q_proj",
        (false, "to_k_lora") => "k_proj",
        (false, "to_v_lora") => "v_proj",
        (false, "to_out_lora") => "out_proj",
        _ => return None,
    })
}

fn diffusers_role(key: &str) -> std::result::Result<KeyRole, SkippedKey> {
    let (network, rest) = if let Some(r) = key.strip_prefix("unet.") {
        (UNET, r)
    } else if let Some(r) = key.strip_prefix("text_encoder.") {
        (TEXT_ENCODER, r)
    } else if key.starts_with("text_encoder_2.") {
        return Err(skip(key, "second text encoder (SDXL) is not supported"));
    } else {
        // The oldest diffusers files (attention processors) hold UNet keys without a prefix.
        (UNET, key)
    };
    if key.contains("lora_magnitude_vector") {
        return Err(skip(key, "DoRA is not supported"));
    }
    if key.ends_with(".lora_B.bias") {
        return Err(skip(key, "LoRA bias is not supported"));
    }
    const SUFFIXES: [(&str, Part); 9] = [
        (".lora_A.weight", Part::Down),
        (".lora_B.weight", Part::Up),
        (".lora.down.weight", Part::Down),
        (".lora.up.weight", Part::Up),
        (".lora_linear_layer.down.weight", Part::Down),
        (".lora_linear_layer.up.weight", Part::Up),
        (".down.weight", Part::Down),
        (".up.weight", Part::Up),
        (".alpha", Part::Alpha),
    ];
    for (suffix, part) in SUFFIXES {
        let Some(module) = rest.strip_suffix(suffix) else {
            continue;
        };
        let module = module.replace(".processor.", ".");
        let module = match module.rsplit_once('.') {
            Some((parent, leaf)) if suffix.starts_with(".down") || suffix.starts_with(".up") => {
                // `.down.weight` alone only occurs in processor style: `attn1.to_q_lora.down.weight`.
                match processor_leaf(network, leaf) {
                    Some(l) => format!("{parent}.{l}"),
                    None => return Err(skip(key, "not a LoRA tensor")),
                }
            }
            _ => module,
        };
        return Ok(KeyRole {
            network,
            module,
            part,
            kohya: false,
        });
    }
    Err(skip(key, "not a LoRA tensor"))
}

/// Per-network LoRA settings from diffusers' `lora_adapter_metadata` (a PEFT `LoraConfig`).
#[derive(Debug, Default)]
struct AdapterConfig {
    lora_alpha: Option<f64>,
    alpha_pattern: Vec<(regex::Regex, f64)>,
    use_rslora: bool,
}

impl AdapterConfig {
    /// PEFT's scale for a layer is alpha/rank (alpha/√rank with rsLoRA); as a kohya-style alpha.
    fn alpha(&self, module: &str, rank: usize) -> Option<f32> {
        let alpha = self
            .alpha_pattern
            .iter()
            .find(|(re, _)| re.is_match(module))
            .map(|(_, a)| *a)
            .or(self.lora_alpha)?;
        let alpha = if self.use_rslora {
            alpha * (rank as f64).sqrt()
        } else {
            alpha
        };
        Some(alpha as f32)
    }
}

fn adapter_configs(
    path: &Path,
    metadata: &HashMap<String, String>,
) -> HashMap<String, AdapterConfig> {
    let mut out: HashMap<String, AdapterConfig> = HashMap::new();
    let Some(raw) = metadata.get(ADAPTER_METADATA) else {
        return out;
    };
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(raw) else {
        tracing::warn!(
            "{}: `{ADAPTER_METADATA}` is not a JSON object; using alpha = rank",
            path.display()
        );
        return out;
    };
    for (k, v) in map {
        let Some((network, field)) = k.split_once('.') else {
            continue;
        };
        let cfg = out.entry(network.to_string()).or_default();
        match field {
            "lora_alpha" => cfg.lora_alpha = v.as_f64(),
            "use_rslora" => cfg.use_rslora = v.as_bool().unwrap_or(false),
            "alpha_pattern" => {
                for (pat, a) in v.as_object().into_iter().flatten() {
                    // PEFT matches pattern keys with `re.match(rf"(.*\.)?({key})$", name)`.
                    match (regex::Regex::new(&format!(r"^(.*\.)?({pat})$")), a.as_f64()) {
                        (Ok(re), Some(a)) => cfg.alpha_pattern.push((re, a)),
                        _ => tracing::warn!(
                            "{}: alpha_pattern `{pat}` not understood; ignored",
                            path.display()
                        ),
                    }
                }
            }
            _ => {}
        }
    }
    out
}

#[derive(Default)]
struct Parts {
    down: Option<(String, Vec<usize>)>,
    up: Option<(String, Vec<usize>)>,
    alpha: Option<String>,
}

/// Reads a LoRA file in any supported layout. Tensors that are not part of a usable layer are
/// returned in [`LoraFile::skipped`], not treated as errors; a file with no usable layer is one.
pub fn open_lora_file(path: &Path) -> Result<LoraFile> {
    let is_pickle = path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
        matches!(
            e.to_ascii_lowercase().as_str(),
            "pt" | "ckpt" | "bin" | "pth"
        )
    });
    if is_pickle {
        return Err(ModelError::io(
            path,
            "PyTorch pickle LoRA files are not read (unsafe to load); convert to .safetensors",
        ));
    }
    if !path.is_file() {
        return Err(ModelError::io(path, "no such file"));
    }
    let store = WeightStore::open(&[path.to_path_buf()])?;
    let metadata = store.file_metadata(0).clone();
    let configs = adapter_configs(path, &metadata);
    let mut skipped = Vec::new();
    let mut modules: BTreeMap<(usize, String), Parts> = BTreeMap::new();
    let mut kohya_keys = 0usize;
    for key in store.file_keys(0) {
        let role = match kohya_role(&key) {
            Ok(Some(r)) => Ok(r),
            Ok(None) => diffusers_role(&key),
            Err(s) => Err(s),
        };
        let role = match role {
            Ok(r) => r,
            Err(s) => {
                skipped.push(s);
                continue;
            }
        };
        kohya_keys += role.kohya as usize;
        let order = if role.network == UNET { 0 } else { 1 };
        let parts = modules.entry((order, role.module)).or_default();
        let shape = store.file_shape(0, &key).unwrap_or_default();
        let slot = match role.part {
            Part::Down => &mut parts.down,
            Part::Up => &mut parts.up,
            Part::Alpha => {
                parts.alpha = Some(key);
                continue;
            }
        };
        if let Some((old, _)) = slot.replace((key.clone(), shape)) {
            skipped.push(skip(&old, format!("same layer as {key}")));
        }
    }
    let mut layers = Vec::new();
    for ((order, module), parts) in modules {
        let network = if order == 0 { UNET } else { TEXT_ENCODER };
        let keys = || {
            [&parts.down, &parts.up]
                .into_iter()
                .flatten()
                .map(|(k, _)| k.clone())
                .chain(parts.alpha.clone())
                .collect::<Vec<_>>()
        };
        let (Some((down_key, down_shape)), Some((up_key, up_shape))) = (&parts.down, &parts.up)
        else {
            let missing = if parts.down.is_none() { "down" } else { "up" };
            for k in keys() {
                skipped.push(skip(&k, format!("layer has no {missing} weight")));
            }
            continue;
        };
        let conv_kernel = |s: &[usize]| s.len() == 4 && (s[2] != 1 || s[3] != 1);
        if conv_kernel(down_shape) || conv_kernel(up_shape) {
            for k in keys() {
                skipped.push(skip(&k, "convolution LoRA (LoCon) is not supported"));
            }
            continue;
        }
        let flat = |s: &[usize]| -> Option<(usize, usize)> {
            match s {
                [a, b] | [a, b, 1, 1] => Some((*a, *b)),
                _ => None,
            }
        };
        let (Some((rank, d_in)), Some((d_out, up_rank))) = (flat(down_shape), flat(up_shape))
        else {
            for k in keys() {
                skipped.push(skip(
                    &k,
                    format!("unexpected shapes {down_shape:?} / {up_shape:?}"),
                ));
            }
            continue;
        };
        if up_rank != rank || rank == 0 {
            for k in keys() {
                skipped.push(skip(
                    &k,
                    format!("down {down_shape:?} and up {up_shape:?} do not fit"),
                ));
            }
            continue;
        }
        let down = store.load_f32(down_key, down_shape, Init::Zeros)?;
        let up = store.load_f32(up_key, up_shape, Init::Zeros)?;
        let file_alpha = match &parts.alpha {
            Some(k) => {
                let shape = store.file_shape(0, k).unwrap_or_default();
                let v = store.load_f32(k, &shape, Init::Zeros)?;
                match v.as_slice() {
                    [a] => Some(*a),
                    _ => {
                        skipped.push(skip(k, "alpha is not a single value"));
                        None
                    }
                }
            }
            None => None,
        };
        let alpha = file_alpha
            .or_else(|| configs.get(network).and_then(|c| c.alpha(&module, rank)))
            // kohya treats a missing or zero alpha as alpha = rank (scale 1), as does diffusers
            // for a file without alphas.
            .filter(|a| *a != 0.0)
            .unwrap_or(rank as f32);
        layers.push(LoraLayer {
            network: network.to_string(),
            path: module,
            rank,
            d_in,
            d_out,
            down,
            up,
            alpha,
        });
    }
    if layers.is_empty() {
        let detail = skipped
            .first()
            .map(|s| format!(", e.g. {s}"))
            .unwrap_or_default();
        return Err(ModelError::io(
            path,
            format!(
                "no LoRA layers found ({} tensors{detail})",
                store.file_keys(0).len()
            ),
        ));
    }
    let format = if kohya_keys > 0 {
        LoraFormat::Kohya
    } else {
        LoraFormat::Diffusers
    };
    tracing::debug!(
        "{}: {} LoRA layers ({format}), {} tensors skipped",
        path.display(),
        layers.len(),
        skipped.len()
    );
    Ok(LoraFile {
        set: LoraSet {
            layers,
            metadata: metadata.into_iter().collect(),
        },
        format,
        skipped,
    })
}

/// The UNet path in the original LDM/CompVis layout (`input_blocks.1.1.proj_in`), which some
/// kohya-style files use instead of diffusers' names. `lpb` is the UNet's layers per block: each
/// down block is `lpb` LDM blocks plus a downsampler, each up block `lpb + 1` blocks.
fn ldm_unet_path(path: &str, lpb: usize) -> Option<String> {
    let p: Vec<&str> = path.split('.').collect();
    let num = |s: &str| s.parse::<usize>().ok();
    // A resnet's time projection is `emb_layers.1` of the block's first module, an attention's
    // layers keep their names under the block's second module.
    let inner = |block: String, kind: &str, rest: &[&str]| match (kind, rest) {
        ("attentions", r) if !r.is_empty() => Some(format!("{block}.1.{}", r.join("."))),
        ("resnets", ["time_emb_proj"]) => Some(format!("{block}.0.emb_layers.1")),
        _ => None,
    };
    match p.as_slice() {
        ["time_embedding", "linear_1"] => Some("time_embed.0".into()),
        ["time_embedding", "linear_2"] => Some("time_embed.2".into()),
        ["down_blocks", i, kind, j, rest @ ..] => inner(
            format!("input_blocks.{}", 1 + num(i)? * (lpb + 1) + num(j)?),
            kind,
            rest,
        ),
        ["up_blocks", i, kind, j, rest @ ..] => inner(
            format!("output_blocks.{}", num(i)? * (lpb + 1) + num(j)?),
            kind,
            rest,
        ),
        ["mid_block", "attentions", "0", rest @ ..] if !rest.is_empty() => {
            Some(format!("middle_block.1.{}", rest.join(".")))
        }
        ["mid_block", "resnets", j, "time_emb_proj"] => {
            Some(format!("middle_block.{}.emb_layers.1", 2 * num(j)?))
        }
        _ => None,
    }
}

impl LoraSet {
    /// Gives layers read from kohya names (no `.` in their path) the model path they stand for,
    /// by matching against the model's `Linear` paths (diffusers names, or the LDM names some
    /// files use). Returns the kohya names that matched nothing; those layers are left as they are.
    pub fn resolve_kohya(
        &mut self,
        unet_paths: &[String],
        text_encoder_paths: &[String],
    ) -> Vec<String> {
        let lpb = unet_paths
            .iter()
            .filter_map(|p| {
                p.strip_prefix("down_blocks.0.resnets.")
                    .and_then(|r| r.split('.').next())
                    .and_then(|j| j.parse::<usize>().ok())
            })
            .max()
            .map_or(2, |j| j + 1);
        let mut by_name: HashMap<(&str, String), &String> = HashMap::new();
        for p in unet_paths {
            by_name.insert((UNET, p.replace('.', "_")), p);
            if let Some(ldm) = ldm_unet_path(p, lpb) {
                by_name.entry((UNET, ldm.replace('.', "_"))).or_insert(p);
            }
        }
        for p in text_encoder_paths {
            by_name.insert((TEXT_ENCODER, p.replace('.', "_")), p);
        }
        let mut unresolved = Vec::new();
        for layer in &mut self.layers {
            if layer.path.contains('.') {
                continue;
            }
            let network = if layer.network == UNET {
                UNET
            } else {
                TEXT_ENCODER
            };
            match by_name.get(&(network, layer.path.clone())) {
                Some(p) => layer.path = (*p).clone(),
                None => unresolved.push(kohya_name(&layer.network, &layer.path)),
            }
        }
        unresolved
    }
}

/// How a LoRA set went into a model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergeReport {
    /// Layers merged into a weight.
    pub merged: usize,
    /// Layers that found no place (no such layer, or another size), by name.
    pub unplaced: Vec<String>,
}

/// Merges `set` at strength `scale` into a UNet and text encoder, resolving kohya names first.
pub fn merge_lora<B: Backend>(
    set: &LoraSet,
    unet: &mut UNet2DConditionModel<B>,
    text_encoder: &mut ClipTextModel<B>,
    scale: f32,
) -> MergeReport {
    let mut set = set.clone();
    set.resolve_kohya(&unet.linears(), &text_encoder.linears());
    let mut unplaced = Vec::new();
    for (network, left) in [
        (UNET, set.merge_into(UNET, unet, scale)),
        (
            TEXT_ENCODER,
            set.merge_into(TEXT_ENCODER, text_encoder, scale),
        ),
    ] {
        for name in left {
            // Show unresolved kohya layers under the name their file gives them.
            let path = name.strip_prefix(&format!("{network}.")).unwrap_or(&name);
            if path.contains('.') {
                unplaced.push(name);
            } else {
                unplaced.push(kohya_name(network, path));
            }
        }
    }
    for l in &set.layers {
        if l.network != UNET && l.network != TEXT_ENCODER {
            unplaced.push(format!("{}.{}", l.network, l.path));
        }
    }
    unplaced.sort();
    unplaced.dedup();
    MergeReport {
        merged: set.layers.len().saturating_sub(unplaced.len()),
        unplaced,
    }
}

/// What a LoRA file records about its training (kohya's `ss_*` and `modelspec.*` metadata).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ExportInfo {
    /// SD 1.x when unset.
    pub base_model_family: Option<Family>,
    /// The base model predicts v (SD 2.x 768).
    pub v_prediction: bool,
    /// Whether the UNet's `proj_in`/`proj_out` are 1×1 convs (written 4-D as kohya does); unset:
    /// true for SD 1.x, false for SD 2.x.
    pub conv_projection: Option<bool>,
    /// Training picture size, width × height.
    pub resolution: Option<[usize; 2]>,
    pub steps: Option<u64>,
    pub epochs: Option<u64>,
    /// The file's title (kohya's `--output_name`).
    pub output_name: Option<String>,
    /// File or folder name of the base model.
    pub base_model_name: Option<String>,
    pub learning_rate: Option<f64>,
    pub unet_lr: Option<f64>,
    pub text_encoder_lr: Option<f64>,
    pub num_train_images: Option<u64>,
    pub num_reg_images: Option<u64>,
    pub batch_size: Option<u64>,
    pub seed: Option<u64>,
    /// Text encoder layer from the end, 1-based as kohya counts (1: last).
    pub clip_skip: Option<usize>,
    pub optimizer: Option<String>,
    pub lr_scheduler: Option<String>,
    pub prior_loss_weight: Option<f64>,
    pub mixed_precision: Option<String>,
    /// Unix time, seconds.
    pub training_started_at: Option<f64>,
    pub training_finished_at: Option<f64>,
    pub comment: Option<String>,
    /// The words that call the subject (e.g. `sks dog`).
    pub trigger_phrase: Option<String>,
}

impl ExportInfo {
    /// Family, prediction type, projection layout, native size and name of a loaded model.
    pub fn for_model<B: Backend>(model: &StableDiffusion<B>) -> Self {
        let size = model.native_size();
        Self {
            base_model_family: Some(model.info.family),
            v_prediction: model.info.prediction_type == PredictionType::VPrediction,
            conv_projection: Some(!model.unet.config.use_linear_projection),
            resolution: Some([size, size]),
            base_model_name: Some(model.info.name.clone()),
            ..Default::default()
        }
    }

    fn is_sd2(&self) -> bool {
        self.base_model_family == Some(Family::Sd2)
    }

    fn conv_projection(&self) -> bool {
        self.conv_projection.unwrap_or(!self.is_sd2())
    }

    /// kohya's `ss_*` keys (all strings, as Python's `str()` writes them) and `modelspec.*` keys.
    pub fn kohya_metadata(&self, set: &LoraSet) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            m.insert(k.to_string(), v);
        };
        let dim = most_common(set.layers.iter().map(|l| l.rank as f64)).unwrap_or(0.0);
        let alpha = most_common(
            set.layers
                .iter()
                .filter(|l| l.rank as f64 == dim)
                .map(|l| l.alpha as f64),
        )
        .unwrap_or(dim);
        let v2 = self.is_sd2();
        put("ss_network_module", "networks.lora".into());
        put("ss_network_dim", (dim as usize).to_string());
        put("ss_network_alpha", py_float(alpha));
        put("ss_v2", if v2 { "True" } else { "False" }.into());
        put(
            "ss_base_model_version",
            format!(
                "sd_v{}{}",
                if v2 { 2 } else { 1 },
                if self.v_prediction { "_v" } else { "" }
            ),
        );
        if let Some([w, h]) = self.resolution {
            put("ss_resolution", format!("({w}, {h})"));
        }
        let opt_f = |v: Option<f64>| v.map(py_float);
        let fields: [(&str, Option<String>); 19] = [
            ("ss_output_name", self.output_name.clone()),
            ("ss_sd_model_name", self.base_model_name.clone()),
            ("ss_steps", self.steps.map(|v| v.to_string())),
            ("ss_max_train_steps", self.steps.map(|v| v.to_string())),
            ("ss_epoch", self.epochs.map(|v| v.to_string())),
            ("ss_num_epochs", self.epochs.map(|v| v.to_string())),
            ("ss_learning_rate", opt_f(self.learning_rate)),
            ("ss_unet_lr", opt_f(self.unet_lr)),
            ("ss_text_encoder_lr", opt_f(self.text_encoder_lr)),
            (
                "ss_num_train_images",
                self.num_train_images.map(|v| v.to_string()),
            ),
            (
                "ss_num_reg_images",
                self.num_reg_images.map(|v| v.to_string()),
            ),
            (
                "ss_total_batch_size",
                self.batch_size.map(|v| v.to_string()),
            ),
            ("ss_seed", self.seed.map(|v| v.to_string())),
            ("ss_clip_skip", self.clip_skip.map(|v| v.to_string())),
            ("ss_optimizer", self.optimizer.clone()),
            ("ss_lr_scheduler", self.lr_scheduler.clone()),
            ("ss_prior_loss_weight", opt_f(self.prior_loss_weight)),
            ("ss_mixed_precision", self.mixed_precision.clone()),
            ("ss_training_comment", self.comment.clone()),
        ];
        for (k, v) in fields {
            if let Some(v) = v {
                put(k, v);
            }
        }
        if let Some(t) = self.training_started_at {
            put("ss_training_started_at", py_float(t));
        }
        if let Some(t) = self.training_finished_at {
            put("ss_training_finished_at", py_float(t));
        }
        // The SAI model spec kohya adds beside its own keys.
        let arch = match (v2, self.v_prediction) {
            (false, _) => "stable-diffusion-v1",
            (true, false) => "stable-diffusion-v2-512",
            (true, true) => "stable-diffusion-v2-768-v",
        };
        put("modelspec.sai_model_spec", "1.0.1".into());
        put("modelspec.architecture", format!("{arch}/lora"));
        put("modelspec.implementation", "diffusers".into());
        put(
            "modelspec.prediction_type",
            if self.v_prediction { "v" } else { "epsilon" }.into(),
        );
        if let Some(t) = &self.output_name {
            put("modelspec.title", t.clone());
        }
        if let Some([w, h]) = self.resolution {
            put("modelspec.resolution", format!("{w}x{h}"));
        }
        if let Some(t) = self.training_finished_at.or(self.training_started_at) {
            put("modelspec.date", iso_date(t));
        }
        if let Some(t) = &self.trigger_phrase {
            put("modelspec.trigger_phrase", t.clone());
        }
        m
    }
}

fn most_common(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut counts: Vec<(f64, usize)> = Vec::new();
    for v in values {
        match counts.iter_mut().find(|(x, _)| *x == v) {
            Some((_, n)) => *n += 1,
            None => counts.push((v, 1)),
        }
    }
    // First seen wins ties, like Python's Counter.most_common.
    let best = counts.iter().map(|(_, n)| *n).max()?;
    counts.into_iter().find(|(_, n)| *n == best).map(|(v, _)| v)
}

/// A float as Python's `str()` writes it (`8.0`, `0.0001`, `1e-05`), as kohya's metadata has it.
pub fn py_float(v: f64) -> String {
    if v.is_nan() {
        return "nan".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf" } else { "-inf" }.into();
    }
    // Rust's Debug is the shortest round-trip form and switches to exponents at the same
    // thresholds as Python's repr (< 1e-4, >= 1e16); only the exponent is written differently.
    let s = format!("{v:?}");
    match s.split_once('e') {
        Some((mant, exp)) => {
            let (sign, digits) = match exp.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', exp),
            };
            format!("{mant}e{sign}{digits:0>2}")
        }
        None => s,
    }
}

/// `YYYY-MM-DDTHH:MM:SS` (UTC) of a Unix time.
fn iso_date(t: f64) -> String {
    let secs = t.max(0.0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The kohya name of a layer: `lora_unet_…` / `lora_te_…` with `_` for `.`.
pub fn kohya_name(network: &str, path: &str) -> String {
    let prefix = if network == UNET {
        "lora_unet"
    } else {
        "lora_te"
    };
    format!("{prefix}_{}", path.replace('.', "_"))
}

struct OutTensor {
    name: String,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn serialize(
    path: &Path,
    tensors: &[OutTensor],
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    let views = tensors
        .iter()
        .map(|t| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, t.shape.clone(), &t.bytes)
                .map(|v| (t.name.clone(), v))
                .map_err(|e| ModelError::io(path, format!("tensor `{}`: {e}", t.name)))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta: HashMap<String, String> = metadata.clone().into_iter().collect();
    safetensors::serialize(views, Some(meta)).map_err(|e| ModelError::io(path, e))
}

/// kohya's `sshs_model_hash` (SHA-256 of the tensor bytes) and `sshs_legacy_hash` (first 8 hex
/// digits of the SHA-256 of 64 KiB at 1 MiB), both of the file as written with only `ss_*` metadata.
fn kohya_hashes(
    path: &Path,
    tensors: &[OutTensor],
    metadata: &BTreeMap<String, String>,
) -> Result<(String, String)> {
    let ss: BTreeMap<String, String> = metadata
        .iter()
        .filter(|(k, _)| k.starts_with("ss_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let bytes = serialize(path, tensors, &ss)?;
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap_or([0; 8])) as usize;
    let data = bytes.get(8 + n..).unwrap_or_default();
    let model_hash = hex(&Sha256::digest(data));
    let legacy = bytes
        .get(0x100000..bytes.len().min(0x110000))
        .unwrap_or_default();
    let legacy_hash = hex(&Sha256::digest(legacy))[..8].to_string();
    Ok((model_hash, legacy_hash))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn check_layer(path: &Path, l: &LoraLayer) -> Result<()> {
    if l.network != UNET && l.network != TEXT_ENCODER {
        return Err(ModelError::io(
            path,
            format!(
                "LoRA layer {}.{}: network must be unet or text_encoder",
                l.network, l.path
            ),
        ));
    }
    if l.rank == 0 || l.down.len() != l.rank * l.d_in || l.up.len() != l.d_out * l.rank {
        return Err(ModelError::io(
            path,
            format!(
                "LoRA layer {}.{}: rank {} × in {} / out {} does not fit {} down and {} up values",
                l.network,
                l.path,
                l.rank,
                l.d_in,
                l.d_out,
                l.down.len(),
                l.up.len()
            ),
        ));
    }
    Ok(())
}

/// Writes `set` to `path` (atomically) in `format`, with `info` as metadata.
pub fn write_lora_file(
    path: &Path,
    set: &LoraSet,
    format: LoraFormat,
    info: &ExportInfo,
) -> Result<()> {
    if set.layers.is_empty() {
        return Err(ModelError::io(path, "no LoRA layers to write"));
    }
    let conv = info.conv_projection();
    let mut tensors = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    for l in &set.layers {
        check_layer(path, l)?;
        // SD 1.x's transformer in/out projections are 1×1 convs: kohya and PEFT store them 4-D.
        let is_conv = conv
            && l.network == UNET
            && (l.path.ends_with("proj_in") || l.path.ends_with("proj_out"));
        let tail: &[usize] = if is_conv { &[1, 1] } else { &[] };
        let stem = match format {
            LoraFormat::Kohya => kohya_name(&l.network, &l.path),
            LoraFormat::Diffusers => format!("{}.{}", l.network, l.path),
        };
        if !names.insert(stem.clone()) {
            return Err(ModelError::io(
                path,
                format!("LoRA layer `{stem}` appears twice"),
            ));
        }
        let (down, up) = match format {
            LoraFormat::Kohya => (".lora_down.weight", ".lora_up.weight"),
            LoraFormat::Diffusers => (".lora_A.weight", ".lora_B.weight"),
        };
        tensors.push(OutTensor {
            name: format!("{stem}{down}"),
            shape: [&[l.rank, l.d_in][..], tail].concat(),
            bytes: f32_bytes(&l.down),
        });
        tensors.push(OutTensor {
            name: format!("{stem}{up}"),
            shape: [&[l.d_out, l.rank][..], tail].concat(),
            bytes: f32_bytes(&l.up),
        });
        if format == LoraFormat::Kohya {
            // sd-scripts keeps alpha as a 0-d tensor.
            tensors.push(OutTensor {
                name: format!("{stem}.alpha"),
                shape: Vec::new(),
                bytes: f32_bytes(&[l.alpha]),
            });
        }
    }
    let mut metadata = set.metadata.clone();
    metadata.remove("sshs_model_hash");
    metadata.remove("sshs_legacy_hash");
    match format {
        LoraFormat::Kohya => {
            metadata.remove(ADAPTER_METADATA);
            metadata.extend(info.kohya_metadata(set));
            let (model_hash, legacy_hash) = kohya_hashes(path, &tensors, &metadata)?;
            metadata.insert("sshs_model_hash".into(), model_hash);
            metadata.insert("sshs_legacy_hash".into(), legacy_hash);
        }
        LoraFormat::Diffusers => {
            metadata.insert("format".into(), "pt".into());
            metadata.insert(ADAPTER_METADATA.into(), diffusers_adapter_metadata(set));
        }
    }
    let bytes = serialize(path, &tensors, &metadata)?;
    write_atomic(path, &bytes)
}

/// diffusers' `lora_adapter_metadata`: per network a PEFT `LoraConfig` (`<network>.r`, …) whose
/// rank and alpha are the most common ones, with `^path` patterns for the other layers.
fn diffusers_adapter_metadata(set: &LoraSet) -> String {
    let mut md = serde_json::Map::new();
    for network in [UNET, TEXT_ENCODER] {
        let layers: Vec<&LoraLayer> = set.layers.iter().filter(|l| l.network == network).collect();
        if layers.is_empty() {
            continue;
        }
        let r = most_common(layers.iter().map(|l| l.rank as f64)).unwrap_or(1.0) as usize;
        let alpha = most_common(layers.iter().map(|l| l.alpha as f64)).unwrap_or(r as f64);
        let mut rank_pattern = serde_json::Map::new();
        let mut alpha_pattern = serde_json::Map::new();
        for l in &layers {
            if l.rank != r {
                rank_pattern.insert(format!("^{}", l.path), l.rank.into());
            }
            if l.alpha as f64 != alpha {
                alpha_pattern.insert(format!("^{}", l.path), (l.alpha as f64).into());
            }
        }
        let targets: Vec<serde_json::Value> =
            layers.iter().map(|l| l.path.clone().into()).collect();
        let mut put = |k: &str, v: serde_json::Value| {
            md.insert(format!("{network}.{k}"), v);
        };
        put("r", r.into());
        put("lora_alpha", alpha.into());
        put("target_modules", targets.into());
        put("rank_pattern", rank_pattern.into());
        put("alpha_pattern", alpha_pattern.into());
        put("use_rslora", false.into());
        put("use_dora", false.into());
        put("lora_bias", false.into());
    }
    serde_json::to_string_pretty(&serde_json::Value::Object(md)).unwrap_or_default()
}
