//! Image preprocessing as transformers' slow image processors (`CLIPImageProcessor`,
//! `ViTImageProcessor`, `BitImageProcessor`) do it: resize with Pillow's resampling on 8-bit pixels
//! (the processors hand uint8 images to PIL), centre crop with zero padding, rescale, normalise.
//!
//! The resampling reproduces Pillow 13's `Resample.c` bit for bit: separable convolution through
//! an 8-bit intermediate (pass order as Pillow 13 picks it), fixed-point (22-bit) coefficients, a
//! filter support that widens with the downscale factor (antialiasing), and `ImagingScaleAffine`
//! for nearest.

use std::path::Path;

use burn::prelude::*;
use image::RgbImage;
use serde_json::Value;

use crate::error::{ModelError, Result, read_json};

/// OpenAI CLIP's normalisation (`OPENAI_CLIP_MEAN` / `OPENAI_CLIP_STD` in transformers).
pub const OPENAI_CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
/// OpenAI CLIP's per-channel standard deviation.
pub const OPENAI_CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];
/// ImageNet's normalisation (`IMAGENET_DEFAULT_MEAN`), used by DINO.
pub const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
/// ImageNet's per-channel standard deviation (`IMAGENET_DEFAULT_STD`).
pub const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];
/// `IMAGENET_STANDARD_MEAN` / `_STD`, `ViTImageProcessor`'s defaults.
pub const IMAGENET_STANDARD: [f64; 3] = [0.5, 0.5, 0.5];

/// Pillow's resampling filters, numbered as `PIL.Image.Resampling` (the `resample` config key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    Nearest,
    Lanczos,
    Bilinear,
    Bicubic,
    Box,
    Hamming,
}

impl Resample {
    /// The filter for a `PIL.Image.Resampling` value (0 nearest … 5 hamming).
    pub fn from_pil(code: i64) -> Option<Self> {
        Some(match code {
            0 => Resample::Nearest,
            1 => Resample::Lanczos,
            2 => Resample::Bilinear,
            3 => Resample::Bicubic,
            4 => Resample::Box,
            5 => Resample::Hamming,
            _ => return None,
        })
    }

    /// Pillow's filter support radius at scale 1 (`None` for nearest, which is not a convolution).
    fn support(self) -> Option<f64> {
        match self {
            Resample::Nearest => None,
            Resample::Box => Some(0.5),
            Resample::Bilinear | Resample::Hamming => Some(1.0),
            Resample::Bicubic => Some(2.0),
            Resample::Lanczos => Some(3.0),
        }
    }

    /// Pillow's filter kernels, with its exact expressions (e.g. hamming's float constants).
    fn kernel(self, x: f64) -> f64 {
        fn sinc(x: f64) -> f64 {
            if x == 0.0 {
                1.0
            } else {
                let x = x * std::f64::consts::PI;
                x.sin() / x
            }
        }
        match self {
            Resample::Nearest => 0.0,
            Resample::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Resample::Bilinear => {
                let x = x.abs();
                if x < 1.0 { 1.0 - x } else { 0.0 }
            }
            Resample::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let x = x * std::f64::consts::PI;
                    // Pillow writes 0.54f and 0.46f: single-precision constants widened to double.
                    x.sin() / x * (0.54f32 as f64 + 0.46f32 as f64 * x.cos())
                }
            }
            Resample::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Resample::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

/// How the image is resized before cropping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeTarget {
    /// Shortest side to this length, aspect ratio kept (`{"shortest_edge": n}`).
    ShortestEdge(usize),
    /// Exactly this size, aspect ratio not kept (`{"height": h, "width": w}`).
    Exact { height: usize, width: usize },
}

/// Per-channel `(x - mean) / std`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalization {
    pub mean: [f64; 3],
    pub std: [f64; 3],
}

