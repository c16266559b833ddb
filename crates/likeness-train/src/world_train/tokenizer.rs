//! The world models' tokenizer as transformers `CLIPTokenizer` files (`vocab.json`,
//! `merges.txt`, `tokenizer_config.json`, `special_tokens_map.json`), so a saved folder carries its
//! own tokenizer.
//!
//! It is CLIP's BPE cut down to what the world needs: the 512 byte-level tokens, every merge on the
//! way to the words of the world's captions and prompts (and common identifier words), and
//! `<|startoftext|>` / `<|endoftext|>`. Those words tokenize exactly as with the full CLIP BPE
//! (BPE picks the lowest-ranked merge present; every merge of their path is kept), any other word
//! falls back to smaller pieces, and the text towers' embedding tables shrink from 49 408 rows to
//! about a thousand — most of the built-in models' size.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use likeness_models::png_meta::write_atomic;
use likeness_models::presets::CLIP_BPE_GZ;
use likeness_models::tokenizer::{ClipBpe, ClipTokenizer, clip_bpe_from_gz};
use serde_json::{Map, Value, json};

use crate::error::{Result, TrainError};
use crate::world::{CONCEPTS, caption_vocabulary, concept_templates};

const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";

/// Byte-level tokens at the head of CLIP's vocabulary: each byte, alone and word-final.
const BYTE_TOKENS: usize = 512;

/// Identifier words used for subjects (DreamBooth's rare tokens).
const IDENTIFIERS: [&str; 6] = ["sks", "ohwx", "zwx", "xjy", "tok", "skx"];

/// Prompt words beyond the caption grammar that should stay whole tokens.
const PROMPT_WORDS: [&str; 14] = [
    "a",
    "an",
    "the",
    "photo",
    "picture",
    "drawing",
    "of",
    "creature",
    "with",
    "and",
    "in",
    "on",
    "at",
    "background",
];

/// The words whose tokenization the world BPE keeps identical to CLIP's.
pub fn world_words() -> BTreeSet<String> {
    let mut texts: Vec<String> = caption_vocabulary().into_iter().collect();
    for c in &CONCEPTS {
        texts.extend(concept_templates(c));
        texts.push(c.class_noun.to_string());
        texts.push(c.description.to_string());
    }
    texts.extend(IDENTIFIERS.iter().map(|s| s.to_string()));
    texts.extend(PROMPT_WORDS.iter().map(|s| s.to_string()));
    texts
        .iter()
        .flat_map(|t| {
            t.split(|c: char| !c.is_ascii_alphabetic())
                .map(str::to_ascii_lowercase)
                .collect::<Vec<_>>()
        })
        .filter(|w| !w.is_empty())
        .collect()
}

/// The ranks of the merges BPE applies to `word` (ASCII letters) under `ranks`.
fn merge_path(word: &str, ranks: &HashMap<(&str, &str), usize>) -> Vec<usize> {
    let n = word.len();
    let mut symbols: Vec<String> = word
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i + 1 == n {
                format!("{c}</w>")
            } else {
                c.to_string()
            }
        })
        .collect();
    let mut path = Vec::new();
    loop {
        let best = symbols
            .windows(2)
            .filter_map(|p| ranks.get(&(p[0].as_str(), p[1].as_str())).copied())
            .min();
        let Some(rank) = best else { break };
        path.push(rank);
        let mut merged = Vec::with_capacity(symbols.len());
        let mut i = 0;
        while i < symbols.len() {
            if i + 1 < symbols.len()
                && ranks.get(&(symbols[i].as_str(), symbols[i + 1].as_str())) == Some(&rank)
            {
                merged.push(format!("{}{}", symbols[i], symbols[i + 1]));
                i += 2;
            } else {
                merged.push(symbols[i].clone());
                i += 1;
            }
        }
        symbols = merged;
    }
    path
}

/// The world's cut-down CLIP BPE: byte tokens, the merges of [`world_words`] in CLIP's order,
/// then `<|startoftext|>` and `<|endoftext|>`.
pub fn world_bpe() -> Result<ClipBpe> {
    let full = clip_bpe_from_gz(CLIP_BPE_GZ)?;
    let ranks: HashMap<(&str, &str), usize> = full
        .merges
        .iter()
        .enumerate()
        .map(|(i, (a, b))| ((a.as_str(), b.as_str()), i))
        .collect();
    let kept: BTreeSet<usize> = world_words()
        .iter()
        .flat_map(|w| merge_path(w, &ranks))
        .collect();
    let merges: Vec<(String, String)> = kept.iter().map(|&r| full.merges[r].clone()).collect();
    let mut tokens: Vec<String> = full.tokens[..BYTE_TOKENS].to_vec();
    tokens.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
    tokens.push(BOS.to_string());
    tokens.push(EOS.to_string());
    Ok(ClipBpe { tokens, merges })
}

