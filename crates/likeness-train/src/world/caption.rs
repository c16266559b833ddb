//! Captions from a small grammar with paraphrases. Every caption names the whole scene (background
//! pattern and colours; each group's count, size, colour, shape and position), so a parser can
//! read the scene back.

use std::collections::BTreeSet;

use rand::{Rng, RngCore};

use super::scene::{Colour, ObjectGroup, Pattern, Position, Scene, Shape, Size};

/// Sentence openers that say nothing about the scene.
const PREFIXES: &[&str] = &["a picture of", "an image of", "a drawing of", "a photo of"];

/// Background phrases per pattern; `{c}` is the main colour, `{a}` the accent.
fn background_templates(pattern: Pattern) -> &'static [&'static str] {
    match pattern {
        Pattern::Plain => &[
            "on a {c} background",
            "on a plain {c} background",
            "against a {c} background",
            "on a {c} backdrop",
        ],
        Pattern::Stripes => &[
            "on a striped {c} and {a} background",
            "on a {c} background with {a} stripes",
            "on {c} and {a} stripes",
            "against a {c} and {a} striped background",
        ],
        Pattern::Dots => &[
            "on a {c} background with {a} dots",
            "on a {c} and {a} polka dot background",
            "on a {c} background with {a} polka dots",
            "on a dotted {c} and {a} background",
        ],
        Pattern::Checks => &[
            "on a {c} and {a} checkered background",
            "on a {c} and {a} checkerboard",
            "on a checked {c} and {a} background",
            "on a {c} background with {a} checks",
        ],
        Pattern::Gradient => &[
            "on a gradient from {c} to {a}",
            "on a {c} to {a} gradient background",
            "on a background fading from {c} to {a}",
            "on a {c} background fading to {a}",
        ],
    }
}

/// Position phrases; `{v}` is top/bottom, `{u}` upper/lower, `{h}` left/right.
fn position_templates(position: Position) -> &'static [&'static str] {
    match position {
        Position::Centre => &["in the centre", "in the center", "in the middle"],
        Position::Left | Position::Right => &["on the {h}", "at the {h}", "on the {h} side"],
        Position::Top | Position::Bottom => &["at the {v}", "along the {v}", "in the {u} half"],
        _ => &[
            "at the {v} {h}",
            "in the {v} {h} corner",
            "in the {u} {h} corner",
        ],
    }
}

fn size_words(size: Size) -> &'static [&'static str] {
    match size {
        Size::Small => &["small", "little", "tiny"],
        Size::Big => &["big", "large"],
    }
}

fn colour_words(colour: Colour) -> &'static [&'static str] {
    match colour {
        Colour::Purple => &["purple", "violet"],
        Colour::Red => &["red"],
        Colour::Orange => &["orange"],
        Colour::Yellow => &["yellow"],
        Colour::Green => &["green"],
        Colour::Blue => &["blue"],
        Colour::White => &["white"],
        Colour::Black => &["black"],
    }
}

fn count_words(count: u8) -> &'static [&'static str] {
    match count {
        1 => &["a", "one"],
        2 => &["two"],
        3 => &["three"],
        4 => &["four"],
        _ => &["several"],
    }
}

/// Picks the first option (canonical captions) or a random one (paraphrases).
struct Chooser<'r> {
    rng: Option<&'r mut dyn RngCore>,
}

impl Chooser<'_> {
    fn pick<'a, T>(&mut self, options: &'a [T]) -> &'a T {
        match &mut self.rng {
            Some(rng) if options.len() > 1 => &options[rng.random_range(0..options.len())],
            _ => &options[0],
        }
    }
}

/// A caption for the scene with randomly chosen wording (synonyms, phrase order, openers).
pub fn caption<R: Rng>(scene: &Scene, rng: &mut R) -> String {
    build(
        scene,
        &mut Chooser {
            rng: Some(rng as &mut dyn RngCore),
        },
    )
}

/// The one canonical caption of the scene (first wording everywhere).
pub fn canonical_caption(scene: &Scene) -> String {
    build(scene, &mut Chooser { rng: None })
}