/// One processed image: channels-first `[3, height, width]` values.
#[derive(Debug, Clone, PartialEq)]
pub struct PixelValues {
    pub height: usize,
    pub width: usize,
    /// `3 * height * width` values, channel-major.
    pub data: Vec<f32>,
}

impl PixelValues {
    /// Stacks images of one size into a `[N, 3, H, W]` tensor.
    pub fn stack<B: Backend>(images: &[PixelValues], device: &B::Device) -> Result<Tensor<B, 4>> {
        let Some(first) = images.first() else {
            return Err(ModelError::Invalid("no images to stack".into()));
        };
        let (h, w) = (first.height, first.width);
        let mut data = Vec::with_capacity(images.len() * 3 * h * w);
        for img in images {
            if (img.height, img.width) != (h, w) {
                return Err(ModelError::Invalid(format!(
                    "cannot stack a {}x{} image with {}x{} ones",
                    img.width, img.height, w, h
                )));
            }
            data.extend_from_slice(&img.data);
        }
        Ok(Tensor::from_data(
            TensorData::new(data, [images.len(), 3, h, w]),
            device,
        ))
    }
}

/// A configured image processor: resize → centre crop → rescale → normalise.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocessor {
    /// `None` when `do_resize` is false.
    pub resize: Option<ResizeTarget>,
    pub resample: Resample,
    /// `(height, width)`; `None` when `do_center_crop` is false (or the class has no crop).
    pub center_crop: Option<(usize, usize)>,
    /// `None` when `do_rescale` is false.
    pub rescale_factor: Option<f64>,
    /// `None` when `do_normalize` is false.
    pub normalize: Option<Normalization>,
}

/// Which processor class a config belongs to: it decides defaults and how an int `size` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProcessorClass {
    /// `CLIPImageProcessor`, `BitImageProcessor` and the like: shortest edge, then crop.
    Clip,
    /// `ViTImageProcessor`: square resize, no crop.
    Vit,
}

impl Preprocessor {
    /// `CLIPImageProcessor()`'s defaults: shortest edge 224 (bicubic), crop 224, OpenAI mean/std.
    pub fn clip_default() -> Self {
        Self {
            resize: Some(ResizeTarget::ShortestEdge(224)),
            resample: Resample::Bicubic,
            center_crop: Some((224, 224)),
            rescale_factor: Some(1.0 / 255.0),
            normalize: Some(Normalization {
                mean: OPENAI_CLIP_MEAN,
                std: OPENAI_CLIP_STD,
            }),
        }
    }

    /// `ViTImageProcessor()`'s defaults: 224x224 bilinear, mean/std 0.5.
    pub fn vit_default() -> Self {
        Self {
            resize: Some(ResizeTarget::Exact {
                height: 224,
                width: 224,
            }),
            resample: Resample::Bilinear,
            center_crop: None,
            rescale_factor: Some(1.0 / 255.0),
            normalize: Some(Normalization {
                mean: IMAGENET_STANDARD,
                std: IMAGENET_STANDARD,
            }),
        }
    }

    /// What `facebook/dino-vits16` ships: 224x224 bilinear with ImageNet mean/std.
    pub fn dino_default() -> Self {
        Self {
            normalize: Some(Normalization {
                mean: IMAGENET_MEAN,
                std: IMAGENET_STD,
            }),
            ..Self::vit_default()
        }
    }

    /// Reads a `preprocessor_config.json`; absent keys take the defaults of the class it names.
    pub fn from_file(path: &Path) -> Result<Self> {
        let value: Value = read_json(path)?;
        Self::from_value(&value, path)
    }

