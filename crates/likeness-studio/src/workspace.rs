//! The workspace: a folder holding `likeness.db` (SQLite, versioned migrations) and the files of
//! every project, with the typed API the app and the CLI use for projects, photos, base models
//! and workspace settings (the CLIP model that scores galleries and DPO candidates).

use std::path::{Path, PathBuf};
use std::time::Duration;

use likeness_models::sd::{LoadOptions, summarize};
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use crate::error::{Result, StudioError};

/// The database file inside a workspace folder.
pub const DB_FILE: &str = "likeness.db";

/// The schema, one SQL script per version, applied in order (index 0 takes an empty database to
/// version 1). Never edit a released entry: append a new one.
const MIGRATIONS: &[&str] = &[
    // v1: projects, their photos, base models, and the runs/galleries/exports that later phases fill.
    r#"
    CREATE TABLE projects (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        token TEXT NOT NULL,
        class TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE photos (
        id INTEGER PRIMARY KEY,
        project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        source_name TEXT NOT NULL,
        original_file TEXT NOT NULL,
        normalized_file TEXT NOT NULL,
        thumbnail_file TEXT NOT NULL,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        content_hash TEXT NOT NULL,
        dhash INTEGER NOT NULL,
        sharpness REAL NOT NULL,
        flags TEXT NOT NULL DEFAULT '{}',
        added_at INTEGER NOT NULL,
        UNIQUE (project_id, content_hash)
    );
    CREATE TABLE base_models (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        path TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL CHECK (kind IN ('builtin', 'folder', 'file')),
        summary TEXT NOT NULL,
        added_at INTEGER NOT NULL
    );
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        kind TEXT NOT NULL CHECK (kind IN ('dreambooth', 'dpo')),
        dir TEXT NOT NULL,
        parent_run_id INTEGER REFERENCES runs(id) ON DELETE SET NULL,
        status TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX runs_project ON runs(project_id);
    CREATE TABLE galleries (
        id INTEGER PRIMARY KEY,
        run_id INTEGER REFERENCES runs(id) ON DELETE CASCADE,
        stage TEXT,
        dir TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE exports (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        stage TEXT,
        format TEXT NOT NULL,
        path TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    "#,
    // v2: the job queue, DPO stages as runs (one row per stage, sharing the DPO run's folder),
    // gallery images with their scores, and workspace settings.
    r#"
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        kind TEXT NOT NULL,
        run_id INTEGER REFERENCES runs(id) ON DELETE SET NULL,
        status TEXT NOT NULL CHECK (status IN
            ('queued', 'running', 'done', 'failed', 'cancelled', 'interrupted')),
        settings TEXT NOT NULL,
        step INTEGER NOT NULL DEFAULT 0,
        total INTEGER NOT NULL DEFAULT 0,
        message TEXT,
        queue_order INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE INDEX jobs_queue ON jobs(status, queue_order);
    ALTER TABLE runs ADD COLUMN stage INTEGER;
    ALTER TABLE runs ADD COLUMN base_model_id INTEGER REFERENCES base_models(id) ON DELETE SET NULL;
    ALTER TABLE runs ADD COLUMN steps INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE galleries ADD COLUMN project_id INTEGER REFERENCES projects(id) ON DELETE CASCADE;
    ALTER TABLE galleries ADD COLUMN job_id INTEGER REFERENCES jobs(id) ON DELETE SET NULL;
    ALTER TABLE galleries ADD COLUMN spec TEXT;
    CREATE INDEX galleries_project ON galleries(project_id);
    CREATE TABLE gallery_images (
        id INTEGER PRIMARY KEY,
        gallery_id INTEGER NOT NULL REFERENCES galleries(id) ON DELETE CASCADE,
        prompt_index INTEGER NOT NULL,
        seed INTEGER NOT NULL,
        file TEXT NOT NULL,
        image_score REAL,
        text_score REAL
    );
    CREATE INDEX gallery_images_gallery ON gallery_images(gallery_id);
    CREATE TABLE settings (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    "#,
];

/// The schema version this code writes and understands.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// How long a statement waits for another process holding the database lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A project's row id.
pub type ProjectId = i64;
/// A photo's row id.
pub type PhotoId = i64;
/// A base model's row id.
pub type BaseModelId = i64;

/// A person or thing to learn: its name in the app, the rare token and the class noun of the
/// DreamBooth prompt ("a photo of sks dog").
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Project {
    pub id: ProjectId,
    pub name: String,
    pub token: String,
    pub class: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// What import found worth a second look in a photo it kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhotoFlags {
    /// A photo of the project that looks almost the same (difference hash within the threshold).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub near_duplicate_of: Option<PhotoId>,
    /// The photo's detail is below the sharpness threshold.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub blurry: bool,
}

impl PhotoFlags {
    /// No flag is raised.
    pub fn is_clear(&self) -> bool {
        self.near_duplicate_of.is_none() && !self.blurry
    }
}

/// One imported photo and its three files (absolute paths).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Photo {
    pub id: PhotoId,
    pub project_id: ProjectId,
    /// The file name the user imported it from.
    pub source_name: String,
    /// The user's file, byte for byte.
    pub original_file: PathBuf,
    /// Upright RGB8 PNG, longest side at most the import's `max_side`.
    pub normalized_file: PathBuf,
    /// Upright PNG, longest side at most 256 px.
    pub thumbnail_file: PathBuf,
    /// Size of the upright original in pixels.
    pub width: u32,
    pub height: u32,
    /// SHA-256 (hex) of the upright RGB8 pixels and their size.
    pub content_hash: String,
    /// 64-bit difference hash of the picture (see [`crate::import::dhash`]).
    pub dhash: u64,
    /// Variance of the Laplacian on a 256-px grayscale copy (see [`crate::import::sharpness`]).
    pub sharpness: f64,
    pub flags: PhotoFlags,
    /// Unix seconds.
    pub added_at: i64,
}

/// Where a base model came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BaseModelKind {
    /// The built-in world model shipped with Likeness.
    Builtin,
    /// A diffusers folder chosen by the user.
    Folder,
    /// A single-file checkpoint chosen by the user.
    File,
}

impl BaseModelKind {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            BaseModelKind::Builtin => "builtin",
            BaseModelKind::Folder => "folder",
            BaseModelKind::File => "file",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "builtin" => Some(BaseModelKind::Builtin),
            "folder" => Some(BaseModelKind::Folder),
            "file" => Some(BaseModelKind::File),
            _ => None,
        }
    }
}

