//! Preference pairs from scores: for each prompt, ordered pairs (winner, loser) whose score
//! difference (ΔTS, ΔIS) points into the artist's angle window — the fidelity ↔ prompt slider of
//! DreamBooth-DPO. 0° favours prompt following alone, 90° likeness alone.

use serde::{Deserialize, Serialize};

/// One scored image: CLIP image similarity to the concept (IS) and text similarity (TS).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredImage {
    pub image: String,
    pub prompt: String,
    pub seed: u64,
    pub is: f64,
    pub ts: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dino: Option<f64>,
}

/// Which pairs to keep.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PairFilter {
    /// Inclusive window on atan2(ΔIS, ΔTS), degrees.
    pub angle_min: f64,
    pub angle_max: f64,
    /// Minimum |Δ| (Euclidean) for a pair to count.
    pub min_margin: f64,
    /// Keep at most this many pairs per prompt, the largest |Δ| first (0: all).
    pub max_pairs_per_prompt: usize,
}

impl Default for PairFilter {
    fn default() -> Self {
        Self {
            angle_min: 20.0,
            angle_max: 70.0,
            min_margin: 0.0,
            max_pairs_per_prompt: 0,
        }
    }
}

/// A kept pair, as written to `pairs.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pair {
    pub prompt: String,
    pub winner: String,
    pub loser: String,
    pub d_ts: f64,
    pub d_is: f64,
    pub angle_deg: f64,
}

impl Pair {
    pub fn margin(&self) -> f64 {
        self.d_ts.hypot(self.d_is)
    }
}

impl PairFilter {
    /// Checks the window is a proper range of angles.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.angle_min.is_finite() && self.angle_max.is_finite()) {
            return Err("angle window must be finite".into());
        }
        if self.angle_min > self.angle_max {
            return Err(format!(
                "angle-min {} is above angle-max {}",
                self.angle_min, self.angle_max
            ));
        }
        if self.angle_min < -180.0 || self.angle_max > 180.0 {
            return Err("angles must lie in [-180, 180] degrees".into());
        }
        if self.min_margin < 0.0 || !self.min_margin.is_finite() {
            return Err("min-margin must be a finite number ≥ 0".into());
        }
        Ok(())
    }

    /// Pairs for one prompt's images, in a deterministic order (largest margin first, then by
    /// image order).
    pub fn pairs_for_prompt(&self, images: &[ScoredImage]) -> Vec<Pair> {
        let mut kept: Vec<(f64, usize, usize, Pair)> = Vec::new();
        for (i, w) in images.iter().enumerate() {
            for (j, l) in images.iter().enumerate() {
                if i == j {
                    continue;
                }
                let d_ts = w.ts - l.ts;
                let d_is = w.is - l.is;
                // Equal scores carry no preference, whatever the window.
                if d_ts == 0.0 && d_is == 0.0 {
                    continue;
                }
                let margin = d_ts.hypot(d_is);
                if margin < self.min_margin {
                    continue;
                }
                let angle = d_is.atan2(d_ts).to_degrees();
                if angle < self.angle_min || angle > self.angle_max {
                    continue;
                }
                kept.push((
                    margin,
                    i,
                    j,
                    Pair {
                        prompt: w.prompt.clone(),
                        winner: w.image.clone(),
                        loser: l.image.clone(),
                        d_ts,
                        d_is,
                        angle_deg: angle,
                    },
                ));
            }
        }
        kept.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        if self.max_pairs_per_prompt > 0 {
            kept.truncate(self.max_pairs_per_prompt);
        }
        kept.into_iter().map(|k| k.3).collect()
    }

    /// Pairs for all images, grouped by prompt in first-seen order.
    pub fn pairs(&self, images: &[ScoredImage]) -> Vec<Pair> {
        let mut order: Vec<&str> = Vec::new();
        for im in images {
            if !order.contains(&im.prompt.as_str()) {
                order.push(&im.prompt);
            }
        }
        order
            .into_iter()
            .flat_map(|p| {
                let group: Vec<ScoredImage> =
                    images.iter().filter(|i| i.prompt == p).cloned().collect();
                self.pairs_for_prompt(&group)
            })
            .collect()
    }
}

