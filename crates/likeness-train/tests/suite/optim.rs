//! AdamW, global-norm clipping and the learning-rate schedules against PyTorch / diffusers
//! (reference numbers from torch 2.9.1 `torch.optim.AdamW`, `clip_grad_norm_` and
//! diffusers 0.35.2 `get_scheduler`).

use burn::backend::Autodiff;
use burn::module::{Module, Param};
use burn::prelude::*;
use likeness_models::device::CpuBackend;
use likeness_train::optim::{AdamW, AdamWConfig, FlatGrads, LrPlan, LrSchedule};

type A = Autodiff<CpuBackend>;

#[derive(Module, Debug)]
struct Pair<B: Backend> {
    w: Param<Tensor<B, 1>>,
    v: Param<Tensor<B, 2>>,
}

fn values<const D: usize>(t: Tensor<A, D>) -> Vec<f32> {
    t.inner().into_data().to_vec::<f32>().unwrap()
}

fn close(a: &[f32], b: &[f32], tol: f32) {
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= tol, "{a:?} vs {b:?}");
    }
}

#[test]
fn adamw_with_clipping_matches_pytorch() {
    let d = Default::default();
    let mut m = Pair::<A> {
        w: Param::from_tensor(Tensor::from_floats([1.0, -2.0, 3.0, 0.5], &d)),
        v: Param::from_tensor(Tensor::from_floats([[0.3, -0.1], [0.2, 0.4]], &d)),
    };
    let mut optim = AdamW::<CpuBackend>::new(AdamWConfig::default());
    let mut norms = Vec::new();
    for k in 0..3 {
        let loss = m.w.val().powi_scalar(2).sum() * (k + 1) as f64 + m.v.val().powi_scalar(3).sum();
        let mut grads = FlatGrads::from_loss(loss, &m);
        norms.push(grads.clip_global_norm(1.0) as f32);
        m = optim.step::<A, _>(0.1, m, grads);
    }
    close(&norms, &[7.570_904_7, 14.405_107, 20.577_919], 1e-4);
    close(
        &values(m.w.val()),
        &[0.698_061_2, -1.694_344, 2.691_183_6, 0.202_361],
        1e-5,
    );
    close(
        &values(m.v.val()),
        &[0.050_335_7, -0.390_627_4, -0.035_571_9, 0.141_719_4],
        1e-5,
    );

    // The state survives a save/load into a fresh optimizer.
    let file = optim.to_tensors().unwrap();
    let mut restored = AdamW::<CpuBackend>::new(AdamWConfig::default());
    restored
        .load_tensors(&file, std::path::Path::new("mem"), &d)
        .unwrap();
    assert_eq!(restored.to_tensors().unwrap(), file);
}

#[test]
fn schedules_match_diffusers() {
    let cosine = LrPlan {
        lr: 1.0,
        schedule: LrSchedule::Cosine,
        warmup_steps: 3,
        total_steps: 10,
    };
    let got: Vec<f32> = (0..10).map(|k| cosine.at(k) as f32).collect();
    close(
        &got,
        &[
            0.0,
            0.333_333_3,
            0.666_666_7,
            1.0,
            0.950_484_4,
            0.811_744_9,
            0.611_260_5,
            0.388_739_5,
            0.188_255_1,
            0.049_515_6,
        ],
        1e-6,
    );
    let constant = LrPlan {
        schedule: LrSchedule::Constant,
        ..cosine
    };
    let got: Vec<f32> = (0..5).map(|k| constant.at(k) as f32).collect();
    close(&got, &[0.0, 0.333_333_3, 0.666_666_7, 1.0, 1.0], 1e-6);
}

/// Parameters of several sizes: small ones that AdamW packs into one bucket and one large
/// enough (2^20 values) to be a bucket of its own.
#[derive(Module, Debug)]
struct Many<B: Backend> {
    small: Vec<Param<Tensor<B, 2>>>,
    large: Param<Tensor<B, 1>>,
}

/// AdamW and global-norm clipping on the host, one parameter at a time, as PyTorch writes them.
struct HostAdamW {
    w: Vec<Vec<f32>>,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    steps: Vec<i32>,
}

