//! What the compare screen shows: seed-matched galleries side by side with their scores, the
//! IS–TS scatter of every model, and each run's loss curve.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Result, StudioError};
use crate::gallery::{GalleryKey, GalleryRow, column_label};
use crate::jobs::RunId;
use crate::workspace::{ProjectId, Workspace};

/// One column of a comparison: the base model (`run_id` `None`) or a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompareColumn {
    pub run_id: Option<RunId>,
    pub label: String,
}

/// One image of a comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompareCell {
    /// Index into [`CompareTable::prompts`].
    pub prompt: usize,
    /// Index into [`CompareTable::columns`].
    pub column: usize,
    pub seed: u64,
    /// Relative to the workspace, `/`-separated.
    pub image: String,
    /// Likeness (CLIP image similarity to the project's photos); `None` without a CLIP model.
    pub is: Option<f32>,
    /// Prompt following (CLIP text similarity); `None` without a CLIP model.
    pub ts: Option<f32>,
}

/// Galleries made with the same prompts and seeds for every column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompareTable {
    pub prompts: Vec<String>,
    pub columns: Vec<CompareColumn>,
    /// Ordered by prompt, then seed, then column.
    pub cells: Vec<CompareCell>,
}

/// A model's mean scores over its gallery, with standard errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScatterPoint {
    pub run_id: Option<RunId>,
    pub label: String,
    pub is: f64,
    pub ts: f64,
    pub se_is: f64,
    pub se_ts: f64,
}

/// One training step's loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LossPoint {
    pub step: usize,
    pub loss: f32,
}

/// The newest gallery of each column made with one key, choosing the key of the newest of
/// these columns' galleries that every column has.
fn seed_matched(galleries: &[GalleryRow], columns: &[Option<RunId>]) -> Option<(String, Vec<i64>)> {
    let keys = galleries
        .iter()
        .filter(|g| columns.contains(&g.run))
        .map(|g| &g.key);
    let mut tried = std::collections::HashSet::new();
    for key in keys {
        if !tried.insert(key) {
            continue;
        }
        let chosen: Option<Vec<i64>> = columns
            .iter()
            .map(|c| {
                galleries
                    .iter()
                    .find(|g| g.run == *c && g.key == *key)
                    .map(|g| g.id)
            })
            .collect();
        if let Some(ids) = chosen {
            return Some((key.clone(), ids));
        }
    }
    None
}

/// Base model first, then runs in order.
fn column_order(runs: impl IntoIterator<Item = Option<RunId>>) -> Vec<Option<RunId>> {
    let mut all: Vec<Option<RunId>> = runs.into_iter().collect();
    all.sort();
    all.dedup();
    all
}

impl Workspace {
    /// The seed-matched galleries of `run_ids` (`None` = the base model; empty: every column
    /// that has a gallery): the newest set made with the same prompts, seeds and sampler for all.
    pub fn compare(&self, project: ProjectId, run_ids: &[Option<RunId>]) -> Result<CompareTable> {
        self.project(project)?;
        let galleries = self.galleries(project)?;
        let columns: Vec<Option<RunId>> = if run_ids.is_empty() {
            column_order(galleries.iter().map(|g| g.run))
        } else {
            let mut cols = Vec::new();
            for c in run_ids {
                if let Some(id) = c {
                    let run = self.run(*id)?;
                    if run.project_id != project {
                        return Err(StudioError::Invalid(format!(
                            "run {id} belongs to project {}, not {project}",
                            run.project_id
                        )));
                    }
                }
                if !cols.contains(c) {
                    cols.push(*c);
                }
            }
            cols
        };
        if columns.is_empty() {
            return Err(StudioError::Invalid(format!(
                "project {project} has no gallery yet; make one with a gallery job"
            )));
        }
        let labels = columns
            .iter()
            .map(|c| column_label(self, *c))
            .collect::<Result<Vec<_>>>()?;
        let (key, ids) = seed_matched(&galleries, &columns).ok_or_else(|| {
            StudioError::Invalid(format!(
                "no seed-matched galleries of {} (the same prompts and seeds for each); make \
                 them with a gallery job of these columns",
                labels.join(", ")
            ))
        })?;
        let key: GalleryKey = serde_json::from_str(&key).map_err(|e| StudioError::Database {
            path: self.db_path().to_path_buf(),
            message: format!("a gallery's settings are unreadable: {e}"),
        })?;
        let mut cells = Vec::new();
        for (column, id) in ids.iter().enumerate() {
            for img in self.gallery_images(*id)? {
                cells.push(CompareCell {
                    prompt: img.prompt,
                    column,
                    seed: img.seed,
                    image: img.file,
                    is: img.is,
                    ts: img.ts,
                });
            }
        }
        cells.sort_by_key(|c| (c.prompt, c.seed, c.column));
        Ok(CompareTable {
            prompts: key.prompts,
            columns: columns
                .into_iter()
                .zip(labels)
                .map(|(run_id, label)| CompareColumn { run_id, label })
                .collect(),
            cells,
        })
    }

