//! Optimisation with PyTorch's semantics: `torch.optim.AdamW`, `clip_grad_norm_` over all
//! parameters together, gradient accumulation, and diffusers' constant/cosine schedules with
//! linear warm-up.
//!
//! The optimizer keeps its moments by parameter path (`unet.down_blocks.0…to_q.lora.up`), not by
//! Burn's `ParamId` (new at every load), so a checkpoint restores them into a freshly loaded
//! model exactly.

use std::collections::{BTreeMap, HashMap, HashSet};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::ElementConversion;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use likeness_models::nn::in_dtype;
use likeness_models::unet::UNet2DConditionModel;

use crate::checkpoint::TensorFile;
use crate::error::{Result, TrainError};

/// Gradients, moments and parameters smaller than [`ALONE_ELEMENTS`] are laid end to end in
/// buckets of up to this many elements for the global norm, the clipping and AdamW, so each of
/// their dozen element-wise operations launches once per bucket rather than once per tensor
/// (PyTorch's `foreach` AdamW and `clip_grad_norm_` group tensors the same way). A rank-4
/// attention LoRA of SD 1.5 (256 tensors, 0.8 M values) is one bucket; measured on lavapipe
/// (no fusion), the DreamBooth step's kernel launches fell from ~11 790 to ~8 550 with this alone
/// (`docs/perf.md`, session 22).
const BUCKET_ELEMENTS: usize = 1 << 22;
/// Tensors of at least this many elements are buckets of their own (no copy: a full fine-tune's
/// large weights are not duplicated to be packed).
const ALONE_ELEMENTS: usize = 1 << 20;

/// Groups items (in order) into buckets: each item of at least [`ALONE_ELEMENTS`] alone, the
/// others, per dtype, in order until the next would take the bucket past [`BUCKET_ELEMENTS`].
fn plan_buckets(items: &[(usize, DType)]) -> Vec<Vec<usize>> {
    let mut done = Vec::new();
    let mut open: Vec<(DType, Vec<usize>, usize)> = Vec::new();
    for (i, &(len, dtype)) in items.iter().enumerate() {
        if len >= ALONE_ELEMENTS {
            done.push(vec![i]);
            continue;
        }
        let slot = match open.iter().position(|(d, _, _)| *d == dtype) {
            Some(k) if open[k].2 + len <= BUCKET_ELEMENTS => k,
            Some(k) => {
                let (_, items, _) = open.remove(k);
                done.push(items);
                open.push((dtype, Vec::new(), 0));
                open.len() - 1
            }
            None => {
                open.push((dtype, Vec::new(), 0));
                open.len() - 1
            }
        };
        open[slot].1.push(i);
        open[slot].2 += len;
    }
    done.extend(open.into_iter().map(|(_, items, _)| items));
    done
}

/// Tensors end to end (one of them as it is).
fn pack<B: Backend>(mut parts: Vec<Tensor<B, 1>>) -> Tensor<B, 1> {
    if parts.len() == 1 {
        parts.pop().expect("one part")
    } else {
        Tensor::cat(parts, 0)
    }
}

/// The pieces of `lens` elements that `flat` holds end to end (views where the device allows).
fn unpack<B: Backend>(flat: &Tensor<B, 1>, lens: &[usize]) -> Vec<Tensor<B, 1>> {
    if lens.len() == 1 {
        return vec![flat.clone()];
    }
    let mut offset = 0;
    lens.iter()
        .map(|&len| {
            let part = flat.clone().slice(offset..offset + len);
            offset += len;
            part
        })
        .collect()
}

/// `len` elements of `flat` from `offset` (all of it as it is where that is all).
fn piece<B: Backend>(flat: &Tensor<B, 1>, offset: usize, len: usize) -> Tensor<B, 1> {
    if offset == 0 && len == flat.shape().num_elements() {
        flat.clone()
    } else {
        flat.clone().slice(offset..offset + len)
    }
}

/// The lengths of `slots` (a bucket's parts, in order).
fn slot_lens<K>(slots: &[(K, usize)]) -> Vec<usize> {
    slots.iter().map(|(_, n)| *n).collect()
}

/// Gradients packed end to end: `slots` name them in order with their lengths.
struct GradBucket<B: Backend> {
    slots: Vec<(ParamId, usize)>,
    flat: Tensor<B, 1>,
}

