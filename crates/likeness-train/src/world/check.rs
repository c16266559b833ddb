//! An independent check of pictures against what was asked, computed from pixels with the
//! renderer's knowledge of the world (palette, pattern geometry, layout) rather than with CLIP, so a
//! model that games CLIP is still caught.

use image::RgbImage;
use serde::{Deserialize, Serialize};

use super::concepts::Concept;
use super::parse::{BackgroundRequest, ParsedPrompt};
use super::scene::{
    Background, Colour, ObjectGroup, Pattern, Position, Rect, Scene, distance_to_blend,
    group_slots, lerp_rgb, rgb_distance, slot_diameter,
};

/// Presence score above which a picture counts as showing the concept.
pub const CONCEPT_PRESENCE_THRESHOLD: f32 = 0.3;

/// A pixel this close (sRGB distance) to a palette colour counts as that colour in the concept check.
const PURE_DISTANCE: f32 = 60.0;

/// A pixel this close to the colour both ends of its row share is background.
const ROW_BACKGROUND_DISTANCE: f32 = 40.0;

/// A pixel this far (sRGB distance) from every colour its background could have is foreground.
const FOREGROUND_DISTANCE: f32 = 70.0;

/// Whether the picture's background is the one the scene asks for.
pub fn check_background(img: &RgbImage, scene: &Scene) -> bool {
    background_matches(img, &request_of(&scene.background))
}

/// Whether every object group of the scene shows its colour at its position.
pub fn check_object_colour(img: &RgbImage, scene: &Scene) -> bool {
    scene
        .groups
        .iter()
        .all(|g| group_colour_matches(img, &scene.background, g))
}

fn request_of(bg: &Background) -> BackgroundRequest {
    BackgroundRequest {
        pattern: bg.pattern,
        colour: Some(bg.colour),
        accent: bg.accent,
    }
}

/// Palette classes of the pixels in a band along the border, with line statistics.
struct BorderStats {
    /// Share of each palette colour in the border band.
    share: [f32; 8],
    /// Shares in the top and bottom bands alone (for gradients).
    top_share: [f32; 8],
    bottom_share: [f32; 8],
    /// Mean colour changes along the two horizontal lines just inside the top and bottom edges.
    changes_across: f32,
    /// Mean colour changes along the two vertical lines just inside the left and right edges.
    changes_down: f32,
}

fn class_of(img: &RgbImage, x: u32, y: u32) -> Colour {
    Colour::nearest(img.get_pixel(x, y).0)
}

fn shares(counts: &[u32; 8]) -> [f32; 8] {
    let total: u32 = counts.iter().sum();
    counts.map(|c| c as f32 / total.max(1) as f32)
}

fn border_stats(img: &RgbImage) -> BorderStats {
    let s = img.width().min(img.height());
    let band = (s / 8).max(1);
    let (mut all, mut top, mut bottom) = ([0u32; 8], [0u32; 8], [0u32; 8]);
    for y in 0..s {
        for x in 0..s {
            let edge = x.min(y).min(s - 1 - x).min(s - 1 - y);
            if edge >= band {
                continue;
            }
            let c = class_of(img, x, y).index();
            all[c] += 1;
            if y < band {
                top[c] += 1;
            }
            if y >= s - band {
                bottom[c] += 1;
            }
        }
    }
    // The outermost rows and columns: no object reaches them, and dots stay clear of them.
    let line = 0;
    let changes = |cells: &mut dyn Iterator<Item = Colour>| -> u32 {
        let mut prev = None;
        let mut n = 0;
        for c in cells {
            if prev.is_some_and(|p| p != c) {
                n += 1;
            }
            prev = Some(c);
        }
        n
    };
    let across = changes(&mut (0..s).map(|x| class_of(img, x, line)))
        + changes(&mut (0..s).map(|x| class_of(img, x, s - 1 - line)));
    let down = changes(&mut (0..s).map(|y| class_of(img, line, y)))
        + changes(&mut (0..s).map(|y| class_of(img, s - 1 - line, y)));
    BorderStats {
        share: shares(&all),
        top_share: shares(&top),
        bottom_share: shares(&bottom),
        changes_across: across as f32 / 2.0,
        changes_down: down as f32 / 2.0,
    }
}

/// The two most common palette colours of a share table.
fn top_two(share: &[f32; 8]) -> (Colour, Colour) {
    let mut order: Vec<usize> = (0..8).collect();
    order.sort_by(|a, b| share[*b].total_cmp(&share[*a]).then(a.cmp(b)));
    (Colour::ALL[order[0]], Colour::ALL[order[1]])
}

