//! The IS–TS scatter (likeness against prompt following) as PNG and SVG: DreamBooth checkpoints
//! joined as the frontier, DPO stages and the base model as marked points with error bars.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;

/// DejaVu Sans Mono (free licence, see assets/DejaVu-LICENSE.txt): plots need no system fonts.
const FONT: &[u8] = include_bytes!("../assets/DejaVuSansMono.ttf");
static FONT_ONCE: Once = Once::new();

fn register_font() {
    FONT_ONCE.call_once(|| {
        // Registration only fails for a malformed font, which the bundled one is not.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// One point: mean scores with standard errors.
#[derive(Debug, Clone, PartialEq)]
pub struct ScorePoint {
    pub label: String,
    pub ts: f64,
    pub is: f64,
    pub ts_se: f64,
    pub is_se: f64,
}

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeriesKind {
    /// Points joined in order (the DreamBooth frontier over steps).
    Frontier,
    /// Separate marked points (base model, DPO stages).
    Points,
}

#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub kind: SeriesKind,
    pub points: Vec<ScorePoint>,
}

/// Why a plot could not be written.
#[derive(Debug, thiserror::Error)]
#[error("{path}: cannot draw the plot: {message}")]
pub struct PlotError {
    pub path: String,
    pub message: String,
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

fn bounds(series: &[Series]) -> ((f64, f64), (f64, f64)) {
    let pts: Vec<&ScorePoint> = series.iter().flat_map(|s| &s.points).collect();
    let fold = |f: &dyn Fn(&ScorePoint) -> (f64, f64)| {
        pts.iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
                let (a, b) = f(p);
                (lo.min(a), hi.max(b))
            })
    };
    let pad = |(lo, hi): (f64, f64)| {
        if !lo.is_finite() || !hi.is_finite() {
            return (0.0, 1.0);
        }
        let w = (hi - lo).max(1e-3);
        (lo - 0.1 * w, hi + 0.1 * w)
    };
    (
        pad(fold(&|p| (p.ts - p.ts_se, p.ts + p.ts_se))),
        pad(fold(&|p| (p.is - p.is_se, p.is + p.is_se))),
    )
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    series: &[Series],
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let ((x0, x1), (y0, y1)) = bounds(series);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("TS: text similarity (prompt following)")
        .y_desc("IS: image similarity (likeness)")
        .label_style(("sans-serif", 13))
        .light_line_style(RGBColor(238, 238, 238))
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> = s.points.iter().map(|p| (p.ts, p.is)).collect();
        if s.kind == SeriesKind::Frontier && pts.len() > 1 {
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(|e| e.to_string())?;
        }
        for p in &s.points {
            let bars = [
                vec![(p.ts - p.ts_se, p.is), (p.ts + p.ts_se, p.is)],
                vec![(p.ts, p.is - p.is_se), (p.ts, p.is + p.is_se)],
            ];
            for b in bars {
                chart
                    .draw_series(std::iter::once(PathElement::new(b, color.mix(0.6))))
                    .map_err(|e| e.to_string())?;
            }
        }
        let anno = chart
            .draw_series(s.points.iter().map(|p| {
                let marker: DynElement<DB, (f64, f64)> = match s.kind {
                    SeriesKind::Frontier => Circle::new((p.ts, p.is), 4, color.filled()).into_dyn(),
                    SeriesKind::Points => {
                        TriangleMarker::new((p.ts, p.is), 7, color.filled()).into_dyn()
                    }
                };
                marker
            }))
            .map_err(|e| e.to_string())?;
        anno.label(s.name.clone())
            .legend(move |(x, y)| Circle::new((x + 8, y), 4, color.filled()));
        chart
            .draw_series(s.points.iter().map(|p| {
                EmptyElement::at((p.ts, p.is))
                    + Text::new(p.label.clone(), (7, -14), ("sans-serif", 11).into_font())
            }))
            .map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

/// Writes the scatter to `png` and `svg` (each written whole, then renamed into place).
pub fn write_scatter(
    title: &str,
    series: &[Series],
    png: &Path,
    svg: &Path,
) -> Result<(), PlotError> {
    register_font();
    let err = |p: &Path, m: String| PlotError {
        path: p.display().to_string(),
        message: m,
    };
    let (w, h) = (900u32, 700u32);
    let mut rgb = vec![0u8; (w * h * 3) as usize];
    draw(
        BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area(),
        title,
        series,
    )
    .map_err(|m| err(png, m))?;
    let img = image::RgbImage::from_raw(w, h, rgb)
        .ok_or_else(|| err(png, "bitmap size mismatch".into()))?;
    let bytes = likeness_models::png_meta::encode_png(&img, &[("Software", "Likeness")])
        .map_err(|e| err(png, e.to_string()))?;
    likeness_models::png_meta::write_atomic(png, &bytes).map_err(|e| err(png, e.to_string()))?;
    let mut text = String::new();
    draw(
        SVGBackend::with_string(&mut text, (900, 700)).into_drawing_area(),
        title,
        series,
    )
    .map_err(|m| err(svg, m))?;
    likeness_models::png_meta::write_atomic(svg, text.as_bytes())
        .map_err(|e| err(svg, e.to_string()))
}

/// Mean and standard error of the mean.
pub fn mean_se(values: &[f64]) -> (f64, f64) {
    let n = values.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    (mean, (var / n as f64).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_png_and_svg() {
        let dir = std::env::temp_dir().join(format!("likeness-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = |l: &str, ts, is| ScorePoint {
            label: l.into(),
            ts,
            is,
            ts_se: 0.005,
            is_se: 0.01,
        };
        let series = vec![
            Series {
                name: "DreamBooth".into(),
                kind: SeriesKind::Frontier,
                points: vec![
                    p("100", 0.30, 0.70),
                    p("200", 0.28, 0.78),
                    p("400", 0.25, 0.85),
                ],
            },
            Series {
                name: "DPO".into(),
                kind: SeriesKind::Points,
                points: vec![p("stage 1", 0.29, 0.83), p("stage 2", 0.30, 0.84)],
            },
        ];
        let (png, svg) = (dir.join("s.png"), dir.join("s.svg"));
        write_scatter("IS–TS", &series, &png, &svg).unwrap();
        let img = image::open(&png).unwrap();
        assert_eq!((img.width(), img.height()), (900, 700));
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.contains("<svg") && text.contains("DreamBooth") && text.contains("stage 2"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn standard_error() {
        let (m, se) = mean_se(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(m, 2.5);
        assert!((se - (1.6666666666666667f64 / 4.0).sqrt()).abs() < 1e-12);
        assert_eq!(mean_se(&[5.0]), (5.0, 0.0));
    }
}
