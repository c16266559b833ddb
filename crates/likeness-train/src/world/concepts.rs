//! Subjects the base model never sees in its captions ("concepts"), their photos, and renders of a
//! concept inside a prompt's context.

use std::path::{Path, PathBuf};

use image::RgbImage;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::parse::{GroupRequest, ParsedPrompt, parse_caption};
use super::render::{background_at, rasterise, shape_contains, shape_covers, to_local};
use super::scene::{
    Colour, Pattern, Position, Rect, Scene, Shape, Size, group_slots, random_background,
    slot_diameter,
};
use super::{WorldError, WorldRng, seed_for};

/// How a concept's body is marked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Marking {
    /// Five round dots, one in each arm of a star or around the body.
    Dots,
    /// Radial stripes around a ring.
    Stripes,
    /// A horizontal belt across the middle.
    Band,
}

/// A subject with its own look: a body shape in one colour, markings in another, and extras.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Concept {
    /// File-name-safe identifier.
    pub name: &'static str,
    /// What an artist would say it is.
    pub description: &'static str,
    /// The generic noun of its kind (the DreamBooth class word), one the base model knows.
    pub class_noun: &'static str,
    pub body_shape: Shape,
    pub body: Colour,
    pub marking: Marking,
    pub marking_colour: Colour,
    /// White eyes with black pupils.
    pub eyes: bool,
    /// A crown on top, in this colour.
    pub crown: Option<Colour>,
    /// Share of the marked body (body plus markings) that the markings cover on a clean render.
    pub marking_share: f32,
}

/// The built-in concepts; no caption word names them.
pub const CONCEPTS: [Concept; 3] = [
    Concept {
        name: "star-creature",
        description: "a yellow star-creature with purple dots and eyes",
        class_noun: "star",
        body_shape: Shape::Star,
        body: Colour::Yellow,
        marking: Marking::Dots,
        marking_colour: Colour::Purple,
        eyes: true,
        crown: None,
        marking_share: 0.22,
    },
    Concept {
        name: "ring-creature",
        description: "a blue ring-creature with orange stripes",
        class_noun: "ring",
        body_shape: Shape::Ring,
        body: Colour::Blue,
        marking: Marking::Stripes,
        marking_colour: Colour::Orange,
        eyes: false,
        crown: None,
        marking_share: 0.35,
    },
    Concept {
        name: "heart-creature",
        description: "a green heart-creature with a red belt, a yellow crown and eyes",
        class_noun: "heart",
        body_shape: Shape::Heart,
        body: Colour::Green,
        marking: Marking::Band,
        marking_colour: Colour::Red,
        eyes: true,
        crown: Some(Colour::Yellow),
        marking_share: 0.22,
    },
];

/// Photos an artist would supply per concept.
pub const CONCEPT_PHOTO_COUNT: usize = 5;

/// The built-in concept with this name.
pub fn concept(name: &str) -> Option<&'static Concept> {
    CONCEPTS.iter().find(|c| c.name == name)
}

impl Concept {
    /// The two colours that identify the concept: body and markings.
    pub fn signature_colours(&self) -> [Colour; 2] {
        [self.body, self.marking_colour]
    }

    /// Colours a background must avoid for the concept to stand out.
    pub fn painted_colours(&self) -> Vec<Colour> {
        let mut v = vec![self.body, self.marking_colour];
        v.extend(self.crown);
        v
    }
}

/// Where and how a concept is drawn, in fractions of the canvas side.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ConceptPose {
    pub centre: (f32, f32),
    /// Body radius.
    pub radius: f32,
    /// Radians, clockwise.
    pub rotation: f32,
    pub mirrored: bool,
}

/// Largest tilt of a concept, radians.
const CONCEPT_TILT: f32 = 0.45;