/// A Stable Diffusion model the user can train on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BaseModel {
    pub id: BaseModelId,
    pub name: String,
    /// Absolute path of the folder or file.
    pub path: PathBuf,
    pub kind: BaseModelKind,
    /// The loader's description (`likeness_models::sd::ModelSummary` as JSON).
    pub summary: serde_json::Value,
    /// Unix seconds.
    pub added_at: i64,
}

/// An open workspace: its folder and its database connection.
pub struct Workspace {
    pub(crate) dir: PathBuf,
    pub(crate) db_path: PathBuf,
    pub(crate) conn: Connection,
}

impl std::fmt::Debug for Workspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workspace").field("dir", &self.dir).finish()
    }
}

/// The default workspace folder: the OS data folder + `Likeness` (`$XDG_DATA_HOME` or
/// `~/.local/share` on Linux, `~/Library/Application Support` on macOS, `%APPDATA%` on Windows).
pub fn default_dir() -> Result<PathBuf> {
    data_dir().map(|d| d.join("Likeness")).ok_or_else(|| {
        StudioError::Invalid(
            "cannot find the user's data folder (no home folder in the environment); choose a \
             workspace folder explicitly"
                .into(),
        )
    })
}

fn absolute_var(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
}

#[cfg(target_os = "windows")]
fn data_dir() -> Option<PathBuf> {
    absolute_var("APPDATA")
        .or_else(|| absolute_var("USERPROFILE").map(|h| h.join("AppData").join("Roaming")))
}