/// Gradients of the trainable parameters, flattened, by parameter id. Taken one tensor per
/// parameter; the global norm packs them into buckets, which the clipping and AdamW then use.
pub struct FlatGrads<B: Backend> {
    loose: BTreeMap<ParamId, Tensor<B, 1>>,
    packed: Vec<GradBucket<B>>,
}

impl<B: Backend> Default for FlatGrads<B> {
    fn default() -> Self {
        Self {
            loose: BTreeMap::new(),
            packed: Vec::new(),
        }
    }
}

struct GradCollector<'a, AB: AutodiffBackend> {
    grads: &'a mut AB::Gradients,
    out: &'a mut BTreeMap<ParamId, Tensor<AB::InnerBackend, 1>>,
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
        let mut out = BTreeMap::new();
        module.visit(&mut GradCollector::<AB> {
            grads,
            out: &mut out,
        });
        Self {
            loose: out,
            packed: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.loose.len() + self.packed.iter().map(|b| b.slots.len()).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Each parameter's gradient, by id.
    pub fn tensors(&self) -> Vec<(ParamId, Tensor<B, 1>)> {
        let mut all: Vec<_> = self.loose.iter().map(|(id, g)| (*id, g.clone())).collect();
        for b in &self.packed {
            let ids = b.slots.iter().map(|(id, _)| *id);
            all.extend(ids.zip(unpack(&b.flat, &slot_lens(&b.slots))));
        }
        all.sort_by_key(|(id, _)| *id);
        all
    }

    /// One parameter's gradient.
    pub fn get(&self, id: &ParamId) -> Option<Tensor<B, 1>> {
        if let Some(g) = self.loose.get(id) {
            return Some(g.clone());
        }
        self.packed.iter().find_map(|b| {
            let at = b.slots.iter().position(|(i, _)| i == id)?;
            let offset: usize = b.slots[..at].iter().map(|(_, n)| n).sum();
            Some(piece(&b.flat, offset, b.slots[at].1))
        })
    }

    /// Adds another micro-batch's gradients, in f32: gradients of half-precision parameters
    /// (adapters kept in the base's dtype, see [`AdamW::keep_masters`]) arrive in that dtype.
    /// Two sets of the same parameters are packed and added bucket by bucket.
    pub fn accumulate(&mut self, mut other: FlatGrads<B>) {
        if self.is_empty() {
            *self = other;
            return;
        }
        let ids = |g: &FlatGrads<B>| -> Vec<ParamId> {
            let mut ids: Vec<_> = g.loose.keys().copied().collect();
            ids.extend(
                g.packed
                    .iter()
                    .flat_map(|b| b.slots.iter().map(|(id, _)| *id)),
            );
            ids.sort();
            ids
        };
        if ids(self) == ids(&other) {
            self.pack();
            other.pack();
        }
        let same_buckets = self.loose.is_empty()
            && other.loose.is_empty()
            && self.packed.len() == other.packed.len()
            && self
                .packed
                .iter()
                .zip(&other.packed)
                .all(|(a, b)| a.slots == b.slots);
        if same_buckets {
            for (a, b) in self.packed.iter_mut().zip(other.packed) {
                a.flat = a.flat.clone() + b.flat;
            }
            return;
        }
        self.unpack();
        other.unpack();
        for (id, g) in other.loose {
            let sum = match self.loose.remove(&id) {
                Some(acc) => in_dtype(acc, DType::F32) + in_dtype(g, DType::F32),
                None => g,
            };
            self.loose.insert(id, sum);
        }
    }

    /// Every bucket back to one tensor per parameter.
    fn unpack(&mut self) {
        for b in std::mem::take(&mut self.packed) {
            let lens = slot_lens(&b.slots);
            let ids = b.slots.into_iter().map(|(id, _)| id);
            self.loose.extend(ids.zip(unpack(&b.flat, &lens)));
        }
    }

    /// The gradients in buckets ([`plan_buckets`], in parameter id order), each in f32 (a
    /// bucket of half-precision gradients is cast once): the norm, the clipping and AdamW then
    /// compute in f32 whatever the parameters' dtype.
    fn pack(&mut self) {
        if self.loose.is_empty() {
            return;
        }
        self.unpack();
        let loose: Vec<_> = std::mem::take(&mut self.loose).into_iter().collect();
        let items: Vec<_> = loose
            .iter()
            .map(|(_, g)| (g.shape().num_elements(), g.dtype()))
            .collect();
        let mut loose: Vec<_> = loose.into_iter().map(Some).collect();
        for group in plan_buckets(&items) {
            let mut slots = Vec::with_capacity(group.len());
            let mut parts = Vec::with_capacity(group.len());
            for i in group {
                let (id, g) = loose[i].take().expect("each gradient in one bucket");
                slots.push((id, items[i].0));
                parts.push(g);
            }
            self.packed.push(GradBucket {
                slots,
                flat: in_dtype(pack(parts), DType::F32),
            });
        }
    }

    /// The L2 norm of all gradients together.
    pub fn global_norm(&mut self) -> f64 {
        self.pack();
        let mut total: Option<Tensor<B, 1>> = None;
        for b in &self.packed {
            let s = b.flat.clone().powi_scalar(2).sum();
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
            for b in &mut self.packed {
                b.flat = b.flat.clone() * coef;
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

/// The AdamW state of parameters updated together: their paths and lengths in order, the step
/// count they share, their moments end to end, and, where the module holds them in half
/// precision, their f32 values end to end.
#[derive(Debug, Clone)]
struct Moments<B: Backend> {
    step: u64,
    slots: Vec<(String, usize)>,
    exp_avg: Tensor<B, 1>,
    exp_avg_sq: Tensor<B, 1>,
    master: Option<Master<B>>,
}

/// The f32 values of parameters that the module holds rounded to half precision, and the ids
/// of the parameters they were given to (in slot order): a module whose parameter at a path
/// has another id (loaded afresh) is not the one these values belong to.
#[derive(Debug, Clone)]
struct Master<B: Backend> {
    ids: Vec<ParamId>,
    value: Tensor<B, 1>,
}

/// `torch.optim.AdamW` (no amsgrad), with its state by parameter path, updating the parameters
/// in buckets (see [`BUCKET_ELEMENTS`]), in f32.
#[derive(Debug, Clone)]
pub struct AdamW<B: Backend> {
    pub config: AdamWConfig,
    state: Vec<Moments<B>>,
    /// See [`AdamW::keep_masters`].
    working: Option<DType>,
}

/// A module's float parameters by id: path, flattened value and shape.
struct ParamCollector<'a, B: AutodiffBackend> {
    path: Vec<String>,
    wanted: &'a HashSet<ParamId>,
    out: HashMap<ParamId, (String, Tensor<B::InnerBackend, 1>)>,
}

impl<AB: AutodiffBackend> ModuleVisitor<AB> for ParamCollector<'_, AB> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
        if self.wanted.contains(&param.id) {
            let value = param.val().inner();
            let n = value.shape().num_elements();
            self.out
                .insert(param.id, (self.path.join("."), value.reshape([n])));
        }
    }
}

/// Replaces the parameters that have a new value.
struct ParamSetter<'a, AB: AutodiffBackend> {
    values: &'a mut HashMap<ParamId, Tensor<AB::InnerBackend, 1>>,
}

