//! What a scene is made of: palette colours, shapes, sizes, positions, backgrounds and object groups,
//! and where each object lands on the canvas.

use rand::Rng;
use rand::seq::IndexedRandom;
use serde::{Deserialize, Serialize};

use super::WorldRng;

/// One of the eight named colours of the world; far apart so a pixel's nearest one is unambiguous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Colour {
    Red,
    Orange,
    Yellow,
    Green,
    Blue,
    Purple,
    White,
    Black,
}

impl Colour {
    /// Every palette colour, in palette order.
    pub const ALL: [Colour; 8] = [
        Colour::Red,
        Colour::Orange,
        Colour::Yellow,
        Colour::Green,
        Colour::Blue,
        Colour::Purple,
        Colour::White,
        Colour::Black,
    ];

    /// The caption word for the colour.
    pub fn name(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Orange => "orange",
            Colour::Yellow => "yellow",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Purple => "purple",
            Colour::White => "white",
            Colour::Black => "black",
        }
    }

    /// The colour's sRGB value as the renderer paints it.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [210, 35, 35],
            Colour::Orange => [240, 130, 30],
            Colour::Yellow => [250, 225, 50],
            Colour::Green => [40, 160, 60],
            Colour::Blue => [40, 80, 220],
            Colour::Purple => [130, 50, 170],
            Colour::White => [240, 240, 240],
            Colour::Black => [25, 25, 25],
        }
    }

    /// The palette colour nearest to a pixel (Euclidean distance in sRGB).
    pub fn nearest(pixel: [u8; 3]) -> Colour {
        let mut best = Colour::Red;
        let mut best_d = f32::INFINITY;
        for c in Colour::ALL {
            let d = rgb_distance(pixel, c.rgb());
            if d < best_d {
                best_d = d;
                best = c;
            }
        }
        best
    }

    /// Position in [`Colour::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Euclidean distance between two sRGB triples.
pub fn rgb_distance(a: [u8; 3], b: [u8; 3]) -> f32 {
    let d: f32 = (0..3)
        .map(|i| {
            let x = a[i] as f32 - b[i] as f32;
            x * x
        })
        .sum();
    d.sqrt()
}

/// An object's outline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    Circle,
    Square,
    Triangle,
    Star,
    Heart,
    Ring,
    Diamond,
    Cross,
}

impl Shape {
    /// Every shape.
    pub const ALL: [Shape; 8] = [
        Shape::Circle,
        Shape::Square,
        Shape::Triangle,
        Shape::Star,
        Shape::Heart,
        Shape::Ring,
        Shape::Diamond,
        Shape::Cross,
    ];

    /// The canonical caption noun, singular.
    pub fn noun(self) -> &'static str {
        self.nouns()[0].0
    }

    /// Caption nouns (singular, plural) that name the shape; the first is canonical.
    pub fn nouns(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Shape::Circle => &[("circle", "circles"), ("disc", "discs")],
            Shape::Square => &[("square", "squares")],
            Shape::Triangle => &[("triangle", "triangles")],
            Shape::Star => &[("star", "stars")],
            Shape::Heart => &[("heart", "hearts")],
            Shape::Ring => &[("ring", "rings"), ("donut", "donuts")],
            Shape::Diamond => &[("diamond", "diamonds")],
            Shape::Cross => &[("cross", "crosses"), ("plus", "pluses")],
        }
    }
}

/// How big an object is relative to the room its position gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Size {
    Small,
    Big,
}

impl Size {
    /// Both sizes.
    pub const ALL: [Size; 2] = [Size::Small, Size::Big];

    /// Object diameter as a fraction of its slot's shorter side.
    pub(crate) fn slot_fraction(self) -> f32 {
        match self {
            Size::Small => 0.6,
            Size::Big => 0.9,
        }
    }
}

/// Where a group of objects sits: the centre (whole canvas), a half, or a quarter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Position {
    Centre,
    Left,
    Right,
    Top,
    Bottom,
    TopLeft,
    TopRight,
    BottomLeft,
    BottomRight,
}

