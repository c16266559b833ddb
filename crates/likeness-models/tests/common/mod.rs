//! Shared helpers of the parity tests: fixture paths, reading expected tensors, relative error.
#![allow(dead_code)]

use std::path::PathBuf;

use burn::prelude::*;
use likeness_models::weights::{Init, WeightStore};

pub type B = burn::backend::Flex;

pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/data"
    ))
    .join(rel)
}

/// Tensors of an `io.safetensors` file.
pub struct Io(WeightStore);

impl Io {
    pub fn open(rel: &str) -> Self {
        Io(WeightStore::open(&[fixture(rel)]).expect("fixture io file"))
    }

    pub fn has(&self, key: &str) -> bool {
        self.0.shape(key).is_some()
    }

    pub fn shape(&self, key: &str) -> Vec<usize> {
        self.0
            .shape(key)
            .unwrap_or_else(|| panic!("fixture has no `{key}`"))
    }

    pub fn values(&self, key: &str) -> Vec<f32> {
        let s = self.shape(key);
        self.0
            .load_f32(key, &s, Init::Zeros)
            .expect("fixture tensor")
    }

    pub fn tensor<const D: usize>(&self, key: &str) -> Tensor<B, D> {
        let s = self.shape(key);
        let dims: [usize; D] = s.clone().try_into().expect("rank");
        Tensor::from_data(TensorData::new(self.values(key), dims), &Default::default())
    }
}

/// max |a − b| / max |b|.
pub fn rel_err(actual: &[f32], expected: &[f32]) -> f32 {
    assert_eq!(actual.len(), expected.len(), "length mismatch");
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    let diff = actual
        .iter()
        .zip(expected)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    diff / scale
}

/// A tensor's values as f32, on any backend.
pub fn values<A: Backend, const D: usize>(t: Tensor<A, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("f32 data")
}

/// Whether the wgpu tests are to be skipped (`LIKENESS_SKIP_WGPU` set); says so when they are.
pub fn skip_wgpu() -> bool {
    let skip = std::env::var_os("LIKENESS_SKIP_WGPU").is_some();
    if skip {
        eprintln!("LIKENESS_SKIP_WGPU set: skipping the wgpu kernel test");
    }
    // The app's kernel cache settings before the first kernel: Burn's tuning results then go to
    // `$LIKENESS_KERNEL_CACHE` (CI: beside its target folder) and are kept between runs, instead
    // of CubeCL's default, a `target` folder beside this crate's manifest — new in every clean
    // clone, so every CI run tuned the tests' matmuls on lavapipe again (minutes).
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    likeness_models::device::kernel_cache::configure();
    skip
}

/// Reproducible values (`offset + scale·N(0, 1)`) as plain numbers, so that two backends get the
/// very same inputs.
pub fn numbers(len: usize, seed: u64, offset: f32, scale: f32) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..len)
        .map(|_| {
            // Box–Muller from two uniforms.
            let (u, v): (f32, f32) = (rng.random::<f32>().max(1e-7), rng.random());
            offset + scale * (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
        })
        .collect()
}

/// `values` as a tensor of `shape` on backend `A`'s default device.
pub fn tensor<A: Backend, const D: usize>(values: &[f32], shape: [usize; D]) -> Tensor<A, D> {
    Tensor::from_data(
        burn::tensor::TensorData::new(values.to_vec(), shape),
        &Default::default(),
    )
}

/// Asserts a relative error ≤ 1e-4 and prints it.
pub fn assert_close(what: &str, actual: &[f32], expected: &[f32]) {
    let e = rel_err(actual, expected);
    println!("{what}: relative error {e:.3e}");
    assert!(e <= 1e-4, "{what}: relative error {e:.3e} > 1e-4");
}

/// A convolution case: input `[n, c_in, h, w]`, output channels, kernel, stride, padding, and
/// whether the weight takes a gradient (a full fine-tune) or not (LoRA: frozen convolutions).
pub type ConvCase = ([usize; 4], usize, usize, usize, usize, bool);

