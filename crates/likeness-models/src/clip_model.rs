//! transformers' `CLIPModel` for scoring: both towers, their bias-free projections into the shared
//! embedding space, the tokenizer and the image processor of the model's folder.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::prelude::*;
use image::RgbImage;
use serde_json::Value;

use crate::clip_text::{ClipTextConfig, ClipTextTransformer};
use crate::clip_vision::{ClipVisionConfig, ClipVisionTransformer};
use crate::error::{ModelError, Result, read_json};
use crate::image_preprocess::Preprocessor;
use crate::nn::Linear;
use crate::presets::bundled_tokenizer;
use crate::single_file::Family;
use crate::tokenizer::ClipTokenizer;
use crate::weights::{Init, VarBuilder, WeightStore};

/// transformers' `CLIPConfig`: the two tower configs and the shared embedding size.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipModelConfig {
    pub text: ClipTextConfig,
    pub vision: ClipVisionConfig,
    /// Size of the shared image/text embedding space.
    pub projection_dim: usize,
    /// Initial value of `logit_scale` (the weight file holds the trained one).
    pub logit_scale_init_value: f64,
}

impl ClipModelConfig {
    /// Reads a `CLIPModel` config.json; anything without both tower configs is refused.
    pub fn from_file(path: &Path) -> Result<Self> {
        let value: Value = read_json(path)?;
        Self::from_value(&value, path)
    }

    /// Parses a `CLIPModel` config object; `path` is what errors name.
    pub fn from_value(value: &Value, path: &Path) -> Result<Self> {
        let missing: Vec<String> = ["text_config", "vision_config"]
            .iter()
            .filter(|k| !value.get(**k).is_some_and(Value::is_object))
            .map(|k| format!("`{k}`"))
            .collect();
        if !missing.is_empty() {
            let found = value
                .get("model_type")
                .and_then(Value::as_str)
                .map(|t| format!(" (model_type `{t}`)"))
                .unwrap_or_default();
            return Err(ModelError::config(
                path,
                format!(
                    "not a CLIPModel config{found}: no {}; scoring needs a transformers CLIP model with both towers",
                    missing.join(" or ")
                ),
            ));
        }
        let text = ClipTextConfig::from_value(value, path)?;
        let vision = ClipVisionConfig::from_value(value, path)?;
        let projection_dim = match value.get("projection_dim") {
            None | Some(Value::Null) => 512,
            Some(v) => v.as_u64().filter(|d| *d > 0).ok_or_else(|| {
                ModelError::config(path, "`projection_dim` must be a positive integer")
            })? as usize,
        };
        let logit_scale_init_value = value
            .get("logit_scale_init_value")
            .and_then(Value::as_f64)
            .unwrap_or(2.6592);
        Ok(Self {
            text,
            vision,
            projection_dim,
            logit_scale_init_value,
        })
    }
}

/// A CLIP model ready to score: `image_embeds` / `text_embeds` give projected, unnormalised
/// embeddings as `CLIPModel.get_image_features` / `get_text_features` do.
pub struct ClipModel<B: Backend> {
    pub text_model: ClipTextTransformer<B>,
    pub vision_model: ClipVisionTransformer<B>,
    pub visual_projection: Linear<B>,
    pub text_projection: Linear<B>,
    /// The trained log temperature (`logits = exp(logit_scale) · cosine`).
    pub logit_scale: f32,
    pub config: ClipModelConfig,
    /// The folder's tokenizer, or the bundled CLIP BPE when it ships none.
    pub tokenizer: ClipTokenizer,
    /// The folder's `preprocessor_config.json`, or `CLIPImageProcessor`'s defaults.
    pub preprocessor: Preprocessor,
}

