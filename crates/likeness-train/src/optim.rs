//! Optimisation with PyTorch's semantics: `torch.optim.AdamW`, `clip_grad_norm_` over all
//! parameters together, gradient accumulation, and diffusers' constant/cosine schedules with
//! linear warm-up.
//!
//! The optimizer keeps its moments by parameter path (`unet.down_blocks.0…to_q.lora.up`), not by
//! Burn's `ParamId` (new at every load), so a checkpoint restores them into a freshly loaded
//! model exactly.

use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::prelude::*;
use burn::tensor::ElementConversion;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use likeness_models::unet::UNet2DConditionModel;

use crate::checkpoint::TensorFile;
use crate::error::{Result, TrainError};

/// Gradients of the trainable parameters, flattened, by parameter id.
pub struct FlatGrads<B: Backend> {
    grads: HashMap<ParamId, Tensor<B, 1>>,
}

impl<B: Backend> Default for FlatGrads<B> {
    fn default() -> Self {
        Self {
            grads: HashMap::new(),
        }
    }
}

struct GradCollector<'a, AB: AutodiffBackend> {
    grads: &'a mut AB::Gradients,
    out: &'a mut HashMap<ParamId, Tensor<AB::InnerBackend, 1>>,
}

impl<AB: AutodiffBackend> ModuleVisitor<AB> for GradCollector<'_, AB> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
        if let Some(g) = param.val().grad_remove(self.grads) {
            let n = g.shape().num_elements();
            self.out.insert(param.id, g.reshape([n]));
        }
    }
}

impl<B: Backend> FlatGrads<B> {
    /// Runs backward from `loss` and takes the gradients of `module`'s parameters.
    pub fn from_loss<AB, M>(loss: Tensor<AB, 1>, module: &M) -> Self
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: Module<AB>,
    {
        Self::from_grads(&mut loss.backward(), module)
    }

    /// The gradients of `loss(unet.forward(sample, timesteps, context))` for the parameters of
    /// `module` (which holds `unet`); with `checkpointing`, the UNet's layers are recomputed in
    /// backward (`UNet2DConditionModel::backward_checkpointed`), the same numbers.
    pub fn of_unet_loss<AB, M>(
        unet: &UNet2DConditionModel<AB>,
        module: &M,
        sample: Tensor<AB, 4>,
        timesteps: Tensor<AB, 1>,
        context: Tensor<AB, 3>,
        loss: impl FnOnce(Tensor<AB, 4>) -> Tensor<AB, 1>,
        checkpointing: bool,
    ) -> Result<Self>
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: Module<AB>,
    {
        if !checkpointing {
            return Ok(Self::from_loss(
                loss(unet.forward(sample, timesteps, context)),
                module,
            ));
        }
        let mut grads = Self::default();
        unet.backward_checkpointed(sample, timesteps, context, loss, &mut |g| {
            grads.accumulate(Self::from_grads::<AB, _>(g, module))
        })?;
        Ok(grads)
    }

    /// Takes the gradients of `module`'s parameters out of `grads` (one backward pass's; under
    /// gradient checkpointing, one piece of a pass, see `backward_checkpointed`).
    pub fn from_grads<AB, M>(grads: &mut AB::Gradients, module: &M) -> Self
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: Module<AB>,
    {
        let mut out = HashMap::new();
        module.visit(&mut GradCollector::<AB> {
            grads,
            out: &mut out,
        });
        Self { grads: out }
    }

    pub fn len(&self) -> usize {
        self.grads.len()
    }

    /// Each parameter's gradient.
    pub fn iter(&self) -> impl Iterator<Item = (&ParamId, &Tensor<B, 1>)> {
        self.grads.iter()
    }

    /// One parameter's gradient.
    pub fn get(&self, id: &ParamId) -> Option<&Tensor<B, 1>> {
        self.grads.get(id)
    }

    pub fn is_empty(&self) -> bool {
        self.grads.is_empty()
    }

    /// Adds another micro-batch's gradients.
    pub fn accumulate(&mut self, other: FlatGrads<B>) {
        for (id, g) in other.grads {
            let sum = match self.grads.remove(&id) {
                Some(acc) => acc + g,
                None => g,
            };
            self.grads.insert(id, sum);
        }
    }

