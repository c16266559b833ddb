//! Prompt sets: the 25 DreamBench evaluation prompts for live subjects and for objects, Likeness'
//! own training contexts (210), or an artist's file — one prompt per line, `{}` where the subject
//! goes ("a photo of {} on the beach").

use std::path::{Path, PathBuf};

/// DreamBench's live-subject evaluation prompts (DreamBooth, Ruiz et al. 2023).
pub const DREAMBENCH_LIVE: &str = include_str!("../prompts/dreambench_live.txt");
/// DreamBench's object evaluation prompts.
pub const DREAMBENCH_OBJECT: &str = include_str!("../prompts/dreambench_object.txt");
/// Varied contexts written for Likeness' DPO rounds.
pub const TRAINING_CONTEXTS: &str = include_str!("../prompts/contexts.txt");

/// Classes DreamBench treats as live subjects (they get the outfit/accessory prompts).
const LIVE_CLASSES: [&str; 12] = [
    "dog", "cat", "puppy", "kitten", "animal", "person", "man", "woman", "boy", "girl", "bird",
    "creature",
];

/// A prompt file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{path}:{line}: no `{{}}` where the subject goes: {text}")]
    NoPlaceholder {
        path: PathBuf,
        line: usize,
        text: String,
    },
    #[error("{path}: no prompts (one per line, `{{}}` where the subject goes)")]
    Empty { path: PathBuf },
}

/// Prompt templates with a `{}` placeholder for the subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptSet {
    pub templates: Vec<String>,
}

fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

impl PromptSet {
    /// The training contexts that ship with Likeness.
    pub fn training() -> Self {
        Self {
            templates: lines(TRAINING_CONTEXTS),
        }
    }

    /// DreamBench's 25 evaluation prompts for this class (live subjects or objects).
    pub fn dreambench_for_class(class: &str) -> Self {
        let live = LIVE_CLASSES.contains(&class.trim().to_lowercase().as_str());
        Self {
            templates: lines(if live {
                DREAMBENCH_LIVE
            } else {
                DREAMBENCH_OBJECT
            }),
        }
    }

    /// An artist's prompt file.
    pub fn from_file(path: &Path) -> Result<Self, PromptError> {
        let text = std::fs::read_to_string(path).map_err(|e| PromptError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let mut templates = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let l = raw.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            if !l.contains("{}") {
                return Err(PromptError::NoPlaceholder {
                    path: path.to_path_buf(),
                    line: i + 1,
                    text: l.to_string(),
                });
            }
            templates.push(l.to_string());
        }
        if templates.is_empty() {
            return Err(PromptError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(Self { templates })
    }

    pub fn len(&self) -> usize {
        self.templates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.templates.is_empty()
    }

    /// The prompts with the subject ("sks dog") in place of `{}`.
    pub fn with_subject(&self, token: &str, class: &str) -> Vec<String> {
        let subject = format!("{token} {class}");
        self.templates
            .iter()
            .map(|t| t.replace("{}", &subject))
            .collect()
    }

    /// `len` templates starting at `start`, wrapping around: stage k of a DPO run takes a
    /// disjoint slice while the set is large enough.
    pub fn slice(&self, start: usize, len: usize) -> Self {
        let n = self.templates.len();
        if n == 0 {
            return self.clone();
        }
        Self {
            templates: (0..len.min(n))
                .map(|i| self.templates[(start + i) % n].clone())
                .collect(),
        }
    }
}

/// The prompt without the identifier token, as text similarity is measured: "a photo of sks dog
/// on the beach" → "a photo of dog on the beach".
pub fn strip_identifier(prompt: &str, token: &str) -> String {
    prompt
        .split_whitespace()
        .filter(|w| w.trim_matches(|c: char| !c.is_alphanumeric()) != token)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_sets() {
        assert_eq!(PromptSet::dreambench_for_class("dog").len(), 25);
        assert_eq!(PromptSet::dreambench_for_class("teapot").len(), 25);
        assert_ne!(
            PromptSet::dreambench_for_class("dog"),
            PromptSet::dreambench_for_class("teapot")
        );
        let t = PromptSet::training();
        assert!(t.len() >= 200, "{}", t.len());
        assert!(t.templates.iter().all(|p| p.contains("{}")));
        let mut sorted = t.templates.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), t.len(), "no duplicate contexts");
    }

    #[test]
    fn subject_and_identifier() {
        let p = PromptSet::dreambench_for_class("dog").with_subject("sks", "dog");
        assert_eq!(p[0], "a sks dog in the jungle");
        assert_eq!(
            strip_identifier("a photo of sks dog on the beach", "sks"),
            "a photo of dog on the beach"
        );
        assert_eq!(strip_identifier("sks, a dog", "sks"), "a dog");
    }

    #[test]
    fn slices_are_disjoint_while_the_set_lasts() {
        let t = PromptSet::training();
        let a = t.slice(0, 100);
        let b = t.slice(100, 100);
        assert!(a.templates.iter().all(|p| !b.templates.contains(p)));
    }

    #[test]
    fn user_files() {
        let dir = std::env::temp_dir().join(format!("likeness-prompts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.txt");
        std::fs::write(&good, "# mine\n{} on a boat\n\n{} in space\n").unwrap();
        assert_eq!(PromptSet::from_file(&good).unwrap().len(), 2);
        let bad = dir.join("bad.txt");
        std::fs::write(&bad, "{} ok\na dog on a boat\n").unwrap();
        let e = PromptSet::from_file(&bad).unwrap_err().to_string();
        assert!(e.contains("bad.txt:2") && e.contains("{}"), "{e}");
        let empty = dir.join("empty.txt");
        std::fs::write(&empty, "\n# nothing\n").unwrap();
        assert!(PromptSet::from_file(&empty).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
