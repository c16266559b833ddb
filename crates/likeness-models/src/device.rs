//! Choosing where to run: CUDA, wgpu (Vulkan/Metal/DX12) or the CPU, at f32, f16 or bf16.
//!
//! Work that must run on "some backend" implements [`BackendTask`]; [`dispatch`] picks the
//! backend type from the user's choice and calls it once, monomorphised for that backend.

use std::path::PathBuf;

use burn::prelude::*;

use crate::error::{ModelError, Result};

/// `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA, then wgpu, then the CPU.
    #[default]
    Auto,
    Cuda,
    Wgpu,
    Cpu,
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cuda" => Ok(Self::Cuda),
            "wgpu" => Ok(Self::Wgpu),
            "cpu" => Ok(Self::Cpu),
            _ => Err(format!("unknown device `{s}` (auto, cuda, wgpu, cpu)")),
        }
    }
}

/// `--precision`: the float type of weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    F16,
    Bf16,
}

impl Precision {
    /// The half dtype this names, or None for f32.
    pub fn half_dtype(self) -> Option<burn::tensor::DType> {
        match self {
            Self::F32 => None,
            Self::F16 => Some(burn::tensor::DType::F16),
            Self::Bf16 => Some(burn::tensor::DType::BF16),
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "bf16" => Ok(Self::Bf16),
            _ => Err(format!("unknown precision `{s}` (f32, f16, bf16)")),
        }
    }
}

/// The backend a task ended up on, for logs and metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Placement {
    pub device: DeviceChoice,
    pub precision: Precision,
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}/{:?}", self.device, self.precision)
    }
}

/// Work to run on whichever backend is chosen.
pub trait BackendTask {
    type Output;
    fn run<B: Backend>(self, device: B::Device, placement: Placement) -> Result<Self::Output>;
}

/// CPU backend used for tests and as the fallback.
pub type CpuBackend = burn::backend::Flex;

#[cfg(any(feature = "cuda", feature = "wgpu"))]
/// Runs `f` with panics turned into `None` and their messages kept off the terminal.
fn quietly<T>(f: impl FnOnce() -> T) -> Option<T> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok();
    std::panic::set_hook(hook);
    r
}

#[cfg(any(feature = "cuda", feature = "wgpu"))]
/// Whether a backend can create a tensor and read it back.
fn probe<B: Backend>(device: &B::Device) -> bool {
    let device = device.clone();
    quietly(move || {
        let t = Tensor::<B, 1>::ones([4], &device) * 2.0;
        t.into_data()
            .to_vec::<f32>()
            .map(|v| v == vec![2.0; 4])
            .unwrap_or(false)
    })
    .unwrap_or(false)
}

#[cfg(feature = "cuda")]
fn cuda_available() -> bool {
    probe::<burn::backend::Cuda>(&Default::default())
}
#[cfg(not(feature = "cuda"))]
fn cuda_available() -> bool {
    false
}

#[cfg(feature = "wgpu")]
fn wgpu_available() -> bool {
    probe::<burn::backend::Wgpu>(&Default::default())
}
#[cfg(not(feature = "wgpu"))]
fn wgpu_available() -> bool {
    false
}

/// Resolves `auto` to a concrete device.
pub fn resolve(choice: DeviceChoice) -> Result<DeviceChoice> {
    // Before any probe: probing a GPU starts its runtime, which reads its settings once.
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    if choice != DeviceChoice::Cpu {
        kernel_cache::configure();
    }
    match choice {
        DeviceChoice::Auto => {
            if cuda_available() {
                Ok(DeviceChoice::Cuda)
            } else if wgpu_available() {
                Ok(DeviceChoice::Wgpu)
            } else {
                Ok(DeviceChoice::Cpu)
            }
        }
        DeviceChoice::Cuda if !cfg!(feature = "cuda") => Err(ModelError::Invalid(
            "this build has no CUDA support (built without the `cuda` feature)".into(),
        )),
        DeviceChoice::Wgpu if !cfg!(feature = "wgpu") => Err(ModelError::Invalid(
            "this build has no wgpu support (built without the `wgpu` feature)".into(),
        )),
        DeviceChoice::Cuda if !cuda_available() => Err(ModelError::Invalid(
            "no usable CUDA device (is the NVIDIA driver installed?)".into(),
        )),
        DeviceChoice::Wgpu if !wgpu_available() => Err(ModelError::Invalid(
            "no usable wgpu adapter (Vulkan, Metal or DX12)".into(),
        )),
        other => Ok(other),
    }
}