/// Output and the gradients of x, bias and (where it trains) the weight of a biased convolution —
/// Likeness' op (`ours`) or Burn's `conv2d` — under an upstream gradient through `tanh` (so it is
/// not the convolution's own output). Panics if a trained weight gets no gradient.
pub fn conv_grads<A: burn::tensor::backend::AutodiffBackend>(
    case: ConvCase,
    seed: u64,
    ours: bool,
) -> Vec<Vec<f32>> {
    conv_grads_in::<A>(case, seed, ours, burn::tensor::DType::F32)
}

/// [`conv_grads`] with inputs, weight and upstream gradient in `dtype` (the values read back as
/// f32).
pub fn conv_grads_in<A: burn::tensor::backend::AutodiffBackend>(
    case: ConvCase,
    seed: u64,
    ours: bool,
    dtype: burn::tensor::DType,
) -> Vec<Vec<f32>> {
    let (xs, c_out, k, stride, padding, weight_trains) = case;
    let ws = [c_out, xs[1], k, k];
    use likeness_models::nn::in_dtype;
    let t = |v: Vec<f32>, shape| in_dtype(tensor::<A, 4>(&v, shape), dtype);
    let x = t(numbers(xs.iter().product(), seed, 0.0, 1.0), xs).require_grad();
    let mut w = t(numbers(ws.iter().product(), seed + 1, 0.0, 0.3), ws);
    if weight_trains {
        w = w.require_grad();
    }
    let b = in_dtype(
        tensor::<A, 1>(&numbers(c_out, seed + 2, 0.0, 0.5), [c_out]),
        dtype,
    )
    .require_grad();
    let opts = burn::tensor::ops::ConvOptions::new([stride; 2], [padding; 2], [1, 1], 1);
    let y = if ours {
        likeness_models::kernels::conv::conv2d(x.clone(), w.clone(), Some(b.clone()), opts)
    } else {
        burn::tensor::module::conv2d(x.clone(), w.clone(), Some(b.clone()), opts)
    };
    let up = t(
        numbers(y.dims().iter().product(), seed + 3, 0.0, 1.0),
        y.dims(),
    );
    let g = (y.clone().tanh() * up).sum().backward();
    let mut out = vec![
        values(y.inner()),
        values(x.grad(&g).expect("dx")),
        values(b.grad(&g).expect("dbias")),
    ];
    match w.grad(&g) {
        Some(dw) => out.push(values(dw)),
        None => assert!(
            !weight_trains,
            "a weight that asked for a gradient got none"
        ),
    }
    out
}

/// Attention in Burn's tensor ops, the causal mask bottom-right aligned (query `i` sees keys
/// `j ≤ i + n_k − n_q`). Returns the output and the rows' log-sum-exp of the scaled scores.
pub fn attention_reference<A: Backend>(
    q: Tensor<A, 4>,
    k: Tensor<A, 4>,
    v: Tensor<A, 4>,
    causal: bool,
) -> (Tensor<A, 4>, Tensor<A, 3>) {
    let [b, h, n_q, d] = q.dims();
    let n_k = k.dims()[2];
    let mut scores = q.matmul(k.swap_dims(2, 3)) * (1.0 / (d as f64).sqrt());
    if causal {
        let device = scores.device();
        let rows = Tensor::<A, 1, Int>::arange(0..n_q as i64, &device)
            .reshape([n_q, 1])
            .add_scalar(n_k as i64 - n_q as i64);
        let cols = Tensor::<A, 1, Int>::arange(0..n_k as i64, &device).reshape([1, n_k]);
        let mask = rows.lower(cols).reshape([1, 1, n_q, n_k]);
        scores = scores.mask_fill(mask.expand([b, h, n_q, n_k]), f32::NEG_INFINITY);
    }
    let max = scores.clone().max_dim(3);
    let lse = (scores.clone() - max.clone()).exp().sum_dim(3).log() + max;
    (
        burn::tensor::activation::softmax(scores, 3).matmul(v),
        lse.reshape([b, h, n_q]),
    )
}