impl HostAdamW {
    /// One step on the parameters in `active`, whose gradients are `k[i] · w[i]`.
    fn step(&mut self, k: &[f32], active: &[usize], lr: f32, max_norm: f32) -> f32 {
        let c = AdamWConfig::default();
        let (b1, b2, eps, wd) = (
            c.beta1 as f32,
            c.beta2 as f32,
            c.eps as f32,
            c.weight_decay as f32,
        );
        let mut grads: Vec<Vec<f32>> = active
            .iter()
            .map(|&i| self.w[i].iter().map(|x| k[i] * x).collect())
            .collect();
        let norm = grads
            .iter()
            .flatten()
            .map(|g| (*g as f64).powi(2))
            .sum::<f64>()
            .sqrt() as f32;
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            grads.iter_mut().flatten().for_each(|g| *g *= coef);
        }
        for (&i, g) in active.iter().zip(grads) {
            self.steps[i] += 1;
            let bc1 = 1.0 - b1.powi(self.steps[i]);
            let bc2 = 1.0 - b2.powi(self.steps[i]);
            for (j, g) in g.into_iter().enumerate() {
                let m = &mut self.m[i][j];
                let v = &mut self.v[i][j];
                *m = *m * b1 + g * (1.0 - b1);
                *v = *v * b2 + g * g * (1.0 - b2);
                let w = self.w[i][j] * (1.0 - lr * wd);
                self.w[i][j] = w - *m / ((*v).sqrt() / bc2.sqrt() + eps) * (lr / bc1);
            }
        }
        norm
    }
}

#[test]
fn bucketed_adamw_matches_one_parameter_at_a_time() {
    let d = Default::default();
    let shapes = [[3, 5], [7, 2], [1, 1], [16, 40]];
    let large = 1 << 20;
    let init = |i: usize, n: usize| -> Vec<f32> {
        (0..n)
            .map(|j| ((i * 31 + j * 7) % 23) as f32 / 11.0 - 1.0)
            .collect()
    };
    let mut host = HostAdamW {
        w: shapes
            .iter()
            .map(|s| s[0] * s[1])
            .chain([large])
            .enumerate()
            .map(|(i, n)| init(i, n))
            .collect(),
        m: Vec::new(),
        v: Vec::new(),
        steps: vec![0; shapes.len() + 1],
    };
    host.m = host.w.iter().map(|w| vec![0.0; w.len()]).collect();
    host.v = host.m.clone();
    let mut model = Many::<A> {
        small: shapes
            .iter()
            .enumerate()
            .map(|(i, s)| {
                Param::from_tensor(Tensor::from_data(
                    TensorData::new(host.w[i].clone(), *s),
                    &d,
                ))
            })
            .collect(),
        large: Param::from_tensor(Tensor::from_data(
            TensorData::new(host.w[4].clone(), [large]),
            &d,
        )),
    };
    let k = [0.5f32, -1.5, 3.0, 0.25, 0.001];
    // Step 2 leaves out the second parameter, so at step 3 it has had one update fewer than the
    // rest: the bucket is split by step count. Step 4 runs on an optimizer restored from a
    // checkpoint (one parameter per bucket until it packs them again).
    let plan: [&[usize]; 5] = [
        &[0, 1, 2, 3, 4],
        &[0, 2, 3, 4],
        &[0, 1, 2, 3, 4],
        &[0, 1, 2, 3, 4],
        &[0, 1, 2, 3, 4],
    ];
    let mut optim = AdamW::<CpuBackend>::new(AdamWConfig::default());
    for (s, active) in plan.iter().enumerate() {
        if s == 3 {
            let file = optim.to_tensors().unwrap();
            assert_eq!(optim.len(), 5);
            optim = AdamW::<CpuBackend>::new(AdamWConfig::default());
            optim
                .load_tensors(&file, std::path::Path::new("mem"), &d)
                .unwrap();
            assert_eq!(optim.to_tensors().unwrap(), file);
        }
        let mut loss = Tensor::<A, 1>::zeros([1], &d);
        for &i in *active {
            let half_sq = if i < 4 {
                model.small[i].val().powi_scalar(2).sum()
            } else {
                model.large.val().powi_scalar(2).sum()
            };
            loss = loss + half_sq * (k[i] as f64 / 2.0);
        }
        let mut grads = FlatGrads::from_loss(loss, &model);
        assert_eq!(grads.len(), active.len());
        let norm = grads.clip_global_norm(1.0) as f32;
        let want_norm = host.step(&k, active, 0.05, 1.0);
        assert!(
            (norm - want_norm).abs() <= 1e-5 * want_norm,
            "step {s}: {norm} vs {want_norm}"
        );
        model = optim.step::<A, _>(0.05, model, grads);
        let got: Vec<Vec<f32>> = model
            .small
            .iter()
            .map(|p| values(p.val()))
            .chain([values(model.large.val())])
            .collect();
        for (i, (g, w)) in got.iter().zip(&host.w).enumerate() {
            let worst = g.iter().zip(w).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(worst <= 2e-6, "step {s}, parameter {i}: off by {worst}");
        }
    }
    // The restored optimizer packed its state again: a step count per parameter, all five.
    let file = optim.to_tensors().unwrap();
    let steps: std::collections::BTreeMap<String, u64> =
        serde_json::from_str(&file.metadata["steps"]).unwrap();
    let behind: Vec<_> = steps.iter().filter(|(_, s)| **s == 4).collect();
    assert_eq!(steps.len(), 5, "{steps:?}");
    assert!(steps.values().all(|s| *s == 4 || *s == 5), "{steps:?}");
    assert!(behind.len() == 1 && behind[0].0.ends_with('1'), "{steps:?}");
}