impl<B: Backend> ClipModel<B> {
    /// Loads a transformers `CLIPModel` folder: `config.json`, `model.safetensors` (or a sharded
    /// index), tokenizer files and `preprocessor_config.json` when present.
    pub fn from_dir(dir: &Path, device: &B::Device) -> Result<Self> {
        if !dir.is_dir() {
            return Err(ModelError::Layout {
                path: dir.to_path_buf(),
                message: "not a folder (expected a transformers CLIPModel folder)".into(),
            });
        }
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(ModelError::Layout {
                path: dir.to_path_buf(),
                message: "no config.json: not a transformers CLIPModel folder".into(),
            });
        }
        let config = ClipModelConfig::from_file(&config_path)?;
        let store = Arc::new(WeightStore::open(&model_weights(dir)?)?);
        let vb = VarBuilder::new(store, device);
        let own_tokenizer = ["vocab.json", "tokenizer.json"]
            .iter()
            .any(|f| dir.join(f).is_file());
        let tokenizer = if own_tokenizer {
            ClipTokenizer::from_dir(dir)?
        } else {
            tracing::info!(
                "{}: no tokenizer files, using the bundled CLIP BPE",
                dir.display()
            );
            bundled_tokenizer(Family::Sd1)?
        };
        if tokenizer.vocab_size() > config.text.vocab_size {
            return Err(ModelError::Layout {
                path: dir.to_path_buf(),
                message: format!(
                    "the {} has {} tokens but text_config.vocab_size is {}",
                    if own_tokenizer {
                        "folder's tokenizer"
                    } else {
                        "bundled CLIP tokenizer (the folder has none)"
                    },
                    tokenizer.vocab_size(),
                    config.text.vocab_size
                ),
            });
        }
        let preprocessor_path = dir.join("preprocessor_config.json");
        let preprocessor = if preprocessor_path.is_file() {
            Preprocessor::from_file(&preprocessor_path)?
        } else {
            Preprocessor::clip_default()
        };
        Self::load(&vb, config, tokenizer, preprocessor)
    }

    /// Builds the model from weights rooted at the checkpoint root (`text_model.…`, `vision_model.…`).
    pub fn load(
        vb: &VarBuilder<B>,
        config: ClipModelConfig,
        tokenizer: ClipTokenizer,
        preprocessor: Preprocessor,
    ) -> Result<Self> {
        let d = config.projection_dim;
        // transformers stores the scalar with shape []; a missing one only loses the temperature.
        let logit_scale = match vb.shape_of("logit_scale") {
            Some(shape) => {
                let values = vb
                    .store()
                    .load_f32(&vb.path("logit_scale"), &shape, Init::Zeros)?;
                match values.as_slice() {
                    [v] => *v,
                    _ => {
                        return Err(ModelError::ShapeMismatch {
                            path: vb.store().display_path(),
                            key: vb.path("logit_scale"),
                            found: shape,
                            expected: vec![],
                        });
                    }
                }
            }
            None => config.logit_scale_init_value as f32,
        };
        Ok(Self {
            text_model: ClipTextTransformer::load(&vb.pp("text_model"), &config.text)?,
            vision_model: ClipVisionTransformer::load(&vb.pp("vision_model"), &config.vision)?,
            visual_projection: Linear::load(
                &vb.pp("visual_projection"),
                config.vision.hidden_size,
                d,
                false,
            )?,
            text_projection: Linear::load(
                &vb.pp("text_projection"),
                config.text.hidden_size,
                d,
                false,
            )?,
            logit_scale,
            config,
            tokenizer,
            preprocessor,
        })
    }

    /// Projected image embeddings [N, projection_dim] of normalised pixels [N, 3, S, S] (not
    /// L2-normalised), as `CLIPModel.get_image_features`.
    pub fn image_embeds(&self, pixels: Tensor<B, 4>) -> Result<Tensor<B, 2>> {
        let out = self.vision_model.forward(pixels)?;
        Ok(self.visual_projection.forward(out.pooler_output))
    }

    /// Projected text embeddings [N, projection_dim] of token ids [N, L] (not L2-normalised), as
    /// `CLIPModel.get_text_features`.
    pub fn text_embeds(&self, input_ids: Tensor<B, 2, Int>) -> Result<Tensor<B, 2>> {
        let vocab = self.config.text.vocab_size as i64;
        let ids = input_ids.clone().into_data().convert::<i64>();
        let ids = ids
            .as_slice::<i64>()
            .map_err(|e| ModelError::Invalid(format!("input_ids: {e:?}")))?;
        if let Some(bad) = ids.iter().find(|&&id| id < 0 || id >= vocab) {
            return Err(ModelError::Invalid(format!(
                "token id {bad} is outside the text model's vocabulary of {vocab}"
            )));
        }
        let out = self.text_model.forward(input_ids)?;
        Ok(self.text_projection.forward(out.pooler_output))
    }

    /// Preprocesses images with the folder's image processor and embeds them.
    pub fn embed_images(&self, images: &[RgbImage]) -> Result<Tensor<B, 2>> {
        let pixels = self.preprocessor.batch::<B>(images, &self.device())?;
        self.image_embeds(pixels)
    }

    /// Tokenizes prompts (padded to the tokenizer's length) and embeds them.
    pub fn embed_prompts<S: AsRef<str>>(&self, prompts: &[S]) -> Result<Tensor<B, 2>> {
        if prompts.is_empty() {
            return Err(ModelError::Invalid("no prompts to embed".into()));
        }
        let len = self.tokenizer.max_length();
        let ids: Vec<i64> = prompts
            .iter()
            .flat_map(|p| self.tokenizer.encode(p.as_ref()))
            .map(i64::from)
            .collect();
        let ids = Tensor::<B, 2, Int>::from_data(
            TensorData::new(ids, [prompts.len(), len]),
            &self.device(),
        );
        self.text_embeds(ids)
    }

    /// The device the weights live on.
    pub fn device(&self) -> B::Device {
        self.visual_projection.weight.device()
    }

    /// The image side the vision tower takes.
    pub fn image_size(&self) -> usize {
        self.config.vision.image_size
    }
}

/// Rows scaled to unit L2 norm (norms clamped at 1e-12, as `torch.nn.functional.normalize`).
pub fn l2_normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = x.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12);
    x / norm
}

/// Cosine similarity of every row of `a` [Na, D] with every row of `b` [Nb, D]: [Na, Nb].
pub fn cosine<B: Backend>(a: Tensor<B, 2>, b: Tensor<B, 2>) -> Tensor<B, 2> {
    l2_normalize(a).matmul(l2_normalize(b).transpose())
}

/// The weight files of a transformers folder: `model.safetensors`, or the shards its
/// `model.safetensors.index.json` lists. Pickle-only folders get a conversion hint.
pub(crate) fn model_weights(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let value: Value = read_json(&index)?;
        let map = value
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| ModelError::config(&index, "no `weight_map` object"))?;
        let mut files: Vec<PathBuf> = Vec::new();
        for file in map.values() {
            let name = file.as_str().ok_or_else(|| {
                ModelError::config(&index, "`weight_map` values must be file names")
            })?;
            let path = dir.join(name);
            if !files.contains(&path) {
                files.push(path);
            }
        }
        return Ok(files);
    }
    if dir.join("pytorch_model.bin").is_file() {
        return Err(ModelError::Layout {
            path: dir.join("pytorch_model.bin"),
            message:
                "PyTorch pickle weights are not read (unsafe to load); convert to model.safetensors"
                    .into(),
        });
    }
    Err(ModelError::Layout {
        path: dir.to_path_buf(),
        message: "no model.safetensors (or model.safetensors.index.json) in this folder".into(),
    })
}
