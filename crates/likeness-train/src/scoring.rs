//! Image scores without human labels: IS = mean cosine of CLIP-I(x) with CLIP-I of each concept
//! photo (likeness), TS = cosine of CLIP-I(x) with CLIP-T of the prompt without the identifier
//! token (prompt following), and optionally DINO-IS, the likeness with DINO's CLS embedding.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use image::RgbImage;
use likeness_models::clip_model::{ClipModel, cosine, l2_normalize};
use likeness_models::vit::ViTModel;

use crate::pairs::ScoredImage;
use crate::prompts::strip_identifier;

/// Images embedded per batch: bounds memory on large sets.
const BATCH: usize = 16;

/// Why scoring could not run.
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    #[error(transparent)]
    Model(#[from] likeness_models::ModelError),
    #[error("{path}: {message}")]
    Images { path: PathBuf, message: String },
}

/// Image files of a folder (png, jpg, jpeg, webp, bmp), sorted by name.
pub fn image_files(dir: &Path) -> Result<Vec<PathBuf>, ScoreError> {
    let rd = std::fs::read_dir(dir).map_err(|e| ScoreError::Images {
        path: dir.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .map(|e| {
                        matches!(
                            e.to_ascii_lowercase().as_str(),
                            "png" | "jpg" | "jpeg" | "webp" | "bmp"
                        )
                    })
                    .unwrap_or(false)
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Decodes an image file to RGB, naming the file on failure.
pub fn load_rgb(path: &Path) -> Result<RgbImage, ScoreError> {
    image::open(path)
        .map(|i| i.to_rgb8())
        .map_err(|e| ScoreError::Images {
            path: path.to_path_buf(),
            message: format!("cannot read image: {e}"),
        })
}

/// Concept photos of a folder; an empty folder is an error.
pub fn load_concept(dir: &Path) -> Result<Vec<RgbImage>, ScoreError> {
    let files = image_files(dir)?;
    if files.is_empty() {
        return Err(ScoreError::Images {
            path: dir.to_path_buf(),
            message: "the concept folder has no images (png, jpg, jpeg, webp, bmp)".into(),
        });
    }
    files.iter().map(|p| load_rgb(p)).collect()
}

/// CLIP (and DINO) with the concept's embeddings computed once.
pub struct Scorer<B: Backend> {
    pub clip: ClipModel<B>,
    pub dino: Option<ViTModel<B>>,
    /// Unit-norm CLIP image embeddings of the concept photos [K, D].
    concept_clip: Tensor<B, 2>,
    concept_dino: Option<Tensor<B, 2>>,
    pub token: String,
}

/// Scores of one image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scores {
    pub is: f64,
    pub ts: f64,
    pub dino: Option<f64>,
}

fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>, ScoreError> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| likeness_models::ModelError::Invalid(format!("reading scores: {e:?}")).into())
}

impl<B: Backend> Scorer<B> {
    /// Loads CLIP (and DINO) and embeds the concept photos.
    pub fn new(
        clip_dir: &Path,
        dino_dir: Option<&Path>,
        concept: &[RgbImage],
        token: &str,
        device: &B::Device,
    ) -> Result<Self, ScoreError> {
        let clip = ClipModel::<B>::from_dir(clip_dir, device)?;
        let dino = dino_dir
            .map(|d| ViTModel::<B>::from_dir(d, device))
            .transpose()?;
        Self::from_models(clip, dino, concept, token)
    }

    /// Builds a scorer from loaded models.
    pub fn from_models(
        clip: ClipModel<B>,
        dino: Option<ViTModel<B>>,
        concept: &[RgbImage],
        token: &str,
    ) -> Result<Self, ScoreError> {
        if concept.is_empty() {
            return Err(ScoreError::Images {
                path: PathBuf::from("<concept>"),
                message: "no concept photos".into(),
            });
        }
        let concept_clip = l2_normalize(embed_batched(concept, |b| clip.embed_images(b))?);
        let concept_dino = match &dino {
            Some(d) => Some(l2_normalize(embed_batched(concept, |b| d.embed_images(b))?)),
            None => None,
        };
        Ok(Self {
            clip,
            dino,
            concept_clip,
            concept_dino,
            token: token.to_string(),
        })
    }

