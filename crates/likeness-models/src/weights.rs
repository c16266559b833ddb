//! Weight loading: memory-mapped safetensors files indexed by key, and a `VarBuilder` that
//! hands each module the tensors under its diffusers/transformers path.
//!
//! A `WeightStore` can also be random (for benchmarks and for training from scratch): every
//! key then gets deterministic values from a seed and the key's name.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::DType;
use memmap2::Mmap;
use rand::{Rng, SeedableRng, rngs::StdRng};
use safetensors::{Dtype, SafeTensors};

use crate::error::{ModelError, Result};

/// How a weight is initialised when the store has no file behind it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    Zeros,
    Ones,
    /// PyTorch's default for Linear/Conv: uniform in ±1/sqrt(fan_in).
    FanIn(usize),
    Normal(f64),
}

/// One tensor in one file, and how to cut it into the tensor a module asks for.
#[derive(Debug, Clone)]
pub struct TensorRef {
    pub file: usize,
    pub key: String,
    /// Take rows `start..end` of axis 0 (fused q/k/v projections in OpenCLIP checkpoints).
    pub rows: Option<(usize, usize)>,
}

impl TensorRef {
    pub fn rows(mut self, start: usize, end: usize) -> Self {
        self.rows = Some((start, end));
        self
    }
}

struct WeightFile {
    path: PathBuf,
    mmap: Mmap,
    data_start: usize,
    infos: HashMap<String, safetensors::tensor::TensorInfo>,
    metadata: HashMap<String, String>,
}

/// A set of safetensors files, indexed by the key each tensor is wanted under.
pub struct WeightStore {
    files: Vec<WeightFile>,
    index: HashMap<String, TensorRef>,
    used: Mutex<BTreeSet<String>>,
    random_seed: Option<u64>,
}

impl std::fmt::Debug for WeightStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightStore")
            .field(
                "files",
                &self.files.iter().map(|f| &f.path).collect::<Vec<_>>(),
            )
            .field("keys", &self.index.len())
            .field("random_seed", &self.random_seed)
            .finish()
    }
}

fn open_file(path: &Path) -> Result<WeightFile> {
    let file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    // SAFETY: the file is opened read-only; a concurrent writer could change the bytes under us,
    // which at worst yields wrong weights, never undefined behaviour in safe code reading the slice.
    let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
    let (n, meta) = SafeTensors::read_metadata(&mmap).map_err(|e| ModelError::NotSafetensors {
        path: path.to_path_buf(),
        message: match e {
            safetensors::SafeTensorError::MetadataIncompleteBuffer => {
                "truncated: the header promises more data than the file holds".to_string()
            }
            other => other.to_string(),
        },
    })?;
    let infos = meta
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.clone()))
        .collect();
    let metadata = meta.metadata().clone().unwrap_or_default();
    Ok(WeightFile {
        path: path.to_path_buf(),
        mmap,
        data_start: 8 + n,
        infos,
        metadata,
    })
}

