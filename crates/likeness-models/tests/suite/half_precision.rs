//! Half precision on a GPU: `dispatch` at f16 runs the task on the f32 backend with the
//! placement's precision f16, and a model put in it with `with_precision` computes in f16 and
//! answers in f32 — close to the f32 pipeline's pictures and not equal to them. Burn 0.21 fixes a
//! device's default float dtype at the first tensor created on it (the availability probe's,
//! f32), so the `Wgpu<f16>` / `Cuda<bf16>` backends half precision used to run on created their
//! weights in f32 and computed in f32 (docs/perf.md, session 14).

use crate::common;

use burn::module::{ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::DType;
use common::{B, fixture, rel_err, values};
use likeness_models::device::{BackendTask, DeviceChoice, Placement, Precision, dispatch};
use likeness_models::pipeline::{GenerateParams, SeededNoise};
use likeness_models::sd::{LoadOptions, StableDiffusion};

/// Relative error (max error over max value) f16 weights and activations leave on the tiny
/// pipeline's pictures: three sampler steps of a random UNet, then the VAE, amplify f16's
/// rounding (≈5e-4 a step). Measured: 2.0e-2 on lavapipe, 1.1e-2 with f16 weights on the CPU
/// (bf16 there: 6.9e-2), f32 on lavapipe against the CPU 2.9e-6.
const F16_TOLERANCE: f32 = 5e-2;

/// The tiny SD 1 pipeline loaded in f32 and cast to the placement's precision, as `generate`
/// with LoRA files does; with `sample`, three DDIM steps of it, decoded. The placement, the
/// UNet's weight dtype, and the picture's dtype and values if it ran.
struct Generate {
    sample: bool,
}

impl BackendTask for Generate {
    type Output = (Placement, DType, Option<(DType, Vec<f32>)>);

    fn run<A: Backend>(
        self,
        device: A::Device,
        placement: Placement,
    ) -> likeness_models::Result<Self::Output> {
        let dir = fixture("pipeline_sd1_eps");
        let model = StableDiffusion::<A>::load(&dir, &LoadOptions::default(), &device)?
            .with_precision(placement.precision);
        let weights = model.unet.conv_in.weight.val().dtype();
        if !self.sample {
            return Ok((placement, weights, None));
        }
        let size = model.native_size();
        let p = GenerateParams {
            prompt: "a photo of a dog".into(),
            steps: 3,
            width: size,
            height: size,
            ..Default::default()
        };
        let latents = model.sample(&p, None, &mut SeededNoise::new(0, 1), &mut |_, _| {})?;
        let picture = model.decode(latents);
        Ok((placement, weights, Some((picture.dtype(), values(picture)))))
    }
}

#[test]
fn f16_on_wgpu_computes_in_f16_and_answers_in_f32() {
    if common::skip_wgpu() {
        return;
    }
    let sample = Generate { sample: true };
    let (_, weights, full) = dispatch(DeviceChoice::Cpu, Precision::F32, sample).unwrap();
    let (_, full) = full.expect("sampled");
    assert_eq!(weights, DType::F32);
    let sample = Generate { sample: true };
    let (placement, weights, half) = dispatch(DeviceChoice::Wgpu, Precision::F16, sample).unwrap();
    let (answer, half) = half.expect("sampled");
    assert_eq!(placement.precision, Precision::F16, "lavapipe stores f16");
    assert_eq!(weights, DType::F16, "the weights are in f16");
    assert_eq!(answer, DType::F32, "the pictures come back in f32");
    let err = rel_err(&half, &full);
    println!("tiny pipeline, f16 on wgpu vs f32 on the CPU: rel err {err:.3e}");
    // Not equal (f16 did run) and within f16's rounding.
    assert!(err > 1e-6 && err <= F16_TOLERANCE, "rel err {err}");

    // wgpu has no bf16: asked for, it runs in f16 (the placement alone: running the pipeline
    // again on lavapipe cost CI time and showed nothing more).
    let placed = Generate { sample: false };
    let (placement, weights, _) = dispatch(DeviceChoice::Wgpu, Precision::Bf16, placed).unwrap();
    assert_eq!((placement.precision, weights), (Precision::F16, DType::F16));
}

#[test]
fn loading_in_half_rounds_the_f32_weights_to_nearest_even() {
    let dir = fixture("pipeline_sd1_eps");
    let device = Default::default();
    let load = |precision| {
        let opts = LoadOptions {
            precision,
            ..Default::default()
        };
        StableDiffusion::<B>::load(&dir, &opts, &device).unwrap()
    };
    // Every float parameter of the three networks: whether a GroupNorm or LayerNorm holds it,
    // its dtype and its values.
    struct Weights {
        within: Vec<String>,
        out: Vec<(bool, DType, Vec<f32>)>,
    }
    impl ModuleVisitor<B> for Weights {
        fn enter_module(&mut self, _: &str, container_type: &str) {
            self.within.push(container_type.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.within.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let t = param.val();
            let norm = matches!(
                self.within.last().map(String::as_str),
                Some("Struct:GroupNorm" | "Struct:LayerNorm")
            );
            self.out.push((norm, t.dtype(), values(t)));
        }
    }
    let weights = |m: &StableDiffusion<B>| {
        let mut w = Weights {
            within: Vec::new(),
            out: Vec::new(),
        };
        m.text_encoder.visit(&mut w);
        m.unet.visit(&mut w);
        m.vae.visit(&mut w);
        w.out
    };
    let half = weights(&load(Precision::Bf16));
    let full = weights(&load(Precision::F32));
    assert_eq!(half.len(), full.len());
    assert!(half.iter().any(|(norm, _, _)| *norm) && half.iter().any(|(norm, _, _)| !*norm));
    // bf16 by rounding to nearest, ties to even, as PyTorch's `.to(torch.bfloat16)` (Flex's
    // own cast truncates: 0x3f248001 becomes 0.640625 there, 0.64453125 here). The norms'
    // scales and shifts stay f32 (they compute in f32).
    for ((norm, dtype, h), (_, _, f)) in half.iter().zip(&full) {
        if *norm {
            assert_eq!((*dtype, h), (DType::F32, f), "a norm's parameter stays f32");
            continue;
        }
        assert_eq!(*dtype, DType::BF16);
        let want: Vec<f32> = f
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_f32())
            .collect();
        assert!(h == &want, "bf16 weights rounded to nearest even");
    }
}