/// Two f16 linears with f32 LoRA adapters (mixed precision's layout).
#[derive(Module, Debug)]
struct HalfNet<B: Backend> {
    a: likeness_models::nn::Linear<B>,
    b: likeness_models::nn::Linear<B>,
}

/// Adapter values (down, up of `a`, then of `b`) in f32, on f16 base weights; new parameter
/// ids at every call (a network loaded anew).
fn half_net(adapters: &[Vec<f32>; 4]) -> HalfNet<A> {
    use burn::tensor::DType;
    use likeness_models::nn::{Linear, LoraAdapter};
    let d = Default::default();
    let tensor = |v: &[f32], dims: [usize; 2]| {
        Tensor::<A, 2>::from_data(TensorData::new(v.to_vec(), dims), &d)
    };
    let base = |o: usize, i: usize, seed: f32| {
        let v: Vec<f32> = (0..o * i)
            .map(|k| ((k as f32 * 0.37 + seed).sin()) * 0.8)
            .collect();
        Param::from_tensor(tensor(&v, [o, i]).cast(DType::F16)).set_require_grad(false)
    };
    let adapter = |down: &[f32], up: &[f32], o: usize, i: usize| LoraAdapter {
        down: Param::from_tensor(tensor(down, [2, i])),
        up: Param::from_tensor(tensor(up, [o, 2])),
        alpha: 3.0,
    };
    HalfNet {
        a: Linear {
            weight: base(4, 3, 0.1),
            bias: None,
            lora: Some(adapter(&adapters[0], &adapters[1], 4, 3)),
        },
        b: Linear {
            weight: base(2, 4, 0.7),
            bias: None,
            lora: Some(adapter(&adapters[2], &adapters[3], 2, 4)),
        },
    }
}

/// The adapters' values (f32) and dtypes, in [`half_net`]'s order.
fn adapter_values(net: &HalfNet<A>) -> ([Vec<f32>; 4], Vec<burn::tensor::DType>) {
    let (a, b) = (net.a.lora.as_ref().unwrap(), net.b.lora.as_ref().unwrap());
    let all = [&a.down, &a.up, &b.down, &b.up];
    let dtypes = all.iter().map(|p| p.val().dtype()).collect();
    let v = |p: &Param<Tensor<A, 2>>| {
        p.val()
            .inner()
            .cast(burn::tensor::DType::F32)
            .into_data()
            .to_vec::<f32>()
            .unwrap()
    };
    ([v(all[0]), v(all[1]), v(all[2]), v(all[3])], dtypes)
}