/// Whether to run with Burn's operation fusion, in builds that have it: yes unless
/// `LIKENESS_FUSION` is `0`, `off` or `false`.
#[cfg(all(feature = "cuda", feature = "fusion"))]
fn fusion_wanted() -> bool {
    !matches!(
        std::env::var("LIKENESS_FUSION").as_deref(),
        Ok("0" | "off" | "false")
    )
}

/// Where a training job runs and its mixed precision (see the trainers' `mixed_precision`):
/// trainers run on an f32 backend and cast the frozen weights themselves; the CPU trains in f32
/// and wgpu, having no bf16, in f16.
pub fn training_placement(choice: DeviceChoice, precision: Precision) -> Result<Placement> {
    let device = resolve(choice)?;
    let precision = match (device, precision) {
        (DeviceChoice::Cpu, p) => {
            if p != Precision::F32 {
                tracing::warn!("the CPU trains in f32; precision {p:?} ignored");
            }
            Precision::F32
        }
        (DeviceChoice::Wgpu, Precision::Bf16) => {
            tracing::warn!("wgpu has no bf16; mixed precision in f16");
            Precision::F16
        }
        (_, p) => p,
    };
    Ok(Placement { device, precision })
}

/// Runs `task` on the chosen device and precision.
pub fn dispatch<T: BackendTask>(
    choice: DeviceChoice,
    precision: Precision,
    task: T,
) -> Result<T::Output> {
    let device = resolve(choice)?;
    let placement = Placement { device, precision };
    tracing::info!("running on {placement}");
    // GPU runtimes report a failed kernel launch, running out of memory among them, by
    // panicking: the task ends with a one-line error instead (its checkpoints stay).
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_on(device, precision, placement, task)
    }))
    .unwrap_or_else(|payload| Err(ModelError::Invalid(panic_line(&*payload))))
}

/// One line for a panic that escaped a backend or a task: running out of memory becomes
/// advice, anything else the first line of its message.
pub fn panic_line(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("unknown error");
    let lower = text.to_ascii_lowercase();
    if [
        "out-of-memory",
        "out of memory",
        "outofmemory",
        "out_of_memory",
    ]
    .iter()
    .any(|m| lower.contains(m))
    {
        return "the GPU ran out of memory: lower the resolution or the batch, turn on gradient \
                checkpointing, or train in bf16"
            .into();
    }
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("unknown error");
    format!("internal error: {first}")
}

#[cfg_attr(not(any(feature = "cuda", feature = "wgpu")), allow(unused_variables))]
fn run_on<T: BackendTask>(
    device: DeviceChoice,
    precision: Precision,
    placement: Placement,
    task: T,
) -> Result<T::Output> {
    // Every precision runs on the f32 backend, half precision as mixed precision: the task casts
    // the weights (`StableDiffusion::with_precision`, the trainers' `mixed_precision`). Burn 0.21
    // keeps a device's default float dtype per device, not per backend type, fixed by the first
    // tensor created on it — the availability probe's, f32 — so a `Cuda<bf16>` backend created
    // its weights and inputs in f32 and computed in f32 (measured on an H100, session 14: the
    // "bf16" UNet forward took 107.6 ms, the f32 one 106.8 ms, and Burn's half-precision flash
    // kernels were never chosen).
    match device {
        #[cfg(all(feature = "cuda", feature = "fusion"))]
        DeviceChoice::Cuda if !fusion_wanted() => {
            type Unfused = burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, f32, i32, u8>;
            tracing::info!("operation fusion off (LIKENESS_FUSION=0)");
            run_mixed::<Unfused, T>(placement, task)
        }
        #[cfg(feature = "cuda")]
        DeviceChoice::Cuda => run_mixed::<burn::backend::Cuda<f32>, T>(placement, task),
        #[cfg(feature = "wgpu")]
        DeviceChoice::Wgpu => {
            let placement = if precision == Precision::Bf16 {
                tracing::warn!("wgpu has no bf16; using f16");
                Placement {
                    device,
                    precision: Precision::F16,
                }
            } else {
                placement
            };
            run_mixed::<burn::backend::Wgpu<f32>, T>(placement, task)
        }
        _ => {
            if precision != Precision::F32 {
                tracing::warn!("the CPU backend runs in f32; --precision {precision:?} ignored");
            }
            task.run::<CpuBackend>(
                Default::default(),
                Placement {
                    device: DeviceChoice::Cpu,
                    precision: Precision::F32,
                },
            )
        }
    }
}

