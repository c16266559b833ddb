//! CLIP's byte-level BPE tokenizer, id for id as transformers' slow `CLIPTokenizer` without ftfy:
//! added-token splitting, BERT-style text cleaning (control characters dropped, whitespace
//! collapsed, CJK spaced, NFC, lowercase), CLIP's word regex, byte-to-unicode mapping, BPE with a
//! `</w>` end-of-word marker, then BOS/EOS, truncation and right padding to `model_max_length`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use regex::Regex;
use serde::Deserialize;
use serde_json::Value;
use unicode_normalization::UnicodeNormalization;

use crate::error::{ModelError, Result, read_json};

/// transformers keeps at most this many merges of `merges.txt` (49152 - 256 - 2 after the header).
const MAX_MERGES: usize = 49152 - 256 - 2;
/// `model_max_length` when the tokenizer config has none (every SD text encoder has 77 positions).
const DEFAULT_MAX_LENGTH: usize = 77;
const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";

/// CLIP's pre-tokenizer regex. transformers compiles it with IGNORECASE in the `regex` module, which
/// folds case in literals and negated classes but (as measured) not in `\p{L}`; hence the scoped flags.
const WORD_PATTERN: &str = r"(?i:<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d)|\p{L}+|\p{N}|(?i:[^\s\p{L}\p{N}])+";

/// A token that is matched verbatim in the raw text before any normalisation.
#[derive(Debug, Clone)]
struct AddedToken {
    content: String,
    id: u32,
    lstrip: bool,
    rstrip: bool,
    single_word: bool,
}

/// The fields of `tokenizer_config.json` / `special_tokens_map.json` this tokenizer honours.
#[derive(Debug, Default, Deserialize)]
struct TokenizerConfig {
    #[serde(default)]
    model_max_length: Option<f64>,
    #[serde(default)]
    bos_token: Option<Value>,
    #[serde(default)]
    eos_token: Option<Value>,
    #[serde(default)]
    unk_token: Option<Value>,
    #[serde(default)]
    pad_token: Option<Value>,
    #[serde(default)]
    added_tokens_decoder: Option<HashMap<String, Value>>,
}

/// One special token as configured: its text and the splitting flags of an `AddedToken`.
#[derive(Debug, Clone, Default)]
struct TokenSpec {
    content: String,
    lstrip: bool,
    rstrip: bool,
    single_word: bool,
}

impl TokenSpec {
    fn plain(content: &str) -> Self {
        Self {
            content: content.to_string(),
            ..Self::default()
        }
    }

    /// A special token is either a bare string or a serialised `AddedToken` dict.
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::String(s) => Some(Self::plain(s)),
            Value::Object(m) => {
                let flag = |k: &str| m.get(k).and_then(Value::as_bool).unwrap_or(false);
                Some(Self {
                    content: m.get("content")?.as_str()?.to_string(),
                    lstrip: flag("lstrip"),
                    rstrip: flag("rstrip"),
                    single_word: flag("single_word"),
                })
            }
            _ => None,
        }
    }
}

/// CLIP's vocabulary (tokens in id order) and merges, as OpenAI CLIP derives them from its
/// gzipped merges file.
#[derive(Debug, Clone)]
pub struct ClipBpe {
    pub tokens: Vec<String>,
    pub merges: Vec<(String, String)>,
}