impl<AB: AutodiffBackend> ModuleMapper<AB> for ParamSetter<'_, AB> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<AB, D>>) -> Param<Tensor<AB, D>> {
        let Some(updated) = self.values.remove(&param.id) else {
            return param;
        };
        let (id, tensor, mapper) = param.consume();
        let require_grad = tensor.is_require_grad();
        let mut tensor = Tensor::<AB, D>::from_inner(updated.reshape(tensor.shape()));
        if require_grad {
            tensor = tensor.require_grad();
        }
        Param::from_mapped_value(id, tensor, mapper)
    }
}

impl<B: Backend> AdamW<B> {
    pub fn new(config: AdamWConfig) -> Self {
        Self {
            config,
            state: Vec::new(),
            working: None,
        }
    }

    /// Mixed precision's master weights: the parameters this optimizer updates are handed back
    /// to the module in `dtype` (the frozen base's half type, which a LoRA adapter's products
    /// compute in), and their f32 values stay here, bucket by bucket, for the next update. The
    /// forward then reads the adapters without casting them and their gradients come back
    /// without a cast: for SD 1.5's attention LoRA 256 casts each way per step, replaced by one
    /// cast of the updated bucket and one of the gradients' bucket. The numbers are those of f32
    /// adapters cast in the forward, to the bit (the same rounding, in another place).
    /// [`AdamW::masters_into`] gives the module its f32 values back, for saving. F32 (or no
    /// call): the module keeps each parameter's dtype (a half-precision parameter still has an
    /// f32 master).
    pub fn keep_masters(mut self, dtype: DType) -> Self {
        self.working = (dtype != DType::F32).then_some(dtype);
        self
    }