/// Runs `task` on f32 backend `B` at `placement`'s precision, or at f32 (with a warning) where
/// the device cannot store that half dtype.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
fn run_mixed<B: Backend, T: BackendTask>(placement: Placement, task: T) -> Result<T::Output> {
    let device = B::Device::default();
    let placement = match placement.precision.half_dtype() {
        Some(dtype) if !B::supports_dtype(&device, dtype) => {
            tracing::warn!(
                "this {:?} device has no {:?}; running in f32",
                placement.device,
                placement.precision
            );
            Placement {
                precision: Precision::F32,
                ..placement
            }
        }
        _ => placement,
    };
    task.run::<B>(device, placement)
}

/// Where GPU kernels and their tuning are kept: `$LIKENESS_KERNEL_CACHE`, else the user's cache
/// folder (`$XDG_CACHE_HOME` or `~/.cache` on Linux, `~/Library/Caches` on macOS,
/// `%LOCALAPPDATA%` on Windows) + `likeness/kernels`.
pub fn kernel_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("LIKENESS_KERNEL_CACHE") {
        return PathBuf::from(d);
    }
    let home = || std::env::var_os("HOME").map(PathBuf::from);
    let base = if cfg!(target_os = "windows") {
        std::env::var_os("LOCALAPPDATA").map(PathBuf::from)
    } else if cfg!(target_os = "macos") {
        home().map(|h| h.join("Library/Caches"))
    } else {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| home().map(|h| h.join(".cache")))
    };
    base.unwrap_or_else(std::env::temp_dir)
        .join("likeness")
        .join("kernels")
}

