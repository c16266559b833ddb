//! The Diffusion-DPO loss equals the PyTorch reference (diffusers' DPO training script) on fixed
//! tensors, loss and gradients, at β = 5000 and β = 2.5 (fixture: tests/fixtures/make_dpo_fixtures.py).

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use likeness_models::weights::{Init, WeightStore};
use likeness_train::dpo_loss::{diffusion_dpo_loss, implicit_accuracy_and_margin, per_sample_mse};

type A = Autodiff<Flex>;

fn io() -> WeightStore {
    let p = std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/data/dpo/loss.safetensors"
    ));
    WeightStore::open(&[p]).unwrap()
}

fn tensor<const D: usize>(s: &WeightStore, k: &str) -> Tensor<A, D> {
    let shape = s.shape(k).unwrap();
    let v = s.load_f32(k, &shape, Init::Zeros).unwrap();
    let dims: [usize; D] = shape.try_into().unwrap();
    Tensor::from_data(TensorData::new(v, dims), &Default::default())
}

fn vals<const D: usize, B: Backend>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

fn rel(a: &[f32], b: &[f32]) -> f32 {
    let s = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / s
}

#[test]
fn loss_and_gradients_match_pytorch() {
    let s = io();
    for (name, beta) in [("5000", 5000.0), ("2_5", 2.5)] {
        let mw = tensor::<4>(&s, &format!("model_w_{name}")).require_grad();
        let ml = tensor::<4>(&s, &format!("model_l_{name}")).require_grad();
        let tw = tensor::<4>(&s, "target_w");
        let tl = tensor::<4>(&s, "target_l");
        let rw = tensor::<4>(&s, "ref_w");
        let rl = tensor::<4>(&s, "ref_l");
        let terms = diffusion_dpo_loss(
            per_sample_mse(mw.clone(), tw.clone()),
            per_sample_mse(ml.clone(), tl.clone()),
            per_sample_mse(rw, tw),
            per_sample_mse(rl, tl),
            beta,
        );
        let inside = vals(terms.inside.clone());
        let want_inside = vals(tensor::<1>(&s, &format!("inside_{name}")));
        // The inside term is a small difference of large numbers: compare with f32 headroom.
        let e_inside = rel(&inside, &want_inside);
        let loss = vals(terms.loss.clone());
        let e_loss = rel(&loss, &vals(tensor::<1>(&s, &format!("loss_{name}"))));
        let grads = terms.loss.backward();
        let gw = vals(mw.grad(&grads).unwrap());
        let gl = vals(ml.grad(&grads).unwrap());
        let e_gw = rel(&gw, &vals(tensor::<4>(&s, &format!("grad_w_{name}"))));
        let e_gl = rel(&gl, &vals(tensor::<4>(&s, &format!("grad_l_{name}"))));
        println!(
            "beta {beta}: inside {e_inside:.2e} loss {e_loss:.2e} grad_w {e_gw:.2e} grad_l {e_gl:.2e}"
        );
        assert!(e_loss <= 1e-4 && e_gw <= 1e-4 && e_gl <= 1e-4);
        assert!(e_inside <= 1e-3);
        let (acc, margin) = implicit_accuracy_and_margin(&inside);
        assert_eq!(acc, 1.0, "the fixture's model favours every winner");
        assert!(margin > 0.0);
    }
}

#[test]
fn gradient_lowers_the_winner_loss_relative_to_the_loser() {
    // One SGD step on the predictions themselves: the winner's error falls relative to the loser's.
    let s = io();
    let mut mw = tensor::<4>(&s, "model_w_5000").require_grad();
    let mut ml = tensor::<4>(&s, "model_l_5000").require_grad();
    let tw = tensor::<4>(&s, "target_w");
    let tl = tensor::<4>(&s, "target_l");
    let ref_w = per_sample_mse(tensor::<4>(&s, "ref_w"), tw.clone());
    let ref_l = per_sample_mse(tensor::<4>(&s, "ref_l"), tl.clone());
    let diff = |w: Tensor<A, 4>, l: Tensor<A, 4>| {
        let d = per_sample_mse(w, tw.clone()) - per_sample_mse(l, tl.clone());
        vals(d.mean())[0]
    };
    let before = diff(mw.clone(), ml.clone());
    let terms = diffusion_dpo_loss(
        per_sample_mse(mw.clone(), tw.clone()),
        per_sample_mse(ml.clone(), tl.clone()),
        ref_w,
        ref_l,
        5000.0,
    );
    let grads = terms.loss.backward();
    let lr = 1e-4;
    mw = (mw.clone().inner() - mw.grad(&grads).unwrap() * lr).pipe_back();
    ml = (ml.clone().inner() - ml.grad(&grads).unwrap() * lr).pipe_back();
    let after = diff(mw, ml);
    println!("L_w − L_l: {before:.6} → {after:.6}");
    assert!(after < before);
}

trait PipeBack {
    fn pipe_back(self) -> Tensor<A, 4>;
}
impl PipeBack for Tensor<Flex, 4> {
    fn pipe_back(self) -> Tensor<A, 4> {
        Tensor::from_inner(self).require_grad()
    }
}
