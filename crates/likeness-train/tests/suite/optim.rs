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