#[cfg(target_os = "macos")]
fn data_dir() -> Option<PathBuf> {
    absolute_var("HOME").map(|h| h.join("Library").join("Application Support"))
}

#[cfg(not(any(target_os = "windows", target_os = "macos")))]
fn data_dir() -> Option<PathBuf> {
    // The XDG spec says a relative $XDG_DATA_HOME is invalid and must be ignored.
    absolute_var("XDG_DATA_HOME").or_else(|| absolute_var("HOME").map(|h| h.join(".local/share")))
}

/// Unix seconds now (0 if the clock is before 1970).
pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

const PROJECT_COLUMNS: &str = "id, name, token, class, created_at";
const PHOTO_COLUMNS: &str = "id, project_id, source_name, original_file, normalized_file, \
     thumbnail_file, width, height, content_hash, dhash, sharpness, flags, added_at";
const BASE_MODEL_COLUMNS: &str = "id, name, path, kind, summary, added_at";

fn project_from_row(row: &Row) -> rusqlite::Result<Project> {
    Ok(Project {
        id: row.get(0)?,
        name: row.get(1)?,
        token: row.get(2)?,
        class: row.get(3)?,
        created_at: row.get(4)?,
    })
}

pub(crate) fn json_column<T: serde::de::DeserializeOwned>(
    row: &Row,
    idx: usize,
) -> rusqlite::Result<T> {
    let text: String = row.get(idx)?;
    serde_json::from_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
    })
}

impl Workspace {
    /// Opens (creating if needed) the workspace in `dir` and brings its database to
    /// [`SCHEMA_VERSION`]; a database from a newer Likeness is refused.
    pub fn open(dir: &Path) -> Result<Workspace> {
        std::fs::create_dir_all(dir).map_err(|e| StudioError::io(dir, e))?;
        let db_path = dir.join(DB_FILE);
        let conn = Connection::open(&db_path).map_err(|e| StudioError::db(&db_path, e))?;
        let mut ws = Workspace {
            dir: dir.to_path_buf(),
            db_path,
            conn,
        };
        ws.configure()?;
        migrate(&mut ws.conn, &ws.db_path, MIGRATIONS)?;
        tracing::debug!(
            "workspace {} open at schema v{SCHEMA_VERSION}",
            ws.dir.display()
        );
        Ok(ws)
    }

    /// The workspace folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The database file.
    pub fn db_path(&self) -> &Path {
        &self.db_path
    }

    pub(crate) fn db_err(&self, err: impl std::fmt::Display) -> StudioError {
        StudioError::db(&self.db_path, err)
    }