fn most_common(share: &[f32; 8]) -> Colour {
    top_two(share).0
}

/// Whether the picture's background has the requested pattern and colours (unnamed colours match
/// anything). Sampled from a band along the border, where no object of the world is placed.
pub fn background_matches(img: &RgbImage, req: &BackgroundRequest) -> bool {
    if img.width() < 8 || img.height() < 8 {
        return false;
    }
    let st = border_stats(img);
    let (first, second) = top_two(&st.share);
    let main = req.colour.unwrap_or(first);
    let accent = req
        .accent
        .unwrap_or(if main == first { second } else { first });
    let share = |c: Colour| st.share[c.index()];
    let few_changes = |n: f32| n <= 2.0;
    let many_changes = |n: f32| n >= 4.0;
    match req.pattern {
        Pattern::Plain => {
            let other = Colour::ALL
                .iter()
                .filter(|c| **c != main)
                .map(|c| share(*c))
                .fold(0.0, f32::max);
            share(main) >= 0.7
                && other < 0.2
                && few_changes(st.changes_across)
                && few_changes(st.changes_down)
        }
        Pattern::Stripes => {
            share(main) >= 0.25
                && share(accent) >= 0.25
                && many_changes(st.changes_across)
                && few_changes(st.changes_down)
        }
        Pattern::Checks => {
            share(main) >= 0.25
                && share(accent) >= 0.25
                && many_changes(st.changes_across)
                && many_changes(st.changes_down)
        }
        Pattern::Dots => {
            share(main) >= 0.45
                && (0.1..=0.45).contains(&share(accent))
                && few_changes(st.changes_across)
                && few_changes(st.changes_down)
        }
        Pattern::Gradient => {
            let top = req.colour.unwrap_or(most_common(&st.top_share));
            let bottom = req.accent.unwrap_or(most_common(&st.bottom_share));
            top != bottom
                && st.top_share[top.index()] >= 0.6
                && st.bottom_share[bottom.index()] >= 0.6
                && st.top_share[bottom.index()] < 0.2
                && st.bottom_share[top.index()] < 0.2
        }
    }
}

/// Whether the group's region holds foreground mostly of the group's colour.
///
/// Foreground is what is far from every colour the background could paint at that pixel; the
/// group passes when its colour is the most common palette colour of the foreground there and
/// covers at least a third of the area its objects would cover when drawn as asked.
pub fn group_colour_matches(img: &RgbImage, background: &Background, group: &ObjectGroup) -> bool {
    let s = img.width().min(img.height());
    if s < 8 {
        return false;
    }
    let region = group.position.region().scaled(s as f32);
    let mut counts = [0u32; 8];
    let (x0, x1) = (region.x0.floor() as u32, (region.x1.ceil() as u32).min(s));
    let (y0, y1) = (region.y0.floor() as u32, (region.y1.ceil() as u32).min(s));
    for y in y0..y1 {
        for x in x0..x1 {
            let px = img.get_pixel(x, y).0;
            if is_foreground(px, background, y as f32 / s as f32) {
                counts[Colour::nearest(px).index()] += 1;
            }
        }
    }
    let own = counts[group.colour.index()];
    let best = counts.iter().copied().max().unwrap_or(0);
    own == best && own as f32 >= expected_area(group, s) / 3.0
}

/// Pixels a group's objects cover, counting every shape as a star (the thinnest).
fn expected_area(group: &ObjectGroup, size: u32) -> f32 {
    group_slots(group.position, group.count)
        .iter()
        .map(|slot| {
            let d = slot_diameter(slot, group.size) * size as f32;
            // A star of outer radius r covers about 1.5 r^2.
            1.5 * (d / 2.0) * (d / 2.0)
        })
        .sum()
}

/// Whether a pixel at relative height `t` stands apart from the background (blends of the
/// background's colours, from antialiased pattern edges, are background too).
fn is_foreground(px: [u8; 3], bg: &Background, t: f32) -> bool {
    let main = bg.colour.rgb();
    let d = match (bg.pattern, bg.accent) {
        (Pattern::Gradient, Some(a)) => {
            let lo = lerp_rgb(main, a.rgb(), (t - 0.1).clamp(0.0, 1.0));
            let hi = lerp_rgb(main, a.rgb(), (t + 0.1).clamp(0.0, 1.0));
            distance_to_blend(px, lo, hi)
        }
        (_, Some(a)) => distance_to_blend(px, main, a.rgb()),
        (_, None) => rgb_distance(px, main),
    };
    d > FOREGROUND_DISTANCE
}

