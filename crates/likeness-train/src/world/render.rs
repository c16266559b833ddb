//! The rasteriser: every pixel averages 4x4 samples of a paint function, which antialiases edges
//! without any drawing library and keeps the output bit-identical for a given scene and size.

use image::RgbImage;

use super::scene::{Background, Pattern, Placement, Scene, Shape, lerp_rgb};

/// Samples per pixel along each axis.
const SUPERSAMPLE: u32 = 4;

/// Draws a scene on a `size` x `size` canvas.
pub fn render(scene: &Scene, size: u32) -> RgbImage {
    let placements = scene.placements(size);
    let background = scene.background;
    rasterise(size, |x, y| {
        for p in placements.iter().rev() {
            if shape_covers(p, x, y) {
                return p.colour.rgb();
            }
        }
        background_at(&background, size, x, y)
    })
}

/// Draws only the background of a scene.
pub fn render_background(background: &Background, size: u32) -> RgbImage {
    let background = *background;
    rasterise(size, |x, y| background_at(&background, size, x, y))
}

/// Which cells of a `cell` x `cell` grid over `drawn` (a scene rendered with [`render`]) hold
/// any part of an object: a cell counts when one of its pixels differs from the scene's
/// `background` alone. Row-major, `side / cell` cells a side (a partial last cell is dropped).
/// The UNet trainer weights the loss of these latent cells (`--unet-object-weight`).
pub fn object_cells(drawn: &RgbImage, background: &Background, cell: u32) -> Vec<bool> {
    let cell = cell.max(1);
    let size = drawn.width();
    let side = size / cell;
    let bare = render_background(background, size);
    let mut cells = vec![false; (side * side) as usize];
    for (x, y, px) in drawn.enumerate_pixels() {
        let (cx, cy) = (x / cell, y / cell);
        if cx < side && cy < side && px != bare.get_pixel(x, y) {
            cells[(cy * side + cx) as usize] = true;
        }
    }
    cells
}

/// Builds an image by averaging `paint` over a grid of samples inside every pixel.
pub(crate) fn rasterise(size: u32, paint: impl Fn(f32, f32) -> [u8; 3]) -> RgbImage {
    let size = size.max(1);
    let n = SUPERSAMPLE;
    let step = 1.0 / n as f32;
    let mut img = RgbImage::new(size, size);
    for py in 0..size {
        for px in 0..size {
            let mut acc = [0u32; 3];
            for sy in 0..n {
                for sx in 0..n {
                    let x = px as f32 + (sx as f32 + 0.5) * step;
                    let y = py as f32 + (sy as f32 + 0.5) * step;
                    let c = paint(x, y);
                    for i in 0..3 {
                        acc[i] += c[i] as u32;
                    }
                }
            }
            let samples = n * n;
            let px_rgb = acc.map(|a| ((a + samples / 2) / samples) as u8);
            img.put_pixel(px, py, image::Rgb(px_rgb));
        }
    }
    img
}

/// The background colour at pixel coordinates `(x, y)` on a `size` canvas.
pub(crate) fn background_at(bg: &Background, size: u32, x: f32, y: f32) -> [u8; 3] {
    let s = size as f32;
    let main = bg.colour.rgb();
    let accent = bg.accent.map(|a| a.rgb()).unwrap_or(main);
    match bg.pattern {
        Pattern::Plain => main,
        Pattern::Stripes => {
            let half = s / 8.0;
            if ((x / half).floor() as i64).rem_euclid(2) == 0 {
                main
            } else {
                accent
            }
        }
        Pattern::Checks => {
            let cell = s / 8.0;
            let k = (x / cell).floor() as i64 + (y / cell).floor() as i64;
            if k.rem_euclid(2) == 0 { main } else { accent }
        }
        Pattern::Dots => {
            let period = s / 4.0;
            let r = s / 14.0;
            let cx = ((x / period).floor() + 0.5) * period;
            let cy = ((y / period).floor() + 0.5) * period;
            let (dx, dy) = (x - cx, y - cy);
            if dx * dx + dy * dy <= r * r {
                accent
            } else {
                main
            }
        }
        Pattern::Gradient => lerp_rgb(main, accent, (y / s).clamp(0.0, 1.0)),
    }
}

/// Whether a placed object covers the point `(x, y)`.
pub(crate) fn shape_covers(p: &Placement, x: f32, y: f32) -> bool {
    let (dx, dy) = (x - p.centre.0, y - p.centre.1);
    if dx.abs() > p.radius * 1.5 || dy.abs() > p.radius * 1.5 {
        return false;
    }
    let (u, v) = to_local(dx, dy, p.radius, p.rotation, false);
    shape_contains(p.shape, u, v)
}

/// Point relative to an object's centre, turned into its unit frame (v points down).
pub(crate) fn to_local(dx: f32, dy: f32, radius: f32, rotation: f32, mirrored: bool) -> (f32, f32) {
    let (s, c) = rotation.sin_cos();
    let u = (dx * c + dy * s) / radius;
    let v = (-dx * s + dy * c) / radius;
    (if mirrored { -u } else { u }, v)
}

/// Star outline: outer radius 1, inner radius as below, first point up.
const STAR_INNER: f32 = 0.52;

/// Whether the unit-frame point `(u, v)` lies inside `shape` (all shapes fit the unit disc).
pub(crate) fn shape_contains(shape: Shape, u: f32, v: f32) -> bool {
    match shape {
        Shape::Circle => u * u + v * v <= 1.0,
        Shape::Ring => {
            let r2 = u * u + v * v;
            (0.55 * 0.55..=1.0).contains(&r2)
        }
        Shape::Square => u.abs() <= 0.82 && v.abs() <= 0.82,
        Shape::Triangle => v <= 0.8 && u.abs() <= (v + 1.0) / 1.8,
        Shape::Diamond => u.abs() / 0.72 + v.abs() <= 1.0,
        Shape::Cross => {
            (u.abs() <= 0.32 && v.abs() <= 0.95) || (v.abs() <= 0.32 && u.abs() <= 0.95)
        }
        Shape::Star => star_contains(u, v, STAR_INNER),
        Shape::Heart => {
            let x = u * 1.14;
            let y = -v * 1.12 + 0.12;
            let a = x * x + y * y - 1.0;
            a * a * a - x * x * y * y * y <= 0.0
        }
    }
}

/// Five-pointed star with outer radius 1 and the given inner radius, one point straight up.
fn star_contains(u: f32, v: f32, inner: f32) -> bool {
    let rho = (u * u + v * v).sqrt();
    if rho > 1.0 {
        return false;
    }
    if rho <= inner * (36f32.to_radians()).cos() {
        return true;
    }
    let sector = 72f32.to_radians();
    // Angle from straight up, folded into one half-sector [0, 36°].
    let mut phi = u.atan2(-v).rem_euclid(sector);
    if phi > sector / 2.0 {
        phi = sector - phi;
    }
    let (px, py) = (rho * phi.cos(), rho * phi.sin());
    let (ix, iy) = (inner * (sector / 2.0).cos(), inner * (sector / 2.0).sin());
    // Inside when on the origin's side of the edge from the tip (1, 0) to the inner corner.
    let edge = (ix - 1.0, iy);
    let to_p = (px - 1.0, py);
    edge.0 * to_p.1 - edge.1 * to_p.0 >= 0.0
}
