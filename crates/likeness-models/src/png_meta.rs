//! PNG output with the generation parameters in a `parameters` text chunk, as AUTOMATIC1111
//! writes them, so a picture can be reproduced from the file alone. Files are written atomically.

use std::io::Write;
use std::path::Path;

use crate::error::{ModelError, Result};
use crate::pipeline::GenerateParams;

/// AUTOMATIC1111's sampler name for a scheduler.
pub fn a1111_sampler_name(kind: crate::schedulers::SchedulerKind) -> &'static str {
    use crate::schedulers::SchedulerKind::*;
    match kind {
        Ddim => "DDIM",
        Euler => "Euler",
        EulerAncestral => "Euler a",
        DpmPp2m => "DPM++ 2M Karras",
    }
}

/// The `parameters` text for one image (prompt, negative prompt, then a settings line).
pub fn a1111_parameters(p: &GenerateParams, seed: u64, model: &str, loras: &[String]) -> String {
    let mut prompt = p.prompt.clone();
    for l in loras {
        prompt.push_str(&format!(" <lora:{l}>"));
    }
    let mut s = prompt;
    if !p.negative_prompt.is_empty() {
        s.push_str(&format!("\nNegative prompt: {}", p.negative_prompt));
    }
    s.push_str(&format!(
        "\nSteps: {}, Sampler: {}, CFG scale: {}, Seed: {}, Size: {}x{}, Model: {}",
        p.steps,
        a1111_sampler_name(p.scheduler),
        p.guidance,
        seed,
        p.width,
        p.height,
        model
    ));
    if p.clip_skip > 0 {
        s.push_str(&format!(", Clip skip: {}", p.clip_skip + 1));
    }
    s.push_str(", Version: Likeness");
    s
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(ModelError::io(path, e));
    }
    Ok(())
}

/// Encodes an RGB image as PNG with text chunks.
pub fn encode_png(img: &image::RgbImage, texts: &[(&str, &str)]) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut buf, img.width(), img.height());
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        for (k, v) in texts {
            // tEXt is what every reader knows; iTXt keeps prompts outside Latin-1 intact.
            let added = if v.chars().all(|c| (c as u32) < 256) {
                enc.add_text_chunk(k.to_string(), v.to_string())
            } else {
                enc.add_itxt_chunk(k.to_string(), v.to_string())
            };
            added.map_err(|e| ModelError::Invalid(format!("png text chunk: {e}")))?;
        }
        let mut w = enc
            .write_header()
            .map_err(|e| ModelError::Invalid(format!("png header: {e}")))?;
        w.write_image_data(img.as_raw())
            .map_err(|e| ModelError::Invalid(format!("png data: {e}")))?;
    }
    Ok(buf)
}

/// Writes a PNG with a `parameters` chunk, atomically.
pub fn save_png(path: &Path, img: &image::RgbImage, parameters: &str) -> Result<()> {
    let bytes = encode_png(img, &[("parameters", parameters)])?;
    write_atomic(path, &bytes)
}

/// Reads the `parameters` text of a PNG written by Likeness or AUTOMATIC1111.
pub fn read_parameters(path: &Path) -> Result<Option<String>> {
    let file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    let decoder = png::Decoder::new(std::io::BufReader::new(file));
    let reader = decoder
        .read_info()
        .map_err(|e| ModelError::io(path, format!("not a PNG: {e}")))?;
    let info = reader.info();
    for t in &info.uncompressed_latin1_text {
        if t.keyword == "parameters" {
            return Ok(Some(t.text.clone()));
        }
    }
    for t in &info.utf8_text {
        if t.keyword == "parameters" {
            return Ok(Some(t.get_text().map_err(|e| ModelError::io(path, e))?));
        }
    }
    Ok(None)
}
