//! Photo import: each file is decoded, turned upright (EXIF orientation), checked (an image, big
//! enough, a still, convertible to RGB8), then kept as three files — the original byte for byte,
//! a normalized RGB8 PNG and a thumbnail — and flagged when it is blurry or nearly a duplicate.
//! A file that fails any step leaves nothing behind.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::codecs::gif::GifDecoder;
use image::codecs::png::PngDecoder;
use image::codecs::webp::WebPDecoder;
use image::{
    AnimationDecoder, DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, RgbImage,
    imageops,
};
use likeness_models::png_meta::{encode_png, write_atomic};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{Result, StudioError};
use crate::workspace::{
    Photo, PhotoFlags, PhotoId, ProjectId, Workspace, now, remove_file_if_present,
};

/// Longest side of a thumbnail, and of the grayscale copy sharpness is measured on.
pub const THUMBNAIL_SIDE: u32 = 256;

/// Below this variance of the Laplacian (on the 256-px grayscale copy, pixel values 0–255) a
/// photo is flagged blurry. The import tests' sharp synthetic 640×480 photo (hard edges, fine
/// texture) scores about 630; the same photo blurred with a Gaussian of sigma 3 scores about 72.
pub const DEFAULT_BLUR_THRESHOLD: f64 = 100.0;

/// Photos whose difference hashes differ in at most this many of 64 bits are near-duplicates.
pub const DEFAULT_NEAR_DUPLICATE_BITS: u32 = 6;

/// Files larger than this are refused before reading (no photo is this big).
const MAX_FILE_BYTES: u64 = 256 << 20;

/// Extensions a folder's files must have to be imported from it (a file named explicitly is
/// always tried). Formats Likeness cannot decode are listed so the user hears why they were left.
const IMAGE_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "jpe", "jfif", "png", "apng", "gif", "webp", "bmp", "tif", "tiff", "heic",
    "heif", "avif",
];

/// How photos are checked and normalized.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportOptions {
    /// Photos whose shorter side is below this many pixels are refused.
    pub min_side: u32,
    /// The normalized copy's longest side is at most this many pixels.
    pub max_side: u32,
    /// Sharpness (variance of the Laplacian) below which a photo is flagged blurry.
    pub blur_threshold: f64,
    /// Hamming distance of difference hashes up to which a photo is flagged a near-duplicate.
    pub near_duplicate_bits: u32,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            min_side: 256,
            max_side: 1024,
            blur_threshold: DEFAULT_BLUR_THRESHOLD,
            near_duplicate_bits: DEFAULT_NEAR_DUPLICATE_BITS,
        }
    }
}

/// What an import did with each file it was given.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImportReport {
    /// Photos now in the project, in the order they were imported.
    pub imported: Vec<ImportedPhoto>,
    /// Files left out, with the reason.
    pub skipped: Vec<SkippedFile>,
}

/// A photo that was kept, and what was done to it on the way.
#[derive(Debug, Clone, Serialize)]
pub struct ImportedPhoto {
    pub source: PathBuf,
    pub photo: Photo,
    /// Conversions worth telling the user ("16-bit converted to 8-bit"…).
    pub notes: Vec<String>,
}

/// A file that was not imported.
#[derive(Debug, Clone, Serialize)]
pub struct SkippedFile {
    pub path: PathBuf,
    pub reason: SkipReason,
}

