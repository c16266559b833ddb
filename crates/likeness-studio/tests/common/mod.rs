//! Helpers for the studio tests: throw-away folders and pictures made at run time.

#![allow(dead_code)]

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use image::codecs::jpeg::JpegEncoder;
use image::{DynamicImage, ImageFormat, Rgb, RgbImage};

/// A folder under the system temp dir, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "likeness-studio-{}-{label}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A repository fixture under `tests/fixtures/data`.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/data")
        .join(rel)
}

/// A deterministic hash of (x, y, seed) in 0..256, for texture.
fn hash(x: u32, y: u32, seed: u32) -> u32 {
    let mut h = x
        .wrapping_mul(0x9E37_79B1)
        .wrapping_add(y.wrapping_mul(0x85EB_CA77))
        .wrapping_add(seed.wrapping_mul(0xC2B2_AE3D));
    h ^= h >> 15;
    h = h.wrapping_mul(0x2C1B_3C6D);
    h ^= h >> 12;
    h & 0xFF
}

/// A sharp synthetic "photo": a smooth gradient, hard-edged shapes and fine texture.
pub fn sharp_photo(width: u32, height: u32, seed: u32) -> RgbImage {
    let (w, h) = (width as f32, height as f32);
    RgbImage::from_fn(width, height, |x, y| {
        let (fx, fy) = (x as f32 / w, y as f32 / h);
        let mut c = [60.0 + 120.0 * fx, 80.0 + 100.0 * fy, 150.0 - 60.0 * fx * fy];
        // Shapes: a dark rectangle, a light disc, a stripe pattern.
        if (0.15..0.45).contains(&fx) && (0.2..0.6).contains(&fy) {
            c = [30.0, 40.0, 90.0];
        }
        let (dx, dy) = (fx - 0.68, (fy - 0.45) * h / w);
        if dx * dx + dy * dy < 0.03 {
            c = [230.0, 200.0, 120.0];
        }
        if fy > 0.72 && (x / 8) % 2 == 0 {
            c = [c[0] * 0.5, c[1] * 0.5, c[2] * 0.5];
        }
        let t = hash(x, y, seed) as f32 / 255.0 * 24.0 - 12.0;
        Rgb(c.map(|v| (v + t).clamp(0.0, 255.0) as u8))
    })
}

/// `img` encoded in `format` (JPEG at quality 92).
pub fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut buf = Vec::new();
    if format == ImageFormat::Jpeg {
        let enc = JpegEncoder::new_with_quality(&mut buf, 92);
        img.write_with_encoder(enc).expect("encode jpeg");
    } else {
        img.write_to(&mut Cursor::new(&mut buf), format)
            .expect("encode");
    }
    buf
}

/// Writes `img` as `name` (format from the extension) into `dir`.
pub fn save(dir: &Path, name: &str, img: &RgbImage) -> PathBuf {
    let path = dir.join(name);
    let format = ImageFormat::from_path(&path).expect("known extension");
    std::fs::write(&path, encode(&DynamicImage::ImageRgb8(img.clone()), format)).expect("write");
    path
}

/// A JPEG with an APP1 Exif segment carrying only Orientation = `orientation`, inserted right
/// after SOI (a big-endian TIFF header with one IFD entry).
pub fn jpeg_with_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    assert_eq!(&jpeg[..2], &[0xFF, 0xD8]);
    let mut tiff = Vec::new();
    tiff.extend_from_slice(b"MM\x00\x2A"); // big-endian TIFF
    tiff.extend_from_slice(&8u32.to_be_bytes()); // IFD0 right after the header
    tiff.extend_from_slice(&1u16.to_be_bytes()); // one entry
    tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_be_bytes()); // count 1
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0]); // value padding
    tiff.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
    let mut payload = b"Exif\x00\x00".to_vec();
    payload.extend_from_slice(&tiff);
    let mut out = vec![0xFF, 0xD8, 0xFF, 0xE1];
    out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&payload);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// Every file under `dir` (recursively); empty if it does not exist.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}
