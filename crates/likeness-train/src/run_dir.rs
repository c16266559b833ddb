//! The run folder: `config.json` (settings, base model, its fingerprint), `checkpoints/`,
//! `loss.jsonl`, `samples/step-NNNNNN/` and `class_images/`.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use likeness_models::png_meta::write_atomic;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::error::{Result, TrainError};

/// A training run's folder.
#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
}

/// One line of `loss.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossRecord {
    pub step: usize,
    pub loss: f32,
    pub lr: f64,
    /// Seconds since the Unix epoch when the step ended.
    pub time: f64,
    /// Seconds the step took.
    pub step_secs: f64,
}

impl RunDir {
    /// Creates a new run folder; refuses one that already holds a run.
    pub fn create(root: &Path) -> Result<Self> {
        let dir = Self {
            root: root.to_path_buf(),
        };
        if dir.config_path().exists() {
            return Err(TrainError::io(
                root,
                "already holds a training run (continue it with --resume, or pick another --out)",
            ));
        }
        for d in [root.to_path_buf(), dir.checkpoints_dir(), dir.samples_dir()] {
            std::fs::create_dir_all(&d).map_err(|e| TrainError::io(&d, e))?;
        }
        Ok(dir)
    }

    /// Opens an existing run folder (one with `config.json`).
    pub fn open(root: &Path) -> Result<Self> {
        let dir = Self {
            root: root.to_path_buf(),
        };
        if !dir.config_path().is_file() {
            return Err(TrainError::io(
                root,
                "not a training run folder (no config.json)",
            ));
        }
        for d in [dir.checkpoints_dir(), dir.samples_dir()] {
            std::fs::create_dir_all(&d).map_err(|e| TrainError::io(&d, e))?;
        }
        Ok(dir)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn config_path(&self) -> PathBuf {
        self.root.join("config.json")
    }

    pub fn checkpoints_dir(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    pub fn samples_dir(&self) -> PathBuf {
        self.root.join("samples")
    }

    /// `samples/step-NNNNNN`.
    pub fn samples_at(&self, step: usize) -> PathBuf {
        self.samples_dir().join(step_name(step))
    }

    /// Generated prior-preservation images, kept across resumes.
    pub fn class_images_dir(&self) -> PathBuf {
        self.root.join("class_images")
    }

    pub fn loss_log(&self) -> PathBuf {
        self.root.join("loss.jsonl")
    }

    /// Writes `config.json` atomically.
    pub fn write_config<T: Serialize>(&self, config: &T) -> Result<()> {
        let text = serde_json::to_string_pretty(config)
            .map_err(|e| TrainError::io(self.config_path(), e))?;
        write_atomic(&self.config_path(), text.as_bytes())?;
        Ok(())
    }

    pub fn read_config<T: DeserializeOwned>(&self) -> Result<T> {
        let path = self.config_path();
        let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| TrainError::io(&path, e))
    }

    /// Appends one line to `loss.jsonl`.
    pub fn append_loss(&self, record: &LossRecord) -> Result<()> {
        let path = self.loss_log();
        let mut line =
            serde_json::to_string(record).map_err(|e| TrainError::io(&path, e.to_string()))?;
        line.push('\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| TrainError::io(&path, e))?;
        f.write_all(line.as_bytes())
            .map_err(|e| TrainError::io(&path, e))
    }

    /// The readable lines of `loss.jsonl` (a line cut by a crash is left out).
    pub fn read_losses(&self) -> Result<Vec<LossRecord>> {
        let path = self.loss_log();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(TrainError::io(&path, e)),
        };
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }

    /// Keeps the loss lines of steps up to `step` (those a resume from that checkpoint repeats
    /// are dropped), rewriting the file atomically.
    pub fn truncate_losses(&self, step: usize) -> Result<()> {
        let kept: Vec<LossRecord> = self
            .read_losses()?
            .into_iter()
            .filter(|r| r.step <= step)
            .collect();
        let mut text = String::new();
        for r in &kept {
            text.push_str(
                &serde_json::to_string(r).map_err(|e| TrainError::io(self.loss_log(), e))?,
            );
            text.push('\n');
        }
        write_atomic(&self.loss_log(), text.as_bytes())?;
        Ok(())
    }
}

/// `step-NNNNNN`, the folder name of a checkpoint or a sample gallery.
pub fn step_name(step: usize) -> String {
    format!("step-{step:06}")
}

/// What identifies a base model's files: names, sizes and a hash of each weights file's first
/// tensor, enough to notice another model without reading gigabytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelFingerprint {
    pub files: Vec<FileFingerprint>,
}

