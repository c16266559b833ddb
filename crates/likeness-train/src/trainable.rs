//! What a run trains, as small pieces the training loop calls: which parameters require
//! gradients, and how they are saved to and restored from a checkpoint folder.

use std::path::Path;

use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use likeness_models::clip_text::ClipTextModel;
use likeness_models::lora::{self, LoraSet, LoraShape, LoraTargets};
use likeness_models::unet::UNet2DConditionModel;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{ADAPTERS_FILE, TensorFile, lora_from_tensors, lora_to_tensors};
use crate::error::{Result, TrainError};
use crate::optim::require_grad_all;

/// The networks a diffusion trainer optimises, as one module so the optimizer walks both
/// (parameter paths `unet.…` and `text_encoder.…`).
#[derive(Module, Debug)]
pub struct DiffusionNets<B: Backend> {
    pub unet: UNet2DConditionModel<B>,
    pub text_encoder: ClipTextModel<B>,
}

/// Full UNet weights of a checkpoint, with diffusers' key names.
pub const UNET_FILE: &str = "unet.safetensors";
/// Full text-encoder weights of a checkpoint, with transformers' key names.
pub const TEXT_ENCODER_FILE: &str = "text_encoder.safetensors";

/// What a run trains; stored in the run's `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TrainMode {
    /// Low-rank adapters on the targeted layers; the base weights stay frozen.
    Lora {
        rank: usize,
        alpha: f64,
        unet_targets: LoraTargets,
        /// Adapters on the text encoder too, when set.
        text_targets: Option<LoraTargets>,
    },
    /// Every UNet weight (and the text encoder's, when `text_encoder`).
    Full { text_encoder: bool },
}

impl TrainMode {
    /// `lora` or `full`, as checkpoints record it.
    pub fn kind(&self) -> &'static str {
        match self {
            TrainMode::Lora { .. } => "lora",
            TrainMode::Full { .. } => "full",
        }
    }
}

/// The part of training that differs between LoRA and full fine-tuning.
pub trait Trainable {
    /// `lora` or `full`.
    fn kind(&self) -> &'static str;

    /// Marks what trains in the freshly loaded base networks, restoring the trained weights
    /// from `checkpoint` when resuming.
    fn prepare<B: AutodiffBackend>(
        &self,
        nets: DiffusionNets<B>,
        checkpoint: Option<&Path>,
    ) -> Result<DiffusionNets<B>>;

    /// Writes the trained weights into the checkpoint folder `dir`.
    fn save<B: AutodiffBackend>(&self, nets: &DiffusionNets<B>, dir: &Path) -> Result<()>;
}

/// LoRA training: fresh adapters (down kaiming-uniform, up zeros) on the targeted layers.
#[derive(Debug, Clone)]
pub struct LoraTraining {
    pub shape: LoraShape,
    pub unet_targets: LoraTargets,
    pub text_targets: Option<LoraTargets>,
    /// Seeds the adapters' initialisation.
    pub seed: u64,
}

impl Trainable for LoraTraining {
    fn kind(&self) -> &'static str {
        "lora"
    }

    fn prepare<B: AutodiffBackend>(
        &self,
        nets: DiffusionNets<B>,
        checkpoint: Option<&Path>,
    ) -> Result<DiffusionNets<B>> {
        if let Some(dir) = checkpoint {
            let path = dir.join(ADAPTERS_FILE);
            let set = lora_from_tensors(&TensorFile::read(&path)?, &path)?;
            let unet = set.attach_to("unet", nets.unet)?;
            let text_encoder = match &self.text_targets {
                Some(_) => set.attach_to("text_encoder", nets.text_encoder)?,
                None => nets.text_encoder.no_grad(),
            };
            return Ok(DiffusionNets { unet, text_encoder });
        }
        let (unet, paths) = lora::attach(nets.unet, &self.unet_targets, self.shape, self.seed);
        if paths.is_empty() {
            return Err(TrainError::Invalid(format!(
                "no UNet layer matches the LoRA targets {:?}",
                self.unet_targets.suffixes
            )));
        }
        let text_encoder = match &self.text_targets {
            Some(t) => {
                let (te, paths) =
                    lora::attach(nets.text_encoder, t, self.shape, self.seed.wrapping_add(1));
                if paths.is_empty() {
                    return Err(TrainError::Invalid(format!(
                        "no text-encoder layer matches the LoRA targets {:?}",
                        t.suffixes
                    )));
                }
                te
            }
            None => nets.text_encoder.no_grad(),
        };
        Ok(DiffusionNets { unet, text_encoder })
    }

    fn save<B: AutodiffBackend>(&self, nets: &DiffusionNets<B>, dir: &Path) -> Result<()> {
        let mut valid = nets.valid();
        let mut set = LoraSet::default();
        set.add_adapters("unet", &mut valid.unet)?;
        if self.text_targets.is_some() {
            set.add_adapters("text_encoder", &mut valid.text_encoder)?;
        }
        set.metadata
            .insert("format".into(), "likeness-checkpoint-lora".into());
        lora_to_tensors(&set).write(&dir.join(ADAPTERS_FILE))
    }
}