/// Decodes OpenAI's `bpe_simple_vocab_16e6.txt.gz` into CLIP's vocabulary and merges.
pub fn clip_bpe_from_gz(gz: &[u8]) -> Result<ClipBpe> {
    use std::io::Read;
    let origin = Path::new("<bundled CLIP BPE>");
    let mut text = String::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_string(&mut text)
        .map_err(|e| ModelError::io(origin, e))?;
    let merges: Vec<(String, String)> = text
        .split('\n')
        .skip(1)
        .take(MAX_MERGES)
        .filter_map(|l| {
            let (a, b) = l.split_once(' ')?;
            Some((a.to_string(), b.to_string()))
        })
        .collect();
    // CLIP lists the byte characters in `bytes_to_unicode`'s insertion order: printable bytes
    // first, then the remapped ones.
    let table = bytes_to_unicode();
    let printable = |b: usize| {
        (usize::from(b'!')..=usize::from(b'~')).contains(&b)
            || (0xA1..=0xAC).contains(&b)
            || (0xAE..=0xFF).contains(&b)
    };
    let order: Vec<char> = (0..256)
        .filter(|&b| printable(b))
        .chain((0..256).filter(|&b| !printable(b)))
        .map(|b| table[b])
        .collect();
    let mut tokens: Vec<String> = order.iter().map(|c| c.to_string()).collect();
    tokens.extend(order.iter().map(|c| format!("{c}</w>")));
    tokens.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
    tokens.push(BOS.to_string());
    tokens.push(EOS.to_string());
    Ok(ClipBpe { tokens, merges })
}

/// CLIP's BPE tokenizer; see the module docs for the exact pipeline.
pub struct ClipTokenizer {
    encoder: HashMap<String, u32>,
    bpe_ranks: HashMap<(String, String), usize>,
    byte_encoder: [char; 256],
    /// Added tokens, longest first so that splitting prefers the longest match at a position.
    added: Vec<AddedToken>,
    added_ids: HashMap<String, u32>,
    word_re: Regex,
    drop_re: Regex,
    space_re: Regex,
    bos_id: u32,
    eos_id: u32,
    pad_id: u32,
    unk_id: u32,
    max_length: usize,
    /// Memo of BPE results per byte-encoded word, as transformers' `self.cache`.
    cache: Mutex<HashMap<String, Vec<String>>>,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("vocab_size", &self.encoder.len())
            .field("merges", &self.bpe_ranks.len())
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("pad_id", &self.pad_id)
            .field("max_length", &self.max_length)
            .finish()
    }
}

/// GPT-2's reversible byte → printable unicode character table.
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable = (u32::from(b'!')..=u32::from(b'~')).contains(&b)
            || (0xA1..=0xAC).contains(&b)
            || (0xAE..=0xFF).contains(&b);
        let c = if printable {
            b
        } else {
            n += 1;
            256 + n - 1
        };
        table[b as usize] = char::from_u32(c).unwrap_or('\u{FFFD}');
    }
    table
}

fn is_chinese_char(c: char) -> bool {
    matches!(u32::from(c),
        0x4E00..=0x9FFF
        | 0x3400..=0x4DBF
        | 0x20000..=0x2A6DF
        | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F
        | 0x2B820..=0x2CEAF
        | 0xF900..=0xFAFF
        | 0x2F800..=0x2FA1F)
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))
}

/// Vocabulary and ordered merges, from `vocab.json` + `merges.txt` or from `tokenizer.json`.
struct BpeFiles {
    vocab: HashMap<String, u32>,
    merges: Vec<(String, String)>,
    /// `added_tokens` of a `tokenizer.json`.
    added: Vec<(u32, TokenSpec)>,
}

fn read_vocab_merges(dir: &Path) -> Result<BpeFiles> {
    let vocab_path = dir.join("vocab.json");
    let merges_path = dir.join("merges.txt");
    let vocab: HashMap<String, u32> = read_json(&vocab_path)?;
    let text = read_text(&merges_path)?;
    // transformers: `read().strip().split("\n")[1 : 49152 - 256 - 2 + 1]`, i.e. the first line is
    // the `#version` header and is skipped whatever it holds.
    let merges = text
        .trim_matches(char::is_whitespace)
        .split('\n')
        .skip(1)
        .take(MAX_MERGES)
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(b), None) => Some((a.to_string(), b.to_string())),
                _ => None,
            }
        })
        .collect();
    Ok(BpeFiles {
        vocab,
        merges,
        added: Vec::new(),
    })
}