/// Why a file was not imported; `Display` gives the one-line reason.
#[derive(Debug, Clone, PartialEq, Serialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SkipReason {
    /// The path could not be read (missing, a folder that cannot be listed, too large…).
    #[error("cannot read it: {message}")]
    Unreadable { message: String },
    /// The content is not a picture format at all.
    #[error("not an image")]
    NotAnImage,
    /// A picture format this build cannot decode.
    #[error("unsupported image format {format} (use JPEG, PNG, WebP or GIF)")]
    UnsupportedFormat { format: String },
    /// The picture is damaged or truncated.
    #[error("damaged or truncated image: {message}")]
    Damaged { message: String },
    /// The shorter side is below `min_side`.
    #[error("too small: {width}x{height}, the shorter side must be at least {min_side} px")]
    TooSmall {
        width: u32,
        height: u32,
        min_side: u32,
    },
    /// An animated GIF, PNG or WebP.
    #[error("animated images are not photos; export one frame as a still")]
    Animated,
    /// Pixels that do not become RGB8 faithfully (floating-point HDR…).
    #[error("unsupported colour: {colour}")]
    UnsupportedColour { colour: String },
    /// The same picture is already in the project.
    #[error("already in the project as photo {of}")]
    Duplicate { of: PhotoId },
    /// The workspace could not store it.
    #[error("could not be saved: {message}")]
    NotSaved { message: String },
}

/// A photo decoded, upright and in RGB8, with the conversions it needed.
#[derive(Debug, Clone)]
pub struct DecodedPhoto {
    pub image: RgbImage,
    pub format: ImageFormat,
    pub notes: Vec<String>,
}

/// Decodes a photo's bytes, applies its EXIF orientation and converts it to RGB8, refusing what
/// is not a still picture of at least `min_side` pixels on its shorter side.
pub fn decode_photo(bytes: &[u8], min_side: u32) -> std::result::Result<DecodedPhoto, SkipReason> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| SkipReason::Unreadable {
            message: e.to_string(),
        })?;
    let Some(format) = reader.format() else {
        return Err(match heif_brand(bytes) {
            Some(brand) => SkipReason::UnsupportedFormat { format: brand },
            None => SkipReason::NotAnImage,
        });
    };
    if is_animated(bytes, format) {
        return Err(SkipReason::Animated);
    }
    let decoder = reader
        .into_decoder()
        .map_err(|e| decode_failure(e, format))?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(SkipReason::Damaged {
            message: "the picture has no pixels".into(),
        });
    }
    // Rotation swaps the sides but not which is shorter, so this check can precede decoding.
    if width.min(height) < min_side {
        return Err(SkipReason::TooSmall {
            width,
            height,
            min_side,
        });
    }
    let image =
        likeness_train::data::decode_upright(decoder).map_err(|e| decode_failure(e, format))?;

    let mut notes = Vec::new();
    if format == ImageFormat::Jpeg && jpeg_components(bytes) == Some(4) {
        notes.push("CMYK converted to RGB".to_string());
    }
    let rgb = to_rgb8(image, &mut notes)?;
    Ok(DecodedPhoto {
        image: rgb,
        format,
        notes,
    })
}

fn decode_failure(err: ImageError, format: ImageFormat) -> SkipReason {
    match err {
        ImageError::Unsupported(e) => match e.kind() {
            image::error::UnsupportedErrorKind::Color(c) => SkipReason::UnsupportedColour {
                colour: format!("{c:?}"),
            },
            image::error::UnsupportedErrorKind::Format(_) => SkipReason::UnsupportedFormat {
                format: format!("{format:?}").to_uppercase(),
            },
            _ => SkipReason::Damaged {
                message: e.to_string(),
            },
        },
        ImageError::Limits(e) => SkipReason::Unreadable {
            message: format!("too large to decode ({e})"),
        },
        e => SkipReason::Damaged {
            message: e.to_string(),
        },
    }
}

/// "HEIC" or "AVIF" for an ISO-BMFF picture (phones save HEIC), which this build cannot decode.
fn heif_brand(bytes: &[u8]) -> Option<String> {
    if bytes.get(4..8)? != b"ftyp" {
        return None;
    }
    match bytes.get(8..12)? {
        b"heic" | b"heix" | b"hevc" | b"heim" | b"heis" | b"mif1" | b"msf1" => Some("HEIC".into()),
        b"avif" | b"avis" => Some("AVIF".into()),
        _ => None,
    }
}

