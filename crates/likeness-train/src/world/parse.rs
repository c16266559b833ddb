//! Reads a caption or a prompt back into what it asks for: the background (pattern and colours) and
//! the object groups, plus any words outside the world's vocabulary (a DreamBooth subject like
//! "sks creature").

use rand::Rng;
use rand::seq::IndexedRandom;
use serde::{Deserialize, Serialize};

use super::WorldError;
use super::scene::{
    Background, Colour, ObjectGroup, Pattern, Position, Scene, Shape, Size, random_background,
};

/// The background a prompt asks for; absent colours were not named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BackgroundRequest {
    pub pattern: Pattern,
    pub colour: Option<Colour>,
    pub accent: Option<Colour>,
}

/// One object group a prompt asks for; absent fields were not named.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct GroupRequest {
    pub count: Option<u8>,
    pub size: Option<Size>,
    pub colour: Option<Colour>,
    pub shape: Option<Shape>,
    pub position: Option<Position>,
    /// Words outside the world's vocabulary, in order ("sks creature"): a learned subject.
    pub subject: Option<String>,
}

/// Everything a prompt asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct ParsedPrompt {
    pub background: Option<BackgroundRequest>,
    pub groups: Vec<GroupRequest>,
}

impl From<&Scene> for ParsedPrompt {
    /// The fully specified request a scene fulfils (what its caption must parse to).
    fn from(scene: &Scene) -> Self {
        ParsedPrompt {
            background: Some(BackgroundRequest {
                pattern: scene.background.pattern,
                colour: Some(scene.background.colour),
                accent: scene.background.accent,
            }),
            groups: scene
                .groups
                .iter()
                .map(|g| GroupRequest {
                    count: Some(g.count),
                    size: Some(g.size),
                    colour: Some(g.colour),
                    shape: Some(g.shape),
                    position: Some(g.position),
                    subject: None,
                })
                .collect(),
        }
    }
}

impl ParsedPrompt {
    /// The first group that names a subject, with its index.
    pub fn subject_group(&self) -> Option<(usize, &GroupRequest)> {
        self.groups
            .iter()
            .enumerate()
            .find(|(_, g)| g.subject.is_some())
    }

    /// Fills what the prompt leaves open at random, keeping background colours away from `avoid`.
    ///
    /// Returns the scene of the generic groups and the position of every group (subject groups
    /// included), in prompt order.
    pub fn fill<R: Rng + ?Sized>(&self, rng: &mut R, avoid: &[Colour]) -> (Scene, Vec<Position>) {
        let background = self.fill_background(rng, avoid);
        let positions = resolve_positions(&self.groups, rng);
        let contrasting: Vec<Colour> = Colour::ALL
            .iter()
            .copied()
            .filter(|c| background.stands_apart(*c) && !avoid.contains(c))
            .collect();
        let mut groups = Vec::new();
        for (g, position) in self.groups.iter().zip(&positions) {
            if g.subject.is_some() {
                continue;
            }
            let count = g
                .count
                .unwrap_or_else(|| rng.random_range(1..=position.max_count()));
            groups.push(ObjectGroup {
                count: count.max(1),
                size: g.size.unwrap_or_else(|| Size::ALL[rng.random_range(0..2)]),
                colour: g
                    .colour
                    .unwrap_or_else(|| *contrasting.choose(rng).unwrap_or(&Colour::Black)),
                shape: g
                    .shape
                    .unwrap_or_else(|| Shape::ALL[rng.random_range(0..Shape::ALL.len())]),
                position: *position,
            });
        }
        let scene = Scene {
            background,
            groups,
            jitter_seed: rng.random(),
        };
        (scene, positions)
    }