    fn configure(&self) -> Result<()> {
        self.conn
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| self.db_err(e))?;
        // WAL lets the app read while a job writes; the pragma answers with the mode it set.
        let _mode: String = self
            .conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(|e| self.db_err(e))?;
        self.conn
            .pragma_update(None, "foreign_keys", "ON")
            .map_err(|e| self.db_err(e))?;
        Ok(())
    }

    /// The schema version recorded in the database (0 for a new one).
    pub fn schema_version(&self) -> Result<i64> {
        read_version(&self.conn).map_err(|e| self.db_err(e))
    }

    /// A path stored in the database, relative to the workspace with `/` separators.
    pub(crate) fn relative(&self, path: &Path) -> String {
        let rel = path.strip_prefix(&self.dir).unwrap_or(path);
        rel.components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/")
    }

    /// The absolute path of a stored relative path.
    pub(crate) fn absolute(&self, stored: &str) -> PathBuf {
        stored
            .split('/')
            .fold(self.dir.clone(), |acc, part| acc.join(part))
    }

    // ---- projects ----

    /// Creates a project; `name` and `class` must be non-empty and `token` one word.
    pub fn create_project(&mut self, name: &str, token: &str, class: &str) -> Result<Project> {
        let (name, token, class) = (name.trim(), token.trim(), class.trim());
        validate_name(name)?;
        if token.is_empty() {
            return Err(StudioError::Invalid("the token is empty".into()));
        }
        if token.chars().any(char::is_whitespace) {
            return Err(StudioError::Invalid(format!(
                "the token `{token}` must be one word without spaces"
            )));
        }
        if class.is_empty() {
            return Err(StudioError::Invalid("the class is empty".into()));
        }
        let created_at = now();
        self.conn
            .execute(
                "INSERT INTO projects (name, token, class, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![name, token, class, created_at],
            )
            .map_err(|e| self.db_err(e))?;
        let id = self.conn.last_insert_rowid();
        tracing::info!("project {id} `{name}` created ({token} {class})");
        Ok(Project {
            id,
            name: name.to_string(),
            token: token.to_string(),
            class: class.to_string(),
            created_at,
        })
    }

    /// Every project, oldest first.
    pub fn projects(&self) -> Result<Vec<Project>> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {PROJECT_COLUMNS} FROM projects ORDER BY id"
            ))
            .map_err(|e| self.db_err(e))?;
        let rows = stmt
            .query_map([], project_from_row)
            .map_err(|e| self.db_err(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.db_err(e))
    }

    /// One project.
    pub fn project(&self, id: ProjectId) -> Result<Project> {
        self.conn
            .query_row(
                &format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE id = ?1"),
                [id],
                project_from_row,
            )
            .optional()
            .map_err(|e| self.db_err(e))?
            .ok_or(StudioError::NotFound {
                what: "project",
                id,
            })
    }

    /// Gives a project a new name.
    pub fn rename_project(&mut self, id: ProjectId, name: &str) -> Result<Project> {
        let name = name.trim();
        validate_name(name)?;
        let changed = self
            .conn
            .execute(
                "UPDATE projects SET name = ?1 WHERE id = ?2",
                params![name, id],
            )
            .map_err(|e| self.db_err(e))?;
        if changed == 0 {
            return Err(StudioError::NotFound {
                what: "project",
                id,
            });
        }
        self.project(id)
    }

    /// Deletes a project, its rows (photos, runs, jobs… by cascade) and its folder; refused
    /// while one of its jobs is queued or running (its files are in use).
    pub fn delete_project(&mut self, id: ProjectId) -> Result<()> {
        let busy: Option<i64> = self
            .conn
            .query_row(
                "SELECT id FROM jobs WHERE project_id = ?1 AND status IN ('queued', 'running')
                 ORDER BY id LIMIT 1",
                [id],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.db_err(e))?;
        if let Some(job) = busy {
            return Err(StudioError::Invalid(format!(
                "project {id} has job {job} queued or running; cancel it before deleting the project"
            )));
        }
        let changed = self
            .conn
            .execute("DELETE FROM projects WHERE id = ?1", [id])
            .map_err(|e| self.db_err(e))?;
        if changed == 0 {
            return Err(StudioError::NotFound {
                what: "project",
                id,
            });
        }
        // The rows go first: a folder left behind by a failed removal is harmless, a row
        // pointing at deleted files is not.
        let dir = self.project_dir(id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StudioError::io(&dir, e)),
        }
        tracing::info!("project {id} deleted");
        Ok(())
    }

    /// The folder of a project's files.
    pub fn project_dir(&self, id: ProjectId) -> PathBuf {
        self.dir.join("projects").join(id.to_string())
    }

    /// The folder of a project's photos (`original/`, `normalized/`, `thumbs/` inside).
    pub fn photos_dir(&self, id: ProjectId) -> PathBuf {
        self.project_dir(id).join("photos")
    }

    // ---- photos ----

    fn photo_from_row(&self, row: &Row) -> rusqlite::Result<Photo> {
        let original: String = row.get(3)?;
        let normalized: String = row.get(4)?;
        let thumbnail: String = row.get(5)?;
        let dhash: i64 = row.get(9)?;
        Ok(Photo {
            id: row.get(0)?,
            project_id: row.get(1)?,
            source_name: row.get(2)?,
            original_file: self.absolute(&original),
            normalized_file: self.absolute(&normalized),
            thumbnail_file: self.absolute(&thumbnail),
            width: row.get(6)?,
            height: row.get(7)?,
            content_hash: row.get(8)?,
            dhash: dhash as u64,
            sharpness: row.get(10)?,
            flags: json_column(row, 11)?,
            added_at: row.get(12)?,
        })
    }

    /// The photos of a project, in import order.
    pub fn photos(&self, project: ProjectId) -> Result<Vec<Photo>> {
        self.project(project)?;
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {PHOTO_COLUMNS} FROM photos WHERE project_id = ?1 ORDER BY id"
            ))
            .map_err(|e| self.db_err(e))?;
        let rows = stmt
            .query_map([project], |r| self.photo_from_row(r))
            .map_err(|e| self.db_err(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.db_err(e))
    }

    /// One photo.
    pub fn photo(&self, id: PhotoId) -> Result<Photo> {
        self.conn
            .query_row(
                &format!("SELECT {PHOTO_COLUMNS} FROM photos WHERE id = ?1"),
                [id],
                |r| self.photo_from_row(r),
            )
            .optional()
            .map_err(|e| self.db_err(e))?
            .ok_or(StudioError::NotFound { what: "photo", id })
    }

    /// Removes a photo and its three files.
    pub fn remove_photo(&mut self, id: PhotoId) -> Result<()> {
        let photo = self.photo(id)?;
        self.conn
            .execute("DELETE FROM photos WHERE id = ?1", [id])
            .map_err(|e| self.db_err(e))?;
        for file in [
            &photo.original_file,
            &photo.normalized_file,
            &photo.thumbnail_file,
        ] {
            remove_file_if_present(file)?;
        }
        tracing::info!("photo {id} ({}) removed", photo.source_name);
        Ok(())
    }

    // ---- base models ----

    /// Adds a diffusers folder or single-file checkpoint after checking the loader understands
    /// it; the error carries the loader's message.
    pub fn add_base_model(&mut self, path: &Path) -> Result<BaseModel> {
        let kind = if path.is_dir() {
            BaseModelKind::Folder
        } else {
            BaseModelKind::File
        };
        self.insert_base_model(path, kind)
    }

    /// Adds the built-in world model (the `world-sd` folder of
    /// `likeness_train::world_train::builtin_models`).
    pub fn add_builtin(&mut self, path: &Path) -> Result<BaseModel> {
        self.insert_base_model(path, BaseModelKind::Builtin)
    }

    fn insert_base_model(&mut self, path: &Path, kind: BaseModelKind) -> Result<BaseModel> {
        let summary = summarize(path, &LoadOptions::default())
            .map_err(|e| StudioError::NotAModel(e.to_string()))?;
        let summary = serde_json::to_value(&summary)
            .map_err(|e| StudioError::Invalid(format!("{}: {e}", path.display())))?;
        let path = path.canonicalize().map_err(|e| StudioError::io(path, e))?;
        let path_text = path.to_string_lossy().into_owned();
        let existing: Option<i64> = self
            .conn
            .query_row(
                "SELECT id FROM base_models WHERE path = ?1",
                [&path_text],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.db_err(e))?;
        if let Some(id) = existing {
            return Err(StudioError::DuplicateModel { path, id });
        }
        let name = summary["name"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| {
                path.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into()
            });
        let added_at = now();
        self.conn
            .execute(
                "INSERT INTO base_models (name, path, kind, summary, added_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    name,
                    path_text,
                    kind.as_str(),
                    summary.to_string(),
                    added_at
                ],
            )
            .map_err(|e| self.db_err(e))?;
        let id = self.conn.last_insert_rowid();
        tracing::info!("base model {id} `{name}` added ({})", path.display());
        Ok(BaseModel {
            id,
            name,
            path,
            kind,
            summary,
            added_at,
        })
    }

    /// Every base model, oldest first.
    pub fn base_models(&self) -> Result<Vec<BaseModel>> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {BASE_MODEL_COLUMNS} FROM base_models ORDER BY id"
            ))
            .map_err(|e| self.db_err(e))?;
        let rows = stmt
            .query_map([], base_model_from_row)
            .map_err(|e| self.db_err(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.db_err(e))
    }

    /// One base model.
    pub fn base_model(&self, id: BaseModelId) -> Result<BaseModel> {
        self.conn
            .query_row(
                &format!("SELECT {BASE_MODEL_COLUMNS} FROM base_models WHERE id = ?1"),
                [id],
                base_model_from_row,
            )
            .optional()
            .map_err(|e| self.db_err(e))?
            .ok_or(StudioError::NotFound {
                what: "base model",
                id,
            })
    }

    /// Forgets a base model (its files are the user's and stay where they are).
    pub fn remove_base_model(&mut self, id: BaseModelId) -> Result<()> {
        let changed = self
            .conn
            .execute("DELETE FROM base_models WHERE id = ?1", [id])
            .map_err(|e| self.db_err(e))?;
        if changed == 0 {
            return Err(StudioError::NotFound {
                what: "base model",
                id,
            });
        }
        Ok(())
    }
}