/// Full fine-tuning of the UNet (and optionally the text encoder).
#[derive(Debug, Clone)]
pub struct FullTraining {
    pub text_encoder: bool,
}

impl Trainable for FullTraining {
    fn kind(&self) -> &'static str {
        "full"
    }

    fn prepare<B: AutodiffBackend>(
        &self,
        nets: DiffusionNets<B>,
        checkpoint: Option<&Path>,
    ) -> Result<DiffusionNets<B>> {
        let (mut unet, mut text_encoder) = (nets.unet, nets.text_encoder);
        if let Some(dir) = checkpoint {
            unet = load_by_path(unet, &dir.join(UNET_FILE))?;
            if self.text_encoder {
                text_encoder = load_by_path(text_encoder, &dir.join(TEXT_ENCODER_FILE))?;
            }
        }
        let text_encoder = if self.text_encoder {
            require_grad_all(text_encoder)
        } else {
            text_encoder.no_grad()
        };
        Ok(DiffusionNets {
            unet: require_grad_all(unet),
            text_encoder,
        })
    }

    fn save<B: AutodiffBackend>(&self, nets: &DiffusionNets<B>, dir: &Path) -> Result<()> {
        let valid = nets.valid();
        // diffusers stores proj_in/proj_out as 1×1 convolutions unless use_linear_projection.
        let conv_proj = !valid.unet.config.use_linear_projection;
        let mut unet = weights_by_path(&valid.unet)?;
        if conv_proj {
            for (key, (shape, _)) in unet.tensors.iter_mut() {
                if (key.ends_with("proj_in.weight") || key.ends_with("proj_out.weight"))
                    && shape.len() == 2
                {
                    shape.extend([1, 1]);
                }
            }
        }
        unet.metadata.insert("format".into(), "pt".into());
        unet.write(&dir.join(UNET_FILE))?;
        if self.text_encoder {
            let mut te = weights_by_path(&valid.text_encoder)?;
            te.metadata.insert("format".into(), "pt".into());
            te.write(&dir.join(TEXT_ENCODER_FILE))?;
        }
        Ok(())
    }
}

/// Every float parameter of `module` by its field path (which is the diffusers/transformers
/// key), as f32. LoRA adapters, if any, come out as `….lora.down` / `….lora.up`.
pub fn weights_by_path<B: Backend, M: Module<B>>(module: &M) -> Result<TensorFile> {
    struct Collect {
        path: Vec<String>,
        file: TensorFile,
        error: Option<String>,
    }
    impl<B: Backend> ModuleVisitor<B> for Collect {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let key = self.path.join(".");
            let t = param.val();
            let shape = t.dims().to_vec();
            match t.into_data().convert::<f32>().to_vec::<f32>() {
                Ok(v) => self.file.insert(key, shape, v),
                Err(e) => self.error = Some(format!("reading {key}: {e:?}")),
            }
        }
    }
    let mut c = Collect {
        path: Vec::new(),
        file: TensorFile::default(),
        error: None,
    };
    module.visit(&mut c);
    match c.error {
        Some(e) => Err(TrainError::Invalid(e)),
        None => Ok(c.file),
    }
}

/// Replaces every float parameter of `module` with the tensor of the same path in the
/// safetensors file `path` (same element count; 1×1 conv kernels fit linear weights).
pub fn load_by_path<B: Backend, M: Module<B>>(module: M, path: &Path) -> Result<M> {
    struct Load<'a> {
        path: Vec<String>,
        file: &'a TensorFile,
        missing: Vec<String>,
    }
    impl<B: Backend> ModuleMapper<B> for Load<'_> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let key = self.path.join(".");
            let dims = param.shape();
            match self.file.get(&key) {
                Some((_, values)) if values.len() == dims.num_elements() => {
                    let (id, old, mapper) = param.consume();
                    let device = old.device();
                    let require_grad = old.is_require_grad();
                    let dims: [usize; D] = old.dims();
                    let mut t =
                        Tensor::<B, D>::from_data(TensorData::new(values.to_vec(), dims), &device);
                    if require_grad {
                        t = t.require_grad();
                    }
                    Param::from_mapped_value(id, t, mapper)
                }
                _ => {
                    self.missing.push(key);
                    param
                }
            }
        }
    }
    let file = TensorFile::read(path)?;
    let mut load = Load {
        path: Vec::new(),
        file: &file,
        missing: Vec::new(),
    };
    let module = module.map(&mut load);
    if let Some(first) = load.missing.first() {
        return Err(TrainError::io(
            path,
            format!(
                "{} weights missing or of another size, e.g. `{first}`",
                load.missing.len()
            ),
        ));
    }
    Ok(module)
}