impl WeightStore {
    /// Opens safetensors files; every tensor is found under its own key.
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            let f = open_file(path)?;
            for key in f.infos.keys() {
                index.insert(
                    key.clone(),
                    TensorRef {
                        file: i,
                        key: key.clone(),
                        rows: None,
                    },
                );
            }
            files.push(f);
        }
        Ok(Self {
            files,
            index,
            used: Mutex::new(BTreeSet::new()),
            random_seed: None,
        })
    }

    /// Opens files without indexing: the caller maps keys itself with [`WeightStore::insert`].
    pub fn open_unindexed(paths: &[PathBuf]) -> Result<Self> {
        let mut store = Self::open(paths)?;
        store.index.clear();
        Ok(store)
    }

    /// A store with no files: every weight is drawn from its `Init`, seeded by `seed` and the key.
    pub fn random(seed: u64) -> Self {
        Self {
            files: Vec::new(),
            index: HashMap::new(),
            used: Mutex::new(BTreeSet::new()),
            random_seed: Some(seed),
        }
    }

    /// Makes `wanted` resolve to `source`.
    pub fn insert(&mut self, wanted: impl Into<String>, source: TensorRef) {
        self.index.insert(wanted.into(), source);
    }

    /// Keys of file `file` as stored on disk.
    pub fn file_keys(&self, file: usize) -> Vec<String> {
        let mut keys: Vec<String> = self.files[file].infos.keys().cloned().collect();
        keys.sort();
        keys
    }

    /// Shape of a tensor as stored on disk.
    pub fn file_shape(&self, file: usize, key: &str) -> Option<Vec<usize>> {
        self.files
            .get(file)
            .and_then(|f| f.infos.get(key))
            .map(|i| i.shape.clone())
    }

    /// The `__metadata__` strings of a file.
    pub fn file_metadata(&self, file: usize) -> &HashMap<String, String> {
        &self.files[file].metadata
    }

    pub fn path(&self, file: usize) -> &Path {
        &self.files[file].path
    }

    /// The path errors should name: the first file, or a placeholder for a random store.
    pub fn display_path(&self) -> PathBuf {
        self.files
            .first()
            .map(|f| f.path.clone())
            .unwrap_or_else(|| PathBuf::from("<random weights>"))
    }

    pub fn is_random(&self) -> bool {
        self.random_seed.is_some()
    }

    pub fn contains(&self, key: &str) -> bool {
        self.random_seed.is_some() || self.index.contains_key(key)
    }

    /// Shape a key resolves to (after any row slice), if present in a file.
    pub fn shape(&self, key: &str) -> Option<Vec<usize>> {
        let r = self.index.get(key)?;
        let mut shape = self.files[r.file].infos.get(&r.key)?.shape.clone();
        if let Some((s, e)) = r.rows {
            shape[0] = e - s;
        }
        Some(shape)
    }

    /// All keys this store can resolve.
    pub fn keys(&self) -> Vec<String> {
        let mut k: Vec<String> = self.index.keys().cloned().collect();
        k.sort();
        k
    }

    /// Keys that were never asked for (weights the model has no place for).
    pub fn unused_keys(&self) -> Vec<String> {
        let used = self.used.lock().expect("weight index lock");
        let mut k: Vec<String> = self
            .index
            .keys()
            .filter(|k| !used.contains(*k))
            .cloned()
            .collect();
        k.sort();
        k
    }

    /// Reads a tensor as f32 values with its shape, checking it against `expected`.
    pub fn load_f32(&self, key: &str, expected: &[usize], init: Init) -> Result<Vec<f32>> {
        if let Some(seed) = self.random_seed {
            return Ok(random_values(seed, key, expected, init));
        }
        let path = self.display_path();
        let r = self
            .index
            .get(key)
            .ok_or_else(|| ModelError::MissingWeight {
                path: path.clone(),
                key: key.to_string(),
            })?;
        let file = &self.files[r.file];
        let info = file
            .infos
            .get(&r.key)
            .ok_or_else(|| ModelError::MissingWeight {
                path: file.path.clone(),
                key: r.key.clone(),
            })?;
        let mut shape = info.shape.clone();
        let numel: usize = shape.iter().product();
        let bytes = &file.mmap
            [file.data_start + info.data_offsets.0..file.data_start + info.data_offsets.1];
        let mut values =
            decode(bytes, info.dtype, numel).ok_or_else(|| ModelError::UnsupportedDtype {
                path: file.path.clone(),
                key: r.key.clone(),
                dtype: format!("{:?}", info.dtype),
            })?;
        if let Some((s, e)) = r.rows {
            let row: usize = shape[1..].iter().product();
            if e > shape[0] {
                return Err(ModelError::ShapeMismatch {
                    path: file.path.clone(),
                    key: r.key.clone(),
                    found: shape,
                    expected: expected.to_vec(),
                });
            }
            values = values[s * row..e * row].to_vec();
            shape[0] = e - s;
        }
        let same = shape == expected
            || (shape.iter().product::<usize>() == expected.iter().product::<usize>()
                && squeeze_eq(&shape, expected));
        if !same {
            return Err(ModelError::ShapeMismatch {
                path: file.path.clone(),
                key: r.key.clone(),
                found: shape,
                expected: expected.to_vec(),
            });
        }
        self.used
            .lock()
            .expect("weight index lock")
            .insert(key.to_string());
        Ok(values)
    }
}