    /// `module` with the parameters this optimizer holds f32 values of set to those: what a
    /// checkpoint or an export should read (the module's own are rounded to half precision
    /// under [`AdamW::keep_masters`]). Other parameters are left as they are.
    pub fn masters_into<AB, M>(&self, module: M) -> M
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: Module<AB>,
    {
        let mut values = HashMap::new();
        for m in &self.state {
            if let Some(master) = &m.master {
                let parts = unpack(&master.value, &slot_lens(&m.slots));
                values.extend(master.ids.iter().copied().zip(parts));
            }
        }
        if values.is_empty() {
            return module;
        }
        module.map(&mut ParamSetter::<AB> {
            values: &mut values,
        })
    }

    /// The f32 values of the parameters `ids` at `slots` (in order), from where this optimizer
    /// keeps them: the whole master of a bucket of exactly these, else piece by piece, each
    /// from its master where that belongs to the same parameter, else from `module_values` (the
    /// module's own, cast).
    fn param_values(
        &self,
        slots: &[(String, usize)],
        ids: &[ParamId],
        module_values: Vec<Tensor<B, 1>>,
        index: &HashMap<String, (usize, usize, usize)>,
    ) -> Tensor<B, 1> {
        if let Some(master) = self
            .state
            .iter()
            .find(|m| m.slots == slots)
            .and_then(|m| m.master.as_ref())
            .filter(|master| master.ids == ids)
        {
            return master.value.clone();
        }
        let parts = slots
            .iter()
            .zip(ids)
            .zip(module_values)
            .map(|(((key, len), id), value)| {
                let from_master = index.get(key).and_then(|&(k, offset, n)| {
                    let m = &self.state[k];
                    let master = m.master.as_ref()?;
                    let at = m.slots.iter().position(|(p, _)| p == key)?;
                    (n == *len && master.ids[at] == *id).then(|| piece(&master.value, offset, n))
                });
                from_master.unwrap_or_else(|| in_dtype(value, DType::F32))
            })
            .collect();
        pack(parts)
    }

