//! The loop every world trainer shares: the run folder (created, or continued from its latest
//! checkpoint), AdamW steps on a loss the trainer computes per step, `loss.jsonl`, events,
//! cancellation and atomic checkpoints of the weights (by path) and the optimizer.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::ElementConversion;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{
    CheckpointState, CheckpointWriter, OPTIMIZER_FILE, RngState, TensorFile, latest_checkpoint,
    read_state, remove_partial,
};
use crate::error::{Result, TrainError};
use crate::events::{TrainEvent, TrainOutcome};
use crate::optim::{AdamW, LrPlan, LrSchedule, require_grad_all};
use crate::run_dir::{LossRecord, RunDir};
use crate::trainable::{load_by_path, weights_by_path};

/// `config.json` of a world run: which trainer, and its settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct WorldRunConfig<C> {
    trainer: String,
    likeness_version: String,
    settings: C,
}

/// A run folder ready to train: its settings and the checkpoint it continues from.
pub(crate) struct OpenedRun<C> {
    pub run: RunDir,
    pub settings: C,
    pub resume: Option<(usize, PathBuf)>,
}

/// Creates the run folder with `fresh`, or opens the `trainer` run already there and keeps its
/// saved settings, updated by `update` (e.g. a new step count).
pub(crate) fn open_run<C: Serialize + DeserializeOwned + Clone>(
    run_dir: &Path,
    trainer: &str,
    fresh: &C,
    update: impl FnOnce(C) -> C,
) -> Result<OpenedRun<C>> {
    let (run, settings, resume) = if run_dir.join("config.json").is_file() {
        let run = RunDir::open(run_dir)?;
        let saved: WorldRunConfig<serde_json::Value> = run.read_config()?;
        if saved.trainer != trainer {
            return Err(TrainError::io(
                run.config_path(),
                format!("a `{}` run, not a `{trainer}` run", saved.trainer),
            ));
        }
        let settings: C = serde_json::from_value(saved.settings)
            .map_err(|e| TrainError::io(run.config_path(), e))?;
        for p in remove_partial(&run)? {
            tracing::warn!("{}: removed an unfinished checkpoint", p.display());
        }
        let resume = latest_checkpoint(&run)?;
        (run, update(settings), resume)
    } else {
        (RunDir::create(run_dir)?, fresh.clone(), None)
    };
    run.write_config(&WorldRunConfig {
        trainer: trainer.to_string(),
        likeness_version: env!("CARGO_PKG_VERSION").to_string(),
        settings: settings.clone(),
    })?;
    // Steps after the checkpoint are trained again; their old loss lines go.
    run.truncate_losses(resume.as_ref().map_or(0, |(s, _)| *s))?;
    Ok(OpenedRun {
        run,
        settings,
        resume,
    })
}

/// The global gradient norm every world update is clipped to.
const MAX_GRAD_NORM: f64 = 1.0;

/// The step plan of a world run.
pub(crate) struct Plan {
    pub steps: usize,
    pub lr: f64,
    pub schedule: LrSchedule,
    pub warmup_steps: usize,
    pub seed: u64,
    /// Steps between checkpoints (0: only the last one).
    pub checkpoint_every: usize,
    /// The checkpoint's weight file name.
    pub weights_file: &'static str,
}