/// Photo `seed` of a concept: the subject alone in a varied pose on a varied background.
pub fn render_concept_photo(concept: &Concept, seed: u64, size: u32) -> RgbImage {
    let mut rng = WorldRng::new(seed_for(concept.name, seed));
    let radius = 0.27 + rng.random::<f32>() * 0.11;
    let reach = radius * 1.15;
    let room = (0.5 - 0.08 - reach).max(0.0);
    let centre = (
        0.5 + (rng.random::<f32>() * 2.0 - 1.0) * room,
        0.5 + (rng.random::<f32>() * 2.0 - 1.0) * room,
    );
    let pose = ConceptPose {
        centre,
        radius,
        rotation: (rng.random::<f32>() * 2.0 - 1.0) * CONCEPT_TILT,
        mirrored: rng.random_bool(0.5),
    };
    // Photo k gets pattern k (mod 5), so an artist's set never repeats a background.
    let pattern = Pattern::ALL[(seed % Pattern::ALL.len() as u64) as usize];
    let background = random_background(
        &mut rng,
        &[pattern],
        &Colour::ALL,
        &concept.painted_colours(),
    );
    let scene = Scene {
        background,
        groups: vec![],
        jitter_seed: 0,
    };
    render_with_concept(&scene, concept, &[pose], size)
}