/// Whether a GIF, PNG or WebP holds more than one frame. Undecodable files answer no: decoding
/// proper reports what is wrong with them.
fn is_animated(bytes: &[u8], format: ImageFormat) -> bool {
    match format {
        ImageFormat::Gif => GifDecoder::new(Cursor::new(bytes))
            .map(|d| d.into_frames().take(2).count() > 1)
            .unwrap_or(false),
        ImageFormat::Png => PngDecoder::new(Cursor::new(bytes))
            .ok()
            .filter(|d| d.is_apng().unwrap_or(false))
            .and_then(|d| d.apng().ok())
            .map(|a| a.into_frames().take(2).count() > 1)
            .unwrap_or(false),
        ImageFormat::WebP => WebPDecoder::new(Cursor::new(bytes))
            .map(|d| d.has_animation())
            .unwrap_or(false),
        _ => false,
    }
}

/// The number of colour components in a JPEG's frame header (4 for CMYK/YCCK), if found.
fn jpeg_components(bytes: &[u8]) -> Option<u8> {
    if bytes.get(0..2)? != [0xFF, 0xD8] {
        return None;
    }
    let mut i = 2;
    loop {
        if *bytes.get(i)? != 0xFF {
            return None;
        }
        while *bytes.get(i)? == 0xFF {
            i += 1;
        }
        let marker = *bytes.get(i)?;
        i += 1;
        match marker {
            0x01 | 0xD0..=0xD8 => continue,
            0xD9 | 0xDA => return None,
            // Start-of-frame markers (C4, C8 and CC are tables, not frames).
            0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => {
                return bytes.get(i + 7).copied();
            }
            _ => {
                let len = u16::from_be_bytes([*bytes.get(i)?, *bytes.get(i + 1)?]) as usize;
                i += len;
            }
        }
    }
}

/// Converts any decoded picture to RGB8: 16-bit is scaled down, transparency is flattened onto
/// white, floating point is refused (HDR has no single faithful 8-bit rendering).
fn to_rgb8(
    image: DynamicImage,
    notes: &mut Vec<String>,
) -> std::result::Result<RgbImage, SkipReason> {
    use image::ColorType as C;
    let colour = image.color();
    match colour {
        C::L8 | C::La8 | C::Rgb8 | C::Rgba8 => {}
        C::L16 | C::La16 | C::Rgb16 | C::Rgba16 => {
            notes.push("16-bit converted to 8-bit".to_string());
        }
        C::Rgb32F | C::Rgba32F => {
            return Err(SkipReason::UnsupportedColour {
                colour: "32-bit floating point (HDR)".into(),
            });
        }
        other => {
            return Err(SkipReason::UnsupportedColour {
                colour: format!("{other:?}"),
            });
        }
    }
    if !colour.has_alpha() {
        return Ok(image.to_rgb8());
    }
    let rgba = image.to_rgba8();
    if rgba.pixels().all(|p| p.0[3] == 255) {
        return Ok(image.to_rgb8());
    }
    notes.push("transparency flattened onto white".to_string());
    let (w, h) = rgba.dimensions();
    Ok(RgbImage::from_fn(w, h, |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let a = a as u32;
        let over_white = |c: u8| ((c as u32 * a + 255 * (255 - a) + 127) / 255) as u8;
        image::Rgb([over_white(r), over_white(g), over_white(b)])
    }))
}

/// Scales `img` down so its longest side is at most `side` (never up), Catmull-Rom as the
/// trainer resizes.
pub fn fit_within(img: &RgbImage, side: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let long = w.max(h);
    if long <= side || side == 0 {
        return img.clone();
    }
    let scale = |v: u32| ((v as u64 * side as u64 + long as u64 / 2) / long as u64).max(1) as u32;
    imageops::resize(img, scale(w), scale(h), imageops::FilterType::CatmullRom)
}