    /// Every model's mean IS and TS (± standard error) over its gallery, all from galleries of
    /// the newest scored key, so the points are seed-matched. Base model first, then runs.
    pub fn scatter(&self, project: ProjectId) -> Result<Vec<ScatterPoint>> {
        self.project(project)?;
        let galleries = self.galleries(project)?;
        let mut scored: Vec<(&GalleryRow, Vec<(f64, f64)>)> = Vec::new();
        for g in &galleries {
            let points: Vec<(f64, f64)> = self
                .gallery_images(g.id)?
                .into_iter()
                .filter_map(|i| Some((i.is? as f64, i.ts? as f64)))
                .collect();
            if !points.is_empty() {
                scored.push((g, points));
            }
        }
        let Some(key) = scored.first().map(|(g, _)| g.key.clone()) else {
            return Ok(Vec::new());
        };
        // The newest gallery of each column with that key.
        let mut by_column: BTreeMap<Option<RunId>, Vec<(f64, f64)>> = BTreeMap::new();
        for (g, points) in scored {
            if g.key == key {
                by_column.entry(g.run).or_insert(points);
            }
        }
        let mut out = Vec::new();
        for (run_id, points) in by_column {
            let is: Vec<f64> = points.iter().map(|p| p.0).collect();
            let ts: Vec<f64> = points.iter().map(|p| p.1).collect();
            let (is_mean, se_is) = likeness_train::plot::mean_se(&is);
            let (ts_mean, se_ts) = likeness_train::plot::mean_se(&ts);
            out.push(ScatterPoint {
                run_id,
                label: column_label(self, run_id)?,
                is: is_mean,
                ts: ts_mean,
                se_is,
                se_ts,
            });
        }
        Ok(out)
    }

    /// A run's loss per step (a DPO stage's own steps), from its `loss.jsonl`; empty before
    /// the first step.
    pub fn loss_history(&self, run: RunId) -> Result<Vec<LossPoint>> {
        let path = self.run_record(run)?.files_dir().join("loss.jsonl");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StudioError::io(&path, e)),
        };
        // A line cut by a crash is left out, as the trainers do.
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str::<LossPoint>(l).ok())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, run: Option<i64>, key: &str) -> GalleryRow {
        GalleryRow {
            id,
            run: run.map(RunId),
            key: key.into(),
        }
    }

    #[test]
    fn the_newest_key_every_column_has_is_chosen() {
        // Newest first: run 2 only has key b, so the comparison falls back to key a.
        let rows = [
            row(5, Some(2), "a"),
            row(4, None, "b"),
            row(3, Some(1), "b"),
            row(2, None, "a"),
            row(1, Some(1), "a"),
        ];
        let (key, ids) = seed_matched(&rows, &[None, Some(RunId(1)), Some(RunId(2))]).unwrap();
        assert_eq!((key.as_str(), ids), ("a", vec![2, 1, 5]));
        let (key, ids) = seed_matched(&rows, &[None, Some(RunId(1))]).unwrap();
        assert_eq!((key.as_str(), ids), ("b", vec![4, 3]));
        assert!(seed_matched(&rows, &[Some(RunId(3))]).is_none());
    }
}