    /// Parses a preprocessor config object; `path` is what errors name.
    pub fn from_value(value: &Value, path: &Path) -> Result<Self> {
        let obj = value
            .as_object()
            .ok_or_else(|| ModelError::config(path, "expected a JSON object"))?;
        let class_name = ["image_processor_type", "feature_extractor_type"]
            .iter()
            .find_map(|k| obj.get(*k).and_then(Value::as_str))
            .unwrap_or("");
        let class = if class_name.starts_with("ViT") {
            ProcessorClass::Vit
        } else {
            if !class_name.is_empty()
                && !class_name.starts_with("CLIP")
                && !class_name.starts_with("Bit")
            {
                tracing::warn!(
                    "{}: `{class_name}` read as a CLIPImageProcessor (resize, centre crop, normalise)",
                    path.display()
                );
            }
            ProcessorClass::Clip
        };
        let defaults = match class {
            ProcessorClass::Clip => Self::clip_default(),
            ProcessorClass::Vit => Self::vit_default(),
        };
        let get = |key: &str| obj.get(key).filter(|v| !v.is_null());
        let flag = |key: &str, default: bool| -> Result<bool> {
            match get(key) {
                None => Ok(default),
                Some(v) => v
                    .as_bool()
                    .ok_or_else(|| ModelError::config(path, format!("`{key}` must be a boolean"))),
            }
        };

        let resize = if flag("do_resize", true)? {
            match get("size") {
                None => defaults.resize,
                Some(v) => Some(parse_size(v, class, path)?),
            }
        } else {
            None
        };
        let resample = match get("resample") {
            None => defaults.resample,
            Some(v) => {
                let code = v.as_i64().ok_or_else(|| {
                    ModelError::config(path, "`resample` must be a PIL resampling number")
                })?;
                Resample::from_pil(code)
                    .ok_or_else(|| ModelError::unsupported(path, "resample", code))?
            }
        };
        // ViTImageProcessor has no centre crop, whatever the file says.
        let center_crop = if class == ProcessorClass::Clip && flag("do_center_crop", true)? {
            match get("crop_size") {
                None => defaults.center_crop,
                Some(v) => Some(parse_crop(v, path)?),
            }
        } else {
            None
        };
        let rescale_factor = if flag("do_rescale", true)? {
            match get("rescale_factor") {
                None => defaults.rescale_factor,
                Some(v) => Some(v.as_f64().ok_or_else(|| {
                    ModelError::config(path, "`rescale_factor` must be a number")
                })?),
            }
        } else {
            None
        };
        let normalize = if flag("do_normalize", true)? {
            let base = defaults.normalize.unwrap_or(Normalization {
                mean: IMAGENET_STANDARD,
                std: IMAGENET_STANDARD,
            });
            let channels = |key: &str, default: [f64; 3]| -> Result<[f64; 3]> {
                match get(key) {
                    None => Ok(default),
                    Some(v) => parse_channels(v, key, path),
                }
            };
            let norm = Normalization {
                mean: channels("image_mean", base.mean)?,
                std: channels("image_std", base.std)?,
            };
            if norm.std.contains(&0.0) {
                return Err(ModelError::config(path, "`image_std` has a zero entry"));
            }
            Some(norm)
        } else {
            None
        };
        Ok(Self {
            resize,
            resample,
            center_crop,
            rescale_factor,
            normalize,
        })
    }

    /// The `(height, width)` the resize step produces for a `width` x `height` image.
    pub fn resized_size(&self, width: usize, height: usize) -> (usize, usize) {
        match self.resize {
            None => (height, width),
            Some(ResizeTarget::Exact { height, width }) => (height, width),
            Some(ResizeTarget::ShortestEdge(size)) => {
                // transformers' get_resize_output_image_size(default_to_square=False).
                let (short, long) = if width <= height {
                    (width, height)
                } else {
                    (height, width)
                };
                if short == size {
                    return (height, width);
                }
                let new_long = ((size * long) as f64 / short as f64) as usize;
                if width <= height {
                    (new_long, size)
                } else {
                    (size, new_long)
                }
            }
        }
    }

    /// The `(height, width)` of the output for a `width` x `height` image.
    pub fn output_size(&self, width: usize, height: usize) -> (usize, usize) {
        self.center_crop
            .unwrap_or_else(|| self.resized_size(width, height))
    }