    /// Applies one update with learning rate `lr` to every parameter of `module` that has a
    /// gradient in `grads`.
    pub fn step<AB, M>(&mut self, lr: f64, module: M, mut grads: FlatGrads<B>) -> M
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: Module<AB>,
    {
        grads.pack();
        let wanted: HashSet<ParamId> = grads
            .packed
            .iter()
            .flat_map(|b| b.slots.iter().map(|(id, _)| *id))
            .collect();
        let mut collector = ParamCollector::<AB> {
            path: Vec::new(),
            wanted: &wanted,
            out: HashMap::new(),
        };
        module.visit(&mut collector);
        let mut params = collector.out;

        // Where each path's moments are: (bucket, offset, length).
        let mut index = HashMap::new();
        for (k, m) in self.state.iter().enumerate() {
            let mut offset = 0;
            for (key, len) in &m.slots {
                index.insert(key.clone(), (k, offset, *len));
                offset += len;
            }
        }
        // Moments of another length than the parameter's (a checkpoint of another model) are
        // not used: that parameter starts afresh.
        let prior_step = |key: &str, len: usize| match index.get(key) {
            Some(&(k, _, n)) if n == len => self.state[k].step,
            Some(_) => {
                tracing::warn!("AdamW state of `{key}` has another length: starting it afresh");
                0
            }
            None => 0,
        };

        let mut updated = HashMap::new();
        let mut fresh = Vec::new();
        for bucket in std::mem::take(&mut grads.packed) {
            // The parameters of the module (a gradient of another is left alone), grouped by
            // the number of updates they have had.
            let lens = slot_lens(&bucket.slots);
            let mut groups: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
            let mut known = Vec::with_capacity(lens.len());
            for (i, (id, len)) in bucket.slots.iter().enumerate() {
                if let Some((path, _)) = params.get(id) {
                    groups.entry(prior_step(path, *len)).or_default().push(i);
                    known.push(i);
                }
            }
            let whole = groups.len() == 1 && known.len() == lens.len();
            let pieces = if whole {
                Vec::new()
            } else {
                unpack(&bucket.flat, &lens)
            };
            let mut pieces: Vec<_> = pieces.into_iter().map(Some).collect();
            for (step, members) in groups {
                let grad = if whole {
                    bucket.flat.clone()
                } else {
                    pack(
                        members
                            .iter()
                            .map(|&i| pieces[i].take().expect("each gradient once"))
                            .collect(),
                    )
                };
                let ids: Vec<ParamId> = members.iter().map(|&i| bucket.slots[i].0).collect();
                let slots: Vec<(String, usize)> = members
                    .iter()
                    .map(|&i| (params[&bucket.slots[i].0].0.clone(), lens[i]))
                    .collect();
                let values: Vec<_> = ids
                    .iter()
                    .map(|id| params.remove(id).expect("collected").1)
                    .collect();
                // The module's dtype for these (a bucket's gradients, and so its parameters,
                // share one), unless the module is to hold them in the working dtype.
                let dtype = self.working.unwrap_or(values[0].dtype());
                let param = self.param_values(&slots, &ids, values, &index);
                let prior = (step > 0).then(|| self.gather(&slots, &index));
                let (param, exp_avg, exp_avg_sq) = self.update(param, grad, prior, step + 1, lr);
                let member_lens = slot_lens(&slots);
                let (given, master) = if dtype == DType::F32 {
                    (unpack(&param, &member_lens), None)
                } else {
                    let given = unpack(&in_dtype(param.clone(), dtype), &member_lens);
                    let master = Master {
                        ids: ids.clone(),
                        value: param,
                    };
                    (given, Some(master))
                };
                updated.extend(ids.into_iter().zip(given));
                fresh.push(Moments {
                    step: step + 1,
                    slots,
                    exp_avg,
                    exp_avg_sq,
                    master,
                });
            }
        }

        // The moments of parameters without a gradient this time stay as they were.
        let done: HashSet<&str> = fresh
            .iter()
            .flat_map(|m| m.slots.iter().map(|(k, _)| k.as_str()))
            .collect();
        let mut kept = Vec::new();
        for m in &self.state {
            if m.slots.iter().all(|(k, _)| !done.contains(k.as_str())) {
                kept.push(m.clone());
                continue;
            }
            let lens = slot_lens(&m.slots);
            let avg = unpack(&m.exp_avg, &lens);
            let avg_sq = unpack(&m.exp_avg_sq, &lens);
            let masters: Vec<Option<Master<B>>> = match &m.master {
                Some(master) => master
                    .ids
                    .iter()
                    .zip(unpack(&master.value, &lens))
                    .map(|(id, value)| {
                        Some(Master {
                            ids: vec![*id],
                            value,
                        })
                    })
                    .collect(),
                None => vec![None; lens.len()],
            };
            for (((slot, a), s), master) in m.slots.iter().zip(avg).zip(avg_sq).zip(masters) {
                if !done.contains(slot.0.as_str()) {
                    kept.push(Moments {
                        step: m.step,
                        slots: vec![slot.clone()],
                        exp_avg: a,
                        exp_avg_sq: s,
                        master,
                    });
                }
            }
        }
        fresh.extend(kept);
        self.state = fresh;

        module.map(&mut ParamSetter::<AB> {
            values: &mut updated,
        })
    }

    /// The moments of `slots` end to end: a bucket's own tensors when it holds exactly these,
    /// else gathered piece by piece.
    fn gather(
        &self,
        slots: &[(String, usize)],
        index: &HashMap<String, (usize, usize, usize)>,
    ) -> (Tensor<B, 1>, Tensor<B, 1>) {
        if let Some(m) = self.state.iter().find(|m| m.slots == slots) {
            return (m.exp_avg.clone(), m.exp_avg_sq.clone());
        }
        let (mut avg, mut avg_sq) = (Vec::new(), Vec::new());
        for (key, _) in slots {
            let (k, offset, len) = index[key];
            let m = &self.state[k];
            avg.push(piece(&m.exp_avg, offset, len));
            avg_sq.push(piece(&m.exp_avg_sq, offset, len));
        }
        (pack(avg), pack(avg_sq))
    }

