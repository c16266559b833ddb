//! The world models' tokenizer as transformers `CLIPTokenizer` files, written from the bundled
//! CLIP BPE so a saved folder carries its own tokenizer (`vocab.json`, `merges.txt`,
//! `tokenizer_config.json`, `special_tokens_map.json`), with OpenAI CLIP's token ids.

use std::path::Path;

use likeness_models::png_meta::write_atomic;
use likeness_models::presets::{CLIP_BPE_GZ, bundled_tokenizer};
use likeness_models::single_file::Family;
use likeness_models::tokenizer::{ClipTokenizer, clip_bpe_from_gz};
use serde_json::{Map, Value, json};

use crate::error::{Result, TrainError};

const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";

/// The world tokenizer: the bundled CLIP BPE, SD 1.x flavour (pads with `<|endoftext|>`, 77
/// tokens) — the one [`write_tokenizer_files`] writes out.
pub fn world_tokenizer() -> Result<ClipTokenizer> {
    Ok(bundled_tokenizer(Family::Sd1)?)
}

/// Writes the bundled CLIP tokenizer (SD 1.x flavour: pads with `<|endoftext|>`, 77 tokens)
/// into `dir`.
pub fn write_tokenizer_files(dir: &Path) -> Result<()> {
    let bpe = clip_bpe_from_gz(CLIP_BPE_GZ)?;
    let tokens = &bpe.tokens;
    let merges: Vec<String> = bpe.merges.iter().map(|(a, b)| format!("{a} {b}")).collect();
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