fn read_tokenizer_json(path: &Path) -> Result<BpeFiles> {
    let root: Value = read_json(path)?;
    let model = root
        .get("model")
        .ok_or_else(|| ModelError::config(path, "no `model` section"))?;
    if let Some(kind) = model.get("type").and_then(Value::as_str)
        && kind != "BPE"
    {
        return Err(ModelError::unsupported(path, "model.type", kind));
    }
    let vocab: HashMap<String, u32> = serde_json::from_value(
        model
            .get("vocab")
            .cloned()
            .ok_or_else(|| ModelError::config(path, "no `model.vocab`"))?,
    )
    .map_err(|e| ModelError::config(path, format!("model.vocab: {e}")))?;
    let raw_merges = model
        .get("merges")
        .and_then(Value::as_array)
        .ok_or_else(|| ModelError::config(path, "no `model.merges` list"))?;
    let mut merges = Vec::with_capacity(raw_merges.len());
    for m in raw_merges {
        // Older files store merges as "a b", newer ones as ["a", "b"].
        let pair = match m {
            Value::String(s) => s
                .split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string())),
            Value::Array(v) if v.len() == 2 => match (v[0].as_str(), v[1].as_str()) {
                (Some(a), Some(b)) => Some((a.to_string(), b.to_string())),
                _ => None,
            },
            _ => None,
        };
        merges.push(pair.ok_or_else(|| ModelError::config(path, format!("bad merge {m}")))?);
    }
    let mut added = Vec::new();
    if let Some(list) = root.get("added_tokens").and_then(Value::as_array) {
        for t in list {
            let id = t.get("id").and_then(Value::as_u64);
            let spec = TokenSpec::from_value(t);
            if let (Some(id), Some(spec)) = (id, spec) {
                added.push((id as u32, spec));
            }
        }
    }
    Ok(BpeFiles {
        vocab,
        merges,
        added,
    })
}