/// Writes the concept's photos as `<name>-NN.png` into `dir` (created if missing), like an
/// artist's folder; returns the paths.
pub fn write_concept_photos(name: &str, dir: &Path, size: u32) -> Result<Vec<PathBuf>, WorldError> {
    let concept = concept(name).ok_or_else(|| WorldError::UnknownConcept(name.to_string()))?;
    std::fs::create_dir_all(dir).map_err(|e| WorldError::Io {
        path: dir.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut paths = Vec::with_capacity(CONCEPT_PHOTO_COUNT);
    for i in 0..CONCEPT_PHOTO_COUNT {
        let path = dir.join(format!("{name}-{i:02}.png"));
        let img = render_concept_photo(concept, i as u64, size);
        likeness_models::png_meta::save_png(&path, &img, concept.description)?;
        paths.push(path);
    }
    Ok(paths)
}

/// A prompt's context made concrete around a concept: the generic scene plus the concept's poses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConceptScene {
    /// Background and the generic object groups.
    pub scene: Scene,
    /// Where the subject was asked to be.
    pub subject_position: Position,
    pub poses: Vec<ConceptPose>,
}

/// Lays out a concept in the context a prompt asks for ("sks creature on a striped green
/// background"); the subject is the prompt's group with unknown words, or is added if none.
pub fn concept_scene(concept: &Concept, prompt: &ParsedPrompt, seed: u64) -> ConceptScene {
    let mut rng = WorldRng::new(seed_for(concept.name, seed ^ 0x5eed_c0de));
    let mut prompt = prompt.clone();
    let index = match prompt.subject_group() {
        Some((index, _)) => index,
        None => {
            prompt.groups.push(GroupRequest {
                subject: Some(concept.name.to_string()),
                ..GroupRequest::default()
            });
            prompt.groups.len() - 1
        }
    };
    let (scene, positions) = prompt.fill(&mut rng, &concept.painted_colours());
    let subject = &prompt.groups[index];
    let position = positions[index];
    let size = subject.size.unwrap_or(Size::Big);
    let poses = group_slots(position, subject.count.unwrap_or(1).max(1))
        .iter()
        .map(|slot| pose_in_slot(slot, size, &mut rng))
        .collect();
    ConceptScene {
        scene,
        subject_position: position,
        poses,
    }
}

fn pose_in_slot(slot: &Rect, size: Size, rng: &mut WorldRng) -> ConceptPose {
    let radius = slot_diameter(slot, size) / 2.0;
    let (cx, cy) = slot.centre();
    ConceptPose {
        // Slightly low, so a crown on top stays inside the slot.
        centre: (cx, cy + radius * 0.12),
        radius,
        rotation: (rng.random::<f32>() * 2.0 - 1.0) * CONCEPT_TILT * 0.6,
        mirrored: rng.random_bool(0.5),
    }
}

/// Draws a laid-out concept scene.
pub fn render_concept_scene(concept: &Concept, scene: &ConceptScene, size: u32) -> RgbImage {
    render_with_concept(&scene.scene, concept, &scene.poses, size)
}

/// Renders a concept in the context of a parsed prompt.
pub fn render_concept_in_context(
    concept: &Concept,
    prompt: &ParsedPrompt,
    seed: u64,
    size: u32,
) -> RgbImage {
    render_concept_scene(concept, &concept_scene(concept, prompt, seed), size)
}

/// Renders a concept in the context of a prompt text ("sks creature on a striped green background").
pub fn render_concept_in_prompt(
    concept: &Concept,
    prompt: &str,
    seed: u64,
    size: u32,
) -> Result<RgbImage, WorldError> {
    Ok(render_concept_in_context(
        concept,
        &parse_caption(prompt)?,
        seed,
        size,
    ))
}

/// Background, generic objects, then the concept on top.
fn render_with_concept(
    scene: &Scene,
    concept: &Concept,
    poses: &[ConceptPose],
    size: u32,
) -> RgbImage {
    let s = size as f32;
    let placements = scene.placements(size);
    let background = scene.background;
    let poses_px: Vec<ConceptPose> = poses
        .iter()
        .map(|p| ConceptPose {
            centre: (p.centre.0 * s, p.centre.1 * s),
            radius: p.radius * s,
            ..*p
        })
        .collect();
    rasterise(size, |x, y| {
        for pose in poses_px.iter().rev() {
            if let Some(c) = concept_colour_at(concept, pose, x, y) {
                return c;
            }
        }
        for p in placements.iter().rev() {
            if shape_covers(p, x, y) {
                return p.colour.rgb();
            }
        }
        background_at(&background, size, x, y)
    })
}

/// The concept's colour at pixel `(x, y)`, or `None` outside it.
fn concept_colour_at(concept: &Concept, pose: &ConceptPose, x: f32, y: f32) -> Option<[u8; 3]> {
    let (dx, dy) = (x - pose.centre.0, y - pose.centre.1);
    let reach = pose.radius * 1.5;
    if dx.abs() > reach || dy.abs() > reach {
        return None;
    }
    let (u, v) = to_local(dx, dy, pose.radius, pose.rotation, pose.mirrored);
    if let Some(crown) = concept.crown
        && crown_contains(u, v)
    {
        return Some(crown.rgb());
    }
    if !shape_contains(concept.body_shape, u, v) {
        return None;
    }
    if concept.eyes
        && let Some(c) = eye_colour(concept.body_shape, u, v)
    {
        return Some(c);
    }
    if marking_contains(concept.marking, u, v) {
        return Some(concept.marking_colour.rgb());
    }
    Some(concept.body.rgb())
}

fn marking_contains(marking: Marking, u: f32, v: f32) -> bool {
    match marking {
        Marking::Dots => (0..5).any(|k| {
            let a = (k as f32 * 72.0).to_radians();
            let (cx, cy) = (0.55 * a.sin(), -0.55 * a.cos());
            let (du, dv) = (u - cx, v - cy);
            du * du + dv * dv <= 0.19 * 0.19
        }),
        Marking::Stripes => {
            let turns = u.atan2(-v) / std::f32::consts::TAU;
            (turns * 8.0).rem_euclid(1.0) < 0.35
        }
        Marking::Band => (0.02..=0.32).contains(&v),
    }
}

/// White eye or black pupil at `(u, v)`, if there is one.
fn eye_colour(body: Shape, u: f32, v: f32) -> Option<[u8; 3]> {
    let (ex, ey, r) = match body {
        Shape::Heart => (0.3, -0.3, 0.16),
        _ => (0.18, -0.06, 0.14),
    };
    for cx in [-ex, ex] {
        let (du, dv) = (u - cx, v - ey);
        let d2 = du * du + dv * dv;
        if d2 <= r * r {
            let (pu, pv) = (du, dv - r * 0.2);
            let pupil = r * 0.5;
            return Some(if pu * pu + pv * pv <= pupil * pupil {
                Colour::Black.rgb()
            } else {
                Colour::White.rgb()
            });
        }
    }
    None
}

/// A three-pointed crown sitting on the top of the unit body.
fn crown_contains(u: f32, v: f32) -> bool {
    if u.abs() > 0.4 {
        return false;
    }
    if (-1.0..=-0.74).contains(&v) {
        return true;
    }
    if !(-1.38..-1.0).contains(&v) {
        return false;
    }
    // Spikes: apex at v = -1.38, half-width 0.14 at the base.
    let t = (v + 1.38) / 0.38;
    [-0.26f32, 0.0, 0.26]
        .iter()
        .any(|c| (u - c).abs() <= 0.14 * t)
}