    /// Processes one image.
    pub fn process(&self, image: &RgbImage) -> Result<PixelValues> {
        self.process_rgb8(
            image.width() as usize,
            image.height() as usize,
            image.as_raw(),
        )
    }

    /// Processes raw interleaved RGB bytes (`width * height * 3`, rows top to bottom).
    pub fn process_rgb8(&self, width: usize, height: usize, rgb: &[u8]) -> Result<PixelValues> {
        if width == 0 || height == 0 {
            return Err(ModelError::Invalid(format!(
                "cannot preprocess an empty {width}x{height} image"
            )));
        }
        if rgb.len() != width * height * 3 {
            return Err(ModelError::Invalid(format!(
                "a {width}x{height} RGB image needs {} bytes, got {}",
                width * height * 3,
                rgb.len()
            )));
        }
        let (rh, rw) = self.resized_size(width, height);
        if rh == 0 || rw == 0 {
            return Err(ModelError::Invalid(format!(
                "a {width}x{height} image resizes to an empty {rw}x{rh} one"
            )));
        }
        let resized = resize_rgb8(rgb, width, height, rw, rh, self.resample);
        let (oh, ow, pixels) = match self.center_crop {
            Some((ch, cw)) => (ch, cw, center_crop_rgb8(&resized, rw, rh, cw, ch)),
            None => (rh, rw, resized),
        };
        Ok(PixelValues {
            height: oh,
            width: ow,
            data: self.to_chw(&pixels, ow, oh),
        })
    }

    /// Processes images of any sizes into one `[N, 3, H, W]` tensor (the crop or an exact resize
    /// must give them one size).
    pub fn batch<B: Backend>(
        &self,
        images: &[RgbImage],
        device: &B::Device,
    ) -> Result<Tensor<B, 4>> {
        let processed = images
            .iter()
            .map(|img| self.process(img))
            .collect::<Result<Vec<_>>>()?;
        PixelValues::stack(&processed, device)
    }

    /// Rescale then normalise as transformers does: `f32(f64(v) * factor)`, then
    /// `(x - f32(mean)) / f32(std)` in f32.
    fn to_chw(&self, hwc: &[u8], width: usize, height: usize) -> Vec<f32> {
        let plane = width * height;
        let mut out = vec![0f32; 3 * plane];
        let norm = self
            .normalize
            .map(|n| (n.mean.map(|m| m as f32), n.std.map(|s| s as f32)));
        for (i, px) in hwc.chunks_exact(3).enumerate() {
            for c in 0..3 {
                let mut x = match self.rescale_factor {
                    Some(f) => (px[c] as f64 * f) as f32,
                    None => px[c] as f32,
                };
                if let Some((mean, std)) = norm {
                    x = (x - mean[c]) / std[c];
                }
                out[c * plane + i] = x;
            }
        }
        out
    }
}

fn positive(v: &Value, what: &str, path: &Path) -> Result<usize> {
    match v.as_u64() {
        Some(n) if n > 0 => Ok(n as usize),
        _ => Err(ModelError::config(
            path,
            format!("`{what}` must be a positive integer, got {v}"),
        )),
    }
}

/// `size`: an int (shortest edge for CLIP-like classes, a square for ViT), `{shortest_edge}` or
/// `{height, width}`.
fn parse_size(v: &Value, class: ProcessorClass, path: &Path) -> Result<ResizeTarget> {
    if v.is_number() {
        let n = positive(v, "size", path)?;
        return Ok(match class {
            ProcessorClass::Clip => ResizeTarget::ShortestEdge(n),
            ProcessorClass::Vit => ResizeTarget::Exact {
                height: n,
                width: n,
            },
        });
    }
    let get = |k: &str| v.get(k).filter(|x| !x.is_null());
    if let Some(s) = get("shortest_edge") {
        if get("longest_edge").is_some() {
            return Err(ModelError::unsupported(path, "size", v));
        }
        return Ok(ResizeTarget::ShortestEdge(positive(
            s,
            "size.shortest_edge",
            path,
        )?));
    }
    match (get("height"), get("width")) {
        (Some(h), Some(w)) => Ok(ResizeTarget::Exact {
            height: positive(h, "size.height", path)?,
            width: positive(w, "size.width", path)?,
        }),
        _ => Err(ModelError::unsupported(path, "size", v)),
    }
}