fn build(scene: &Scene, ch: &mut Chooser) -> String {
    let groups: Vec<String> = scene.groups.iter().map(|g| group_phrase(g, ch)).collect();
    let joiner = *ch.pick(&[" and ", ", "]);
    let groups = groups.join(joiner);
    let bg = background_phrase(scene, ch);
    let form = *ch.pick(&[0u8, 1, 2, 3]);
    let text = match form {
        0 => format!("{groups} {bg}"),
        1 => format!("{} {groups} {bg}", ch.pick(PREFIXES)),
        2 => format!("{bg}, {groups}"),
        _ => {
            let verb = if scene.groups.first().map(|g| g.count).unwrap_or(1) == 1 {
                "is"
            } else {
                "are"
            };
            format!("there {verb} {groups} {bg}")
        }
    };
    fix_articles(&text)
}

fn group_phrase(g: &ObjectGroup, ch: &mut Chooser) -> String {
    let count = *ch.pick(count_words(g.count));
    let size = *ch.pick(size_words(g.size));
    let colour = *ch.pick(colour_words(g.colour));
    let (singular, plural) = *ch.pick(g.shape.nouns());
    let noun = if g.count == 1 { singular } else { plural };
    let position = position_phrase(g.position, ch);
    format!("{count} {size} {colour} {noun} {position}")
}

fn position_phrase(position: Position, ch: &mut Chooser) -> String {
    let (v, h) = position.parts();
    let template = *ch.pick(position_templates(position));
    let u = match v {
        Some("top") => "upper",
        _ => "lower",
    };
    template
        .replace("{v}", v.unwrap_or(""))
        .replace("{u}", u)
        .replace("{h}", h.unwrap_or(""))
}

fn background_phrase(scene: &Scene, ch: &mut Chooser) -> String {
    let bg = scene.background;
    let template = *ch.pick(background_templates(bg.pattern));
    let c = *ch.pick(colour_words(bg.colour));
    let a = bg.accent.map(|a| *ch.pick(colour_words(a))).unwrap_or("");
    template.replace("{c}", c).replace("{a}", a)
}

/// Turns "a" into "an" before a vowel.
fn fix_articles(text: &str) -> String {
    let words: Vec<&str> = text.split(' ').collect();
    let mut out = Vec::with_capacity(words.len());
    for (i, w) in words.iter().enumerate() {
        let next_vowel = words
            .get(i + 1)
            .and_then(|n| n.chars().next())
            .is_some_and(|c| "aeiou".contains(c));
        out.push(if *w == "a" && next_vowel { "an" } else { w });
    }
    out.join(" ")
}

/// Every word a caption can contain: the base model's whole vocabulary.
pub fn caption_vocabulary() -> BTreeSet<String> {
    let mut texts: Vec<String> = Vec::new();
    texts.extend(PREFIXES.iter().map(|s| s.to_string()));
    texts.extend(["there is are and an"].iter().map(|s| s.to_string()));
    for p in Pattern::ALL {
        texts.extend(background_templates(p).iter().map(|s| s.to_string()));
    }
    for p in Position::ALL {
        texts.extend(position_templates(p).iter().map(|s| s.to_string()));
        let (v, h) = p.parts();
        texts.extend(v.map(String::from));
        texts.extend(h.map(String::from));
    }
    texts.push("upper lower".into());
    for s in Size::ALL {
        texts.extend(size_words(s).iter().map(|s| s.to_string()));
    }
    for c in Colour::ALL {
        texts.extend(colour_words(c).iter().map(|s| s.to_string()));
    }
    for n in 1..=3 {
        texts.extend(count_words(n).iter().map(|s| s.to_string()));
    }
    for s in Shape::ALL {
        for (one, many) in s.nouns() {
            texts.push(format!("{one} {many}"));
        }
    }
    texts
        .iter()
        .flat_map(|t| t.split(|c: char| !c.is_ascii_alphanumeric()))
        .filter(|w| !w.is_empty() && !w.starts_with('{'))
        .map(|w| w.to_string())
        .filter(|w| !matches!(w.as_str(), "c" | "v" | "u" | "h"))
        .collect()
}