/// One step's gradients: two micro-batches accumulated; at step 2 only `a` is in the loss, so
/// `b`'s adapters get no gradient (their state splits, and the next step regroups by step count).
fn half_net_grads(net: &HalfNet<A>, step: usize) -> FlatGrads<CpuBackend> {
    let d = Default::default();
    let mut grads = FlatGrads::default();
    for micro in 0..2 {
        let x: Vec<f32> = (0..15)
            .map(|k| ((k + 7 * micro + step) as f32 * 0.61).cos())
            .collect();
        let x = Tensor::<A, 2>::from_data(TensorData::new(x, [5, 3]), &d);
        let h = net.a.forward(x);
        let y = if step == 2 { h } else { net.b.forward(h) };
        let loss = y.cast(burn::tensor::DType::F32).powi_scalar(2).sum() * 0.5;
        grads.accumulate(FlatGrads::from_loss(loss, net));
    }
    grads
}

/// Master weights (`keep_masters`): the network holds its adapters in f16 between steps, the
/// optimizer their f32 values; every update equals the one of f32 adapters cast in the forward,
/// to the bit — with accumulation, clipping, a parameter that skips a step, and a resume from
/// the saved state and the f32 values `masters_into` gives.
#[test]
fn master_weights_train_half_adapters_exactly_as_f32_ones_cast_in_the_forward() {
    use burn::tensor::DType;
    let start: [Vec<f32>; 4] = [
        (0..6).map(|k| (k as f32 * 0.3).sin() * 0.5).collect(),
        (0..8).map(|k| (k as f32 * 0.7).cos() * 0.2).collect(),
        (0..8).map(|k| (k as f32 * 0.9).sin() * 0.4).collect(),
        (0..4).map(|k| (k as f32 * 1.3).cos() * 0.3).collect(),
    ];
    let steps = 6;
    // Both runs on the same parameters (ids): the buckets follow the ids' order, and so does
    // the norm's sum.
    let net0 = half_net(&start);
    // Reference: f32 adapters in the network.
    let mut reference = net0.clone();
    let mut optim = AdamW::<CpuBackend>::new(AdamWConfig::default());
    let mut expected = Vec::new();
    for step in 0..steps {
        let mut grads = half_net_grads(&reference, step);
        let norm = grads.clip_global_norm(0.5);
        reference = optim.step::<A, _>(0.05, reference, grads);
        let (values, dtypes) = adapter_values(&reference);
        assert!(dtypes.iter().all(|d| *d == DType::F32));
        expected.push((norm, values));
    }
    assert!(
        expected[0].1 != expected[steps - 1].1,
        "the adapters trained"
    );

    let mut net = net0;
    let mut optim = AdamW::<CpuBackend>::new(AdamWConfig::default()).keep_masters(DType::F16);
    for (step, (norm, values)) in expected.iter().enumerate() {
        if step == 4 {
            // Saved and resumed: the state file into a fresh optimizer, which takes the f32
            // values from the network (as a checkpoint's, written through `masters_into`).
            let file = optim.to_tensors().unwrap();
            net = optim.masters_into::<A, _>(net);
            optim = AdamW::<CpuBackend>::new(AdamWConfig::default()).keep_masters(DType::F16);
            optim
                .load_tensors(&file, std::path::Path::new("mem"), &Default::default())
                .unwrap();
        }
        let mut grads = half_net_grads(&net, step);
        assert_eq!(
            grads.clip_global_norm(0.5).to_bits(),
            norm.to_bits(),
            "step {step}: norm"
        );
        net = optim.step::<A, _>(0.05, net, grads);
        let (held, dtypes) = adapter_values(&net);
        assert!(
            dtypes.iter().all(|d| *d == DType::F16),
            "step {step}: {dtypes:?}"
        );
        let (masters, dtypes) = adapter_values(&optim.masters_into::<A, _>(net.clone()));
        assert!(
            dtypes.iter().all(|d| *d == DType::F32),
            "step {step}: {dtypes:?}"
        );
        assert_eq!(&masters, values, "step {step}: the f32 values");
        for (h, m) in held.iter().zip(&masters) {
            // The device's own rounding, as the cast in the forward would do it.
            let rounded = Tensor::<CpuBackend, 1>::from_floats(m.as_slice(), &Default::default())
                .cast(DType::F16)
                .cast(DType::F32)
                .into_data()
                .to_vec::<f32>()
                .unwrap();
            assert_eq!(h, &rounded, "step {step}: the network's f16 copy");
        }
    }
    // The masters are of this network's parameters: one loaded anew keeps its own values.
    let (other, _) = adapter_values(&optim.masters_into::<A, _>(half_net(&start)));
    assert_eq!(other, start);
}