    /// Scores images made for `prompts` (one prompt per image, identifier token still in it).
    pub fn score(
        &self,
        images: &[RgbImage],
        prompts: &[String],
    ) -> Result<Vec<Scores>, ScoreError> {
        if images.len() != prompts.len() {
            return Err(likeness_models::ModelError::Invalid(format!(
                "{} images but {} prompts",
                images.len(),
                prompts.len()
            ))
            .into());
        }
        let mut out = Vec::with_capacity(images.len());
        for (imgs, ps) in images.chunks(BATCH).zip(prompts.chunks(BATCH)) {
            let n = imgs.len();
            let img = l2_normalize(self.clip.embed_images(imgs)?);
            let k = self.concept_clip.dims()[0];
            let is = to_vec(
                img.clone()
                    .matmul(self.concept_clip.clone().transpose())
                    .sum_dim(1)
                    / k as f64,
            )?;
            let stripped: Vec<String> = ps
                .iter()
                .map(|p| strip_identifier(p, &self.token))
                .collect();
            let text = self.clip.embed_prompts(&stripped)?;
            let ts = to_vec(cosine(img, text))?;
            let dino = match (&self.dino, &self.concept_dino) {
                (Some(d), Some(c)) => {
                    let e = l2_normalize(d.embed_images(imgs)?);
                    let kd = c.dims()[0];
                    Some(to_vec(
                        e.matmul(c.clone().transpose()).sum_dim(1) / kd as f64,
                    )?)
                }
                _ => None,
            };
            for i in 0..n {
                out.push(Scores {
                    is: is[i] as f64,
                    ts: ts[i * n + i] as f64,
                    dino: dino.as_ref().map(|d| d[i] as f64),
                });
            }
        }
        Ok(out)
    }
}

fn embed_batched<B: Backend>(
    images: &[RgbImage],
    f: impl FnMut(&[RgbImage]) -> likeness_models::Result<Tensor<B, 2>>,
) -> Result<Tensor<B, 2>, ScoreError> {
    let parts = images.chunks(BATCH).map(f).collect::<Result<Vec<_>, _>>()?;
    Ok(Tensor::cat(parts, 0))
}

/// One line of a `likeness generate --out DIR` index, as far as scoring needs it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct IndexLine {
    pub file: String,
    pub prompt: String,
    #[serde(default)]
    pub seed: u64,
}

/// Reads `DIR/index.jsonl`, naming the line of any bad entry.
pub fn read_index(dir: &Path) -> Result<Vec<IndexLine>, ScoreError> {
    let path = dir.join("index.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|e| ScoreError::Images {
        path: path.clone(),
        message: format!("{e} (expected a folder written by `likeness generate --out DIR`)"),
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| ScoreError::Images {
                path: path.clone(),
                message: format!("line {}: {e}", i + 1),
            })
        })
        .collect()
}

/// Scores every image of a generated folder.
pub fn score_folder<B: Backend>(
    scorer: &Scorer<B>,
    dir: &Path,
) -> Result<Vec<ScoredImage>, ScoreError> {
    let index = read_index(dir)?;
    let mut out = Vec::with_capacity(index.len());
    for chunk in index.chunks(BATCH) {
        let images = chunk
            .iter()
            .map(|l| load_rgb(&dir.join(&l.file)))
            .collect::<Result<Vec<_>, _>>()?;
        let prompts: Vec<String> = chunk.iter().map(|l| l.prompt.clone()).collect();
        for (l, s) in chunk.iter().zip(scorer.score(&images, &prompts)?) {
            out.push(ScoredImage {
                image: l.file.clone(),
                prompt: l.prompt.clone(),
                seed: l.seed,
                is: s.is,
                ts: s.ts,
                dino: s.dino,
            });
        }
    }
    Ok(out)
}
