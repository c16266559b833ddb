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