/// Trains `module` (restored from `resume` when set) until `plan.steps`, calling `loss_at` for
/// each step's loss. Returns the trained module and how the run ended.
#[allow(clippy::too_many_arguments)]
pub(crate) fn train_loop<B, M>(
    run: &RunDir,
    plan: &Plan,
    module: M,
    mut optim: AdamW<B>,
    resume: Option<(usize, PathBuf)>,
    device: &B::Device,
    mut loss_at: impl FnMut(&M, usize) -> Result<Tensor<Autodiff<B>, 1>>,
    events: &mut dyn FnMut(TrainEvent),
    cancel: &AtomicBool,
) -> Result<(M, TrainOutcome)>
where
    B: Backend,
    M: AutodiffModule<Autodiff<B>>,
{
    let mut module = module;
    let mut step = 0;
    let mut last_checkpoint: Option<(usize, PathBuf)> = None;
    if let Some((_, dir)) = &resume {
        let state = read_state(dir)?;
        if state.rng.seed != plan.seed {
            return Err(TrainError::io(
                dir,
                format!(
                    "checkpoint of a run with seed {}, not {}",
                    state.rng.seed, plan.seed
                ),
            ));
        }
        module = load_by_path(module, &dir.join(plan.weights_file))?;
        let path = dir.join(OPTIMIZER_FILE);
        optim.load_tensors(&TensorFile::read(&path)?, &path, device)?;
        step = state.step;
        last_checkpoint = Some((step, dir.clone()));
    }
    let mut module = require_grad_all(module);
    events(TrainEvent::Started {
        run_dir: run.root().to_path_buf(),
        start_step: step,
        total_steps: plan.steps,
        photos: 0,
        skipped: Vec::new(),
        upscaled: Vec::new(),
    });
    let mut losses = Vec::new();
    // Every update's gradient is clipped to global norm 1, the usual guard when training from
    // scratch.
    let lr_plan = LrPlan {
        lr: plan.lr,
        schedule: plan.schedule,
        warmup_steps: plan.warmup_steps,
        total_steps: plan.steps,
    };
    while step < plan.steps {
        if cancel.load(Ordering::SeqCst) {
            let path = match &last_checkpoint {
                Some((s, p)) if *s == step => p.clone(),
                _ => save(run, plan, step, &module, &optim, None)?,
            };
            events(TrainEvent::Finished {
                step,
                cancelled: true,
                checkpoint: Some(path.clone()),
            });
            let outcome = TrainOutcome {
                step,
                cancelled: true,
                checkpoint: Some(path),
                losses,
            };
            return Ok((module, outcome));
        }
        let began = Instant::now();
        let loss = loss_at(&module, step)?;
        let value: f32 = loss.clone().into_scalar().elem();
        if !value.is_finite() {
            return Err(TrainError::NonFiniteLoss {
                step: step + 1,
                value,
                last_checkpoint: last_checkpoint.map(|(_, p)| p),
            });
        }
        let mut grads = crate::optim::FlatGrads::from_loss(loss, &module);
        grads.clip_global_norm(MAX_GRAD_NORM);
        let lr = lr_plan.at(step);
        module = optim.step(lr, module, grads);
        step += 1;
        let secs = began.elapsed().as_secs_f64();
        losses.push(value);
        run.append_loss(&LossRecord {
            step,
            loss: value,
            lr,
            time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            step_secs: secs,
        })?;
        events(TrainEvent::Step {
            step,
            loss: value,
            lr,
            secs,
        });
        let last = step == plan.steps;
        if last || (plan.checkpoint_every > 0 && step.is_multiple_of(plan.checkpoint_every)) {
            let path = save(run, plan, step, &module, &optim, Some(value))?;
            events(TrainEvent::Checkpoint {
                step,
                path: path.clone(),
            });
            last_checkpoint = Some((step, path));
        }
    }
    let checkpoint = last_checkpoint.map(|(_, p)| p);
    let outcome = TrainOutcome {
        step,
        cancelled: false,
        checkpoint,
        losses,
    };
    Ok((module, outcome))
}

/// Tells the listener the run is over (after the caller wrote its final folder).
pub(crate) fn finish(outcome: &TrainOutcome, events: &mut dyn FnMut(TrainEvent)) {
    if !outcome.cancelled {
        events(TrainEvent::Finished {
            step: outcome.step,
            cancelled: false,
            checkpoint: outcome.checkpoint.clone(),
        });
    }
}

fn save<B: Backend, M: AutodiffModule<Autodiff<B>>>(
    run: &RunDir,
    plan: &Plan,
    step: usize,
    module: &M,
    optim: &AdamW<B>,
    loss: Option<f32>,
) -> Result<PathBuf> {
    let writer = CheckpointWriter::begin(run, step)?;
    let mut weights = weights_by_path(&module.valid())?;
    weights.metadata.insert("format".into(), "pt".into());
    weights.write(&writer.dir().join(plan.weights_file))?;
    optim
        .to_tensors()?
        .write(&writer.dir().join(OPTIMIZER_FILE))?;
    writer.commit(&CheckpointState {
        step,
        trainable: "full".into(),
        rng: RngState {
            seed: plan.seed,
            steps_drawn: step,
        },
        loss,
        lr: plan.lr,
    })
}