impl Workspace {
    // ---- settings ----

    /// A workspace setting, if set.
    pub(crate) fn setting(&self, key: &str) -> Result<Option<String>> {
        self.conn
            .query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.db_err(e))
    }

    fn set_setting(&mut self, key: &str, value: Option<&str>) -> Result<()> {
        match value {
            Some(v) => self.conn.execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, v],
            ),
            None => self
                .conn
                .execute("DELETE FROM settings WHERE key = ?1", [key]),
        }
        .map_err(|e| self.db_err(e))?;
        Ok(())
    }

    /// The CLIP model folder (transformers `CLIPModel` layout) that scores likeness (IS) and
    /// prompt following (TS) for models other than the built-in one; `None` when not chosen.
    pub fn clip_model(&self) -> Result<Option<PathBuf>> {
        Ok(self.setting(CLIP_MODEL_SETTING)?.map(PathBuf::from))
    }

    /// Chooses (or with `None` forgets) the CLIP model folder; it must hold a `config.json`.
    pub fn set_clip_model(&mut self, dir: Option<&Path>) -> Result<()> {
        let value = match dir {
            Some(dir) => {
                let config = dir.join("config.json");
                if !config.is_file() {
                    return Err(StudioError::NotAModel(format!(
                        "{}: no config.json; choose a transformers CLIPModel folder",
                        dir.display()
                    )));
                }
                let dir = dir.canonicalize().map_err(|e| StudioError::io(dir, e))?;
                Some(dir.to_string_lossy().into_owned())
            }
            None => None,
        };
        self.set_setting(CLIP_MODEL_SETTING, value.as_deref())
    }
}

