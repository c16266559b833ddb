//! The world models' tokenizer as transformers `CLIPTokenizer` files, written from the bundled
//! CLIP BPE so a saved folder carries its own tokenizer (`vocab.json`, `merges.txt`,
//! `tokenizer_config.json`, `special_tokens_map.json`), with OpenAI CLIP's token ids.
//!
//! Not `presets::bundled_tokenizer`: that numbers the 512 single-byte tokens in byte order
//! instead of CLIP's (printable bytes first), so e.g. `a` gets 353 instead of CLIP's 320.

use std::io::Read;
use std::path::Path;

use likeness_models::png_meta::write_atomic;
use likeness_models::presets::CLIP_BPE_GZ;
use likeness_models::tokenizer::ClipTokenizer;
use serde_json::{Map, Value, json};

use crate::error::{Result, TrainError};

/// Merges CLIP keeps (49 408 tokens = 512 byte tokens + merges + BOS + EOS).
const MERGES: usize = 49152 - 256 - 2;
const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";

/// GPT-2's byte → printable character table in CLIP's vocabulary order: the printable bytes
/// first (`!` is token 0, `a` token 64), then the others mapped to 256, 257, …
fn bytes_to_unicode() -> Vec<char> {
    let printable = |b: u32| {
        (u32::from(b'!')..=u32::from(b'~')).contains(&b)
            || (0xA1..=0xAC).contains(&b)
            || (0xAE..=0xFF).contains(&b)
    };
    let mut table: Vec<char> = (0..256u32)
        .filter(|&b| printable(b))
        .filter_map(char::from_u32)
        .collect();
    table.extend(
        (0..256u32)
            .filter(|&b| !printable(b))
            .enumerate()
            .filter_map(|(n, _)| char::from_u32(256 + n as u32)),
    );
    table
}

/// The world tokenizer, read back from the files [`write_tokenizer_files`] writes (through a
/// temporary folder, removed again), so training and the saved folders tokenise alike.
pub fn world_tokenizer() -> Result<ClipTokenizer> {
    let dir = std::env::temp_dir().join(format!(
        "likeness-world-tokenizer-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    write_tokenizer_files(&dir)?;
    let tokenizer = ClipTokenizer::from_dir(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(tokenizer?)
}

/// Writes the bundled CLIP tokenizer (SD 1.x flavour: pads with `<|endoftext|>`, 77 tokens)
/// into `dir`.
pub fn write_tokenizer_files(dir: &Path) -> Result<()> {
    let origin = Path::new("<bundled CLIP BPE>");
    let mut text = String::new();
    flate2::read::GzDecoder::new(CLIP_BPE_GZ)
        .read_to_string(&mut text)
        .map_err(|e| TrainError::io(origin, e))?;
    let merges: Vec<&str> = text
        .split('\n')
        .skip(1)
        .take(MERGES)
        .filter(|l| l.contains(' '))
        .collect();
    let bytes = bytes_to_unicode();
    let mut tokens: Vec<String> = bytes.iter().map(|c| c.to_string()).collect();
    tokens.extend(bytes.iter().map(|c| format!("{c}</w>")));
    tokens.extend(merges.iter().map(|m| m.replace(' ', "")));
    tokens.push(BOS.to_string());
    tokens.push(EOS.to_string());
    let vocab: Map<String, Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let (bos_id, eos_id) = (tokens.len() - 2, tokens.len() - 1);
    let special = |content: &str| {
        json!({"content": content, "lstrip": false, "normalized": true, "rstrip": false,
               "single_word": false, "special": true})
    };
    let config = json!({
        "added_tokens_decoder": {
            bos_id.to_string(): special(BOS),
            eos_id.to_string(): special(EOS),
        },
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
        "clean_up_tokenization_spaces": false,
        "errors": "replace",
        "model_max_length": 77,
        "tokenizer_class": "CLIPTokenizer",
    });
    let special_map = json!({
        "bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS,
    });
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let mut merges_txt = String::from("#version: 0.2\n");
    for m in &merges {
        merges_txt.push_str(m);
        merges_txt.push('\n');
    }
    write_atomic(&dir.join("merges.txt"), merges_txt.as_bytes())?;
    for (name, value) in [
        ("vocab.json", Value::Object(vocab)),
        ("tokenizer_config.json", config),
        ("special_tokens_map.json", special_map),
    ] {
        let path = dir.join(name);
        let text = serde_json::to_string_pretty(&value).map_err(|e| TrainError::io(&path, e))?;
        write_atomic(&path, text.as_bytes())?;
    }
    Ok(())
}