impl Position {
    /// Every position.
    pub const ALL: [Position; 9] = [
        Position::Centre,
        Position::Left,
        Position::Right,
        Position::Top,
        Position::Bottom,
        Position::TopLeft,
        Position::TopRight,
        Position::BottomLeft,
        Position::BottomRight,
    ];

    /// The part of the canvas the position names, in fractions of the side.
    pub fn region(self) -> Rect {
        let (x0, y0, x1, y1) = match self {
            Position::Centre => (0.0, 0.0, 1.0, 1.0),
            Position::Left => (0.0, 0.0, 0.5, 1.0),
            Position::Right => (0.5, 0.0, 1.0, 1.0),
            Position::Top => (0.0, 0.0, 1.0, 0.5),
            Position::Bottom => (0.0, 0.5, 1.0, 1.0),
            Position::TopLeft => (0.0, 0.0, 0.5, 0.5),
            Position::TopRight => (0.5, 0.0, 1.0, 0.5),
            Position::BottomLeft => (0.0, 0.5, 0.5, 1.0),
            Position::BottomRight => (0.5, 0.5, 1.0, 1.0),
        };
        Rect { x0, y0, x1, y1 }
    }

    /// The most objects of one group this position holds while keeping them large.
    pub fn max_count(self) -> u8 {
        match self {
            Position::Centre => 3,
            Position::Left | Position::Right | Position::Top | Position::Bottom => 2,
            _ => 1,
        }
    }

    /// Vertical and horizontal words of the position (`top`/`bottom`, `left`/`right`).
    pub(crate) fn parts(self) -> (Option<&'static str>, Option<&'static str>) {
        match self {
            Position::Centre => (None, None),
            Position::Left => (None, Some("left")),
            Position::Right => (None, Some("right")),
            Position::Top => (Some("top"), None),
            Position::Bottom => (Some("bottom"), None),
            Position::TopLeft => (Some("top"), Some("left")),
            Position::TopRight => (Some("top"), Some("right")),
            Position::BottomLeft => (Some("bottom"), Some("left")),
            Position::BottomRight => (Some("bottom"), Some("right")),
        }
    }

    /// The position named by a vertical and a horizontal part (either may be absent).
    pub(crate) fn from_parts(vertical: Option<bool>, horizontal: Option<bool>) -> Position {
        // `Some(true)` is top / left.
        match (vertical, horizontal) {
            (None, None) => Position::Centre,
            (None, Some(true)) => Position::Left,
            (None, Some(false)) => Position::Right,
            (Some(true), None) => Position::Top,
            (Some(false), None) => Position::Bottom,
            (Some(true), Some(true)) => Position::TopLeft,
            (Some(true), Some(false)) => Position::TopRight,
            (Some(false), Some(true)) => Position::BottomLeft,
            (Some(false), Some(false)) => Position::BottomRight,
        }
    }
}

/// An axis-aligned rectangle in fractions of the canvas side (or pixels, where said).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rect {
    pub x0: f32,
    pub y0: f32,
    pub x1: f32,
    pub y1: f32,
}

impl Rect {
    /// Width.
    pub fn width(&self) -> f32 {
        self.x1 - self.x0
    }
    /// Height.
    pub fn height(&self) -> f32 {
        self.y1 - self.y0
    }
    /// Centre point.
    pub fn centre(&self) -> (f32, f32) {
        ((self.x0 + self.x1) / 2.0, (self.y0 + self.y1) / 2.0)
    }
    /// Whether two rectangles share any area.
    pub fn overlaps(&self, other: &Rect) -> bool {
        self.x0 < other.x1 && other.x0 < self.x1 && self.y0 < other.y1 && other.y0 < self.y1
    }
    /// The rectangle shrunk by `m` on every side.
    pub fn inset(&self, m: f32) -> Rect {
        Rect {
            x0: self.x0 + m,
            y0: self.y0 + m,
            x1: self.x1 - m,
            y1: self.y1 - m,
        }
    }
    /// The rectangle scaled by `k` (fractions to pixels).
    pub fn scaled(&self, k: f32) -> Rect {
        Rect {
            x0: self.x0 * k,
            y0: self.y0 * k,
            x1: self.x1 * k,
            y1: self.y1 * k,
        }
    }
}