/// The settings key of the CLIP model folder.
const CLIP_MODEL_SETTING: &str = "clip_model";

fn base_model_from_row(row: &Row) -> rusqlite::Result<BaseModel> {
    let path: String = row.get(2)?;
    let kind: String = row.get(3)?;
    let kind = BaseModelKind::parse(&kind).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            3,
            rusqlite::types::Type::Text,
            format!("unknown base model kind `{kind}`").into(),
        )
    })?;
    Ok(BaseModel {
        id: row.get(0)?,
        name: row.get(1)?,
        path: PathBuf::from(path),
        kind,
        summary: json_column(row, 4)?,
        added_at: row.get(5)?,
    })
}

/// Brings the database to `migrations.len()`, one transaction per version, or refuses a database
/// that is already past it.
fn migrate(conn: &mut Connection, db_path: &Path, migrations: &[&str]) -> Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (
            version INTEGER PRIMARY KEY,
            applied_at INTEGER NOT NULL
        )",
    )
    .map_err(|e| StudioError::db(db_path, e))?;
    let known = migrations.len() as i64;
    let found = read_version(conn).map_err(|e| StudioError::db(db_path, e))?;
    if found > known {
        return Err(StudioError::NewerSchema {
            path: db_path.to_path_buf(),
            found,
            known,
        });
    }
    for (index, sql) in migrations.iter().enumerate() {
        let version = index as i64 + 1;
        if version <= found {
            continue;
        }
        let err = |e: rusqlite::Error| StudioError::Database {
            path: db_path.to_path_buf(),
            message: format!("migration to v{version}: {e}"),
        };
        // IMMEDIATE takes the write lock first, so two processes opening at once migrate once.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        if read_version(&tx).map_err(err)? >= version {
            continue;
        }
        tx.execute_batch(sql).map_err(err)?;
        tx.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES (?1, ?2)",
            params![version, now()],
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        tracing::info!("{}: migrated to schema v{version}", db_path.display());
    }
    Ok(())
}