/// Histogram of the angles of all ordered pairs with a non-zero Δ, in `bins` equal bins over
/// (-180°, 180°] — shown when no pair falls in the window, so the artist can move the slider.
pub fn angle_histogram(images: &[ScoredImage], bins: usize) -> Vec<(f64, f64, usize)> {
    let bins = bins.max(1);
    let width = 360.0 / bins as f64;
    let mut counts = vec![0usize; bins];
    for (i, w) in images.iter().enumerate() {
        for (j, l) in images.iter().enumerate() {
            if i == j || w.prompt != l.prompt {
                continue;
            }
            let (d_ts, d_is) = (w.ts - l.ts, w.is - l.is);
            if d_ts == 0.0 && d_is == 0.0 {
                continue;
            }
            let a = d_is.atan2(d_ts).to_degrees();
            let b = (((a + 180.0) / width).floor() as usize).min(bins - 1);
            counts[b] += 1;
        }
    }
    counts
        .into_iter()
        .enumerate()
        .map(|(b, c)| {
            (
                -180.0 + b as f64 * width,
                -180.0 + (b + 1) as f64 * width,
                c,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(name: &str, is: f64, ts: f64) -> ScoredImage {
        ScoredImage {
            image: name.into(),
            prompt: "p".into(),
            seed: 0,
            is,
            ts,
            dino: None,
        }
    }

    fn filter(min: f64, max: f64) -> PairFilter {
        PairFilter {
            angle_min: min,
            angle_max: max,
            ..Default::default()
        }
    }

    #[test]
    fn window_edges_are_inclusive() {
        // Δ = (1, 1): exactly 45°.
        let a = [img("w", 1.0, 1.0), img("l", 0.0, 0.0)];
        assert_eq!(filter(45.0, 60.0).pairs_for_prompt(&a).len(), 1);
        assert_eq!(filter(30.0, 45.0).pairs_for_prompt(&a).len(), 1);
        assert_eq!(filter(45.1, 60.0).pairs_for_prompt(&a).len(), 0);
        // Δ = (1, 0): 0°, and Δ = (0, 1): 90°.
        let b = [img("w", 0.0, 1.0), img("l", 0.0, 0.0)];
        assert_eq!(filter(0.0, 30.0).pairs_for_prompt(&b)[0].angle_deg, 0.0);
        let c = [img("w", 1.0, 0.0), img("l", 0.0, 0.0)];
        let p = filter(60.0, 90.0).pairs_for_prompt(&c);
        assert_eq!(p.len(), 1);
        assert!((p[0].angle_deg - 90.0).abs() < 1e-12);
    }

    #[test]
    fn orientation_winner_and_deltas() {
        let a = [img("a", 0.8, 0.30), img("b", 0.7, 0.25)];
        let p = filter(20.0, 70.0).pairs_for_prompt(&a);
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].winner.as_str(), p[0].loser.as_str()), ("a", "b"));
        assert!((p[0].d_ts - 0.05).abs() < 1e-12 && (p[0].d_is - 0.1).abs() < 1e-12);
        assert!((p[0].angle_deg - (2.0f64).atan().to_degrees()).abs() < 1e-9);
    }

    #[test]
    fn zero_delta_and_ties_give_no_pair() {
        let a = [img("a", 0.5, 0.5), img("b", 0.5, 0.5)];
        assert!(filter(-180.0, 180.0).pairs_for_prompt(&a).is_empty());
        // A tie in one score only is a pair along the other axis.
        let b = [img("a", 0.5, 0.6), img("b", 0.5, 0.5)];
        let p = filter(-1.0, 1.0).pairs_for_prompt(&b);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].winner, "a");
    }

    #[test]
    fn negative_angles() {
        // Winner better at the prompt, worse at likeness: -45°.
        let a = [img("a", 0.4, 0.6), img("b", 0.5, 0.5)];
        assert!(filter(20.0, 70.0).pairs_for_prompt(&a).is_empty());
        let p = filter(-60.0, -30.0).pairs_for_prompt(&a);
        assert_eq!(p.len(), 1);
        assert!((p[0].angle_deg + 45.0).abs() < 1e-9);
        // The reverse pair points at 135°.
        let q = filter(130.0, 140.0).pairs_for_prompt(&a);
        assert_eq!(q[0].winner, "b");
    }

    #[test]
    fn margin_and_cap() {
        let a = [
            img("a", 0.9, 0.9),
            img("b", 0.5, 0.5),
            img("c", 0.45, 0.45),
            img("d", 0.0, 0.0),
        ];
        let all = filter(44.0, 46.0).pairs_for_prompt(&a);
        assert_eq!(all.len(), 6, "every ordered pair along the diagonal, once");
        let mut capped = filter(44.0, 46.0);
        capped.max_pairs_per_prompt = 2;
        let top = capped.pairs_for_prompt(&a);
        assert_eq!(top.len(), 2);
        assert_eq!((top[0].winner.as_str(), top[0].loser.as_str()), ("a", "d"));
        assert!(top[0].margin() >= top[1].margin());
        let mut m = filter(44.0, 46.0);
        m.min_margin = 0.1;
        assert_eq!(m.pairs_for_prompt(&a).len(), 5, "(b, c) is too close");
    }

    #[test]
    fn pairs_never_cross_prompts() {
        let mut a = vec![img("a", 0.9, 0.9), img("b", 0.1, 0.1)];
        a[1].prompt = "q".into();
        assert!(filter(-180.0, 180.0).pairs(&a).is_empty());
        let h = angle_histogram(&a, 8);
        assert_eq!(h.iter().map(|b| b.2).sum::<usize>(), 0);
    }

    #[test]
    fn histogram_counts_every_nonzero_ordered_pair() {
        let a = [img("a", 0.6, 0.6), img("b", 0.5, 0.5), img("c", 0.5, 0.5)];
        let h = angle_histogram(&a, 4);
        assert_eq!(h.iter().map(|b| b.2).sum::<usize>(), 4);
        assert_eq!(h[2].2, 2, "two pairs at +45°");
        assert_eq!(h[0].2, 2, "two pairs at -135°");
    }

    #[test]
    fn validation() {
        assert!(filter(70.0, 20.0).validate().is_err());
        assert!(filter(-200.0, 20.0).validate().is_err());
        assert!(PairFilter::default().validate().is_ok());
    }
}