/// Shapes equal but for trailing 1×1 dims (a 1×1 conv stored where a linear is wanted, or back).
fn squeeze_eq(a: &[usize], b: &[usize]) -> bool {
    let strip = |s: &[usize]| -> Vec<usize> {
        let mut v = s.to_vec();
        while v.len() > 2 && v.last() == Some(&1) {
            v.pop();
        }
        v
    };
    strip(a) == strip(b)
}

fn decode(bytes: &[u8], dtype: Dtype, numel: usize) -> Option<Vec<f32>> {
    let v: Vec<f32> = match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32)
            .collect(),
        Dtype::I64 => bytes
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32)
            .collect(),
        Dtype::I32 => bytes
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
            .collect(),
        _ => return None,
    };
    (v.len() == numel).then_some(v)
}

fn random_values(seed: u64, key: &str, shape: &[usize], init: Init) -> Vec<f32> {
    let n: usize = shape.iter().product();
    // FNV-1a of the key, so each weight's values do not depend on load order.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in key.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    let mut rng = StdRng::seed_from_u64(seed ^ h);
    match init {
        Init::Zeros => vec![0.0; n],
        Init::Ones => vec![1.0; n],
        Init::FanIn(fan_in) => {
            let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
            (0..n).map(|_| rng.random_range(-bound..bound)).collect()
        }
        Init::Normal(std) => crate::rng::randn(&mut rng, n)
            .into_iter()
            .map(|v| v * std as f32)
            .collect(),
    }
}

/// Hands modules their weights by path: `vb.pp("down_blocks").pp(0).get("conv.weight", ...)`.
#[derive(Clone)]
pub struct VarBuilder<B: Backend> {
    store: Arc<WeightStore>,
    prefix: String,
    device: B::Device,
    /// The dtype weights are converted to on the host before they reach the device (`None`: f32).
    dtype: Option<DType>,
}

impl<B: Backend> VarBuilder<B> {
    pub fn new(store: Arc<WeightStore>, device: &B::Device) -> Self {
        Self {
            store,
            prefix: String::new(),
            device: device.clone(),
            dtype: None,
        }
    }

    /// Weights converted to `dtype` on the host (`None`: kept f32), so a half-precision model
    /// never holds its f32 weights on the device, even while it loads.
    pub fn with_dtype(mut self, dtype: Option<DType>) -> Self {
        self.dtype = dtype;
        self
    }

    /// A builder for the sub-path `name` (a field name or a list index).
    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        };
        Self {
            store: self.store.clone(),
            prefix,
            device: self.device.clone(),
            dtype: self.dtype,
        }
    }

    pub fn device(&self) -> &B::Device {
        &self.device
    }

    pub fn store(&self) -> &Arc<WeightStore> {
        &self.store
    }

    pub fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.store.contains(&self.path(name))
    }

    /// The stored shape of `name`, when a file holds it.
    pub fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        self.store.shape(&self.path(name))
    }

    /// Loads `name` with the given shape as a trainable parameter.
    pub fn get<const D: usize>(
        &self,
        name: &str,
        shape: [usize; D],
        init: Init,
    ) -> Result<Param<Tensor<B, D>>> {
        Ok(Param::from_tensor(self.tensor(name, shape, init)?))
    }

    /// Loads `name` with the given shape as a plain tensor.
    pub fn tensor<const D: usize>(
        &self,
        name: &str,
        shape: [usize; D],
        init: Init,
    ) -> Result<Tensor<B, D>> {
        let key = self.path(name);
        let values = self.store.load_f32(&key, &shape, init)?;
        // Half types converted here, on the host, rounding to nearest even (as PyTorch's cast);
        // the dtype named, or the device's default (f32) would convert the data back.
        let upload = |data: TensorData, dtype| Tensor::from_data(data, (&self.device, dtype));
        Ok(match self.dtype {
            Some(DType::BF16) => upload(
                TensorData::new(
                    values.into_iter().map(half::bf16::from_f32).collect(),
                    shape,
                ),
                DType::BF16,
            ),
            Some(DType::F16) => upload(
                TensorData::new(values.into_iter().map(half::f16::from_f32).collect(), shape),
                DType::F16,
            ),
            _ => Tensor::from_data(TensorData::new(values, shape), &self.device),
        })
    }
}