    /// The L2 norm of all gradients together.
    pub fn global_norm(&self) -> f64 {
        let mut total: Option<Tensor<B, 1>> = None;
        for g in self.grads.values() {
            let s = g.clone().powi_scalar(2).sum();
            total = Some(match total {
                Some(t) => t + s,
                None => s,
            });
        }
        total
            .map(|t| t.into_scalar().elem::<f64>().sqrt())
            .unwrap_or(0.0)
    }

    /// `torch.nn.utils.clip_grad_norm_`: scales all gradients by `max_norm / (norm + 1e-6)` when
    /// that is below one. Returns the norm before clipping.
    pub fn clip_global_norm(&mut self, max_norm: f64) -> f64 {
        let norm = self.global_norm();
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            for g in self.grads.values_mut() {
                *g = g.clone() * coef;
            }
        }
        norm
    }
}

/// AdamW's hyper-parameters, with PyTorch's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-2,
        }
    }
}

/// One parameter's AdamW state.
#[derive(Debug, Clone)]
struct Moments<B: Backend> {
    step: u64,
    exp_avg: Tensor<B, 1>,
    exp_avg_sq: Tensor<B, 1>,
}

/// `torch.optim.AdamW` (no amsgrad), with its state by parameter path.
#[derive(Debug, Clone)]
pub struct AdamW<B: Backend> {
    pub config: AdamWConfig,
    state: BTreeMap<String, Moments<B>>,
}

impl<B: Backend> AdamW<B> {
    pub fn new(config: AdamWConfig) -> Self {
        Self {
            config,
            state: BTreeMap::new(),
        }
    }

    /// Applies one update with learning rate `lr` to every parameter of `module` that has a
    /// gradient in `grads`.
    pub fn step<AB, M>(&mut self, lr: f64, module: M, mut grads: FlatGrads<B>) -> M
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: Module<AB>,
    {
        module.map(&mut AdamWMapper::<AB> {
            path: Vec::new(),
            grads: &mut grads,
            optim: self,
            lr,
            _b: PhantomData,
        })
    }

    /// `param ← param·(1 − lr·wd) − lr/bc1 · m / (sqrt(v)/sqrt(bc2) + eps)`, as PyTorch orders it.
    fn update(
        &mut self,
        key: String,
        param: Tensor<B, 1>,
        grad: Tensor<B, 1>,
        lr: f64,
    ) -> Tensor<B, 1> {
        let c = self.config;
        let m = match self.state.remove(&key) {
            Some(m) => Moments {
                step: m.step + 1,
                exp_avg: m.exp_avg * c.beta1 + grad.clone() * (1.0 - c.beta1),
                exp_avg_sq: m.exp_avg_sq * c.beta2 + grad.clone() * grad * (1.0 - c.beta2),
            },
            None => Moments {
                step: 1,
                exp_avg: grad.clone() * (1.0 - c.beta1),
                exp_avg_sq: grad.clone() * grad * (1.0 - c.beta2),
            },
        };
        let param = if c.weight_decay != 0.0 {
            param * (1.0 - lr * c.weight_decay)
        } else {
            param
        };
        let bc1 = 1.0 - c.beta1.powi(m.step as i32);
        let bc2 = 1.0 - c.beta2.powi(m.step as i32);
        let denom = m.exp_avg_sq.clone().sqrt() / bc2.sqrt() + c.eps;
        let updated = param - m.exp_avg.clone() / denom * (lr / bc1);
        self.state.insert(key, m);
        updated
    }

    /// The number of parameters with state.
    pub fn len(&self) -> usize {
        self.state.len()
    }

    pub fn is_empty(&self) -> bool {
        self.state.is_empty()
    }

    /// The state as tensors `exp_avg.<path>` and `exp_avg_sq.<path>` plus the per-parameter
    /// step counts (metadata `steps`, JSON).
    pub fn to_tensors(&self) -> Result<TensorFile> {
        let mut file = TensorFile::default();
        let mut steps = BTreeMap::new();
        for (key, m) in &self.state {
            for (name, t) in [("exp_avg", &m.exp_avg), ("exp_avg_sq", &m.exp_avg_sq)] {
                let values = t
                    .clone()
                    .into_data()
                    .convert::<f32>()
                    .to_vec::<f32>()
                    .map_err(|e| TrainError::Invalid(format!("reading {name} of {key}: {e:?}")))?;
                file.insert(format!("{name}.{key}"), vec![values.len()], values);
            }
            steps.insert(key.clone(), m.step);
        }
        file.metadata.insert(
            "steps".into(),
            serde_json::to_string(&steps).map_err(|e| TrainError::Invalid(e.to_string()))?,
        );
        file.metadata
            .insert("optimizer".into(), "torch.optim.AdamW".into());
        Ok(file)
    }