/// One file of a [`ModelFingerprint`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileFingerprint {
    /// Path relative to the model folder (the file name for a single file).
    pub name: String,
    pub size: u64,
    /// FNV-1a (64-bit, hex) of the first tensor's bytes (the first MiB at most), for
    /// `.safetensors` files.
    pub first_tensor: Option<String>,
}

/// At most this many bytes of a first tensor are hashed.
const FINGERPRINT_BYTES: u64 = 1 << 20;

impl ModelFingerprint {
    /// Fingerprints a diffusers folder (`model_index.json` and the `.json` and `.safetensors`
    /// files of its part folders) or a single checkpoint file.
    pub fn of(model: &Path) -> Result<Self> {
        let mut files = Vec::new();
        if model.is_dir() {
            let mut paths = Vec::new();
            collect_files(model, 2, &mut paths)?;
            paths.sort();
            for p in paths {
                let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
                let rel = p.strip_prefix(model).unwrap_or(&p);
                let at_root = rel.components().count() == 1;
                if (ext != "json" && ext != "safetensors")
                    || (at_root && rel != Path::new("model_index.json"))
                {
                    continue;
                }
                let name = rel.to_string_lossy().replace('\\', "/");
                files.push(file_fingerprint(&p, name)?);
            }
        } else if model.is_file() {
            let name = model
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            files.push(file_fingerprint(model, name)?);
        } else {
            return Err(TrainError::io(model, "no such file or folder"));
        }
        Ok(Self { files })
    }

    /// Why `other` is not the same model, or `None` when it is.
    pub fn difference(&self, other: &ModelFingerprint) -> Option<String> {
        // Weights first: they say most about what changed.
        let weights_first = self
            .files
            .iter()
            .filter(|f| f.first_tensor.is_some())
            .chain(self.files.iter().filter(|f| f.first_tensor.is_none()));
        for f in weights_first {
            match other.files.iter().find(|o| o.name == f.name) {
                None => return Some(format!("{} is missing", f.name)),
                Some(o) if o.size != f.size => {
                    return Some(format!("{} has {} bytes, was {}", f.name, o.size, f.size));
                }
                Some(o) if o.first_tensor != f.first_tensor => {
                    return Some(format!("{} holds other weights", f.name));
                }
                Some(_) => {}
            }
        }
        other
            .files
            .iter()
            .find(|o| !self.files.iter().any(|f| f.name == o.name))
            .map(|o| format!("{} was not part of it", o.name))
    }
}

fn collect_files(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| TrainError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| TrainError::io(dir, e))?;
        let p = entry.path();
        if p.is_dir() {
            if depth > 1 {
                collect_files(&p, depth - 1, out)?;
            }
        } else {
            out.push(p);
        }
    }
    Ok(())
}

fn file_fingerprint(path: &Path, name: String) -> Result<FileFingerprint> {
    let size = std::fs::metadata(path)
        .map_err(|e| TrainError::io(path, e))?
        .len();
    let first_tensor = if path.extension().is_some_and(|e| e == "safetensors") {
        Some(format!("{:016x}", first_tensor_hash(path)?))
    } else {
        None
    };
    Ok(FileFingerprint {
        name,
        size,
        first_tensor,
    })
}

/// Hashes the bytes of the tensor stored first in a safetensors file.
fn first_tensor_hash(path: &Path) -> Result<u64> {
    let bad = |m: &str| TrainError::io(path, format!("not a safetensors file ({m})"));
    let mut f = std::fs::File::open(path).map_err(|e| TrainError::io(path, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|_| bad("too short"))?;
    let header_len = u64::from_le_bytes(len);
    if header_len > 100 << 20 {
        return Err(bad("header too large"));
    }
    let mut header = vec![0u8; header_len as usize];
    f.read_exact(&mut header).map_err(|_| bad("cut header"))?;
    let header: serde_json::Value =
        serde_json::from_slice(&header).map_err(|_| bad("header is not JSON"))?;
    let first = header
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.as_str() != "__metadata__")
        .filter_map(|(_, v)| {
            let offs = v.get("data_offsets")?.as_array()?;
            Some((offs.first()?.as_u64()?, offs.get(1)?.as_u64()?))
        })
        .min();
    let mut hash = Fnv1a::new();
    if let Some((start, end)) = first {
        let n = (end.saturating_sub(start)).min(FINGERPRINT_BYTES);
        f.seek(SeekFrom::Start(8 + header_len + start))
            .map_err(|e| TrainError::io(path, e))?;
        let mut bytes = vec![0u8; n as usize];
        f.read_exact(&mut bytes).map_err(|_| bad("cut data"))?;
        hash.write(&bytes);
    }
    Ok(hash.finish())
}

/// FNV-1a, 64 bit: stable across Rust versions, unlike `DefaultHasher`.
struct Fnv1a(u64);

impl Fnv1a {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= *b as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}