impl ClipTokenizer {
    /// Reads a tokenizer folder: `vocab.json` + `merges.txt` (or `tokenizer.json`), with special
    /// tokens and `model_max_length` from `tokenizer_config.json` / `special_tokens_map.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let files = if dir.join("vocab.json").is_file() && dir.join("merges.txt").is_file() {
            read_vocab_merges(dir)?
        } else if dir.join("tokenizer.json").is_file() {
            read_tokenizer_json(&dir.join("tokenizer.json"))?
        } else {
            return Err(ModelError::config(
                dir,
                "no tokenizer files: expected vocab.json + merges.txt, or tokenizer.json",
            ));
        };

        let config_path = dir.join("tokenizer_config.json");
        let config: TokenizerConfig = if config_path.is_file() {
            read_json(&config_path)?
        } else {
            TokenizerConfig::default()
        };
        Self::build(files, config, dir)
    }

    /// Builds the tokenizer from OpenAI's gzipped BPE merges (the vocabulary is derived from them
    /// as CLIP defines it), with the given pad token and length.
    pub fn from_bpe_gz(gz: &[u8], pad_token: &str, max_length: usize) -> Result<Self> {
        Self::from_bpe(clip_bpe_from_gz(gz)?, pad_token, max_length)
    }

    /// A tokenizer over a vocabulary and merge list in CLIP's layout (ids are positions in
    /// `tokens`; `<|startoftext|>` and `<|endoftext|>` among them).
    pub fn from_bpe(bpe: ClipBpe, pad_token: &str, max_length: usize) -> Result<Self> {
        let origin = Path::new("<bundled CLIP BPE>");
        let ClipBpe { tokens, merges } = bpe;
        let vocab = tokens
            .into_iter()
            .enumerate()
            .map(|(i, t)| (t, i as u32))
            .collect();
        let config = TokenizerConfig {
            model_max_length: Some(max_length as f64),
            pad_token: Some(Value::String(pad_token.to_string())),
            ..Default::default()
        };
        Self::build(
            BpeFiles {
                vocab,
                merges,
                added: Vec::new(),
            },
            config,
            origin,
        )
    }

    fn build(files: BpeFiles, mut config: TokenizerConfig, dir: &Path) -> Result<Self> {
        let config_path = dir.join("tokenizer_config.json");
        // transformers reads special_tokens_map.json only for folders saved without
        // `added_tokens_decoder` (the legacy path), and then it overrides tokenizer_config.json.
        let map_path = dir.join("special_tokens_map.json");
        if config.added_tokens_decoder.is_none() && map_path.is_file() {
            let map: TokenizerConfig = read_json(&map_path)?;
            config.bos_token = map.bos_token.or(config.bos_token);
            config.eos_token = map.eos_token.or(config.eos_token);
            config.unk_token = map.unk_token.or(config.unk_token);
            config.pad_token = map.pad_token.or(config.pad_token);
        }

        let mut added_decoder: Vec<(u32, TokenSpec)> = files.added.clone();
        if let Some(dec) = &config.added_tokens_decoder {
            for (id, v) in dec {
                let id: u32 = id.parse().map_err(|_| {
                    ModelError::config(&config_path, format!("added_tokens_decoder: bad id `{id}`"))
                })?;
                let spec = TokenSpec::from_value(v).ok_or_else(|| {
                    ModelError::config(
                        &config_path,
                        format!("added_tokens_decoder.{id}: no content"),
                    )
                })?;
                added_decoder.retain(|(i, _)| *i != id);
                added_decoder.push((id, spec));
            }
        }

        let special = |v: &Option<Value>, default: &str, field: &str| -> Result<TokenSpec> {
            match v {
                None | Some(Value::Null) => Ok(TokenSpec::plain(default)),
                Some(v) => TokenSpec::from_value(v).ok_or_else(|| {
                    ModelError::config(&config_path, format!("`{field}` is not a token: {v}"))
                }),
            }
        };
        let bos = special(&config.bos_token, BOS, "bos_token")?;
        let eos = special(&config.eos_token, EOS, "eos_token")?;
        let unk = special(&config.unk_token, EOS, "unk_token")?;
        let pad = special(&config.pad_token, EOS, "pad_token")?;

        let encoder = files.vocab;
        let mut added: Vec<AddedToken> = Vec::new();
        let mut push_added = |spec: &TokenSpec, id: u32| {
            if !added.iter().any(|a| a.content == spec.content) {
                added.push(AddedToken {
                    content: spec.content.clone(),
                    id,
                    lstrip: spec.lstrip,
                    rstrip: spec.rstrip,
                    single_word: spec.single_word,
                });
            }
        };
        for (id, spec) in &added_decoder {
            push_added(spec, *id);
        }
        // Special tokens not listed as added tokens are added at init, with the vocabulary id.
        let mut ids = Vec::new();
        for (spec, field) in [
            (&bos, "bos_token"),
            (&eos, "eos_token"),
            (&unk, "unk_token"),
            (&pad, "pad_token"),
        ] {
            let id = added_decoder
                .iter()
                .find(|(_, s)| s.content == spec.content)
                .map(|(i, _)| *i)
                .or_else(|| encoder.get(&spec.content).copied())
                .ok_or_else(|| {
                    ModelError::config(
                        dir,
                        format!("{field} `{}` is not in the vocabulary", spec.content),
                    )
                })?;
            push_added(spec, id);
            ids.push(id);
        }
        added.sort_by_key(|a| std::cmp::Reverse(a.content.len()));
        let added_ids = added.iter().map(|a| (a.content.clone(), a.id)).collect();

        let mut bpe_ranks = HashMap::with_capacity(files.merges.len());
        for (rank, pair) in files.merges.into_iter().enumerate() {
            // dict(zip(merges, range)): a repeated pair keeps its last rank.
            bpe_ranks.insert(pair, rank);
        }

        let max_length = match config.model_max_length {
            Some(m) if (2.0..1e9).contains(&m) => m as usize,
            _ => DEFAULT_MAX_LENGTH,
        };

        let regex = |p: &str| {
            Regex::new(p).map_err(|e| ModelError::Invalid(format!("tokenizer regex: {e}")))
        };
        let mut cache = HashMap::new();
        cache.insert(BOS.to_string(), vec![BOS.to_string()]);
        cache.insert(EOS.to_string(), vec![EOS.to_string()]);
        Ok(Self {
            encoder,
            bpe_ranks,
            byte_encoder: bytes_to_unicode(),
            added,
            added_ids,
            word_re: regex(WORD_PATTERN)?,
            // BERT's _clean_text: drop NUL, U+FFFD and "C*" characters except \t \n \r ...
            drop_re: regex(r"[\x{FFFD}[\p{C}--[\t\n\r]]]")?,
            // ... and turn \t \n \r and "Zs" characters into a space.
            space_re: regex(r"[\t\n\r\p{Zs}]")?,
            bos_id: ids[0],
            eos_id: ids[1],
            unk_id: ids[2],
            pad_id: ids[3],
            max_length,
            cache: Mutex::new(cache),
        })
    }

    /// Token ids with BOS/EOS, truncated and right-padded with the pad token to `max_length()`.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = self.encode_unpadded(text);
        ids.resize(self.max_length, self.pad_id);
        ids
    }

    /// Token ids with BOS/EOS, truncated to `max_length()` (the EOS is always kept), no padding.
    pub fn encode_unpadded(&self, text: &str) -> Vec<u32> {
        let mut body = self.encode_tokens(text);
        body.truncate(self.max_length.saturating_sub(2));
        let mut ids = Vec::with_capacity(body.len() + 2);
        ids.push(self.bos_id);
        ids.extend(body);
        ids.push(self.eos_id);
        ids
    }

    /// Ids of the text alone: no BOS/EOS, no truncation.
    pub fn encode_tokens(&self, text: &str) -> Vec<u32> {
        self.tokenize(text)
            .iter()
            .map(|t| self.convert_token(t))
            .collect()
    }

    /// The id of the padding token (SD1: `<|endoftext|>` 49407, SD2: `!` 0).
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The id of `<|startoftext|>` (or the configured BOS).
    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }

    /// The id of `<|endoftext|>` (or the configured EOS).
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// Sequence length of `encode` (the config's `model_max_length`, else 77).
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Size of the base vocabulary (`vocab.json`), as transformers' `vocab_size`.
    pub fn vocab_size(&self) -> usize {
        self.encoder.len()
    }

    /// The id of one token string (added tokens first, then the vocabulary).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.added_ids
            .get(token)
            .or_else(|| self.encoder.get(token))
            .copied()
    }

    fn convert_token(&self, token: &str) -> u32 {
        self.token_id(token).unwrap_or(self.unk_id)
    }

    /// `PreTrainedTokenizer.tokenize`: split on added tokens, apply their strip flags, BPE the rest.
    fn tokenize(&self, text: &str) -> Vec<String> {
        let mut pieces = self.split_added(text);
        let is_added = |s: &str| self.added_ids.contains_key(s);
        for i in 0..pieces.len() {
            let token = pieces[i].clone();
            let Some(added) = self.added.iter().find(|a| a.content == token) else {
                continue;
            };
            // As transformers: the single_word tests look at the neighbours before stripping.
            let left = if i > 0 {
                pieces[i - 1].clone()
            } else {
                String::new()
            };
            let right = pieces.get(i + 1).cloned().unwrap_or_default();
            if added.rstrip && !right.is_empty() {
                pieces[i + 1] = right.trim_start_matches(char::is_whitespace).to_string();
            }
            if added.lstrip && !left.is_empty() {
                pieces[i - 1] = left.trim_end_matches(char::is_whitespace).to_string();
            }
            if added.single_word && !left.is_empty() && !left.ends_with(' ') {
                pieces[i - 1].push_str(&token);
                pieces[i].clear();
            } else if added.single_word && !right.is_empty() && !right.starts_with(' ') {
                pieces[i + 1] = format!("{token}{}", pieces[i + 1]);
                pieces[i].clear();
            }
        }
        let mut out = Vec::new();
        for piece in pieces {
            if piece.is_empty() {
                continue;
            }
            if is_added(&piece) {
                out.push(piece);
            } else {
                self.bpe_text(&piece, &mut out);
            }
        }
        out
    }

    /// Splits raw text around every occurrence of an added token (longest match at a position).
    fn split_added(&self, text: &str) -> Vec<String> {
        let mut pieces = Vec::new();
        let mut start = 0;
        let mut pos = 0;
        while pos < text.len() {
            let rest = &text[pos..];
            if let Some(a) = self
                .added
                .iter()
                .find(|a| !a.content.is_empty() && rest.starts_with(&a.content))
            {
                if pos > start {
                    pieces.push(text[start..pos].to_string());
                }
                pieces.push(a.content.clone());
                pos += a.content.len();
                start = pos;
            } else {
                pos += rest.chars().next().map_or(1, char::len_utf8);
            }
        }
        if start < text.len() {
            pieces.push(text[start..].to_string());
        }
        pieces
    }

    /// transformers' BasicTokenizer(strip_accents=False, do_split_on_punc=False), joined by spaces.
    fn clean(&self, text: &str) -> String {
        let text = self.drop_re.replace_all(text, "");
        let text = self.space_re.replace_all(&text, " ");
        let mut spaced = String::with_capacity(text.len());
        for c in text.chars() {
            if is_chinese_char(c) {
                spaced.push(' ');
                spaced.push(c);
                spaced.push(' ');
            } else {
                spaced.push(c);
            }
        }
        let normalized: String = spaced.nfc().collect();
        // Python's str.split(); on the characters left after cleaning, Rust's White_Space agrees
        // with str.isspace.
        normalized
            .split_whitespace()
            .map(str::to_lowercase)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// CLIPTokenizer._tokenize: clean, split into words, byte-encode, BPE.
    fn bpe_text(&self, text: &str, out: &mut Vec<String>) {
        let cleaned = self.clean(text);
        for word in self.word_re.find_iter(&cleaned) {
            let encoded: String = word
                .as_str()
                .bytes()
                .map(|b| self.byte_encoder[b as usize])
                .collect();
            out.extend(self.bpe(&encoded));
        }
    }

    /// Byte-pair merges of one byte-encoded word, lowest rank first, memoised.
    fn bpe(&self, token: &str) -> Vec<String> {
        if let Ok(cache) = self.cache.lock()
            && let Some(hit) = cache.get(token)
        {
            return hit.clone();
        }
        let mut word: Vec<String> = token.chars().map(String::from).collect();
        if let Some(last) = word.last_mut() {
            last.push_str("</w>");
        }
        while word.len() > 1 {
            let best = word
                .windows(2)
                .enumerate()
                .filter_map(|(i, w)| {
                    self.bpe_ranks
                        .get(&(w[0].clone(), w[1].clone()))
                        .map(|r| (*r, i))
                })
                .min();
            let Some((_, at)) = best else { break };
            // Merge every non-overlapping occurrence of the best pair, left to right.
            let (first, second) = (word[at].clone(), word[at + 1].clone());
            let mut merged = Vec::with_capacity(word.len());
            let mut i = 0;
            while i < word.len() {
                if i + 1 < word.len() && word[i] == first && word[i + 1] == second {
                    merged.push(format!("{first}{second}"));
                    i += 2;
                } else {
                    merged.push(std::mem::take(&mut word[i]));
                    i += 1;
                }
            }
            word = merged;
        }
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(token.to_string(), word.clone());
        }
        word
    }
}
