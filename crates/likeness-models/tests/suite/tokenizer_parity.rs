//! `ClipTokenizer` against transformers' `CLIPTokenizer` (no ftfy) on the fixture cases.

use std::path::{Path, PathBuf};

use likeness_models::tokenizer::ClipTokenizer;
use serde::Deserialize;

fn data() -> PathBuf {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/data"
    ))
    .to_path_buf()
}

#[derive(Deserialize)]
struct Case {
    tokenizer: String,
    text: String,
    ids: Vec<u32>,
}

#[test]
fn fixture_cases_match_transformers() {
    let text = std::fs::read_to_string(data().join("tokenizer_cases.json")).unwrap();
    let cases: Vec<Case> = serde_json::from_str(&text).unwrap();
    assert!(!cases.is_empty());
    let sd1 = ClipTokenizer::from_dir(&data().join("tokenizer")).unwrap();
    let sd2 = ClipTokenizer::from_dir(&data().join("tokenizer_sd2")).unwrap();
    let mut failures = Vec::new();
    for case in &cases {
        let tok = match case.tokenizer.as_str() {
            "tokenizer" => &sd1,
            "tokenizer_sd2" => &sd2,
            other => panic!("unknown tokenizer {other}"),
        };
        let ids = tok.encode(&case.text);
        if ids != case.ids {
            failures.push(format!(
                "[{}] {:?}\n  got      {:?}\n  expected {:?}",
                case.tokenizer, case.text, ids, case.ids
            ));
        }
    }
    println!("{} cases, {} mismatches", cases.len(), failures.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn special_ids_and_lengths() {
    let sd1 = ClipTokenizer::from_dir(&data().join("tokenizer")).unwrap();
    let sd2 = ClipTokenizer::from_dir(&data().join("tokenizer_sd2")).unwrap();
    assert_eq!(sd1.bos_id(), 49406);
    assert_eq!(sd1.eos_id(), 49407);
    assert_eq!(sd1.pad_id(), 49407);
    assert_eq!(sd2.pad_id(), 0);
    assert_eq!(sd1.max_length(), 77);
    assert_eq!(sd1.vocab_size(), 49408);
    assert_eq!(sd1.token_id("dog</w>"), Some(1929));
    assert_eq!(sd1.token_id("no such token"), None);

    let short = sd1.encode_unpadded("a photo of sks dog");
    assert_eq!(short.first(), Some(&49406));
    assert_eq!(short.last(), Some(&49407));
    assert!(short.len() < 77);
    let padded = sd2.encode("a photo of sks dog");
    assert_eq!(padded.len(), 77);
    assert_eq!(&padded[..short.len()], &short[..]);
    assert!(padded[short.len()..].iter().all(|&i| i == 0));

    // Truncation keeps BOS, the first 75 tokens and EOS.
    let long = sd1.encode_unpadded(&"cat ".repeat(200));
    assert_eq!(long.len(), 77);
    assert_eq!(long[76], 49407);
}

#[test]
fn tokenizer_json_fallback_matches_vocab_merges() {
    // Build a tokenizer.json from the fixture's vocab/merges and check the fallback path.
    let src = data().join("tokenizer");
    let dir = std::env::temp_dir().join(format!("likeness-tok-json-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let vocab: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("vocab.json")).unwrap()).unwrap();
    let merges: Vec<String> = std::fs::read_to_string(src.join("merges.txt"))
        .unwrap()
        .trim()
        .lines()
        .skip(1)
        .map(str::to_string)
        .collect();
    let json = serde_json::json!({
        "added_tokens": [
            {"id": 49406, "content": "<|startoftext|>", "single_word": false, "lstrip": false,
             "rstrip": false, "normalized": true, "special": true},
            {"id": 49407, "content": "<|endoftext|>", "single_word": false, "lstrip": false,
             "rstrip": false, "normalized": true, "special": true}
        ],
        "model": {"type": "BPE", "vocab": vocab, "merges": merges}
    });
    std::fs::write(dir.join("tokenizer.json"), json.to_string()).unwrap();
    std::fs::copy(
        src.join("tokenizer_config.json"),
        dir.join("tokenizer_config.json"),
    )
    .unwrap();
    let from_json = ClipTokenizer::from_dir(&dir).unwrap();
    let from_files = ClipTokenizer::from_dir(&src).unwrap();
    for text in [
        "a photo of an astronaut riding a horse on mars",
        "masterpiece, best quality, (detailed:1.2)",
        "café crème brûlée 🐶",
    ] {
        assert_eq!(from_json.encode(text), from_files.encode(text), "{text}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn missing_files_is_an_error() {
    let err = ClipTokenizer::from_dir(Path::new("/nonexistent/tokenizer")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/tokenizer"), "{err}");
}

/// The tokenizer built from the bundled BPE equals the fixture's transformers tokenizer id for id:
/// the same vocabulary (in CLIP's order) and the same encodings, for SD1 and SD2 padding.
#[test]
fn bundled_bpe_equals_the_real_clip_tokenizer() {
    use likeness_models::presets::bundled_tokenizer;
    use likeness_models::single_file::Family;
    let dir = std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/data"
    ));
    let vocab: std::collections::HashMap<String, u32> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer/vocab.json")).unwrap())
            .unwrap();
    let sd1 = bundled_tokenizer(Family::Sd1).unwrap();
    assert_eq!(sd1.vocab_size(), vocab.len());
    for (token, id) in &vocab {
        assert_eq!(sd1.token_id(token), Some(*id), "token {token:?}");
    }
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer_cases.json")).unwrap())
            .unwrap();
    let sd2 = bundled_tokenizer(Family::Sd2).unwrap();
    for c in &cases {
        let tok = if c["tokenizer"] == "tokenizer_sd2" {
            &sd2
        } else {
            &sd1
        };
        let want: Vec<u32> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(
            tok.encode(c["text"].as_str().unwrap()),
            want,
            "{}",
            c["text"]
        );
    }
}