    /// Restores the state written by [`AdamW::to_tensors`]; `path` names the file in errors.
    pub fn load_tensors(
        &mut self,
        file: &TensorFile,
        path: &std::path::Path,
        device: &B::Device,
    ) -> Result<()> {
        let steps: BTreeMap<String, u64> = file
            .metadata
            .get("steps")
            .map(|s| serde_json::from_str(s))
            .transpose()
            .map_err(|e| TrainError::io(path, format!("metadata `steps`: {e}")))?
            .unwrap_or_default();
        self.state.clear();
        for (key, step) in steps {
            let get = |name: &str| {
                file.get(&format!("{name}.{key}"))
                    .map(|(_, v)| {
                        Tensor::<B, 1>::from_data(TensorData::new(v.to_vec(), [v.len()]), device)
                    })
                    .ok_or_else(|| TrainError::io(path, format!("missing `{name}.{key}`")))
            };
            self.state.insert(
                key.clone(),
                Moments {
                    step,
                    exp_avg: get("exp_avg")?,
                    exp_avg_sq: get("exp_avg_sq")?,
                },
            );
        }
        Ok(())
    }
}

/// Walks the module, tracking each parameter's path, and updates those with gradients.
struct AdamWMapper<'a, AB: AutodiffBackend> {
    path: Vec<String>,
    grads: &'a mut FlatGrads<AB::InnerBackend>,
    optim: &'a mut AdamW<AB::InnerBackend>,
    lr: f64,
    _b: PhantomData<AB>,
}

impl<AB: AutodiffBackend> ModuleMapper<AB> for AdamWMapper<'_, AB> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<AB, D>>) -> Param<Tensor<AB, D>> {
        let Some(grad) = self.grads.grads.remove(&param.id) else {
            return param;
        };
        let (id, tensor, mapper) = param.consume();
        let require_grad = tensor.is_require_grad();
        let shape = tensor.shape();
        let flat = tensor.inner().reshape([shape.num_elements()]);
        let updated = self
            .optim
            .update(self.path.join("."), flat, grad, self.lr)
            .reshape(shape);
        let mut tensor = Tensor::<AB, D>::from_inner(updated);
        if require_grad {
            tensor = tensor.require_grad();
        }
        Param::from_mapped_value(id, tensor, mapper)
    }
}

/// Paths and element counts of the parameters that train (require gradients).
pub fn trainable_parameters<B: Backend, M: Module<B>>(module: &M) -> Vec<(String, usize)> {
    struct Lister {
        path: Vec<String>,
        out: Vec<(String, usize)>,
    }
    impl<B: Backend> ModuleVisitor<B> for Lister {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if param.is_require_grad() {
                self.out
                    .push((self.path.join("."), param.shape().num_elements()));
            }
        }
    }
    let mut l = Lister {
        path: Vec::new(),
        out: Vec::new(),
    };
    module.visit(&mut l);
    l.out
}

/// Marks every float parameter of `module` as trainable.
pub fn require_grad_all<B: AutodiffBackend, M: Module<B>>(module: M) -> M {
    struct Mark;
    impl<B: Backend> ModuleMapper<B> for Mark {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            param.set_require_grad(true)
        }
    }
    module.map(&mut Mark)
}

/// How the learning rate moves over the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    #[default]
    Constant,
    Cosine,
}

impl std::str::FromStr for LrSchedule {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "constant" => Ok(Self::Constant),
            "cosine" => Ok(Self::Cosine),
            _ => Err(format!(
                "unknown learning-rate schedule `{s}` (constant, cosine)"
            )),
        }
    }
}

/// The learning rate of each step, as diffusers' `get_scheduler` (LambdaLR, half a cosine).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrPlan {
    pub lr: f64,
    pub schedule: LrSchedule,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl LrPlan {
    /// The rate of the update that follows `done` earlier updates.
    pub fn at(&self, done: usize) -> f64 {
        let k = done as f64;
        if done < self.warmup_steps {
            return self.lr * k / self.warmup_steps.max(1) as f64;
        }
        match self.schedule {
            LrSchedule::Constant => self.lr,
            LrSchedule::Cosine => {
                let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
                let progress = (k - self.warmup_steps as f64) / span;
                self.lr * (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
            }
        }
    }
}