    fn fill_background<R: Rng + ?Sized>(&self, rng: &mut R, avoid: &[Colour]) -> Background {
        let Some(req) = self.background else {
            return random_background(rng, &Pattern::ALL, &Colour::ALL, avoid);
        };
        let pick = |rng: &mut R, not: &[Colour]| -> Colour {
            let free: Vec<Colour> = Colour::ALL
                .iter()
                .copied()
                .filter(|c| !not.contains(c) && !avoid.contains(c))
                .collect();
            let any: Vec<Colour> = Colour::ALL
                .iter()
                .copied()
                .filter(|c| !not.contains(c))
                .collect();
            *free
                .choose(rng)
                .or(any.choose(rng))
                .unwrap_or(&Colour::White)
        };
        let colour = match req.colour {
            Some(c) => c,
            None => pick(rng, &req.accent.into_iter().collect::<Vec<_>>()),
        };
        let accent = match req.accent {
            Some(a) => a,
            None => pick(rng, &[colour]),
        };
        Background::patterned(req.pattern, colour, accent)
    }
}

/// Positions for every group: the asked ones, then free regions for the rest.
fn resolve_positions<R: Rng + ?Sized>(groups: &[GroupRequest], rng: &mut R) -> Vec<Position> {
    if groups.len() == 1 {
        return vec![groups[0].position.unwrap_or(Position::Centre)];
    }
    let mut taken: Vec<Position> = groups.iter().filter_map(|g| g.position).collect();
    groups
        .iter()
        .map(|g| {
            if let Some(p) = g.position {
                return p;
            }
            let free: Vec<Position> = Position::ALL[1..]
                .iter()
                .copied()
                .filter(|p| !taken.iter().any(|t| t.region().overlaps(&p.region())))
                .collect();
            // Halves first: they leave the most room; quadrants when halves no longer fit.
            let halves: Vec<Position> = free
                .iter()
                .copied()
                .filter(|p| p.max_count() == 2)
                .collect();
            let p = *halves
                .choose(rng)
                .or(free.choose(rng))
                .unwrap_or(&Position::ALL[1..][rng.random_range(0..8)]);
            taken.push(p);
            p
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Word {
    Article,
    Count(u8),
    Size(Size),
    Colour(Colour),
    Shape(Shape),
    Top,
    Bottom,
    Left,
    Right,
    Middle,
    /// Names a background (`background`, `plain`) without a pattern.
    BackgroundNoun,
    PatternName(Pattern),
    /// Starts a background phrase when a background follows (`on`, `against`).
    On,
    /// Separates object groups (`and`, `with`, `beside`).
    Separator,
    Filler,
    Unknown,
}

fn classify(w: &str) -> Word {
    match w {
        "a" | "an" => Word::Article,
        "one" | "1" | "single" => Word::Count(1),
        "two" | "2" | "pair" => Word::Count(2),
        "three" | "3" => Word::Count(3),
        "four" | "4" => Word::Count(4),
        "small" | "little" | "tiny" => Word::Size(Size::Small),
        "big" | "large" | "huge" => Word::Size(Size::Big),
        "violet" => Word::Colour(Colour::Purple),
        "top" | "upper" => Word::Top,
        "bottom" | "lower" => Word::Bottom,
        "left" => Word::Left,
        "right" => Word::Right,
        "centre" | "center" | "middle" | "central" => Word::Middle,
        "background" | "backdrop" | "plain" => Word::BackgroundNoun,
        "striped" | "stripes" | "stripe" | "stripy" => Word::PatternName(Pattern::Stripes),
        "dots" | "dot" | "dotted" | "polka" | "spots" | "spotted" => {
            Word::PatternName(Pattern::Dots)
        }
        "checks" | "checked" | "checkered" | "chequered" | "checkerboard" => {
            Word::PatternName(Pattern::Checks)
        }
        "gradient" | "fading" | "fades" | "fade" => Word::PatternName(Pattern::Gradient),
        "on" | "against" | "over" => Word::On,
        "and" | "with" | "beside" | "next" | "near" => Word::Separator,
        "the" | "of" | "at" | "in" | "along" | "corner" | "side" | "half" | "is" | "are"
        | "there" | "picture" | "image" | "drawing" | "photo" | "photograph" | "render"
        | "illustration" | "from" | "to" | "by" | "some" => Word::Filler,
        _ => {
            if let Some(c) = Colour::ALL.iter().find(|c| c.name() == w) {
                return Word::Colour(*c);
            }
            for s in Shape::ALL {
                if s.nouns().iter().any(|(one, many)| *one == w || *many == w) {
                    return Word::Shape(s);
                }
            }
            Word::Unknown
        }
    }
}

/// A lower-case word or a comma (which ends a phrase).
fn tokenize(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut word = String::new();
    for ch in text.chars() {
        if ch.is_alphanumeric() || ch == '\'' {
            word.extend(ch.to_lowercase());
        } else {
            if !word.is_empty() {
                tokens.push(std::mem::take(&mut word));
            }
            if matches!(ch, ',' | ';' | ':' | '.' | '!' | '?') {
                tokens.push(",".into());
            }
        }
    }
    if !word.is_empty() {
        tokens.push(word);
    }
    tokens
}

/// Whether the background starts at `tokens[i]` (`on a blue ...`, not `on the left`).
fn starts_background(tokens: &[String], i: usize) -> bool {
    if classify(&tokens[i]) != Word::On {
        return false;
    }
    matches!(
        tokens.get(i + 1).map(|t| classify(t)),
        Some(Word::Article | Word::Colour(_) | Word::BackgroundNoun | Word::PatternName(_))
    )
}

/// Whether a background phrase ends at `tokens[i]` (`and two red stars`, `with a star`).
fn ends_background(tokens: &[String], i: usize) -> bool {
    if tokens[i] == "," {
        return true;
    }
    if classify(&tokens[i]) != Word::Separator {
        return false;
    }
    matches!(
        tokens.get(i + 1).map(|t| classify(t)),
        Some(Word::Article) | Some(Word::Count(_)) | Some(Word::Size(_)) | Some(Word::Unknown)
    )
}

/// Parses a caption or prompt into the background and object groups it asks for.
pub fn parse_caption(text: &str) -> Result<ParsedPrompt, WorldError> {
    let err = |message: String| WorldError::Prompt {
        prompt: text.to_string(),
        message,
    };
    let tokens = tokenize(text);
    if tokens.iter().all(|t| t == ",") {
        return Err(err("empty prompt".into()));
    }
    let mut segments: Vec<(bool, &[String])> = Vec::new();
    let mut i = skip_opener(&tokens);
    while i < tokens.len() {
        let t = &tokens[i];
        if t == "," || classify(t) == Word::Separator {
            i += 1;
            continue;
        }
        let start = i;
        if starts_background(&tokens, i) {
            i += 1;
            while i < tokens.len() && !ends_background(&tokens, i) {
                i += 1;
            }
            segments.push((true, &tokens[start..i]));
        } else {
            while i < tokens.len()
                && tokens[i] != ","
                && classify(&tokens[i]) != Word::Separator
                && !(i > start && starts_background(&tokens, i))
            {
                i += 1;
            }
            segments.push((false, &tokens[start..i]));
        }
    }
    let mut parsed = ParsedPrompt::default();
    for (is_background, words) in segments {
        let classes: Vec<Word> = words.iter().map(|w| classify(w)).collect();
        let names_thing = classes
            .iter()
            .any(|c| matches!(c, Word::Shape(_) | Word::Unknown));
        let names_background = classes
            .iter()
            .any(|c| matches!(c, Word::BackgroundNoun | Word::PatternName(_)));
        if is_background || (names_background && !names_thing) {
            if parsed.background.is_some() {
                return Err(err("two backgrounds".into()));
            }
            parsed.background = Some(parse_background(words, &classes).map_err(err)?);
        } else if let Some(group) = parse_group(words, &classes).map_err(err)? {
            parsed.groups.push(group);
        }
    }
    Ok(parsed)
}

/// Index after an opener like "a picture of" or "there are".
fn skip_opener(tokens: &[String]) -> usize {
    let mut i = 0;
    if tokens.first().is_some_and(|t| t == "there")
        && tokens.get(1).is_some_and(|t| t == "is" || t == "are")
    {
        return 2;
    }
    if tokens
        .get(i)
        .is_some_and(|t| matches!(t.as_str(), "a" | "an" | "the"))
    {
        i += 1;
    }
    let opener = tokens.get(i).is_some_and(|t| {
        matches!(
            t.as_str(),
            "picture" | "image" | "drawing" | "photo" | "photograph" | "render" | "illustration"
        )
    });
    if opener && tokens.get(i + 1).is_some_and(|t| t == "of") {
        i + 2
    } else {
        0
    }
}

fn parse_background(words: &[String], classes: &[Word]) -> Result<BackgroundRequest, String> {
    let mut pattern: Option<Pattern> = None;
    let mut colours = Vec::new();
    for (w, c) in words.iter().zip(classes) {
        match c {
            Word::PatternName(p) => {
                if pattern.is_some_and(|q| q != *p) {
                    return Err(format!("`{w}` names a second background pattern"));
                }
                pattern = Some(*p);
            }
            Word::Colour(c) => colours.push(*c),
            _ => {}
        }
    }
    let pattern = pattern.unwrap_or(Pattern::Plain);
    if colours.len() > 2 {
        return Err("more than two background colours".into());
    }
    if pattern == Pattern::Plain && colours.len() == 2 {
        return Err("two colours for a plain background (name a pattern)".into());
    }
    Ok(BackgroundRequest {
        pattern,
        colour: colours.first().copied(),
        accent: colours.get(1).copied(),
    })
}

fn parse_group(words: &[String], classes: &[Word]) -> Result<Option<GroupRequest>, String> {
    fn set<T: PartialEq + Copy>(
        slot: &mut Option<T>,
        value: T,
        word: &str,
        what: &str,
    ) -> Result<(), String> {
        match slot {
            Some(old) if *old != value => Err(format!(
                "`{word}` gives a second {what} to one object group"
            )),
            _ => {
                *slot = Some(value);
                Ok(())
            }
        }
    }
    let mut g = GroupRequest::default();
    let mut article = false;
    let (mut vertical, mut horizontal, mut middle) = (None, None, false);
    let mut unknown: Vec<&str> = Vec::new();
    for (w, c) in words.iter().zip(classes) {
        match *c {
            Word::Article => article = true,
            Word::Count(n) => set(&mut g.count, n, w, "count")?,
            Word::Size(s) => set(&mut g.size, s, w, "size")?,
            Word::Colour(col) => set(&mut g.colour, col, w, "colour")?,
            Word::Shape(s) => set(&mut g.shape, s, w, "shape")?,
            Word::Top => set(&mut vertical, true, w, "vertical position")?,
            Word::Bottom => set(&mut vertical, false, w, "vertical position")?,
            Word::Left => set(&mut horizontal, true, w, "horizontal position")?,
            Word::Right => set(&mut horizontal, false, w, "horizontal position")?,
            Word::Middle => middle = true,
            Word::Unknown | Word::BackgroundNoun | Word::PatternName(_) => unknown.push(w),
            Word::On | Word::Separator | Word::Filler => {}
        }
    }
    if !unknown.is_empty() {
        g.subject = Some(unknown.join(" "));
    }
    if vertical.is_some() || horizontal.is_some() || middle {
        g.position = Some(Position::from_parts(vertical, horizontal));
    }
    if g.count.is_none() && article {
        g.count = Some(1);
    }
    if g.shape.is_none() && g.subject.is_none() {
        let said_something = g.count.is_some() || g.size.is_some() || g.colour.is_some();
        if said_something {
            return Err(format!("`{}` names no shape or subject", words.join(" ")));
        }
        // Only fillers or a bare position: nothing to draw.
        return Ok(None);
    }
    Ok(Some(g))
}