fn read_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_version",
        [],
        |r| r.get(0),
    )
}

fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(StudioError::Invalid("the project name is empty".into()));
    }
    Ok(())
}

/// Deletes a file; one already gone is fine.
pub(crate) fn remove_file_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StudioError::io(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_v1_database_gains_the_job_tables_and_keeps_its_runs() {
        let mut conn = Connection::open_in_memory().unwrap();
        let path = Path::new("mem.db");
        migrate(&mut conn, path, &MIGRATIONS[..1]).unwrap();
        conn.execute_batch(
            "INSERT INTO projects (name, token, class, created_at) VALUES ('A', 'sks', 'dog', 0);
             INSERT INTO runs (project_id, kind, dir, status, created_at)
             VALUES (1, 'dreambooth', 'projects/1/runs/1-dreambooth', 'done', 0);",
        )
        .unwrap();
        migrate(&mut conn, path, MIGRATIONS).unwrap();
        assert_eq!(read_version(&conn).unwrap(), SCHEMA_VERSION);
        let (stage, steps, dir): (Option<i64>, i64, String) = conn
            .query_row("SELECT stage, steps, dir FROM runs WHERE id = 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!(
            (stage, steps, dir.as_str()),
            (None, 0, "projects/1/runs/1-dreambooth")
        );
        let jobs: i64 = conn
            .query_row("SELECT COUNT(*) FROM jobs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(jobs, 0);
    }

    #[test]
    fn a_failing_migration_leaves_the_previous_version_intact() {
        let mut conn = Connection::open_in_memory().unwrap();
        let path = Path::new("mem.db");
        let migrations = [
            "CREATE TABLE a (x INTEGER);",
            "CREATE TABLE b (y INTEGER); CREATE TABLE a (x INTEGER);",
        ];
        let err = migrate(&mut conn, path, &migrations).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("mem.db") && msg.contains("migration to v2"),
            "{msg}"
        );
        assert_eq!(read_version(&conn).unwrap(), 1);
        let b_exists: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'b'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(b_exists, 0, "v2 was rolled back as a whole");
        // Fixed code applies v2 on the next open; v1 is not re-run.
        migrate(
            &mut conn,
            path,
            &["CREATE TABLE a (x INTEGER);", "CREATE TABLE b (y INTEGER);"],
        )
        .unwrap();
        assert_eq!(read_version(&conn).unwrap(), 2);
    }
}