/// A GPU tunes Burn's kernels for every new op shape the first time a kind of work runs on it
/// (autotune: minutes for a Stable Diffusion UNet, once; the results stay in the kernel cache).
/// These marks remember which kinds of work have run on the GPU, so the app and the CLI can say
/// what a slow first run is doing. A lost mark only shows the notice once more.
pub mod tuning {
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Condvar, Mutex};
    use std::time::Duration;

    use tracing::field::{Field, Visit};
    use tracing::{Event, Level, Subscriber};
    use tracing_subscriber::Layer;
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::layer::Context;
    use tracing_subscriber::registry::LookupSpan;

    use super::{DeviceChoice, Precision};

    /// What the app and the CLI say while a first run tunes.
    pub const NOTICE: &str =
        "first run of this work on this GPU: tuning kernels (a few minutes, once)";

    /// How many kernel tunings have started in this process. CubeCL logs `Tuning <key>` (through
    /// the `log` facade) before it benchmarks the candidate kernels of an op shape it has not
    /// tuned yet; [`counter_layer`] counts those lines, so a first run can show that it moves.
    pub fn kernels_tuned() -> usize {
        TUNED.load(Ordering::Relaxed)
    }

    static TUNED: AtomicUsize = AtomicUsize::new(0);

    /// Counts one kernel tuning (what [`counter_layer`] does for each of CubeCL's lines).
    pub fn count_tuning() {
        TUNED.fetch_add(1, Ordering::Relaxed);
    }

    /// [`NOTICE`], with the number of kernels tuned since `since` (a [`kernels_tuned`] reading
    /// taken when the work started) once there are any.
    pub fn notice_since(since: usize) -> String {
        notice(kernels_tuned().saturating_sub(since))
    }

    /// [`NOTICE`] once `tuned` kernels of this work are tuned.
    pub fn notice(tuned: usize) -> String {
        match tuned {
            0 => NOTICE.to_string(),
            n => format!("{NOTICE}; {n} tuned so far"),
        }
    }

    /// Installs the process's log: `filter`ed lines on stderr, and [`counter_layer`] (with the
    /// `log` bridge, so CubeCL's lines reach it). The app and the CLI call it once, first.
    pub fn init_logging(filter: tracing_subscriber::EnvFilter) {
        use tracing_subscriber::prelude::*;
        tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            )
            .with(counter_layer())
            .init();
    }

    /// While a first run tunes, the work sits inside one long call that sends no progress:
    /// a ticker wakes every `every` and hands `on_change` the number of kernels tuned since it
    /// started, when that number has changed. Dropping it stops the thread (at once).
    pub struct Ticker {
        stop: Arc<(Mutex<bool>, Condvar)>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Ticker {
        pub fn start(every: Duration, mut on_change: impl FnMut(usize) + Send + 'static) -> Self {
            let since = kernels_tuned();
            let stop = Arc::new((Mutex::new(false), Condvar::new()));
            let flag = stop.clone();
            let thread = std::thread::Builder::new()
                .name("tuning-ticker".into())
                .spawn(move || {
                    let (lock, wake) = &*flag;
                    let mut shown = 0;
                    let mut stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
                    loop {
                        stopped = wake
                            .wait_timeout(stopped, every)
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                        if *stopped {
                            return;
                        }
                        let n = kernels_tuned().saturating_sub(since);
                        if n != shown {
                            shown = n;
                            on_change(n);
                        }
                    }
                })
                .ok();
            Self { stop, thread }
        }
    }

    impl Drop for Ticker {
        fn drop(&mut self) {
            let (lock, wake) = &*self.stop;
            *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
            wake.notify_all();
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    /// Where CubeCL's autotune logs from.
    const TUNER_TARGET: &str = "cubecl_runtime::tune";

    /// A `tracing` layer that counts CubeCL's tuning lines ([`kernels_tuned`]). The app and the
    /// CLI add it to the subscriber they install; `log` records reach it through
    /// `tracing-subscriber`'s `log` bridge, which the subscriber's `init` sets up.
    pub fn counter_layer<S>() -> impl Layer<S> + Send + Sync + 'static
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        TuningCounter.with_filter(Targets::new().with_target(TUNER_TARGET, Level::INFO))
    }

    struct TuningCounter;

    impl<S: Subscriber> Layer<S> for TuningCounter {
        fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
            struct Tuning(bool);
            impl Visit for Tuning {
                fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                    if field.name() == "message" {
                        self.0 = format!("{value:?}").starts_with("Tuning ");
                    }
                }
                fn record_str(&mut self, field: &Field, value: &str) {
                    if field.name() == "message" {
                        self.0 = value.starts_with("Tuning ");
                    }
                }
            }
            let mut tuning = Tuning(false);
            event.record(&mut tuning);
            if tuning.0 {
                count_tuning();
            }
        }
    }

    /// `tuned.txt` in the kernel cache: one line per device and kind of work.
    pub fn marks_file() -> PathBuf {
        super::kernel_cache_dir().join("tuned.txt")
    }

    /// The description marks are kept by: what sets a kind of work's op shapes (the app and
    /// the CLI describe the same work alike; 0 for a size left to the model).
    pub fn work(
        kind: &str,
        model: &Path,
        [width, height]: [usize; 2],
        batch: usize,
        precision: Precision,
    ) -> String {
        format!(
            "{kind} {} {width}x{height} batch {batch} {precision:?}",
            model.display()
        )
    }

    fn line(device: DeviceChoice, work: &str) -> String {
        format!("{device:?} {}", work.replace(['\n', '\r'], " "))
    }

    fn marks() -> BTreeSet<String> {
        std::fs::read_to_string(marks_file())
            .map(|t| t.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }

    /// Whether `work` (a description of the shapes it runs: model, size, precision…) has not
    /// yet run on `device`; never for the CPU, which has nothing to tune.
    pub fn needs_tuning(device: DeviceChoice, work: &str) -> bool {
        tunes(device) && !marks().contains(&line(device, work))
    }

    /// GPU builds without Burn's autotune (feature `autotune`) compile on first use but tune
    /// nothing: no notice for them.
    fn tunes(device: DeviceChoice) -> bool {
        cfg!(feature = "autotune") && !matches!(device, DeviceChoice::Cpu | DeviceChoice::Auto)
    }

    /// Records that `work` has run on `device` (written atomically).
    pub fn mark_tuned(device: DeviceChoice, work: &str) -> crate::error::Result<()> {
        let mut all = marks();
        if !tunes(device) || !all.insert(line(device, work)) {
            return Ok(());
        }
        let mut text = all.into_iter().collect::<Vec<_>>().join("\n");
        text.push('\n');
        let file = marks_file();
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).map_err(|e| crate::error::ModelError::Io {
                path: parent.to_path_buf(),
                message: e.to_string(),
            })?;
        }
        crate::png_meta::write_atomic(&file, text.as_bytes())
    }
}