/// How clearly the concept shows in the picture, in [0, 1].
///
/// Background colours are those along three or four sides of the border, or along two opposite
/// sides (a subject touches at most two adjacent sides). Among the other pixels, the score is the
/// share of the concept's signature colours (body, plus marking pixels lying between body
/// pixels), scaled down when the markings cover less than half their usual share: a plain object
/// in the body colour scores near 0.
pub fn concept_presence(img: &RgbImage, concept: &Concept) -> f32 {
    concept_presence_in(img, concept, None)
}

/// [`concept_presence`] counting only the foreground inside `region` (fractions of the side), for a
/// subject asked to be at a position among other objects.
pub fn concept_presence_at(img: &RgbImage, concept: &Concept, position: Position) -> f32 {
    concept_presence_in(img, concept, Some(position.region()))
}

fn concept_presence_in(img: &RgbImage, concept: &Concept, region: Option<Rect>) -> f32 {
    let s = img.width().min(img.height());
    if s < 8 {
        return 0.0;
    }
    let classes: Vec<Colour> = (0..s * s).map(|i| class_of(img, i % s, i / s)).collect();
    // Signature pixels must be close to the colour itself: blends at edges (yellow over blue
    // reads as purple) must not pass for markings.
    let pure: Vec<Option<Colour>> = (0..s * s)
        .map(|i| {
            let px = img.get_pixel(i % s, i / s).0;
            let c = classes[i as usize];
            (rgb_distance(px, c.rgb()) <= PURE_DISTANCE).then_some(c)
        })
        .collect();
    let background = background_classes(&pure, s);
    if background[concept.body.index()] {
        return 0.0;
    }
    let row_background = row_background_colours(img, s);
    let is_background = |x: i64, y: i64| -> bool {
        let i = (y * s as i64 + x) as usize;
        background[classes[i].index()]
            || row_background[y as usize].is_some_and(|bg| {
                rgb_distance(img.get_pixel(x as u32, y as u32).0, bg) <= ROW_BACKGROUND_DISTANCE
            })
    };
    let at = |x: i64, y: i64| -> Option<Colour> {
        if x >= 0 && y >= 0 && x < s as i64 && y < s as i64 {
            pure[(y * s as i64 + x) as usize]
        } else {
            None
        }
    };
    let reach = (s as i64 / 10).max(2);
    let body_within = |x: i64, y: i64, dx: i64, dy: i64| -> bool {
        (1..=reach).any(|k| at(x + dx * k, y + dy * k) == Some(concept.body))
    };
    let region = region
        .unwrap_or(Rect {
            x0: 0.0,
            y0: 0.0,
            x1: 1.0,
            y1: 1.0,
        })
        .scaled(s as f32);
    let (mut foreground, mut body, mut marks) = (0u32, 0u32, 0u32);
    let mut area = 0u32;
    for y in 0..s as i64 {
        for x in 0..s as i64 {
            let (fx, fy) = (x as f32 + 0.5, y as f32 + 0.5);
            if fx < region.x0 || fx > region.x1 || fy < region.y0 || fy > region.y1 {
                continue;
            }
            area += 1;
            if is_background(x, y) {
                continue;
            }
            foreground += 1;
            let c = at(x, y);
            if c == Some(concept.body) {
                body += 1;
            } else if c == Some(concept.marking_colour)
                && ((body_within(x, y, 1, 0) && body_within(x, y, -1, 0))
                    || (body_within(x, y, 0, 1) && body_within(x, y, 0, -1)))
            {
                marks += 1;
            }
        }
    }
    if (foreground as f32) < 0.01 * area as f32 || body + marks == 0 {
        return 0.0;
    }
    let signature = (body + marks) as f32 / foreground as f32;
    let marked = marks as f32 / (body + marks) as f32;
    let balance = (marked / (0.5 * concept.marking_share)).min(1.0);
    signature * balance
}