/// SHA-256 (hex) of the size and RGB8 pixels: equal for byte-identical files and for re-encodings
/// that decode to the same picture.
pub fn content_hash(img: &RgbImage) -> String {
    let mut hasher = Sha256::new();
    hasher.update(img.width().to_le_bytes());
    hasher.update(img.height().to_le_bytes());
    hasher.update(img.as_raw());
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// 64-bit difference hash: the picture as 9×8 grayscale, one bit per horizontal neighbour pair
/// (set where the left pixel is brighter). Brightness shifts and rescaling leave it nearly equal.
pub fn dhash(img: &RgbImage) -> u64 {
    let gray = DynamicImage::ImageRgb8(img.clone()).to_luma8();
    let small = imageops::resize(&gray, 9, 8, imageops::FilterType::Triangle);
    let mut hash = 0u64;
    for y in 0..8 {
        for x in 0..8 {
            let bit = small.get_pixel(x, y).0[0] > small.get_pixel(x + 1, y).0[0];
            hash = (hash << 1) | bit as u64;
        }
    }
    hash
}

/// Number of differing bits of two difference hashes.
pub fn hamming(a: u64, b: u64) -> u32 {
    (a ^ b).count_ones()
}

/// Variance of the 4-neighbour Laplacian over a grayscale copy whose longest side is
/// [`THUMBNAIL_SIDE`] (values 0–255): high for crisp edges and texture, low for blur.
pub fn sharpness(img: &RgbImage) -> f64 {
    let small = fit_within(img, THUMBNAIL_SIDE);
    let gray = DynamicImage::ImageRgb8(small).to_luma8();
    let (w, h) = gray.dimensions();
    if w < 3 || h < 3 {
        return 0.0;
    }
    let px = |x: u32, y: u32| gray.get_pixel(x, y).0[0] as f64;
    let (mut sum, mut sum_sq, mut n) = (0.0, 0.0, 0.0);
    for y in 1..h - 1 {
        for x in 1..w - 1 {
            let lap = px(x - 1, y) + px(x + 1, y) + px(x, y - 1) + px(x, y + 1) - 4.0 * px(x, y);
            sum += lap;
            sum_sq += lap * lap;
            n += 1.0;
        }
    }
    let mean = sum / n;
    (sum_sq / n - mean * mean).max(0.0)
}

/// The files of a folder that look like pictures (by extension), sorted; hidden files are left.
fn folder_images(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with('.') || !path.is_file() {
            continue;
        }
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        if IMAGE_EXTENSIONS.contains(&ext.as_str()) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The extension the original's copy keeps: the source's (if plain), else the format's.
fn original_extension(source: &Path, format: ImageFormat) -> String {
    source
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .filter(|e| !e.is_empty() && e.len() <= 5 && e.chars().all(|c| c.is_ascii_alphanumeric()))
        .or_else(|| format.extensions_str().first().map(|e| e.to_string()))
        .unwrap_or_else(|| "img".into())
}

/// Writes each file atomically (creating its folder), listing what was written so a failure
/// part-way can be undone.
fn write_files(
    files: &[(&PathBuf, &[u8])],
    written: &mut Vec<PathBuf>,
) -> std::result::Result<(), SkipReason> {
    for (path, data) in files {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| SkipReason::NotSaved {
                message: format!("{}: {e}", parent.display()),
            })?;
        }
        write_atomic(path, data).map_err(|e| SkipReason::NotSaved {
            message: e.to_string(),
        })?;
        written.push(path.to_path_buf());
    }
    Ok(())
}