/// A background pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    Plain,
    Stripes,
    Dots,
    Checks,
    Gradient,
}

impl Pattern {
    /// Every pattern.
    pub const ALL: [Pattern; 5] = [
        Pattern::Plain,
        Pattern::Stripes,
        Pattern::Dots,
        Pattern::Checks,
        Pattern::Gradient,
    ];
}

/// A background: a pattern in a main colour and (except plain) an accent colour.
///
/// Stripes are vertical, dots are accent dots on the main colour, checks alternate both colours,
/// a gradient runs from the main colour at the top to the accent at the bottom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Background {
    pub pattern: Pattern,
    pub colour: Colour,
    /// `None` only for [`Pattern::Plain`].
    pub accent: Option<Colour>,
}

impl Background {
    /// A plain background.
    pub fn plain(colour: Colour) -> Self {
        Background {
            pattern: Pattern::Plain,
            colour,
            accent: None,
        }
    }

    /// A patterned background; `accent` is dropped for [`Pattern::Plain`].
    pub fn patterned(pattern: Pattern, colour: Colour, accent: Colour) -> Self {
        Background {
            pattern,
            colour,
            accent: (pattern != Pattern::Plain).then_some(accent),
        }
    }

    /// The colours the background paints (one or two).
    pub fn colours(&self) -> Vec<Colour> {
        let mut v = vec![self.colour];
        v.extend(self.accent);
        v
    }

    /// How far a colour is from everything the background paints, blends of its two colours
    /// included (antialiased pattern edges and gradients mix them).
    pub fn distance_to(&self, c: Colour) -> f32 {
        let main = self.colour.rgb();
        match self.accent {
            Some(a) => distance_to_blend(c.rgb(), main, a.rgb()),
            None => rgb_distance(c.rgb(), main),
        }
    }
}

impl Background {
    /// Whether `c` is far from every colour the background paints and no blend of them looks like
    /// `c` either, so pixels of colour `c` always read as foreground.
    pub fn stands_apart(&self, c: Colour) -> bool {
        if self.distance_to(c) < MIN_OBJECT_CONTRAST {
            return false;
        }
        let Some(a) = self.accent else { return true };
        (0..=16)
            .all(|i| Colour::nearest(lerp_rgb(self.colour.rgb(), a.rgb(), i as f32 / 16.0)) != c)
    }
}

/// Distance from `p` to the nearest blend of `a` and `b`.
pub fn distance_to_blend(p: [u8; 3], a: [u8; 3], b: [u8; 3]) -> f32 {
    let (mut num, mut den) = (0.0f32, 0.0f32);
    for i in 0..3 {
        let ab = b[i] as f32 - a[i] as f32;
        num += (p[i] as f32 - a[i] as f32) * ab;
        den += ab * ab;
    }
    let t = if den > 0.0 {
        (num / den).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let mut d2 = 0.0;
    for i in 0..3 {
        let q = a[i] as f32 + (b[i] as f32 - a[i] as f32) * t;
        let d = p[i] as f32 - q;
        d2 += d * d;
    }
    d2.sqrt()
}

/// Linear blend of two sRGB triples, rounded.
pub(crate) fn lerp_rgb(a: [u8; 3], b: [u8; 3], t: f32) -> [u8; 3] {
    let mut out = [0u8; 3];
    for i in 0..3 {
        out[i] = (a[i] as f32 + (b[i] as f32 - a[i] as f32) * t).round() as u8;
    }
    out
}

/// Objects of one kind at one position: "two small red stars at the top left".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ObjectGroup {
    pub count: u8,
    pub size: Size,
    pub colour: Colour,
    pub shape: Shape,
    pub position: Position,
}

/// A captionable picture: a background and one or two object groups in separate regions.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Scene {
    pub background: Background,
    pub groups: Vec<ObjectGroup>,
    /// Seeds the small offsets and tilts that no caption mentions.
    pub jitter_seed: u64,
}

/// What random scenes may contain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorldSpec {
    pub colours: Vec<Colour>,
    pub shapes: Vec<Shape>,
    pub patterns: Vec<Pattern>,
    /// 1 or 2.
    pub max_groups: u8,
    /// Upper bound on a group's count (each position has its own bound too).
    pub max_count: u8,
}