/// Palette colours that make up the background: covering 5% of the border band on at least three
/// sides, or on two opposite sides (a subject touches at most two adjacent sides). Only pixels
/// close to a palette colour count, so blends (a white-to-black ramp reads as purple) do not.
fn background_classes(pure: &[Option<Colour>], s: u32) -> [bool; 8] {
    let band = (s / 8).max(1);
    // Counts per side: top, bottom, left, right.
    let mut sides = [[0u32; 8]; 4];
    for y in 0..s {
        for x in 0..s {
            let Some(c) = pure[(y * s + x) as usize] else {
                continue;
            };
            let c = c.index();
            if y < band {
                sides[0][c] += 1;
            }
            if y >= s - band {
                sides[1][c] += 1;
            }
            if x < band {
                sides[2][c] += 1;
            }
            if x >= s - band {
                sides[3][c] += 1;
            }
        }
    }
    let per_side = (band * s) as f32;
    let mut out = [false; 8];
    for (c, flag) in out.iter_mut().enumerate() {
        let on: Vec<bool> = sides
            .iter()
            .map(|side| side[c] as f32 >= 0.05 * per_side)
            .collect();
        let count = on.iter().filter(|b| **b).count();
        *flag = count >= 3 || (on[0] && on[1]) || (on[2] && on[3]);
    }
    out
}

/// Per row, the background colour where both ends of the row agree (gradients, plain rows).
fn row_background_colours(img: &RgbImage, s: u32) -> Vec<Option<[u8; 3]>> {
    let end = (s / 16).max(1);
    let mean = |xs: std::ops::Range<u32>, y: u32| -> [u8; 3] {
        let mut acc = [0u32; 3];
        let n = xs.len() as u32;
        for x in xs {
            let p = img.get_pixel(x, y).0;
            for i in 0..3 {
                acc[i] += p[i] as u32;
            }
        }
        acc.map(|a| (a / n.max(1)) as u8)
    };
    (0..s)
        .map(|y| {
            let left = mean(0..end, y);
            let right = mean(s - end..s, y);
            (rgb_distance(left, right) < 30.0).then(|| lerp_rgb(left, right, 0.5))
        })
        .collect()
}

/// Pass rates of the checks over a set of pictures with the scenes they were asked to show.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct CheckRates {
    pub pictures: usize,
    pub background: f32,
    pub object_colour: f32,
    /// Both checks at once.
    pub both: f32,
}

/// Runs both scene checks over pictures and reports the share that pass.
pub fn scene_check_rates<'a>(
    items: impl IntoIterator<Item = (&'a RgbImage, &'a Scene)>,
) -> CheckRates {
    let (mut n, mut bg, mut obj, mut both) = (0usize, 0usize, 0usize, 0usize);
    for (img, scene) in items {
        n += 1;
        let b = check_background(img, scene);
        let o = check_object_colour(img, scene);
        bg += b as usize;
        obj += o as usize;
        both += (b && o) as usize;
    }
    let rate = |k: usize| if n == 0 { 0.0 } else { k as f32 / n as f32 };
    CheckRates {
        pictures: n,
        background: rate(bg),
        object_colour: rate(obj),
        both: rate(both),
    }
}

/// Share of pictures whose concept presence reaches `threshold`.
pub fn concept_presence_rate<'a>(
    images: impl IntoIterator<Item = &'a RgbImage>,
    concept: &Concept,
    threshold: f32,
) -> f32 {
    let (mut n, mut hit) = (0usize, 0usize);
    for img in images {
        n += 1;
        hit += (concept_presence(img, concept) >= threshold) as usize;
    }
    if n == 0 { 0.0 } else { hit as f32 / n as f32 }
}

/// What a picture gets right of a prompt: `None` where the prompt does not say enough to check.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PromptCheck {
    pub background: Option<bool>,
    /// One entry per generic group of the prompt (subject groups are skipped).
    pub object_colours: Vec<Option<bool>>,
}

/// Checks a picture against a parsed prompt: the background as far as it is named, and the colour
/// of each generic group that names a colour and a position (needs a fully named background).
pub fn check_prompt(img: &RgbImage, prompt: &ParsedPrompt) -> PromptCheck {
    let background = prompt.background.map(|req| background_matches(img, &req));
    let full_background = prompt.background.and_then(|req| {
        let colour = req.colour?;
        match req.pattern {
            Pattern::Plain => Some(Background::plain(colour)),
            p => Some(Background::patterned(p, colour, req.accent?)),
        }
    });
    let object_colours = prompt
        .groups
        .iter()
        .filter(|g| g.subject.is_none())
        .map(|g| {
            let bg = full_background?;
            let group = ObjectGroup {
                count: g.count.unwrap_or(1),
                size: g.size.unwrap_or(super::scene::Size::Small),
                colour: g.colour?,
                shape: g.shape.unwrap_or(super::scene::Shape::Star),
                position: g.position?,
            };
            Some(group_colour_matches(img, &bg, &group))
        })
        .collect();
    PromptCheck {
        background,
        object_colours,
    }
}