impl Workspace {
    /// Imports files and folders (a folder's direct picture files, sorted) into a project.
    /// Every file ends either imported or skipped with its reason; only a missing project or
    /// an unreadable database is an error.
    pub fn import_photos(
        &mut self,
        project: ProjectId,
        paths: &[PathBuf],
        opts: &ImportOptions,
    ) -> Result<ImportReport> {
        self.project(project)?;
        let mut report = ImportReport::default();
        let mut files = Vec::new();
        for path in paths {
            if path.is_dir() {
                match folder_images(path) {
                    Ok(found) => files.extend(found),
                    Err(e) => report.skipped.push(SkippedFile {
                        path: path.clone(),
                        reason: SkipReason::Unreadable {
                            message: e.to_string(),
                        },
                    }),
                }
            } else {
                files.push(path.clone());
            }
        }
        let mut known = self.photo_hashes(project)?;
        for file in files {
            match self.import_one(project, &file, opts, &known) {
                Ok(imported) => {
                    tracing::info!(
                        "{}: imported as photo {}",
                        file.display(),
                        imported.photo.id
                    );
                    known.push((imported.photo.id, imported.photo.dhash));
                    report.imported.push(imported);
                }
                Err(reason) => {
                    tracing::warn!("{}: skipped ({reason})", file.display());
                    report.skipped.push(SkippedFile { path: file, reason });
                }
            }
        }
        Ok(report)
    }

