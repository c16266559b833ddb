//! What the web view receives: the studio's records in the front end's shapes (camelCase keys,
//! workspace-relative `/`-separated picture paths; `ui/src/lib/types.ts` is the other side).

use std::path::Path;

use likeness_models::sd::ModelSummary;
use likeness_models::single_file::Family;
use likeness_studio::{BaseModel, BaseModelKind, ImportReport, Photo, Project};
use serde::Serialize;

/// `path` relative to the workspace `root` with `/` separators (the `likeness` scheme's form);
/// a path outside the workspace yields an empty string, which serves nothing.
pub fn rel(root: &Path, path: &Path) -> String {
    match path.strip_prefix(root) {
        Ok(p) => p
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/"),
        Err(_) => String::new(),
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProjectView {
    pub id: i64,
    pub name: String,
    pub token: String,
    pub class_name: String,
    pub created_at: i64,
    pub photo_count: usize,
    pub cover_thumb: Option<String>,
}

impl ProjectView {
    pub fn new(root: &Path, p: &Project, photos: &[Photo]) -> Self {
        Self {
            id: p.id,
            name: p.name.clone(),
            token: p.token.clone(),
            class_name: p.class.clone(),
            created_at: p.created_at,
            photo_count: photos.len(),
            cover_thumb: photos.first().map(|f| rel(root, &f.thumbnail_file)),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PhotoFlagsView {
    pub near_duplicate_of: Option<i64>,
    pub blurry: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PhotoView {
    pub id: i64,
    pub project_id: i64,
    pub source_name: String,
    pub width: u32,
    pub height: u32,
    pub thumb: String,
    pub normalized: String,
    pub flags: PhotoFlagsView,
}

impl PhotoView {
    pub fn new(root: &Path, p: &Photo) -> Self {
        Self {
            id: p.id,
            project_id: p.project_id,
            source_name: p.source_name.clone(),
            width: p.width,
            height: p.height,
            thumb: rel(root, &p.thumbnail_file),
            normalized: rel(root, &p.normalized_file),
            flags: PhotoFlagsView {
                near_duplicate_of: p.flags.near_duplicate_of,
                blurry: p.flags.blurry,
            },
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportedView {
    pub source: String,
    pub photo: PhotoView,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SkippedView {
    pub path: String,
    /// The one-line reason.
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportReportView {
    pub imported: Vec<ImportedView>,
    pub skipped: Vec<SkippedView>,
}

impl ImportReportView {
    pub fn new(root: &Path, r: &ImportReport) -> Self {
        Self {
            imported: r
                .imported
                .iter()
                .map(|i| ImportedView {
                    source: i.source.display().to_string(),
                    photo: PhotoView::new(root, &i.photo),
                    notes: i.notes.clone(),
                })
                .collect(),
            skipped: r
                .skipped
                .iter()
                .map(|s| SkippedView {
                    path: s.path.display().to_string(),
                    reason: s.reason.to_string(),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BaseModelView {
    pub id: i64,
    pub name: String,
    pub path: String,
    /// "builtin", "diffusers" (a folder) or "single_file".
    pub kind: &'static str,
    pub architecture: String,
    pub resolution: u64,
}

impl BaseModelView {
    pub fn new(m: &BaseModel) -> Self {
        let kind = match m.kind {
            BaseModelKind::Builtin => "builtin",
            BaseModelKind::Folder => "diffusers",
            BaseModelKind::File => "single_file",
        };
        // The stored summary is the loader's `ModelSummary`.
        let summary: Option<ModelSummary> = serde_json::from_value(m.summary.clone()).ok();
        let architecture = match (&summary, m.kind) {
            (_, BaseModelKind::Builtin) => "built-in world".to_string(),
            (Some(s), _) => describe(s),
            (None, _) => "Stable Diffusion".to_string(),
        };
        Self {
            id: m.id,
            name: m.name.clone(),
            path: m.path.display().to_string(),
            kind,
            architecture,
            resolution: summary.map_or(512, |s| s.native_size as u64),
        }
    }
}

/// "SD 1.x", "SD 2.x v-prediction", … from the loader's summary.
fn describe(s: &ModelSummary) -> String {
    let family = match s.family {
        Family::Sd1 => "SD 1.x",
        Family::Sd2 => "SD 2.x",
    };
    if s.v_prediction {
        format!("{family} v-prediction")
    } else {
        family.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_use_slashes_and_refuse_outside() {
        let root = Path::new("/ws");
        assert_eq!(
            rel(root, Path::new("/ws/projects/1/photos/a b.png")),
            "projects/1/photos/a b.png"
        );
        assert_eq!(rel(root, Path::new("/elsewhere/x.png")), "");
    }

    #[test]
    fn architecture_reads_family_and_prediction() {
        let summary = |family, v_prediction| ModelSummary {
            family,
            v_prediction,
            conv_projection: false,
            native_size: 768,
            name: "m".into(),
            single_file: false,
        };
        assert_eq!(describe(&summary(Family::Sd2, true)), "SD 2.x v-prediction");
        assert_eq!(describe(&summary(Family::Sd1, false)), "SD 1.x");
    }
}