impl Default for WorldSpec {
    fn default() -> Self {
        WorldSpec {
            colours: Colour::ALL.to_vec(),
            shapes: Shape::ALL.to_vec(),
            patterns: Pattern::ALL.to_vec(),
            max_groups: 2,
            max_count: 3,
        }
    }
}

/// Least distance between an object colour and its background, so objects always stand out.
pub(crate) const MIN_OBJECT_CONTRAST: f32 = 70.0;

impl Scene {
    /// A random scene drawn from `spec`; the same rng state always gives the same scene.
    pub fn random<R: Rng + ?Sized>(rng: &mut R, spec: &WorldSpec) -> Scene {
        let colours = if spec.colours.len() >= 2 {
            spec.colours.as_slice()
        } else {
            &Colour::ALL[..]
        };
        let shapes = if spec.shapes.is_empty() {
            &Shape::ALL[..]
        } else {
            spec.shapes.as_slice()
        };
        let patterns = if spec.patterns.is_empty() {
            &Pattern::ALL[..]
        } else {
            spec.patterns.as_slice()
        };
        let background = random_background(rng, patterns, colours, &[]);
        let object_colours: Vec<Colour> = colours
            .iter()
            .copied()
            .filter(|c| background.stands_apart(*c))
            .collect();
        let object_colours = if object_colours.is_empty() {
            Colour::ALL
                .iter()
                .copied()
                .filter(|c| background.stands_apart(*c))
                .collect()
        } else {
            object_colours
        };
        let positions = if spec.max_groups >= 2 && rng.random_bool(0.45) {
            let pairs = disjoint_position_pairs();
            let (a, b) = pairs[rng.random_range(0..pairs.len())];
            if rng.random_bool(0.5) {
                vec![a, b]
            } else {
                vec![b, a]
            }
        } else {
            vec![Position::ALL[rng.random_range(0..Position::ALL.len())]]
        };
        let groups = positions
            .into_iter()
            .map(|position| {
                let max = position.max_count().min(spec.max_count.max(1));
                ObjectGroup {
                    count: rng.random_range(1..=max),
                    size: Size::ALL[rng.random_range(0..2)],
                    colour: *object_colours.choose(rng).unwrap_or(&Colour::Black),
                    shape: *shapes.choose(rng).unwrap_or(&Shape::Circle),
                    position,
                }
            })
            .collect();
        Scene {
            background,
            groups,
            jitter_seed: rng.next_u64(),
        }
    }

    /// Where every object of the scene lands on a `size`-pixel canvas, in drawing order.
    pub fn placements(&self, size: u32) -> Vec<Placement> {
        let mut jitter = WorldRng::new(self.jitter_seed);
        let mut out = Vec::new();
        for g in &self.groups {
            for slot in group_slots(g.position, g.count) {
                let (centre, radius, rotation) = place_in_slot(&slot, g.size, &mut jitter);
                out.push(Placement {
                    shape: g.shape,
                    colour: g.colour,
                    centre: (centre.0 * size as f32, centre.1 * size as f32),
                    radius: radius * size as f32,
                    rotation,
                });
            }
        }
        out
    }
}

/// A background drawn at random whose colours keep away from `avoid`.
pub(crate) fn random_background<R: Rng + ?Sized>(
    rng: &mut R,
    patterns: &[Pattern],
    colours: &[Colour],
    avoid: &[Colour],
) -> Background {
    let allowed: Vec<Colour> = colours
        .iter()
        .copied()
        .filter(|c| !avoid.contains(c))
        .collect();
    let allowed = if allowed.len() >= 2 {
        allowed
    } else {
        Colour::ALL
            .iter()
            .copied()
            .filter(|c| !avoid.contains(c))
            .collect()
    };
    // Redraw until no avoided colour is near anything the background paints (blends included).
    let mut background = Background::plain(Colour::White);
    for _ in 0..64 {
        let pattern = *patterns.choose(rng).unwrap_or(&Pattern::Plain);
        let colour = *allowed.choose(rng).unwrap_or(&Colour::White);
        let accents: Vec<Colour> = allowed.iter().copied().filter(|c| *c != colour).collect();
        let accent = *accents.choose(rng).unwrap_or(&Colour::Black);
        background = Background::patterned(pattern, colour, accent);
        if avoid.iter().all(|c| background.stands_apart(*c)) {
            break;
        }
    }
    background
}