    /// (id, difference hash) of every photo of a project.
    fn photo_hashes(&self, project: ProjectId) -> Result<Vec<(PhotoId, u64)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, dhash FROM photos WHERE project_id = ?1 ORDER BY id")
            .map_err(|e| self.db_err(e))?;
        let rows = stmt
            .query_map([project], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)? as u64))
            })
            .map_err(|e| self.db_err(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.db_err(e))
    }

    fn import_one(
        &mut self,
        project: ProjectId,
        source: &Path,
        opts: &ImportOptions,
        known: &[(PhotoId, u64)],
    ) -> std::result::Result<ImportedPhoto, SkipReason> {
        let unreadable = |e: std::io::Error| SkipReason::Unreadable {
            message: e.to_string(),
        };
        let meta = std::fs::metadata(source).map_err(unreadable)?;
        if !meta.is_file() {
            return Err(SkipReason::Unreadable {
                message: "not a file".into(),
            });
        }
        if meta.len() > MAX_FILE_BYTES {
            return Err(SkipReason::Unreadable {
                message: format!("{} MiB is larger than any photo", meta.len() >> 20),
            });
        }
        let bytes = std::fs::read(source).map_err(unreadable)?;
        let decoded = decode_photo(&bytes, opts.min_side)?;
        let (width, height) = decoded.image.dimensions();
        let hash = content_hash(&decoded.image);

        let not_saved = |e: &dyn std::fmt::Display| SkipReason::NotSaved {
            message: e.to_string(),
        };
        let existing: Option<PhotoId> = self
            .conn
            .query_row(
                "SELECT id FROM photos WHERE project_id = ?1 AND content_hash = ?2",
                params![project, hash],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| not_saved(&e))?;
        if let Some(of) = existing {
            return Err(SkipReason::Duplicate { of });
        }

        let normalized = fit_within(&decoded.image, opts.max_side);
        let thumbnail = fit_within(&normalized, THUMBNAIL_SIDE);
        let photo_dhash = dhash(&normalized);
        let photo_sharpness = sharpness(&normalized);
        let near_duplicate_of = known
            .iter()
            .map(|&(id, h)| (hamming(h, photo_dhash), id))
            .filter(|&(d, _)| d <= opts.near_duplicate_bits)
            .min()
            .map(|(_, id)| id);
        let flags = PhotoFlags {
            near_duplicate_of,
            blurry: photo_sharpness < opts.blur_threshold,
        };

        let stem = &hash[..16];
        let dir = self.photos_dir(project);
        let original_file = dir.join("original").join(format!(
            "{stem}.{}",
            original_extension(source, decoded.format)
        ));
        let normalized_file = dir.join("normalized").join(format!("{stem}.png"));
        let thumbnail_file = dir.join("thumbs").join(format!("{stem}.png"));
        let normalized_png = encode_png(&normalized, &[]).map_err(|e| not_saved(&e))?;
        let thumbnail_png = encode_png(&thumbnail, &[]).map_err(|e| not_saved(&e))?;

        let mut written = Vec::new();
        let files = [
            (&original_file, &bytes[..]),
            (&normalized_file, &normalized_png[..]),
            (&thumbnail_file, &thumbnail_png[..]),
        ];
        let stored = write_files(&files, &mut written).and_then(|()| {
            self.insert_photo(
                project,
                source,
                [&original_file, &normalized_file, &thumbnail_file],
                (width, height),
                &hash,
                photo_dhash,
                photo_sharpness,
                &flags,
            )
            .map_err(|e| not_saved(&e))
        });
        let id = match stored {
            Ok(id) => id,
            Err(reason) => {
                for path in &written {
                    if let Err(e) = remove_file_if_present(path) {
                        tracing::warn!("cleaning up after a failed import: {e}");
                    }
                }
                return Err(reason);
            }
        };
        let photo = self.photo(id).map_err(|e| not_saved(&e))?;
        Ok(ImportedPhoto {
            source: source.to_path_buf(),
            photo,
            notes: decoded.notes,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn insert_photo(
        &self,
        project: ProjectId,
        source: &Path,
        [original, normalized, thumbnail]: [&Path; 3],
        (width, height): (u32, u32),
        hash: &str,
        photo_dhash: u64,
        photo_sharpness: f64,
        flags: &PhotoFlags,
    ) -> Result<PhotoId> {
        let flags = serde_json::to_string(flags)
            .map_err(|e| StudioError::Invalid(format!("photo flags: {e}")))?;
        let source_name = source
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        self.conn
            .execute(
                "INSERT INTO photos (project_id, source_name, original_file, normalized_file,
                     thumbnail_file, width, height, content_hash, dhash, sharpness, flags, added_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![
                    project,
                    source_name,
                    self.relative(original),
                    self.relative(normalized),
                    self.relative(thumbnail),
                    width,
                    height,
                    hash,
                    photo_dhash as i64,
                    photo_sharpness,
                    flags,
                    now(),
                ],
            )
            .map_err(|e| self.db_err(e))?;
        Ok(self.conn.last_insert_rowid())
    }

    /// The square picture DreamBooth trains on for this photo at `resolution`: the normalized
    /// file through the trainer's own resize-and-centre-crop (`likeness_train::data::fit_square`).
    pub fn crop_preview(&self, photo: PhotoId, resolution: u32) -> Result<RgbImage> {
        if resolution == 0 {
            return Err(StudioError::Invalid(
                "the resolution must be positive".into(),
            ));
        }
        let photo = self.photo(photo)?;
        let path = &photo.normalized_file;
        let img = image::open(path).map_err(|e| StudioError::Image {
            path: path.clone(),
            message: e.to_string(),
        })?;
        Ok(likeness_train::data::fit_square(&img, resolution))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(img: DynamicImage) -> Vec<u8> {
        let mut buf = Vec::new();
        img.write_to(&mut Cursor::new(&mut buf), ImageFormat::Jpeg)
            .expect("encode");
        buf
    }

    #[test]
    fn jpeg_frame_header_gives_the_component_count() {
        let rgb = jpeg(DynamicImage::ImageRgb8(RgbImage::new(16, 8)));
        let gray = jpeg(DynamicImage::ImageLuma8(image::GrayImage::new(16, 8)));
        assert_eq!(jpeg_components(&rgb), Some(3));
        assert_eq!(jpeg_components(&gray), Some(1));
        assert_eq!(jpeg_components(b"\xFF\xD8\xFF"), None);
        assert_eq!(jpeg_components(b"not a jpeg"), None);
    }

    #[test]
    fn heic_is_named_rather_than_called_not_an_image() {
        let heic = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic";
        assert_eq!(
            decode_photo(heic, 1).unwrap_err(),
            SkipReason::UnsupportedFormat {
                format: "HEIC".into()
            }
        );
    }
}
