//! The Likeness desktop app: a thin Tauri shell over `likeness-studio`. Commands are async and
//! do their work off the main thread; training runs on the studio's job runner and reports
//! through `tauri::ipc::Channel`s; pictures reach the web view only through the `likeness` URI
//! scheme, which serves files under the workspace folder.

pub mod commands;
pub mod scheme;
pub mod views;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use likeness_models::device::{DeviceChoice, Precision};
use likeness_studio::Workspace;
use likeness_studio::jobs::JobRunner;

/// What every command shares: the open workspace and the job runner.
pub struct AppState {
    /// The workspace folder (pictures are served from here only).
    pub dir: PathBuf,
    pub workspace: Mutex<Workspace>,
    pub runner: Arc<JobRunner>,
}

impl AppState {
    /// Opens (or creates) the workspace at `dir`, registers the built-in model when it is
    /// installed, and starts the job runner (interrupted jobs become resumable).
    pub fn open(dir: PathBuf, device: DeviceChoice, precision: Precision) -> anyhow::Result<Self> {
        let workspace = prepare_workspace(&dir)?;
        let runner = Arc::new(JobRunner::start(&dir, device, precision)?);
        Ok(Self {
            dir,
            workspace: Mutex::new(workspace),
            runner,
        })
    }
}

impl AppState {
    /// On quitting: the running job stops at a checkpoint (cancelled, resumable) instead of
    /// losing the steps since its last periodic one; waits for it at most a minute.
    pub fn stop_running_job(&self) {
        let Ok(jobs) = self.runner.jobs() else { return };
        for job in jobs
            .iter()
            .filter(|j| j.status == likeness_studio::JobStatus::Running)
        {
            if self.runner.cancel(job.id).is_ok() {
                tracing::info!("quitting: job {:?} stops at a checkpoint", job.id);
                let _ = self.runner.wait(job.id, std::time::Duration::from_secs(60));
            }
        }
    }
}

/// Opens (or creates) the workspace at `dir` and registers the built-in model when it is
/// installed; on the workspace's first start, also makes the demo project (unless
/// `LIKENESS_NO_DEMO` is set).
pub fn prepare_workspace(dir: &std::path::Path) -> anyhow::Result<Workspace> {
    let first_start = !dir.join(likeness_studio::workspace::DB_FILE).exists();
    let mut workspace = Workspace::open(dir)?;
    commands::register_builtin_model(&mut workspace);
    if first_start
        && std::env::var_os("LIKENESS_NO_DEMO").is_none()
        && let Err(e) = commands::make_demo_project(&mut workspace)
    {
        tracing::warn!("demo project: {e}");
    }
    Ok(workspace)
}

/// The workspace folder: `$LIKENESS_WORKSPACE`, else the studio's default under the OS data
/// folder.
pub fn workspace_dir() -> anyhow::Result<PathBuf> {
    match std::env::var_os("LIKENESS_WORKSPACE") {
        Some(d) => Ok(PathBuf::from(d)),
        None => Ok(likeness_studio::workspace::default_dir()?),
    }
}

/// Puts the app on `builder`: `state`, the commands, the picture scheme, the dialog plugin.
/// Generic over the runtime so the command tests run it on Tauri's mock runtime.
pub fn configure<R: tauri::Runtime>(
    builder: tauri::Builder<R>,
    state: AppState,
) -> tauri::Builder<R> {
    let served = state.dir.clone();
    let watchers = commands::Watchers::default();
    commands::forward_events(&state.runner, watchers.clone());
    builder
        .plugin(tauri_plugin_dialog::init())
        .manage(state)
        .manage(watchers)
        .register_asynchronous_uri_scheme_protocol("likeness", move |_ctx, request, responder| {
            let root = served.clone();
            // File reads off the web view's thread.
            std::thread::spawn(move || responder.respond(scheme::serve(&root, request.uri())));
        })
        .invoke_handler(commands::handler())
}

/// Starts the desktop app.
pub fn run() -> anyhow::Result<()> {
    // WebKitGTK's DMA-BUF renderer shows blank windows on NVIDIA drivers; the environment
    // is only read by this process's own threads, none of which exist yet.
    if std::env::var_os("WEBKIT_DISABLE_DMABUF_RENDERER").is_none() {
        // SAFETY: single-threaded here (before Tauri, tracing or the job runner start threads).
        unsafe { std::env::set_var("WEBKIT_DISABLE_DMABUF_RENDERER", "1") };
    }
    likeness_models::device::tuning::init_logging(
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| "info,wgpu_core=warn,wgpu_hal=warn".into()),
    );
    let dir = workspace_dir()?;
    let device = match std::env::var("LIKENESS_DEVICE") {
        Ok(d) => d.parse().map_err(anyhow::Error::msg)?,
        Err(_) => DeviceChoice::Auto,
    };
    let state = AppState::open(dir.clone(), device, Precision::F32)
        .with_context(|| format!("workspace {}", dir.display()))?;
    tracing::info!("workspace {}", dir.display());
    let app = configure(tauri::Builder::<tauri::Wry>::default(), state)
        .build(tauri::generate_context!())
        .context("the app window")?;
    app.run(|handle, event| {
        if let tauri::RunEvent::Exit = event {
            use tauri::Manager;
            handle.state::<AppState>().stop_running_job();
        }
    });
    Ok(())
}
