//! Training pictures: a folder of photos resized (shorter side to the resolution, Catmull-Rom)
//! and centre-cropped, their order over epochs, and the seeded randomness of each step.

use std::path::{Path, PathBuf};

use image::{DynamicImage, RgbImage, imageops};
use rand::seq::SliceRandom;
use rand::{SeedableRng, rngs::StdRng};

use crate::error::{Result, TrainError};

/// The photos of a concept, ready at the training resolution.
#[derive(Debug, Clone)]
pub struct ConceptPhotos {
    pub photos: Vec<Photo>,
    /// Files that are not readable images, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
    /// Photos whose shorter side was below the resolution.
    pub upscaled: Vec<PathBuf>,
}

/// One square training picture.
#[derive(Debug, Clone)]
pub struct Photo {
    pub path: PathBuf,
    pub image: RgbImage,
}

/// Reads every image of `dir` (sorted by name), squared to `resolution`. Other files are skipped
/// and listed; a folder without any image is an error.
pub fn load_photos(dir: &Path, resolution: u32) -> Result<ConceptPhotos> {
    let entries = std::fs::read_dir(dir).map_err(|e| TrainError::io(dir, e))?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| TrainError::io(dir, e))?;
        if entry.path().is_file() {
            paths.push(entry.path());
        }
    }
    paths.sort();
    let mut out = ConceptPhotos {
        photos: Vec::new(),
        skipped: Vec::new(),
        upscaled: Vec::new(),
    };
    for path in paths {
        let img = match open_image(&path) {
            Ok(img) => img,
            Err(reason) => {
                tracing::warn!("{}: skipped ({reason})", path.display());
                out.skipped.push((path, reason));
                continue;
            }
        };
        if img.width().min(img.height()) < resolution {
            tracing::warn!(
                "{}: {}x{} is smaller than {resolution} px; upscaled",
                path.display(),
                img.width(),
                img.height()
            );
            out.upscaled.push(path.clone());
        }
        out.photos.push(Photo {
            image: fit_square(&img, resolution),
            path,
        });
    }
    if out.photos.is_empty() {
        let skipped = if out.skipped.is_empty() {
            " (the folder is empty)".to_string()
        } else {
            format!(
                "; skipped {}",
                out.skipped
                    .iter()
                    .map(|(p, r)| format!(
                        "{} ({r})",
                        p.file_name().unwrap_or_default().to_string_lossy()
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        return Err(TrainError::NoImages {
            dir: dir.to_path_buf(),
            skipped,
        });
    }
    Ok(out)
}

fn open_image(path: &Path) -> std::result::Result<DynamicImage, String> {
    let reader = image::ImageReader::open(path)
        .map_err(|e| e.to_string())?
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    if reader.format().is_none() {
        return Err("not an image".into());
    }
    let decoder = reader.into_decoder().map_err(|e| e.to_string())?;
    decode_upright(decoder).map_err(|e| e.to_string())
}

/// Decodes a picture upright as the camera meant it (phone photos carry an EXIF orientation); a
/// broken EXIF block is not worth refusing a photo over, so it is then kept as stored.
pub fn decode_upright(mut decoder: impl image::ImageDecoder) -> image::ImageResult<DynamicImage> {
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder)?;
    img.apply_orientation(orientation);
    Ok(img)
}

/// Resizes so the shorter side is `size` (Catmull-Rom), then crops the centre square.
pub fn fit_square(img: &DynamicImage, size: u32) -> RgbImage {
    let rgb = img.to_rgb8();
    let (w, h) = rgb.dimensions();
    let short = w.min(h).max(1);
    let (nw, nh) = (
        ((w as u64 * size as u64).div_ceil(short as u64) as u32).max(size),
        ((h as u64 * size as u64).div_ceil(short as u64) as u32).max(size),
    );
    let resized = if (nw, nh) == (w, h) {
        rgb
    } else {
        imageops::resize(&rgb, nw, nh, imageops::FilterType::CatmullRom)
    };
    let x = (nw - size) / 2;
    let y = (nh - size) / 2;
    imageops::crop_imm(&resized, x, y, size, size).to_image()
}

/// An RGB picture as CHW floats in [-1, 1] (the VAE's input range).
pub fn to_signed_chw(img: &RgbImage) -> Vec<f32> {
    let (w, h) = img.dimensions();
    let (w, h) = (w as usize, h as usize);
    let mut out = vec![0f32; 3 * w * h];
    for (x, y, p) in img.enumerate_pixels() {
        for c in 0..3 {
            out[(c * h + y as usize) * w + x as usize] = p.0[c] as f32 / 127.5 - 1.0;
        }
    }
    out
}

/// Randomness that is a pure function of the seed and a counter: the draws of step `s` come
/// from `stream(purpose, s)`, so a checkpoint restores them with the seed and the step alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainRng {
    pub seed: u64,
}

/// What a stream of [`TrainRng`] is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Stream {
    /// Flips, latent sampling, noise and timesteps of a micro-batch.
    Batch = 1,
    /// The order of the instance photos in an epoch.
    InstanceOrder = 2,
    /// The order of the class images in an epoch.
    ClassOrder = 3,
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl TrainRng {
    pub fn new(seed: u64) -> Self {
        Self { seed }
    }

    /// The generator for `index` of `stream`.
    pub fn stream(&self, stream: Stream, index: u64) -> StdRng {
        let key = splitmix64(splitmix64(self.seed ^ splitmix64(stream as u64)) ^ index);
        StdRng::seed_from_u64(key)
    }
}

/// Which item comes at each position of a sequence of shuffled epochs (every item once per
/// epoch, as a shuffled data loader).
#[derive(Debug, Clone)]
pub struct EpochOrder {
    count: usize,
    rng: TrainRng,
    stream: Stream,
    cached: Option<(u64, Vec<usize>)>,
}

impl EpochOrder {
    pub fn new(count: usize, rng: TrainRng, stream: Stream) -> Self {
        Self {
            count,
            rng,
            stream,
            cached: None,
        }
    }

    /// The item at `position` (0-based over all epochs).
    pub fn at(&mut self, position: u64) -> usize {
        let n = self.count.max(1) as u64;
        let epoch = position / n;
        if self.cached.as_ref().map(|(e, _)| *e) != Some(epoch) {
            let mut order: Vec<usize> = (0..self.count.max(1)).collect();
            order.shuffle(&mut self.rng.stream(self.stream, epoch));
            self.cached = Some((epoch, order));
        }
        self.cached
            .as_ref()
            .map(|(_, o)| o[(position % n) as usize])
            .unwrap_or(0)
    }
}