/// `crop_size`: an int (square) or `{height, width}`.
fn parse_crop(v: &Value, path: &Path) -> Result<(usize, usize)> {
    if v.is_number() {
        let n = positive(v, "crop_size", path)?;
        return Ok((n, n));
    }
    match (v.get("height"), v.get("width")) {
        (Some(h), Some(w)) => Ok((
            positive(h, "crop_size.height", path)?,
            positive(w, "crop_size.width", path)?,
        )),
        _ => Err(ModelError::unsupported(path, "crop_size", v)),
    }
}

/// `image_mean` / `image_std`: one number for all channels or three.
fn parse_channels(v: &Value, key: &str, path: &Path) -> Result<[f64; 3]> {
    if let Some(x) = v.as_f64() {
        return Ok([x; 3]);
    }
    let bad = || ModelError::config(path, format!("`{key}` must be a number or 3 numbers"));
    let arr = v.as_array().ok_or_else(bad)?;
    if arr.len() != 3 {
        return Err(bad());
    }
    let mut out = [0.0; 3];
    for (o, x) in out.iter_mut().zip(arr) {
        *o = x.as_f64().ok_or_else(bad)?;
    }
    Ok(out)
}

/// transformers' `center_crop`: the centred window, `floor((size - crop) / 2)` from the top-left,
/// with zeros where the window leaves the image (when the crop is larger than the image).
pub fn center_crop_rgb8(
    src: &[u8],
    width: usize,
    height: usize,
    crop_width: usize,
    crop_height: usize,
) -> Vec<u8> {
    let top = (height as i64 - crop_height as i64).div_euclid(2);
    let left = (width as i64 - crop_width as i64).div_euclid(2);
    let mut out = vec![0u8; crop_width * crop_height * 3];
    for y in 0..crop_height {
        let sy = y as i64 + top;
        if sy < 0 || sy >= height as i64 {
            continue;
        }
        for x in 0..crop_width {
            let sx = x as i64 + left;
            if sx < 0 || sx >= width as i64 {
                continue;
            }
            let s = (sy as usize * width + sx as usize) * 3;
            let d = (y * crop_width + x) * 3;
            out[d..d + 3].copy_from_slice(&src[s..s + 3]);
        }
    }
    out
}

/// Pillow's `Image.resize(size, resample)` on an 8-bit RGB image (interleaved, `width * height * 3`).
pub fn resize_rgb8(
    src: &[u8],
    width: usize,
    height: usize,
    out_width: usize,
    out_height: usize,
    resample: Resample,
) -> Vec<u8> {
    if (out_width, out_height) == (width, height) {
        return src.to_vec();
    }
    let Some(support) = resample.support() else {
        return nearest_rgb8(src, width, height, out_width, out_height);
    };
    let need_horizontal = out_width != width;
    let need_vertical = out_height != height;
    // Pillow 13 runs the vertical pass first when the height shrinks by more than twice what the
    // width does; the order changes the rounding of the 8-bit intermediate.
    let shrink_h = height as i64 - out_height as i64;
    let shrink_w = width as i64 - out_width as i64;
    let vertical_first = shrink_h > 0 && shrink_h > shrink_w * 2;
    let vert = Coefficients::new(height, out_height, support, resample);
    let horiz = Coefficients::new(width, out_width, support, resample);
    if vertical_first {
        let tmp = if need_vertical {
            vertical_pass(src, width, &vert, 0)
        } else {
            src.to_vec()
        };
        if need_horizontal {
            horizontal_pass(&tmp, width, 0..out_height, &horiz)
        } else {
            tmp
        }
    } else {
        // Only the source rows the vertical pass reads go through the horizontal pass.
        let first_row = vert.bounds.first().map(|b| b.0).unwrap_or(0);
        let last_row = vert
            .bounds
            .last()
            .map(|(start, len)| start + len)
            .unwrap_or(height);
        if !need_horizontal {
            return vertical_pass(src, width, &vert, 0);
        }
        let tmp = horizontal_pass(src, width, first_row..last_row, &horiz);
        if need_vertical {
            vertical_pass(&tmp, out_width, &vert, first_row)
        } else {
            tmp
        }
    }
}

