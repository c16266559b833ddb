//! Checkpoint folders `checkpoints/step-NNNNNN/`, written whole or not at all: files go to a
//! temporary folder, `state.json` (the completion marker) last, then one rename publishes it.
//! A crash leaves either the previous checkpoints only, or a `.tmp-…` folder that
//! [`remove_partial`] clears and that is never read.
//!
//! Tensors are stored as f32 safetensors with our own small writer ([`TensorFile`]); LoRA
//! adapters use the keys `<network>.<path>.lora_down.weight`, `.lora_up.weight` and `.alpha`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use likeness_models::lora::{LoraLayer, LoraSet};
use likeness_models::png_meta::write_atomic;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::run_dir::{RunDir, step_name};

/// The file whose presence marks a checkpoint as complete.
pub const STATE_FILE: &str = "state.json";
/// LoRA adapters of a checkpoint.
pub const ADAPTERS_FILE: &str = "adapters.safetensors";
/// Optimizer moments of a checkpoint.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// Named f32 tensors with string metadata: what a safetensors file holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TensorFile {
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    pub metadata: BTreeMap<String, String>,
}

impl TensorFile {
    pub fn insert(&mut self, name: impl Into<String>, shape: Vec<usize>, values: Vec<f32>) {
        self.tensors.insert(name.into(), (shape, values));
    }

    pub fn get(&self, name: &str) -> Option<(&[usize], &[f32])> {
        self.tensors
            .get(name)
            .map(|(s, v)| (s.as_slice(), v.as_slice()))
    }

    /// Serialises to safetensors bytes (little-endian f32).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.to_bytes_as(safetensors::Dtype::F32)
    }

    /// Serialises to safetensors bytes with every tensor stored as `dtype` (F32, F16 or BF16,
    /// rounded to nearest).
    pub fn to_bytes_as(&self, dtype: safetensors::Dtype) -> Result<Vec<u8>> {
        let encode = |v: &[f32]| -> Result<Vec<u8>> {
            Ok(match dtype {
                safetensors::Dtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                safetensors::Dtype::F16 => v
                    .iter()
                    .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                    .collect(),
                safetensors::Dtype::BF16 => v
                    .iter()
                    .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                    .collect(),
                other => {
                    return Err(TrainError::Invalid(format!(
                        "cannot store tensors as {other:?}"
                    )));
                }
            })
        };
        let mut bytes: Vec<(&String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(self.tensors.len());
        for (k, (s, v)) in &self.tensors {
            bytes.push((k, s.clone(), encode(v)?));
        }
        let mut views = Vec::with_capacity(bytes.len());
        for (k, s, b) in &bytes {
            let view = safetensors::tensor::TensorView::new(dtype, s.clone(), b)
                .map_err(|e| TrainError::Invalid(format!("tensor {k}: {e}")))?;
            views.push((k.as_str(), view));
        }
        let metadata = (!self.metadata.is_empty()).then(|| {
            self.metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        });
        safetensors::serialize(views, metadata)
            .map_err(|e| TrainError::Invalid(format!("serialising tensors: {e}")))
    }

    /// Writes the file atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        write_atomic(path, &self.to_bytes()?)?;
        Ok(())
    }

    /// Reads a safetensors file of f32 (or f16/bf16, widened) tensors.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| TrainError::io(path, format!("not a safetensors file ({e})")))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| TrainError::io(path, format!("not a safetensors file ({e})")))?;
        let mut out = TensorFile::default();
        if let Some(m) = meta.metadata() {
            out.metadata = m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        }
        for (name, view) in st.tensors() {
            let data = view.data();
            let values: Vec<f32> = match view.dtype() {
                safetensors::Dtype::F32 => data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
                safetensors::Dtype::F16 => data
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                safetensors::Dtype::BF16 => data
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                other => {
                    return Err(TrainError::io(
                        path,
                        format!("tensor `{name}` has unsupported dtype {other:?}"),
                    ));
                }
            };
            out.tensors.insert(name, (view.shape().to_vec(), values));
        }
        Ok(out)
    }
}

/// A LoRA set as tensors `<network>.<path>.lora_down.weight` [rank, in],
/// `.lora_up.weight` [out, rank] and `.alpha` (a scalar).
pub fn lora_to_tensors(set: &LoraSet) -> TensorFile {
    let mut file = TensorFile {
        metadata: set.metadata.clone(),
        ..Default::default()
    };
    for l in &set.layers {
        let key = format!("{}.{}", l.network, l.path);
        file.insert(
            format!("{key}.lora_down.weight"),
            vec![l.rank, l.d_in],
            l.down.clone(),
        );
        file.insert(
            format!("{key}.lora_up.weight"),
            vec![l.d_out, l.rank],
            l.up.clone(),
        );
        file.insert(format!("{key}.alpha"), vec![], vec![l.alpha]);
    }
    file
}

/// Reads back what [`lora_to_tensors`] wrote; `path` names the file in errors.
pub fn lora_from_tensors(file: &TensorFile, path: &Path) -> Result<LoraSet> {
    let mut set = LoraSet {
        metadata: file.metadata.clone(),
        ..Default::default()
    };
    for (name, (down_shape, down)) in &file.tensors {
        let Some(key) = name.strip_suffix(".lora_down.weight") else {
            continue;
        };
        let bad = |m: String| TrainError::io(path, format!("LoRA layer `{key}`: {m}"));
        let (network, layer) = key
            .split_once('.')
            .ok_or_else(|| bad("key has no network prefix".into()))?;
        let (up_shape, up) = file
            .get(&format!("{key}.lora_up.weight"))
            .ok_or_else(|| bad("no lora_up.weight".into()))?;
        let &[rank, d_in] = down_shape.as_slice() else {
            return Err(bad(format!("lora_down has shape {down_shape:?}")));
        };
        let &[d_out, up_rank] = up_shape else {
            return Err(bad(format!("lora_up has shape {up_shape:?}")));
        };
        if up_rank != rank {
            return Err(bad(format!("rank {rank} down, {up_rank} up")));
        }
        let alpha = file
            .get(&format!("{key}.alpha"))
            .and_then(|(_, v)| v.first().copied())
            .unwrap_or(rank as f32);
        set.layers.push(LoraLayer {
            network: network.to_string(),
            path: layer.to_string(),
            rank,
            d_in,
            d_out,
            down: down.clone(),
            up: up.to_vec(),
            alpha,
        });
    }
    Ok(set)
}