/// Pairs of positions whose regions do not overlap (the centre overlaps everything).
pub(crate) fn disjoint_position_pairs() -> Vec<(Position, Position)> {
    let mut pairs = Vec::new();
    for (i, a) in Position::ALL.iter().enumerate() {
        for b in &Position::ALL[i + 1..] {
            if !a.region().overlaps(&b.region()) {
                pairs.push((*a, *b));
            }
        }
    }
    pairs
}

/// One object on the canvas, in pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    pub shape: Shape,
    pub colour: Colour,
    pub centre: (f32, f32),
    pub radius: f32,
    /// Radians, clockwise.
    pub rotation: f32,
}

/// Gap between a region and the canvas edge or its neighbour, as a fraction of the side.
const REGION_MARGIN: f32 = 0.035;
/// Largest slot side used for sizing, so a lone object in the centre is not huge.
const MAX_SLOT_SIDE: f32 = 0.75;
/// Largest tilt of a generic object, radians; kept small so a square never turns into a diamond.
const MAX_TILT: f32 = 0.2;

/// The slots (fractions of the side) of `count` objects at `position`.
pub(crate) fn group_slots(position: Position, count: u8) -> Vec<Rect> {
    let r = position.region().inset(REGION_MARGIN);
    let (w, h) = (r.width(), r.height());
    match count {
        0 => vec![],
        1 => vec![r],
        3 if (w - h).abs() < 1e-3 => {
            // Three in a square region: two above, one below, each a quarter of the region.
            let (hw, hh) = (w / 2.0, h / 2.0);
            vec![
                Rect {
                    x0: r.x0,
                    y0: r.y0,
                    x1: r.x0 + hw,
                    y1: r.y0 + hh,
                },
                Rect {
                    x0: r.x0 + hw,
                    y0: r.y0,
                    x1: r.x1,
                    y1: r.y0 + hh,
                },
                Rect {
                    x0: r.x0 + hw / 2.0,
                    y0: r.y0 + hh,
                    x1: r.x0 + hw * 1.5,
                    y1: r.y1,
                },
            ]
        }
        n => {
            let n = n as usize;
            if w >= h {
                let step = w / n as f32;
                (0..n)
                    .map(|i| Rect {
                        x0: r.x0 + step * i as f32,
                        y0: r.y0,
                        x1: r.x0 + step * (i + 1) as f32,
                        y1: r.y1,
                    })
                    .collect()
            } else {
                let step = h / n as f32;
                (0..n)
                    .map(|i| Rect {
                        x0: r.x0,
                        y0: r.y0 + step * i as f32,
                        x1: r.x1,
                        y1: r.y0 + step * (i + 1) as f32,
                    })
                    .collect()
            }
        }
    }
}

/// Object diameter (fraction of the side) for a slot and size.
pub(crate) fn slot_diameter(slot: &Rect, size: Size) -> f32 {
    slot.width().min(slot.height()).min(MAX_SLOT_SIDE) * size.slot_fraction()
}

/// Centre, radius (fractions) and tilt of one object in its slot.
fn place_in_slot(slot: &Rect, size: Size, jitter: &mut WorldRng) -> ((f32, f32), f32, f32) {
    let d = slot_diameter(slot, size);
    let (cx, cy) = slot.centre();
    let room_x = ((slot.width() - d) / 2.0).max(0.0) * 0.7;
    let room_y = ((slot.height() - d) / 2.0).max(0.0) * 0.7;
    let dx = (jitter.random::<f32>() * 2.0 - 1.0) * room_x;
    let dy = (jitter.random::<f32>() * 2.0 - 1.0) * room_y;
    let tilt = (jitter.random::<f32>() * 2.0 - 1.0) * MAX_TILT;
    ((cx + dx, cy + dy), d / 2.0, tilt)
}