/// Pillow's `ImagingResampleHorizontal_8bpc` on the given source rows.
fn horizontal_pass(
    src: &[u8],
    width: usize,
    rows: std::ops::Range<usize>,
    coeffs: &Coefficients,
) -> Vec<u8> {
    let out_width = coeffs.bounds.len();
    let mut out = vec![0u8; out_width * rows.len() * 3];
    for (y, row_index) in rows.enumerate() {
        let row = &src[row_index * width * 3..(row_index + 1) * width * 3];
        for (xx, (start, len)) in coeffs.bounds.iter().enumerate() {
            let k = &coeffs.fixed[xx * coeffs.ksize..xx * coeffs.ksize + len];
            let mut acc = [1i32 << (PRECISION_BITS - 1); 3];
            for (i, &kx) in k.iter().enumerate() {
                let p = &row[(start + i) * 3..(start + i) * 3 + 3];
                for c in 0..3 {
                    acc[c] += p[c] as i32 * kx;
                }
            }
            let d = (y * out_width + xx) * 3;
            for c in 0..3 {
                out[d + c] = clip8(acc[c]);
            }
        }
    }
    out
}

/// Pillow's `ImagingResampleVertical_8bpc`; `src` starts at source row `row_offset`.
fn vertical_pass(src: &[u8], width: usize, coeffs: &Coefficients, row_offset: usize) -> Vec<u8> {
    let out_height = coeffs.bounds.len();
    let mut out = vec![0u8; width * out_height * 3];
    for (yy, (start, len)) in coeffs.bounds.iter().enumerate() {
        let k = &coeffs.fixed[yy * coeffs.ksize..yy * coeffs.ksize + len];
        let start = start - row_offset;
        for x in 0..width {
            let mut acc = [1i32 << (PRECISION_BITS - 1); 3];
            for (i, &ky) in k.iter().enumerate() {
                let s = ((start + i) * width + x) * 3;
                for c in 0..3 {
                    acc[c] += src[s + c] as i32 * ky;
                }
            }
            let d = (yy * width + x) * 3;
            for c in 0..3 {
                out[d + c] = clip8(acc[c]);
            }
        }
    }
    out
}

/// Fixed-point fraction bits of Pillow's 8-bit resampling (`32 - 8 - 2`).
const PRECISION_BITS: u32 = 22;