    /// `param ← param·(1 − lr·wd) − lr/bc1 · m / (sqrt(v)/sqrt(bc2) + eps)`, as PyTorch orders
    /// it, over one bucket; `prior` is its moments before this update (none at the first).
    /// Returns the parameters and the new moments.
    fn update(
        &self,
        param: Tensor<B, 1>,
        grad: Tensor<B, 1>,
        prior: Option<(Tensor<B, 1>, Tensor<B, 1>)>,
        step: u64,
        lr: f64,
    ) -> (Tensor<B, 1>, Tensor<B, 1>, Tensor<B, 1>) {
        let c = self.config;
        let (exp_avg, exp_avg_sq) = match prior {
            Some((m, v)) => (
                m * c.beta1 + grad.clone() * (1.0 - c.beta1),
                v * c.beta2 + grad.clone() * grad * (1.0 - c.beta2),
            ),
            None => (
                grad.clone() * (1.0 - c.beta1),
                grad.clone() * grad * (1.0 - c.beta2),
            ),
        };
        let param = if c.weight_decay != 0.0 {
            param * (1.0 - lr * c.weight_decay)
        } else {
            param
        };
        let bc1 = 1.0 - c.beta1.powi(step as i32);
        let bc2 = 1.0 - c.beta2.powi(step as i32);
        let denom = exp_avg_sq.clone().sqrt() / bc2.sqrt() + c.eps;
        let updated = param - exp_avg.clone() / denom * (lr / bc1);
        (updated, exp_avg, exp_avg_sq)
    }

    /// The number of parameters with state.
    pub fn len(&self) -> usize {
        self.state.iter().map(|m| m.slots.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The state as tensors `exp_avg.<path>` and `exp_avg_sq.<path>` plus the per-parameter
    /// step counts (metadata `steps`, JSON). Not the masters: a checkpoint's weights are those
    /// values ([`AdamW::masters_into`]), and a restored optimizer takes them from the network
    /// it is next given.
    pub fn to_tensors(&self) -> Result<TensorFile> {
        let mut file = TensorFile::default();
        let mut steps = BTreeMap::new();
        for m in &self.state {
            for (name, t) in [("exp_avg", &m.exp_avg), ("exp_avg_sq", &m.exp_avg_sq)] {
                let values = t
                    .clone()
                    .into_data()
                    .convert::<f32>()
                    .to_vec::<f32>()
                    .map_err(|e| TrainError::Invalid(format!("reading {name}: {e:?}")))?;
                let mut offset = 0;
                for (key, len) in &m.slots {
                    let part = values[offset..offset + len].to_vec();
                    offset += len;
                    file.insert(format!("{name}.{key}"), vec![*len], part);
                }
            }
            for (key, _) in &m.slots {
                steps.insert(key.clone(), m.step);
            }
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
            let (exp_avg, exp_avg_sq) = (get("exp_avg")?, get("exp_avg_sq")?);
            let len = exp_avg.shape().num_elements();
            if exp_avg_sq.shape().num_elements() != len {
                return Err(TrainError::io(
                    path,
                    format!("`exp_avg.{key}` and `exp_avg_sq.{key}` differ in length"),
                ));
            }
            self.state.push(Moments {
                step,
                slots: vec![(key, len)],
                exp_avg,
                exp_avg_sq,
                master: None,
            });
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_keep_order_split_at_the_limit_and_leave_large_tensors_alone() {
        let f = DType::F32;
        let a = ALONE_ELEMENTS - 1;
        assert_eq!(BUCKET_ELEMENTS, 4 * ALONE_ELEMENTS);
        let items = [
            (10, f),
            (ALONE_ELEMENTS, f),
            (a, f),
            (5, DType::F16),
            (a, f),
            (a, f),
            (a, f),
            (1, f),
        ];
        // 10 + 3a fit in one f32 bucket, a fourth `a` does not and opens the next; the f16
        // tensor is apart, the large one alone.
        assert_eq!(
            plan_buckets(&items),
            vec![vec![1], vec![0, 2, 4, 5], vec![3], vec![6, 7]]
        );
    }
}