/// The counter-based RNG state: every random draw of a step derives from `(seed, step)`, so
/// the seed and the step restore it exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    pub seed: u64,
    /// Optimizer steps whose draws were consumed.
    pub steps_drawn: usize,
}

/// `state.json`: what a checkpoint restores besides the weights and the optimizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    pub step: usize,
    /// `lora` or `full`.
    pub trainable: String,
    pub rng: RngState,
    /// The loss and learning rate of the step.
    pub loss: Option<f32>,
    pub lr: f64,
}

/// A checkpoint being written to its temporary folder; dropped uncommitted, it is removed.
pub struct CheckpointWriter {
    tmp: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl CheckpointWriter {
    /// Starts `checkpoints/step-NNNNNN` in a temporary sibling folder.
    pub fn begin(run: &RunDir, step: usize) -> Result<Self> {
        let name = step_name(step);
        let tmp = run
            .checkpoints_dir()
            .join(format!(".tmp-{name}-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
        Ok(Self {
            target: run.checkpoints_dir().join(name),
            tmp,
            committed: false,
        })
    }

    /// The folder to write the checkpoint's files into.
    pub fn dir(&self) -> &Path {
        &self.tmp
    }

    /// Writes the completion marker and publishes the folder; replaces an older checkpoint of
    /// the same step.
    pub fn commit(mut self, state: &CheckpointState) -> Result<PathBuf> {
        let text = serde_json::to_string_pretty(state)
            .map_err(|e| TrainError::io(self.tmp.join(STATE_FILE), e))?;
        write_atomic(&self.tmp.join(STATE_FILE), text.as_bytes())?;
        if self.target.exists() {
            let old = self.tmp.with_extension("old");
            std::fs::rename(&self.target, &old).map_err(|e| TrainError::io(&self.target, e))?;
            std::fs::rename(&self.tmp, &self.target)
                .map_err(|e| TrainError::io(&self.target, e))?;
            let _ = std::fs::remove_dir_all(&old);
        } else {
            std::fs::rename(&self.tmp, &self.target)
                .map_err(|e| TrainError::io(&self.target, e))?;
        }
        // Make the rename itself durable.
        if let Some(parent) = self.target.parent()
            && let Ok(d) = std::fs::File::open(parent)
        {
            let _ = d.sync_all();
        }
        self.committed = true;
        Ok(self.target.clone())
    }
}

impl Drop for CheckpointWriter {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// Complete checkpoints of a run, by step.
pub fn list_checkpoints(run: &RunDir) -> Result<Vec<(usize, PathBuf)>> {
    let dir = run.checkpoints_dir();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(TrainError::io(&dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| TrainError::io(&dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(step) = name
            .strip_prefix("step-")
            .and_then(|s| s.parse::<usize>().ok())
        else {
            continue;
        };
        if entry.path().join(STATE_FILE).is_file() {
            out.push((step, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// The newest complete checkpoint.
pub fn latest_checkpoint(run: &RunDir) -> Result<Option<(usize, PathBuf)>> {
    Ok(list_checkpoints(run)?.pop())
}

/// Removes what a killed run left: temporary folders and checkpoint folders without marker.
pub fn remove_partial(run: &RunDir) -> Result<Vec<PathBuf>> {
    let dir = run.checkpoints_dir();
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(removed);
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let partial = name.starts_with(".tmp-")
            || (name.starts_with("step-") && !path.join(STATE_FILE).is_file());
        if partial && path.is_dir() {
            std::fs::remove_dir_all(&path).map_err(|e| TrainError::io(&path, e))?;
            removed.push(path);
        }
    }
    Ok(removed)
}

/// Reads a checkpoint's `state.json`.
pub fn read_state(checkpoint: &Path) -> Result<CheckpointState> {
    let path = checkpoint.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| TrainError::io(&path, e))
}

/// The LoRA adapters of a run's checkpoint at `step`, or of its latest checkpoint.
pub fn load_checkpoint_lora(run_dir: &Path, step: Option<usize>) -> Result<LoraSet> {
    let run = RunDir::open(run_dir)?;
    let checkpoints = list_checkpoints(&run)?;
    let (_, dir) = match step {
        None => checkpoints
            .last()
            .cloned()
            .ok_or_else(|| TrainError::NoCheckpoint(run_dir.to_path_buf()))?,
        Some(s) => checkpoints
            .iter()
            .find(|(k, _)| *k == s)
            .cloned()
            .ok_or_else(|| {
                TrainError::io(
                    run.checkpoints_dir().join(step_name(s)),
                    "no complete checkpoint at this step",
                )
            })?,
    };
    let path = dir.join(ADAPTERS_FILE);
    if !path.is_file() {
        return Err(TrainError::io(
            &dir,
            "holds no LoRA adapters (a full fine-tune checkpoint)",
        ));
    }
    lora_from_tensors(&TensorFile::read(&path)?, &path)
}