/// Pillow's `clip8`: drop the fraction bits (arithmetic shift) and clamp to 0..=255.
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` along one axis.
struct Coefficients {
    /// Per output pixel: first source pixel and how many are read.
    bounds: Vec<(usize, usize)>,
    /// `ksize` fixed-point weights per output pixel.
    fixed: Vec<i32>,
    ksize: usize,
}

impl Coefficients {
    fn new(in_size: usize, out_size: usize, filter_support: f64, filter: Resample) -> Self {
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = filter_support * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let mut bounds = Vec::with_capacity(out_size);
        let mut fixed = vec![0i32; out_size * ksize];
        let mut k = vec![0f64; ksize];
        for xx in 0..out_size {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            // C's (int) truncates toward zero, as `as` does.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let len = xmax.saturating_sub(xmin).min(ksize);
            let mut ww = 0.0;
            for (x, kx) in k.iter_mut().enumerate().take(len) {
                let w = filter.kernel(((x + xmin) as f64 - center + 0.5) * ss);
                *kx = w;
                ww += w;
            }
            for x in 0..len {
                if ww != 0.0 {
                    k[x] /= ww;
                }
                let v = k[x] * (1u32 << PRECISION_BITS) as f64;
                fixed[xx * ksize + x] = if k[x] < 0.0 {
                    (-0.5 + v) as i32
                } else {
                    (0.5 + v) as i32
                };
            }
            bounds.push((xmin, len));
        }
        Self {
            bounds,
            fixed,
            ksize,
        }
    }
}

/// Pillow's nearest resize (`ImagingScaleAffine`): source coordinate accumulated in f64 from the
/// pixel centre and truncated.
fn nearest_rgb8(
    src: &[u8],
    width: usize,
    height: usize,
    out_width: usize,
    out_height: usize,
) -> Vec<u8> {
    let coords = |in_size: usize, out_size: usize| -> Vec<Option<usize>> {
        let step = in_size as f64 / out_size as f64;
        let mut pos = step * 0.5;
        (0..out_size)
            .map(|_| {
                let i = if pos < 0.0 { -1 } else { pos as i64 };
                pos += step;
                (0..in_size as i64).contains(&i).then_some(i as usize)
            })
            .collect()
    };
    let xs = coords(width, out_width);
    let ys = coords(height, out_height);
    let mut out = vec![0u8; out_width * out_height * 3];
    for (y, sy) in ys.iter().enumerate() {
        let Some(sy) = sy else { continue };
        for (x, sx) in xs.iter().enumerate() {
            let Some(sx) = sx else { continue };
            let s = (sy * width + sx) * 3;
            let d = (y * out_width + x) * 3;
            out[d..d + 3].copy_from_slice(&src[s..s + 3]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortest_edge_sizes_follow_transformers() {
        let p = Preprocessor::clip_default();
        assert_eq!(p.resized_size(300, 200), (224, 336));
        assert_eq!(p.resized_size(64, 97), (339, 224));
        assert_eq!(p.resized_size(224, 500), (500, 224));
        assert_eq!(p.output_size(300, 200), (224, 224));
    }

    #[test]
    fn identity_resize_is_a_copy() {
        let src: Vec<u8> = (0..5 * 4 * 3).map(|v| v as u8).collect();
        assert_eq!(resize_rgb8(&src, 5, 4, 5, 4, Resample::Bicubic), src);
    }

    #[test]
    fn flat_image_stays_flat() {
        let src = vec![77u8; 37 * 23 * 3];
        for f in [
            Resample::Nearest,
            Resample::Lanczos,
            Resample::Bilinear,
            Resample::Bicubic,
            Resample::Box,
            Resample::Hamming,
        ] {
            let out = resize_rgb8(&src, 37, 23, 11, 50, f);
            assert!(out.iter().all(|&v| v == 77), "{f:?}");
        }
    }

    #[test]
    fn crop_pads_with_zeros_like_transformers() {
        // 1x2 image, crop 1x4: top = floor((2 - 4) / 2) = -1, so rows land at 1 and 2.
        let src = [10, 10, 10, 20, 20, 20];
        let out = center_crop_rgb8(&src, 1, 2, 1, 4);
        assert_eq!(out, [0, 0, 0, 10, 10, 10, 20, 20, 20, 0, 0, 0]);
    }

    #[test]
    fn config_errors_name_the_key() {
        let path = Path::new("p.json");
        let err = Preprocessor::from_value(&serde_json::json!({"resample": 9}), path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("p.json") && err.contains("resample"), "{err}");
        let err = Preprocessor::from_value(&serde_json::json!({"size": {"foo": 1}}), path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("size"), "{err}");
    }
}