/// Where compiled GPU kernels and autotune results are kept between launches, so only the first
/// launch compiles (measured on an H100: the first bf16 UNet forward took 11.4 s in a fresh
/// process, 0.8 s in the next one with the cache; `docs/perf.md`).
#[cfg(any(feature = "cuda", feature = "wgpu"))]
pub mod kernel_cache {
    use cubecl_runtime::config::cache::CacheConfig;
    use cubecl_runtime::config::{CubeClRuntimeConfig, RuntimeConfig};

    /// The runtime settings Likeness uses: a `cubecl.toml` / `burn.toml` found from the working
    /// folder up (and `CUBECL_*` variables) win; where they name no cache, compiled kernels and
    /// autotune results go under [`super::kernel_cache_dir`].
    pub fn settings() -> CubeClRuntimeConfig {
        let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
        let dir = super::kernel_cache_dir();
        if config.compilation.cache.is_none() {
            config.compilation.cache = Some(CacheConfig::File(dir.join("compiled")));
        }
        if matches!(config.autotune.cache, CacheConfig::Target) {
            config.autotune.cache = CacheConfig::File(dir.join("autotune"));
        }
        config
    }

    /// Installs [`settings`] once, before the first GPU kernel; does nothing when the runtime
    /// has already read its settings.
    pub fn configure() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let settings = settings();
            let unset = CubeClRuntimeConfig::storage().lock().is_none();
            if unset {
                tracing::info!("GPU kernel cache: {}", super::kernel_cache_dir().display());
                CubeClRuntimeConfig::set(settings);
            }
        });
    }
}

#[cfg(all(test, any(feature = "cuda", feature = "wgpu")))]
mod kernel_cache_tests {
    use cubecl_runtime::config::cache::CacheConfig;

    #[test]
    fn caches_default_to_the_likeness_kernel_folder() {
        let s = super::kernel_cache::settings();
        let dir = super::kernel_cache_dir();
        assert!(
            dir.ends_with("likeness/kernels")
                || std::env::var_os("LIKENESS_KERNEL_CACHE").is_some()
        );
        match s.compilation.cache {
            Some(CacheConfig::File(p)) => assert_eq!(p, dir.join("compiled")),
            other => panic!("compilation cache {other:?}"),
        }
        match s.autotune.cache {
            CacheConfig::File(p) => assert_eq!(p, dir.join("autotune")),
            other => panic!("autotune cache {other:?}"),
        }
    }
}

/// The GPU memory pool of `device`'s runtime, in bytes: `(in use, reserved)` — what live tensors
/// hold and what the pool has taken from the driver (it keeps its pages, so after a training step
/// this is about the step's peak need plus fragmentation). `None` on the CPU or when the runtime
/// cannot say.
pub fn pool_usage(device: DeviceChoice) -> Option<(u64, u64)> {
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    fn of<R: cubecl::Runtime>(device: &R::Device) -> Option<(u64, u64)> {
        let usage = R::client(device).memory_usage().ok()?;
        Some((usage.bytes_in_use, usage.bytes_reserved))
    }
    match device {
        #[cfg(feature = "cuda")]
        DeviceChoice::Cuda => of::<cubecl::cuda::CudaRuntime>(&Default::default()),
        #[cfg(feature = "wgpu")]
        DeviceChoice::Wgpu => of::<burn::backend::wgpu::WgpuRuntime>(&Default::default()),
        _ => None,
    }
}