/// The world tokenizer: [`world_bpe`], SD 1.x flavour (pads with `<|endoftext|>`, 77 tokens) —
/// the one [`write_tokenizer_files`] writes out.
pub fn world_tokenizer() -> Result<ClipTokenizer> {
    Ok(ClipTokenizer::from_bpe(world_bpe()?, EOS, 77)?)
}

/// Writes the world tokenizer (SD 1.x flavour: pads with `<|endoftext|>`, 77 tokens) into `dir`.
pub fn write_tokenizer_files(dir: &Path) -> Result<()> {
    let bpe = world_bpe()?;
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

/// The token-embedding table of a transformers CLIP text tower.
const TOKEN_EMBEDDING: &str = "text_model.embeddings.token_embedding.weight";

/// Cuts a CLIP text tower trained on a larger vocabulary (CLIP's full BPE) down to the world
/// tokenizer: `weights` (a `model.safetensors` holding [`TOKEN_EMBEDDING`]), its `config.json`
/// and the `vocab.json` it was trained with (`old_vocab`). Every world token keeps the embedding
/// row it had under its old id, so the world's words encode exactly as before; the config's
/// vocabulary size and special-token ids follow. Returns false (and changes nothing) when the
/// tower already has the world vocabulary.
pub fn cut_text_tower_vocabulary(weights: &Path, config: &Path, old_vocab: &Path) -> Result<bool> {
    let bpe = world_bpe()?;
    let read_json = |p: &Path| -> Result<Value> {
        let text = std::fs::read_to_string(p).map_err(|e| TrainError::io(p, e))?;
        serde_json::from_str(&text).map_err(|e| TrainError::io(p, e))
    };
    let vocab = read_json(old_vocab)?;
    let vocab = vocab
        .as_object()
        .ok_or_else(|| TrainError::io(old_vocab, "not a token → id map"))?;
    if vocab.len() == bpe.tokens.len() {
        return Ok(false);
    }
    let mut file = crate::checkpoint::TensorFile::read(weights)?;
    let (shape, table) = file
        .get(TOKEN_EMBEDDING)
        .map(|(s, v)| (s.to_vec(), v.to_vec()))
        .ok_or_else(|| TrainError::io(weights, format!("no `{TOKEN_EMBEDDING}`")))?;
    let [rows, dim] = shape[..] else {
        return Err(TrainError::io(weights, "the token embedding is not 2-D"));
    };
    if rows != vocab.len() {
        return Err(TrainError::io(
            weights,
            format!(
                "{rows} embedding rows but {} tokens in its vocab.json",
                vocab.len()
            ),
        ));
    }
    let mut cut = Vec::with_capacity(bpe.tokens.len() * dim);
    for token in &bpe.tokens {
        let old = vocab
            .get(token)
            .and_then(Value::as_u64)
            .map(|i| i as usize)
            .filter(|&i| i < rows)
            .ok_or_else(|| TrainError::io(old_vocab, format!("no token `{token}`")))?;
        cut.extend_from_slice(&table[old * dim..(old + 1) * dim]);
    }
    file.insert(TOKEN_EMBEDDING, vec![bpe.tokens.len(), dim], cut);
    let mut cfg = read_json(config)?;
    let (bos, eos) = (bpe.tokens.len() - 2, bpe.tokens.len() - 1);
    cfg["vocab_size"] = json!(bpe.tokens.len());
    cfg["bos_token_id"] = json!(bos);
    // The legacy `eos_token_id == 2` pools at the largest id, which is still `<|endoftext|>`.
    if cfg["eos_token_id"].as_u64() != Some(2) {
        cfg["eos_token_id"] = json!(eos);
    }
    cfg["pad_token_id"] = json!(eos);
    if let Some(text) = cfg.get_mut("text_config") {
        text["vocab_size"] = json!(bpe.tokens.len());
        text["bos_token_id"] = json!(bos);
        if text["eos_token_id"].as_u64() != Some(2) {
            text["eos_token_id"] = json!(eos);
        }
        text["pad_token_id"] = json!(eos);
    }
    let dtype = first_dtype(weights)?;
    write_atomic(weights, &file.to_bytes_as(dtype)?).map_err(|e| TrainError::io(weights, e))?;
    let text = serde_json::to_string_pretty(&cfg).map_err(|e| TrainError::io(config, e))?;
    write_atomic(config, text.as_bytes()).map_err(|e| TrainError::io(config, e))?;
    Ok(true)
}

/// The dtype a safetensors file stores its tensors in (its first tensor's).
fn first_dtype(path: &Path) -> Result<safetensors::Dtype> {
    let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| TrainError::io(path, format!("{e:?}")))?;
    Ok(meta
        .tensors()
        .values()
        .next()
        .map(|t| t.dtype)
        .unwrap_or(safetensors::Dtype::F32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use likeness_models::presets::bundled_tokenizer;
    use likeness_models::single_file::Family;

    /// Token strings of `text` under a tokenizer and its vocabulary.
    fn pieces(t: &ClipTokenizer, tokens: &[String], text: &str) -> Vec<String> {
        t.encode_unpadded(text)
            .into_iter()
            .map(|id| tokens[id as usize].clone())
            .collect()
    }

    #[test]
    fn world_words_tokenize_as_with_the_full_clip_bpe() {
        let full_bpe = clip_bpe_from_gz(CLIP_BPE_GZ).unwrap();
        let full = bundled_tokenizer(Family::Sd1).unwrap();
        let small_bpe = world_bpe().unwrap();
        let small = world_tokenizer().unwrap();
        eprintln!("world vocabulary: {} tokens", small.vocab_size());
        assert!(small.vocab_size() < 2000, "{}", small.vocab_size());
        assert_eq!(small.vocab_size(), small_bpe.tokens.len());
        let mut texts: Vec<String> = world_words().into_iter().collect();
        let spec = crate::world::WorldSpec::default();
        texts.extend((0..300).map(|i| crate::world::dataset_item(7, i, &spec).1));
        for c in &CONCEPTS {
            texts.extend(
                concept_templates(c)
                    .iter()
                    .map(|t| t.replace("{}", &format!("sks {}", c.class_noun))),
            );
        }
        for text in &texts {
            assert_eq!(
                pieces(&small, &small_bpe.tokens, text),
                pieces(&full, &full_bpe.tokens, text),
                "{text}"
            );
        }
        // Other words still tokenize, into smaller pieces.
        let other = pieces(&small, &small_bpe.tokens, "a photo of a zebra on the beach");
        assert!(other.len() >= 8, "{other:?}");
        assert_eq!(small.encode("x").len(), 77);
    }

    #[test]
    fn the_written_files_load_as_the_same_tokenizer() {
        let dir = std::env::temp_dir().join(format!("likeness-world-tok-{}", std::process::id()));
        write_tokenizer_files(&dir).unwrap();
        let loaded = ClipTokenizer::from_dir(&dir).unwrap();
        let world = world_tokenizer().unwrap();
        assert_eq!(loaded.vocab_size(), world.vocab_size());
        for text in [
            "a picture of a sks star on a plain red background",
            "two small green diamonds at the top left on white and yellow stripes",
            "an unknown zebra",
        ] {
            assert_eq!(loaded.encode(text), world.encode(text), "{text}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A tower trained on CLIP's full vocabulary keeps, for every world token, the embedding row
    /// of that token's old id; the config follows; a second cut is a no-op.
    #[test]
    fn cutting_a_full_vocabulary_tower_keeps_each_world_tokens_row() {
        let dir = std::env::temp_dir().join(format!("likeness-cut-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let full = clip_bpe_from_gz(CLIP_BPE_GZ).unwrap();
        let vocab: Map<String, Value> = full
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), json!(i)))
            .collect();
        std::fs::write(dir.join("vocab.json"), Value::Object(vocab).to_string()).unwrap();
        let rows = full.tokens.len();
        let mut file = crate::checkpoint::TensorFile::default();
        // Row i holds (i, -i): where each row came from stays readable.
        let table: Vec<f32> = (0..rows).flat_map(|i| [i as f32, -(i as f32)]).collect();
        file.insert(TOKEN_EMBEDDING, vec![rows, 2], table);
        file.insert(
            "text_model.final_layer_norm.weight",
            vec![2],
            vec![1.0, 1.0],
        );
        let weights = dir.join("model.safetensors");
        std::fs::write(&weights, file.to_bytes().unwrap()).unwrap();
        let config = dir.join("config.json");
        std::fs::write(
            &config,
            json!({"vocab_size": rows, "bos_token_id": rows - 2, "eos_token_id": rows - 1})
                .to_string(),
        )
        .unwrap();

        assert!(cut_text_tower_vocabulary(&weights, &config, &dir.join("vocab.json")).unwrap());
        let world = world_bpe().unwrap();
        let cut = crate::checkpoint::TensorFile::read(&weights).unwrap();
        let (shape, values) = cut.get(TOKEN_EMBEDDING).unwrap();
        assert_eq!(shape, [world.tokens.len(), 2]);
        for (new, token) in world.tokens.iter().enumerate() {
            let old = full.tokens.iter().position(|t| t == token).unwrap();
            assert_eq!(values[new * 2], old as f32, "{token}");
            assert_eq!(values[new * 2 + 1], -(old as f32), "{token}");
        }
        assert!(cut.get("text_model.final_layer_norm.weight").is_some());
        let cfg: Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
        assert_eq!(cfg["vocab_size"], json!(world.tokens.len()));
        assert_eq!(cfg["eos_token_id"], json!(world.tokens.len() - 1));
        assert_eq!(cfg["bos_token_id"], json!(world.tokens.len() - 2));

        write_tokenizer_files(&dir).unwrap();
        assert!(!cut_text_tower_vocabulary(&weights, &config, &dir.join("vocab.json")).unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
