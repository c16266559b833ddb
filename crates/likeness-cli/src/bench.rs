//! `likeness bench`: timings at Stable Diffusion 1.5 shape with seeded random weights. The
//! companion `tests/bench/diffusers_ref.py` times the same work in diffusers/PyTorch.

use std::time::Instant;

use anyhow::Context;
use burn::prelude::*;
use clap::Args;
use likeness_models::device::{BackendTask, DeviceChoice, Placement, Precision, dispatch};
use likeness_models::pipeline::{GenerateParams, SeededNoise};
use likeness_models::schedulers::SchedulerKind;
use likeness_models::sd::StableDiffusion;
use likeness_models::single_file::Family;

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
    /// Picture size in pixels (latents are size/8).
    #[arg(long, default_value_t = 512)]
    pub size: usize,
    /// Steps of the timed generation.
    #[arg(long, default_value_t = 30)]
    pub steps: usize,
    /// Timed repetitions of the UNet forward (after one untimed warm-up).
    #[arg(long, default_value_t = 3)]
    pub iters: usize,
    /// Which parts: unet, generate, all (those two), ops (single layers at SD1.5's largest
    /// shapes, forward and forward + backward), matmuls (the feed-forward's matmul, forward and
    /// forward + backward, under each of Burn's matmul algorithms that `LIKENESS_MATMUL` names,
    /// with its largest error against Burn's default), convs (the 3×3 convolution likewise under
    /// each implicit-GEMM algorithm `LIKENESS_CONV_ALGORITHM` names), dpo-step (one DreamBooth-DPO
    /// optimizer step on one pair: model and reference UNet on winner and loser, backward,
    /// AdamW on rank-4 attention LoRA) or db-step (one DreamBooth LoRA step: text encoding,
    /// noise, UNet forward, MSE, backward, AdamW on rank-4 attention LoRA).
    #[arg(long, default_value = "all")]
    pub only: String,
    /// Pictures per db-step batch.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Recompute the UNet's layers in the db-step and dpo-step backward (gradient checkpointing).
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// After the timed UNet forwards, time one more layer by layer (device synchronised around
    /// every layer) and add a row per kind of layer; with db-step, one more training step by
    /// phase, by kind of layer in its forward and by Likeness' autodiff op in its backward.
    #[arg(long)]
    pub profile: bool,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

#[derive(Debug, serde::Serialize)]
struct Row {
    name: String,
    device: String,
    mean_ms: f64,
    min_ms: f64,
    runs: usize,
    /// The untimed first run (kernel compilation and autotuning included), where there is one.
    first_ms: Option<f64>,
    /// After the row: the process's peak resident memory (VmHWM) on CPU, the GPU memory pool's
    /// reserved bytes on a GPU.
    peak_mib: Option<f64>,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if ![
        "unet", "generate", "all", "ops", "matmuls", "convs", "dpo-step", "db-step",
    ]
    .contains(&args.only.as_str())
    {
        anyhow::bail!(
            "--only must be unet, generate, all, ops, matmuls, convs, dpo-step or db-step"
        );
    }
    if args.batch == 0 {
        anyhow::bail!("--batch must be at least 1");
    }
    // Training steps run as `likeness dreambooth` / `dpo` run them: bf16/f16 is mixed precision
    // on an f32 backend.
    let training = matches!(args.only.as_str(), "db-step" | "dpo-step");
    let (device, precision, mixed) = if training {
        let p = likeness_models::device::training_placement(args.device, args.precision)?;
        (p.device, Precision::F32, p.precision)
    } else {
        (args.device, args.precision, Precision::F32)
    };
    let rows = dispatch(
        device,
        precision,
        BenchTask {
            args: args.clone(),
            mixed,
        },
    )?;
    println!("| benchmark | device | mean ms | min ms | runs | first ms | peak MiB |");
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        let peak = r
            .peak_mib
            .map_or_else(|| "n/a".to_string(), |m| format!("{m:.0}"));
        println!(
            "| {} | {} | {:.1} | {:.1} | {} | {} | {peak} |",
            r.name,
            r.device,
            r.mean_ms,
            r.min_ms,
            r.runs,
            r.first_ms
                .map_or_else(|| "n/a".to_string(), |m| format!("{m:.0}"))
        );
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&rows)?;
        likeness_models::png_meta::write_atomic(path, text.as_bytes())
            .with_context(|| format!("{}", path.display()))?;
    }
    Ok(())
}

struct BenchTask {
    args: BenchArgs,
    /// Mixed precision of the training steps (base weights in this dtype, LoRA in f32).
    mixed: Precision,
}

fn time<B: Backend>(device: &B::Device, f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    let _ = B::sync(device);
    t.elapsed().as_secs_f64() * 1e3
}

impl BackendTask for BenchTask {
    type Output = Vec<Row>;

    fn run<B: Backend>(
        self,
        device: B::Device,
        placement: Placement,
    ) -> likeness_models::Result<Vec<Row>> {
        let a = self.args;
        let mut label = format!("{placement} ({})", B::name(&device));
        // Training steps: mixed precision asked for apart (`self.mixed`); the rest: the
        // placement's precision, which runs on the f32 backend with the weights cast likewise.
        let precision = match self.mixed {
            Precision::F32 => placement.precision,
            mixed => mixed,
        };
        if precision != Precision::F32 {
            label = format!("{label}, weights {precision:?}");
        }
        if a.only == "matmuls" || a.only == "convs" {
            // No model: the matmuls or convolutions alone.
            let mut rows = if a.only == "matmuls" {
                matmuls::<B>(&a, &label, &device, precision)
            } else {
                convs::<B>(&a, &label, &device, precision)
            };
            finish_rows(&mut rows, placement);
            return Ok(rows);
        }
        if a.only == "ops" {
            // No model either: single layers.
            let mut rows = ops::<B>(&a, &label, &device, precision)?;
            finish_rows(&mut rows, placement);
            return Ok(rows);
        }
        let model = StableDiffusion::<B>::random(Family::Sd1, 0, precision, &device)?;
        let lat = a.size / 8;
        let mut rows = Vec::new();
        if a.only == "dpo-step" {
            rows.push(dpo_step::<B>(&model, &a, &label, &device, placement)?);
        } else if a.only == "db-step" {
            rows.extend(db_step::<B, burn::backend::Autodiff<B>>(
                &model, &a, &label, &device, placement,
            )?);
        }
        if matches!(a.only.as_str(), "dpo-step" | "db-step") {
            finish_rows(&mut rows, placement);
            return Ok(rows);
        }
        if a.only != "generate" {
            let sample = Tensor::<B, 4>::random(
                [2, 4, lat, lat],
                burn::tensor::Distribution::Normal(0.0, 1.0),
                &device,
            );
            let t = Tensor::<B, 1>::from_floats([981.0, 981.0], &device);
            let ctx = Tensor::<B, 3>::random(
                [2, 77, 768],
                burn::tensor::Distribution::Normal(0.0, 1.0),
                &device,
            );
            let mut times = Vec::new();
            for i in 0..=a.iters {
                let ms = time::<B>(&device, || {
                    let out = model.unet.forward(sample.clone(), t.clone(), ctx.clone());
                    let _ = out.into_data();
                });
                times.push(ms);
                eprintln!(
                    "unet forward {i}: {ms:.1} ms{}",
                    if i == 0 { " (warm-up)" } else { "" }
                );
            }
            rows.push(row(
                &format!("UNet forward, batch 2, {}px", a.size),
                &label,
                &times,
            ));
            if a.profile {
                rows.extend(profile_unet(&model, sample, t, ctx, &label, &device));
            }
        }
        if a.only != "unet" {
            let p = GenerateParams {
                prompt: "a photo of a dog on the beach".into(),
                negative_prompt: String::new(),
                steps: a.steps,
                guidance: 7.5,
                scheduler: SchedulerKind::DpmPp2m,
                seed: 0,
                count: 1,
                width: a.size,
                height: a.size,
                clip_skip: 0,
            };
            // A two-step warm-up compiles what the timed run needs.
            let mut times = Vec::new();
            for steps in [2, a.steps] {
                let p = GenerateParams { steps, ..p.clone() };
                times.push(time::<B>(&device, || {
                    let mut noise = SeededNoise::new(0, 1);
                    if let Ok(l) =
                        model.sample(&p, None, &mut noise, &mut |s, n| eprintln!("step {s}/{n}"))
                    {
                        let _ = model.decode(l).into_data();
                    }
                }));
            }
            rows.push(row(
                &format!(
                    "generate {} steps (CFG, DPM++ 2M, decode), {}px",
                    a.steps, a.size
                ),
                &label,
                &times,
            ));
        }
        finish_rows(&mut rows, placement);
        Ok(rows)
    }
}

/// One UNet forward timed layer by layer: a row per kind of layer (its share of the
/// synchronised forward), "other" for what no instrumented layer covers (activations, adds,
/// concatenation, resampling, reshapes) and the synchronised total.
fn profile_unet<B: Backend>(
    model: &StableDiffusion<B>,
    sample: Tensor<B, 4>,
    t: Tensor<B, 1>,
    ctx: Tensor<B, 3>,
    label: &str,
    device: &B::Device,
) -> Vec<Row> {
    use likeness_models::profile;
    profile::take();
    profile::set_enabled(true);
    let total = time::<B>(device, || {
        let _ = model.unet.forward(sample, t, ctx).into_data();
    });
    profile::set_enabled(false);
    let ops = profile::take();
    let covered: f64 = ops.iter().map(|(_, o)| o.ms).sum();
    let mut rows: Vec<Row> = ops
        .iter()
        .map(|(name, o)| {
            row(
                &format!("profile: {name} ({} calls)", o.calls),
                label,
                &[o.ms],
            )
        })
        .collect();
    rows.push(row("profile: other", label, &[(total - covered).max(0.0)]));
    rows.push(row("profile: total (synchronised)", label, &[total]));
    rows
}

/// The layers that dominate SD1.5 at its largest latent (64×64 at 512 px), batch 2, one at a
/// time: forward, and forward + backward of the sum (gradients for the input and weights).
/// Results are summed on the device and only the sum read back, as the PyTorch side does, so
/// no row times a device-to-host copy.
fn ops<B: Backend>(
    a: &BenchArgs,
    label: &str,
    device: &B::Device,
    precision: Precision,
) -> likeness_models::Result<Vec<Row>> {
    use burn::backend::Autodiff;
    type AB<B> = Autodiff<B>;
    use likeness_models::nn::{GroupNorm, LayerNorm};
    use likeness_models::weights::{VarBuilder, WeightStore};

    let lat = a.size / 8;
    let normal = burn::tensor::Distribution::Normal(0.0, 1.0);
    let mut rows = Vec::new();
    let mut bench = |name: &str, f: &mut dyn FnMut()| {
        let mut times = Vec::new();
        for _ in 0..=a.iters.max(2) {
            times.push(time::<B>(device, &mut *f));
        }
        eprintln!(
            "{name}: {:.2} ms (first {:.0} ms)",
            times[1..].iter().sum::<f64>() / (times.len() - 1) as f64,
            times[0]
        );
        rows.push(row(name, label, &times));
    };
    // GroupNorm(32, 320) + SiLU, as every ResNet block at the first level does.
    let vb = VarBuilder::<AB<B>>::new(std::sync::Arc::new(WeightStore::random(0)), device);
    // Every input and weight in the asked precision (Likeness runs half precision on an f32
    // backend with the weights cast: `device::dispatch`).
    let dtype = precision.half_dtype().unwrap_or(burn::tensor::DType::F32);
    use likeness_models::nn::{cast_params, in_dtype};
    let norm = cast_params(GroupNorm::<AB<B>>::load(&vb, 32, 320, 1e-5)?, dtype);
    let x = in_dtype(
        Tensor::<AB<B>, 4>::random([2, 320, lat, lat], normal, device),
        dtype,
    );
    bench(
        &format!("op: GroupNorm(32, 320) + SiLU fwd [2, 320, {lat}, {lat}]"),
        &mut || {
            let _ = norm.forward_silu(x.clone()).sum().into_data();
        },
    );
    let xg = x.clone().require_grad();
    bench(
        &format!("op: GroupNorm(32, 320) + SiLU fwd+bwd [2, 320, {lat}, {lat}]"),
        &mut || {
            let g = norm.forward_silu(xg.clone()).sum().backward();
            let _ = xg.grad(&g).map(|t| t.sum().into_data());
        },
    );
    bench(
        &format!("op: GroupNorm(32, 320) + SiLU fwd+bwd, Burn's autodiff [2, 320, {lat}, {lat}]"),
        &mut || {
            let y = likeness_models::kernels::group_norm::reference(
                xg.clone().reshape([2, 320, lat * lat]),
                norm.weight.val(),
                norm.bias.val(),
                likeness_models::kernels::group_norm::GroupNormOptions {
                    groups: 32,
                    eps: 1e-5,
                    silu: true,
                },
            );
            let g = y.sum().backward();
            let _ = xg.grad(&g).map(|t| t.sum().into_data());
        },
    );
    // LayerNorm(320) over the first level's tokens, as each transformer block runs three
    // (Likeness' op: a one-group GroupNorm over `[tokens, 320, 1]`, the row kernels on a GPU).
    let seq = lat * lat;
    let ln = cast_params(LayerNorm::<AB<B>>::load(&vb, 320, 1e-5)?, dtype);
    let tokens = in_dtype(
        Tensor::<AB<B>, 3>::random([2, seq, 320], normal, device),
        dtype,
    );
    bench(
        &format!("op: LayerNorm(320) fwd [2, {seq}, 320]"),
        &mut || {
            let _ = ln.forward(tokens.clone()).sum().into_data();
        },
    );
    let tg = tokens.require_grad();
    bench(
        &format!("op: LayerNorm(320) fwd+bwd [2, {seq}, 320]"),
        &mut || {
            let g = ln.forward(tg.clone()).sum().backward();
            let _ = tg.grad(&g).map(|t| t.sum().into_data());
        },
    );
    bench(
        &format!("op: LayerNorm(320) fwd+bwd, Burn's autodiff [2, {seq}, 320]"),
        &mut || {
            let y = likeness_models::kernels::group_norm::reference(
                tg.clone().reshape([2 * seq, 320, 1]),
                ln.weight.val(),
                ln.bias.val(),
                likeness_models::kernels::group_norm::GroupNormOptions {
                    groups: 1,
                    eps: 1e-5,
                    silu: false,
                },
            );
            let g = y.sum().backward();
            let _ = tg.grad(&g).map(|t| t.sum().into_data());
        },
    );
    // Self-attention at the first level: 8 heads of 40 over 64·64 tokens.
    let q = in_dtype(
        Tensor::<AB<B>, 4>::random([2, 8, seq, 40], normal, device),
        dtype,
    );
    let (k, v) = (q.clone() * 0.5, q.clone() * 0.25);
    // Likeness' attention (its CubeCL flash kernels both ways on CUDA/wgpu; on the CPU the
    // backend's forward and a blocked backward) and, for comparison, Burn's attention as Autodiff
    // differentiates it (materialised, op by op).
    let attend = |q: Tensor<AB<B>, 4>, k: Tensor<AB<B>, 4>, v: Tensor<AB<B>, 4>| {
        likeness_models::kernels::attention::attention(q, k, v, false)
    };
    let attend_burn = |q: Tensor<AB<B>, 4>, k: Tensor<AB<B>, 4>, v: Tensor<AB<B>, 4>| {
        let opts = burn::tensor::ops::AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: false,
        };
        burn::tensor::module::attention(q, k, v, None, None, opts)
    };
    bench(&format!("op: attention fwd [2, 8, {seq}, 40]"), &mut || {
        let _ = attend(q.clone(), k.clone(), v.clone()).sum().into_data();
    });
    let qg = q.clone().require_grad();
    let (kg, vg) = (k.clone().require_grad(), v.clone().require_grad());
    bench(
        &format!("op: attention fwd+bwd [2, 8, {seq}, 40]"),
        &mut || {
            let g = attend(qg.clone(), kg.clone(), vg.clone()).sum().backward();
            let _ = qg.grad(&g).map(|t| t.sum().into_data());
        },
    );
    bench(
        &format!("op: attention fwd+bwd, Burn's autodiff [2, 8, {seq}, 40]"),
        &mut || {
            let g = attend_burn(qg.clone(), kg.clone(), vg.clone())
                .sum()
                .backward();
            let _ = qg.grad(&g).map(|t| t.sum().into_data());
        },
    );
    // SD 1.5's other attentions: the second and third levels (head dims 80 and 160) and the
    // first level's cross-attention to the 77 text tokens.
    for (n_q, n_k, d) in [
        (seq / 4, seq / 4, 80),
        (seq / 16, seq / 16, 160),
        (seq, 77, 40),
    ] {
        let input = |n: usize| {
            in_dtype(
                Tensor::<AB<B>, 4>::random([2, 8, n, d], normal, device),
                dtype,
            )
        };
        let (q, k, v) = (input(n_q), input(n_k), input(n_k));
        bench(
            &format!("op: attention fwd [2, 8, {n_q}×{n_k}, {d}]"),
            &mut || {
                let _ = attend(q.clone(), k.clone(), v.clone()).sum().into_data();
            },
        );
        let (qg, kg, vg) = (q.require_grad(), k.require_grad(), v.require_grad());
        bench(
            &format!("op: attention fwd+bwd [2, 8, {n_q}×{n_k}, {d}]"),
            &mut || {
                let g = attend(qg.clone(), kg.clone(), vg.clone()).sum().backward();
                let _ = qg.grad(&g).map(|t| t.sum().into_data());
            },
        );
    }
    // Burn's flash kernels as Likeness launches them for the attentions its own kernels leave
    // (tensor cores in half precision, in builds without autotune: `LIKENESS_FLASH`): their
    // output against attention written out in f32 on this device, at the sizes above.
    let flash_check = {
        use likeness_models::kernels::attention::{flash, flash_counts, flash_policy};
        let policy = flash_policy();
        let errors: Vec<String> = [
            (seq / 4, seq / 4, 80),
            (seq / 16, seq / 16, 160),
            (seq / 4, 77, 80),
        ]
        .into_iter()
        .map(|(n_q, n_k, d)| {
            let input =
                |n: usize| in_dtype(Tensor::<B, 4>::random([2, 8, n, d], normal, device), dtype);
            let (q, k, v) = (input(n_q), input(n_k), input(n_k));
            let err = flash(&q, &k, &v, false, policy).map(|got| {
                max_rel_err(
                    got.cast(burn::tensor::DType::F32),
                    attention_in_f32(q, k, v),
                )
            });
            let err = err.map_or_else(|| "not run".to_string(), |e| format!("{e:.1e}"));
            format!("{n_q}×{n_k}/{d} {err}")
        })
        .collect();
        let [cores, unit, refused, burn] = flash_counts();
        let errors = errors.join(", ");
        eprintln!("flash attention ({policy:?}) against f32 ops: max error / max value: {errors}");
        row(
            &format!(
                "check: flash attention ({policy:?}; runs so far: tensor cores {cores}, unit \
                 {unit}, refused {refused}, Burn's choice {burn}) vs attention in f32 ops, max \
                 err / max: {errors}"
            ),
            label,
            &[0.0, 0.0],
        )
    };
    // Likeness' attention kernels at SD 1.5's largest attention (tensor cores in half precision
    // where the device has them: `LIKENESS_ATTENTION_TENSOR_CORES`), forward and backward,
    // against attention written out in f32 ops differentiated by Burn, on this device (one batch
    // and two heads: the f32 reference writes the scores out).
    let attention_check = {
        use likeness_models::kernels::attention::{tensor_core_counts, tensor_cores};
        let f32_of = |t: Tensor<AB<B>, 4>| t.cast(burn::tensor::DType::F32);
        let input = || {
            in_dtype(
                Tensor::<AB<B>, 4>::random([1, 2, seq, 40], normal, device),
                dtype,
            )
            .detach()
            .require_grad()
        };
        let (q, k, v) = (input(), input(), input());
        let up = Tensor::<AB<B>, 4>::random([1, 2, seq, 40], normal, device);
        let before = tensor_core_counts();
        let got = attend(q.clone(), k.clone(), v.clone());
        let g = (f32_of(got.clone()) * up.clone()).sum().backward();
        let after = tensor_core_counts();
        let got_grads = [&q, &k, &v].map(|t| {
            t.grad(&g)
                .expect("a tracked input")
                .cast(burn::tensor::DType::F32)
        });
        // The same numbers in f32, leaves of their own.
        let leaf = |t: &Tensor<AB<B>, 4>| f32_of(t.clone()).detach().require_grad();
        let (qr, kr, vr) = (leaf(&q), leaf(&k), leaf(&v));
        let want = attention_in_f32(qr.clone(), kr.clone(), vr.clone());
        let gw = (want.clone() * up).sum().backward();
        let want_grads = [&qr, &kr, &vr].map(|t| t.grad(&gw).expect("a tracked input"));
        let mut errors = vec![format!(
            "out {:.1e}",
            max_rel_err(f32_of(got).inner(), want.inner())
        )];
        for (name, (a, b)) in ["dq", "dk", "dv"]
            .iter()
            .zip(got_grads.into_iter().zip(want_grads))
        {
            errors.push(format!("{name} {:.1e}", max_rel_err(a, b)));
        }
        let errors = errors.join(", ");
        let passes = [after[0] - before[0], after[1] - before[1]];
        eprintln!("attention kernels against f32 ops: max error / max value: {errors}");
        row(
            &format!(
                "check: attention kernels [1, 2, {seq}, 40] (tensor cores {:?}: passes fwd, bwd \
                 {passes:?}) vs attention in f32 ops, max err / max: {errors}",
                tensor_cores()
            ),
            label,
            &[0.0, 0.0],
        )
    };
    // Convolutions 320 → 320 at the first level as the models run them (Likeness' op:
    // `kernels::conv`, whose kernels follow `LIKENESS_CONV`): the resnets' 3×3, and a pointwise
    // one (SD 1's transformer projections: a batched matmul on the GEMM tiers).
    let w = in_dtype(
        Tensor::<AB<B>, 4>::random([320, 320, 3, 3], normal, device) * 0.02,
        dtype,
    );
    let opts = burn::tensor::ops::ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
    let w1 = in_dtype(
        Tensor::<AB<B>, 4>::random([320, 320, 1, 1], normal, device) * 0.05,
        dtype,
    );
    let opts1 = burn::tensor::ops::ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
    // Before timing them: the op's output and input gradient against Burn's own `conv2d` on this
    // device, 3×3 and 1×1 (the kernels' parity tests run on the CPU's Vulkan, which has no tensor
    // cores); max error over max value of y and dx.
    let check = {
        let rel = max_rel_err::<AB<B>, 4>;
        let errors = |w: &Tensor<AB<B>, 4>, opts: &burn::tensor::ops::ConvOptions<2>| {
            let xr = x.clone().require_grad();
            let y_op =
                likeness_models::kernels::conv::conv2d(xr.clone(), w.clone(), None, opts.clone());
            let dx_op = xr.grad(&y_op.clone().sum().backward()).expect("dx");
            let xr = x.clone().require_grad();
            let y_burn = burn::tensor::module::conv2d(xr.clone(), w.clone(), None, opts.clone());
            let dx_burn = xr.grad(&y_burn.clone().sum().backward()).expect("dx");
            (
                rel(y_op, y_burn),
                rel(Tensor::from_inner(dx_op), Tensor::from_inner(dx_burn)),
            )
        };
        let (e_y, e_dx) = errors(&w, &opts);
        let (e_y1, e_dx1) = errors(&w1, &opts1);
        eprintln!(
            "conv op against Burn's conv2d: max error / max value: 3×3 y {e_y:.1e}, dx \
             {e_dx:.1e}; 1×1 y {e_y1:.1e}, dx {e_dx1:.1e}"
        );
        let [gemm, im2col, direct] = likeness_models::kernels::conv::tier_counts();
        row(
            &format!(
                "check: conv op ({:?}; passes so far: implicit GEMM {gemm}, im2col {im2col}, \
                 direct {direct}) vs Burn's conv2d, max err / max: 3×3 y {e_y:.1e}, dx \
                 {e_dx:.1e}; 1×1 y {e_y1:.1e}, dx {e_dx1:.1e}",
                likeness_models::kernels::conv::conv_policy()
            ),
            label,
            &[0.0, 0.0],
        )
    };
    for (name, w, opts) in [("conv3x3", &w, &opts), ("conv1x1", &w1, &opts1)] {
        let conv = |x: Tensor<AB<B>, 4>, w: Tensor<AB<B>, 4>| {
            likeness_models::kernels::conv::conv2d(x, w, None, opts.clone())
        };
        bench(
            &format!("op: {name} 320→320 fwd [2, 320, {lat}, {lat}]"),
            &mut || {
                let _ = conv(x.clone(), w.clone()).sum().into_data();
            },
        );
        let wg = w.clone().require_grad();
        bench(
            &format!("op: {name} 320→320 fwd+bwd [2, 320, {lat}, {lat}]"),
            &mut || {
                let g = conv(xg.clone(), wg.clone()).sum().backward();
                let _ = wg.grad(&g).map(|t| t.sum().into_data());
            },
        );
    }
    // The feed-forward's first projection: 320 → 2560 (GEGLU) over 2·4096 tokens, by the
    // algorithm `LIKENESS_MATMUL` names (Burn's default without it).
    let mm = likeness_models::kernels::matmul::matmul::<AB<B>, 2>;
    let tokens = in_dtype(
        Tensor::<AB<B>, 2>::random([2 * seq, 320], normal, device),
        dtype,
    );
    let lw = in_dtype(
        Tensor::<AB<B>, 2>::random([320, 2560], normal, device) * 0.05,
        dtype,
    );
    bench(
        &format!("op: matmul [{}, 320] × [320, 2560] fwd", 2 * seq),
        &mut || {
            let _ = mm(tokens.clone(), lw.clone()).sum().into_data();
        },
    );
    let lwg = lw.clone().require_grad();
    bench(
        &format!("op: matmul [{}, 320] × [320, 2560] fwd+bwd", 2 * seq),
        &mut || {
            let g = mm(tokens.clone(), lwg.clone()).sum().backward();
            let _ = lwg.grad(&g).map(|t| t.sum().into_data());
        },
    );
    rows.push(check);
    rows.push(flash_check);
    rows.push(attention_check);
    Ok(rows)
}

/// The feed-forward's first projection (`[2·tokens, 320] × [320, 2560]`, in the asked dtype),
/// forward and forward + backward (both operands' gradients: the input's and a trained weight's)
/// under every matmul algorithm `LIKENESS_MATMUL` names, one after another in this process. Each
/// row says how many of its matmuls fell back to Burn's default (the algorithm refused the
/// device, dtype or shape) and the forward's largest error against Burn's default; a check row
/// per algorithm holds that error (in ms columns: error × 1000).
fn matmuls<B: Backend>(
    a: &BenchArgs,
    label: &str,
    device: &B::Device,
    precision: Precision,
) -> Vec<Row> {
    use burn::backend::Autodiff;
    use likeness_models::kernels::matmul::{
        MatmulChoice, matmul, matmul_counts, set_matmul_choice,
    };
    use likeness_models::nn::in_dtype;
    type AB<B> = Autodiff<B>;

    let lat = a.size / 8;
    let rows_n = 2 * lat * lat;
    let dtype = precision.half_dtype().unwrap_or(burn::tensor::DType::F32);
    let normal = burn::tensor::Distribution::Normal(0.0, 1.0);
    let x = in_dtype(
        Tensor::<AB<B>, 2>::random([rows_n, 320], normal, device),
        dtype,
    );
    let w = in_dtype(
        Tensor::<AB<B>, 2>::random([320, 2560], normal, device) * 0.05,
        dtype,
    );
    set_matmul_choice(MatmulChoice::Burn);
    let want = x.clone().matmul(w.clone()).cast(burn::tensor::DType::F32);
    let mut out = Vec::new();
    for &choice in MatmulChoice::ALL {
        set_matmul_choice(choice);
        let [_, fell_before] = matmul_counts();
        let got = matmul(x.clone(), w.clone()).cast(burn::tensor::DType::F32);
        let err = max_rel_err(got, want.clone());
        let xg = x.clone().require_grad();
        let wg = w.clone().require_grad();
        let times = timed_pair::<B>(
            device,
            a.iters,
            &mut || {
                let _ = matmul(x.clone(), w.clone()).sum().into_data();
            },
            &mut || {
                let g = matmul(xg.clone(), wg.clone()).sum().backward();
                let _ = wg.grad(&g).map(|t| t.sum().into_data());
                let _ = xg.grad(&g).map(|t| t.sum().into_data());
            },
        );
        out.extend(algorithm_rows(
            label,
            (
                "matmul",
                choice.name(),
                &format!("[{rows_n}, 320] × [320, 2560]"),
            ),
            times,
            matmul_counts()[1] - fell_before,
            (err, "vs burn"),
        ));
    }
    set_matmul_choice(MatmulChoice::Burn);
    out
}

/// Forward and forward + backward times (the first of each untimed, a warm-up), interleaved.
fn timed_pair<B: Backend>(
    device: &B::Device,
    iters: usize,
    fwd: &mut dyn FnMut(),
    both: &mut dyn FnMut(),
) -> [Vec<f64>; 2] {
    let mut times = [Vec::new(), Vec::new()];
    for _ in 0..=iters.max(2) {
        times[0].push(time::<B>(device, &mut *fwd));
        times[1].push(time::<B>(device, &mut *both));
    }
    times
}

/// The rows of one algorithm in `bench --only matmuls|convs`: `(kind, algorithm, shape)`, its
/// forward and forward + backward times, how many of its launches fell back to Burn's default,
/// and its error (with what it was measured against) as a check row, ×1000 in the ms columns.
fn algorithm_rows(
    label: &str,
    (kind, name, shape): (&str, &str, &str),
    [fwd, both]: [Vec<f64>; 2],
    fell: u64,
    (err, against): (f64, &str),
) -> [Row; 3] {
    let note = if fell > 0 {
        format!(" (fell back ×{fell})")
    } else {
        String::new()
    };
    let mean = |t: &[f64]| t[1..].iter().sum::<f64>() / (t.len() - 1).max(1) as f64;
    eprintln!(
        "{kind} {name}: fwd {:.2} ms, fwd+bwd {:.2} ms, error {err:.1e}{note}",
        mean(&fwd),
        mean(&both)
    );
    [
        row(&format!("{kind} {name} {shape} fwd{note}"), label, &fwd),
        row(
            &format!("{kind} {name} {shape} fwd+bwd{note}"),
            label,
            &both,
        ),
        row(
            &format!("check: {kind} {name} max error / max {against} (×1000 in ms columns)"),
            label,
            &[err * 1e3],
        ),
    ]
}

/// The resnets' 3×3 convolution 320 → 320 over `[2, 320, size/8, size/8]` (in the asked dtype)
/// through Likeness' op on the GEMM tier, forward and forward + backward (the input's gradient
/// and a trained weight's), under every implicit-GEMM algorithm `LIKENESS_CONV_ALGORITHM` names
/// in turn; rows as [`matmuls`]' (errors of y and dx against Burn's `conv2d` on the device).
fn convs<B: Backend>(
    a: &BenchArgs,
    label: &str,
    device: &B::Device,
    precision: Precision,
) -> Vec<Row> {
    use burn::backend::Autodiff;
    use likeness_models::kernels::conv::{
        ConvAlgorithmChoice, ConvPolicy, algorithm_counts, conv2d, set_conv_algorithm,
        set_conv_policy,
    };
    use likeness_models::nn::in_dtype;
    type AB<B> = Autodiff<B>;

    let lat = a.size / 8;
    let dtype = precision.half_dtype().unwrap_or(burn::tensor::DType::F32);
    let normal = burn::tensor::Distribution::Normal(0.0, 1.0);
    let x = in_dtype(
        Tensor::<AB<B>, 4>::random([2, 320, lat, lat], normal, device),
        dtype,
    );
    let w = in_dtype(
        Tensor::<AB<B>, 4>::random([320, 320, 3, 3], normal, device) * 0.02,
        dtype,
    );
    let opts = burn::tensor::ops::ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
    set_conv_policy(ConvPolicy::Gemm);
    let y_and_dx = |ours: bool| {
        let xr = x.clone().require_grad();
        let y = if ours {
            conv2d(xr.clone(), w.clone(), None, opts.clone())
        } else {
            burn::tensor::module::conv2d(xr.clone(), w.clone(), None, opts.clone())
        };
        let dx = xr.grad(&y.clone().sum().backward()).expect("dx");
        (y, Tensor::<AB<B>, 4>::from_inner(dx))
    };
    let (want_y, want_dx) = y_and_dx(false);
    let shape = format!("[2, 320, {lat}, {lat}]");
    let mut out = Vec::new();
    for &choice in ConvAlgorithmChoice::ALL {
        set_conv_algorithm(choice);
        let [_, fell_before] = algorithm_counts();
        let (y, dx) = y_and_dx(true);
        let (e_y, e_dx) = (
            max_rel_err(y, want_y.clone()),
            max_rel_err(dx, want_dx.clone()),
        );
        let xg = x.clone().require_grad();
        let wg = w.clone().require_grad();
        let times = timed_pair::<B>(
            device,
            a.iters,
            &mut || {
                let _ = conv2d(x.clone(), w.clone(), None, opts.clone())
                    .sum()
                    .into_data();
            },
            &mut || {
                let g = conv2d(xg.clone(), wg.clone(), None, opts.clone())
                    .sum()
                    .backward();
                let _ = wg.grad(&g).map(|t| t.sum().into_data());
                let _ = xg.grad(&g).map(|t| t.sum().into_data());
            },
        );
        out.extend(algorithm_rows(
            label,
            ("conv3x3", choice.name(), &shape),
            times,
            algorithm_counts()[1] - fell_before,
            (
                e_y.max(e_dx),
                &format!("vs Burn's conv2d (the larger of y {e_y:.1e} and dx {e_dx:.1e})"),
            ),
        ));
    }
    set_conv_algorithm(ConvAlgorithmChoice::Burn);
    out
}

/// max |a − b| / max |b|, on the device (only the two maxima are read back).
/// Attention written out in f32 ops (the scores materialised): the checks' reference.
fn attention_in_f32<B: Backend>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>) -> Tensor<B, 4> {
    let f32_of = |t: Tensor<B, 4>| t.cast(burn::tensor::DType::F32);
    let d = q.dims()[3] as f64;
    let scores = f32_of(q).matmul(f32_of(k).swap_dims(2, 3)) / d.sqrt();
    burn::tensor::activation::softmax(scores, 3).matmul(f32_of(v))
}

fn max_rel_err<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f64 {
    let scale = b.clone().abs().max().into_scalar().elem::<f64>().max(1e-30);
    (a - b).abs().max().into_scalar().elem::<f64>() / scale
}

/// Fills in the peak memory column: the process's resident high-water mark on CPU; on a GPU what
/// the CubeCL memory pool has reserved after the rows (it keeps its pages: about the peak need
/// plus fragmentation; nvidia-smi adds the CUDA context and other processes' memory).
fn finish_rows(rows: &mut [Row], placement: Placement) {
    let peak = if placement.device == DeviceChoice::Cpu {
        peak_rss_mib()
    } else {
        pool_mib(placement).map(|(in_use, reserved)| {
            eprintln!("GPU memory pool: {in_use:.0} MiB in use, {reserved:.0} MiB reserved");
            reserved
        })
    };
    for r in rows {
        r.peak_mib = peak;
    }
}

/// The GPU memory pool's bytes in use and reserved, in MiB (None on the CPU).
fn pool_mib(placement: Placement) -> Option<(f64, f64)> {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    likeness_models::device::pool_usage(placement.device).map(|(u, r)| (mib(u), mib(r)))
}

/// After a training step on a GPU: the memory pool's bytes in use and reserved, so a step that
/// grows (session 9's DPO step on CUDA: 2.4 s, then 7.5 s) shows whether the pool grows with it.
fn pool_note(placement: Placement) -> String {
    pool_mib(placement).map_or_else(String::new, |(u, r)| {
        format!(", pool {u:.0} MiB in use, {r:.0} MiB reserved")
    })
}

/// VmHWM from /proc/self/status in MiB (None where it cannot be read, e.g. off Linux).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// One DreamBooth LoRA step as `train_dreambooth_lora.py` takes it, with the latents given
/// (random, standing in for cached VAE latents): prompt embeddings from the text encoder without
/// gradients, noise at random timesteps, UNet forward with rank-4 attention LoRA, MSE to the
/// noise, backward, global-norm clipping and AdamW.
fn db_step<B, AB>(
    model: &StableDiffusion<B>,
    a: &BenchArgs,
    label: &str,
    device: &B::Device,
    placement: Placement,
) -> likeness_models::Result<Vec<Row>>
where
    B: Backend,
    AB: burn::tensor::backend::AutodiffBackend<InnerBackend = B>,
{
    use burn::module::AutodiffModule;
    use likeness_models::lora::{self, LoraShape, LoraTargets};
    use likeness_models::rng::randn;
    use likeness_models::schedulers::NoiseSchedule;
    use likeness_models::unet::UNet2DConditionModel;
    use likeness_train::optim::{AdamW, AdamWConfig, FlatGrads};
    use rand::{Rng, SeedableRng};

    let shape = LoraShape {
        rank: 4,
        alpha: 4.0,
    };
    let (mut unet, _) = lora::attach(
        UNet2DConditionModel::<AB>::from_inner(model.unet.clone()),
        &LoraTargets::unet_attention(),
        shape,
        0,
    );
    let schedule = NoiseSchedule::from_config(&model.scheduler_config)?;
    let ad_device = unet.conv_in.weight.device();
    let n = a.batch;
    let dims = [n, 4, a.size / 8, a.size / 8];
    let numel: usize = dims.iter().product();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let latents =
        Tensor::<AB, 4>::from_data(TensorData::new(randn(&mut rng, numel), dims), &ad_device);
    // As the trainer does: the adapters kept in the base's dtype between steps.
    let mut optim =
        AdamW::<B>::new(AdamWConfig::default()).keep_masters(model.unet.compute_dtype());
    let mut times = Vec::new();
    let mut rows = Vec::new();
    // With `--profile`, one more step after the timed ones, its phases and Likeness' layers
    // (forward) and autodiff ops (backward) timed with the device synchronised around each.
    let profiled_step = a.profile.then_some(a.iters + 1);
    let mut step_paths = None;
    for i in 0..=profiled_step.unwrap_or(a.iters) {
        let profiled = profiled_step == Some(i);
        let mut phases = Phases::<B>::new(device, profiled);
        let paths_before = KernelPaths::now();
        let began = Instant::now();
        let ctx = model.encode_text("a photo of sks dog", 0)?.repeat_dim(0, n);
        let ctx = Tensor::<AB, 3>::from_inner(ctx);
        let noise =
            Tensor::<AB, 4>::from_data(TensorData::new(randn(&mut rng, numel), dims), &ad_device);
        let timesteps: Vec<usize> = (0..n)
            .map(|_| rng.random_range(0..schedule.num_train_timesteps()))
            .collect();
        let noisy = schedule.add_noise(latents.clone(), noise.clone(), &timesteps)?;
        let target = schedule.target(latents.clone(), noise, &timesteps)?;
        let t = Tensor::<AB, 1>::from_data(
            TensorData::new(timesteps.iter().map(|&t| t as f32).collect::<Vec<_>>(), [n]),
            &ad_device,
        );
        phases.mark("text encoder, noise");
        if profiled {
            likeness_models::profile::take();
            likeness_models::profile::watch_memory(pool_probe(placement));
            likeness_models::profile::set_enabled(true);
        }
        let loss = |pred: Tensor<AB, 4>| (pred - target).powi_scalar(2).mean();
        let mut grads = if a.gradient_checkpointing {
            // Forward and backward are one call: the layers are recomputed in backward.
            let mut grads = FlatGrads::default();
            unet.backward_checkpointed(noisy, t, ctx, loss, &mut |g| {
                grads.accumulate(FlatGrads::from_grads::<AB, _>(g, &unet))
            })?;
            phases.mark(CHECKPOINTED_PHASE);
            grads
        } else {
            let loss = loss(unet.forward(noisy, t, ctx));
            phases.mark("UNet forward + loss");
            let grads = FlatGrads::from_loss(loss, &unet);
            phases.mark("backward");
            grads
        };
        likeness_models::profile::set_enabled(false);
        grads.clip_global_norm(1.0);
        unet = optim.step(1e-4, unet, grads);
        // Reading a weight back waits for the step's work to finish.
        let _ = unet.conv_in.weight.val().inner().into_data();
        let _ = B::sync(device);
        phases.mark("clipping + AdamW");
        let ms = began.elapsed().as_secs_f64() * 1e3;
        if profiled {
            rows.extend(phases.rows(label, ms));
            continue;
        }
        times.push(ms);
        step_paths = Some(KernelPaths::now().since(&paths_before));
        eprintln!(
            "db step {i}: {ms:.1} ms{}{}",
            if i == 0 { " (warm-up)" } else { "" },
            pool_note(placement)
        );
    }
    rows.insert(
        0,
        row(
            &format!(
                "DreamBooth LoRA step (r4, text enc + UNet fwd/bwd + AdamW{}), batch {n}, {}px",
                if a.gradient_checkpointing {
                    ", grad ckpt"
                } else {
                    ""
                },
                a.size
            ),
            label,
            &times,
        ),
    );
    if let Some(paths) = step_paths {
        rows.insert(
            1,
            row(
                &format!("paths of the last timed step: {paths}"),
                label,
                &[0.0, 0.0],
            ),
        );
    }
    Ok(rows)
}

/// The db-step profile's phase under gradient checkpointing: the UNet's forward, the loss and
/// the backward with its recomputation are one call.
const CHECKPOINTED_PHASE: &str = "UNet forward + loss + backward, checkpointed";

/// Where a piece of work ran, from the kernels' counters: which GEMM tier took each convolution
/// pass, which of Burn's attention kernels took the attentions Likeness' own kernels do not, and
/// how many of its own passes ran on tensor cores — so that a step's time reads against what ran.
struct KernelPaths {
    conv: [u64; 3],
    flash: [u64; 4],
    tensor_cores: [u64; 2],
}

impl KernelPaths {
    fn now() -> Self {
        use likeness_models::kernels::{attention, conv};
        Self {
            conv: conv::tier_counts(),
            flash: attention::flash_counts(),
            tensor_cores: attention::tensor_core_counts(),
        }
    }

    /// The counts since `before`.
    fn since(&self, before: &Self) -> Self {
        fn sub<const N: usize>(a: [u64; N], b: [u64; N]) -> [u64; N] {
            std::array::from_fn(|i| a[i].saturating_sub(b[i]))
        }
        Self {
            conv: sub(self.conv, before.conv),
            flash: sub(self.flash, before.flash),
            tensor_cores: sub(self.tensor_cores, before.tensor_cores),
        }
    }
}

impl std::fmt::Display for KernelPaths {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ([gemm, im2col, direct], [cmma, unit, composed, burn], [fwd, bwd]) =
            (self.conv, self.flash, self.tensor_cores);
        write!(
            f,
            "conv passes implicit GEMM {gemm}, im2col {im2col}, direct {direct}; Burn's \
             attention kernels tensor-core flash {cmma}, unit flash {unit}, composed {composed}, \
             its own choice {burn}; Likeness' attention passes on tensor cores forward {fwd}, \
             backward {bwd}"
        )
    }
}

/// The phases of one profiled training step: wall time between marks with the device
/// synchronised at each (nothing, and no waiting, when not profiling).
struct Phases<'a, B: Backend> {
    device: &'a B::Device,
    on: bool,
    last: Instant,
    times: Vec<(&'static str, f64)>,
}

impl<'a, B: Backend> Phases<'a, B> {
    fn new(device: &'a B::Device, on: bool) -> Self {
        Self {
            device,
            on,
            last: Instant::now(),
            times: Vec::new(),
        }
    }

    fn mark(&mut self, phase: &'static str) {
        if self.on {
            let _ = B::sync(self.device);
            let now = Instant::now();
            self.times
                .push((phase, (now - self.last).as_secs_f64() * 1e3));
            self.last = now;
        }
    }

    /// A row per phase, per kind of layer in the forward and of op in the backward (from
    /// `likeness_models::profile`), the forward's and the backward's remainder ("other": what no
    /// instrumented layer or op covers — in the backward the linears' matmuls, LoRA, elementwise
    /// ops), and the step.
    fn rows(&self, label: &str, total: f64) -> Vec<Row> {
        let ops = likeness_models::profile::take();
        let phase = |name: &str| {
            self.times
                .iter()
                .find(|(p, _)| *p == name)
                .map_or(0.0, |(_, ms)| *ms)
        };
        let mut rows: Vec<Row> = self
            .times
            .iter()
            .map(|(p, ms)| row(&format!("step profile: {p}"), label, &[*ms]))
            .collect();
        let checkpointed = phase(CHECKPOINTED_PHASE);
        for (backward, phase_name) in [(false, "UNet forward + loss"), (true, "backward")] {
            let mine: Vec<_> = ops
                .iter()
                .filter(|(name, _)| name.ends_with(" bwd") == backward)
                .collect();
            for (name, o) in &mine {
                let kind = if backward { "" } else { "fwd " };
                rows.push(row(
                    &format!("step profile: {kind}{name} ({} calls)", o.calls),
                    label,
                    &[o.ms],
                ));
            }
            if checkpointed == 0.0 {
                let covered: f64 = mine.iter().map(|(_, o)| o.ms).sum();
                let other = (phase(phase_name) - covered).max(0.0);
                let name = if backward { "bwd other" } else { "fwd other" };
                rows.push(row(&format!("step profile: {name}"), label, &[other]));
            }
        }
        if checkpointed > 0.0 {
            // Forward, recomputation and backward are one phase: what the timed ops leave of it.
            let covered: f64 = ops.iter().map(|(_, o)| o.ms).sum();
            let other = (checkpointed - covered).max(0.0);
            rows.push(row("step profile: fwd + bwd other", label, &[other]));
        }
        rows.push(row("step profile: total (synchronised)", label, &[total]));
        if let Some((bytes, after)) = likeness_models::profile::memory_peak() {
            // Megabytes in the time columns: the live tensors' high point between layers.
            let mib = bytes as f64 / (1024.0 * 1024.0);
            rows.push(row(
                &format!("step profile: GPU pool's peak in use, MiB (after a {after})"),
                label,
                &[mib],
            ));
        }
        likeness_models::profile::watch_memory(None);
        rows
    }
}

/// Bytes the GPU pool's live tensors hold on `placement`'s device (`None` on the CPU).
fn pool_probe(placement: Placement) -> Option<fn() -> Option<u64>> {
    use likeness_models::device::pool_usage;
    match placement.device {
        DeviceChoice::Cuda => Some(|| pool_usage(DeviceChoice::Cuda).map(|(in_use, _)| in_use)),
        DeviceChoice::Wgpu => Some(|| pool_usage(DeviceChoice::Wgpu).map(|(in_use, _)| in_use)),
        _ => None,
    }
}

/// One DPO step at the bench size: four UNet passes (model on winner and loser with autodiff,
/// reference on both without), backward, global-norm clipping and AdamW on the LoRA.
fn dpo_step<B: Backend>(
    model: &StableDiffusion<B>,
    a: &BenchArgs,
    label: &str,
    device: &B::Device,
    placement: Placement,
) -> likeness_models::Result<Row> {
    use burn::backend::Autodiff;
    use burn::module::AutodiffModule;
    use likeness_models::lora::{self, LoraSet, LoraShape, LoraTargets};
    use likeness_models::schedulers::NoiseSchedule;
    use likeness_models::unet::UNet2DConditionModel;
    use likeness_train::dpo::{DpoBatch, dpo_grads};
    use likeness_train::optim::{AdamW, AdamWConfig};
    use rand::SeedableRng;

    let shape = LoraShape {
        rank: 4,
        alpha: 4.0,
    };
    let (mut reference, _) =
        lora::attach(model.unet.clone(), &LoraTargets::unet_attention(), shape, 0);
    let mut start = LoraSet::default();
    start.add_adapters("unet", &mut reference)?;
    let mut unet = start.attach_to(
        "unet",
        UNet2DConditionModel::<Autodiff<B>>::from_inner(model.unet.clone()),
    )?;
    let schedule = NoiseSchedule::from_config(&model.scheduler_config)?;
    let lat = a.size / 8;
    let normal = burn::tensor::Distribution::Normal(0.0, 1.0);
    let winners = Tensor::<B, 4>::random([1, 4, lat, lat], normal, device);
    let losers = Tensor::<B, 4>::random([1, 4, lat, lat], normal, device);
    let ctx = Tensor::<B, 3>::random([1, 77, 768], normal, device);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let batch = DpoBatch::draw(winners, losers, ctx, &schedule, &mut rng);
    let mut optim =
        AdamW::<B>::new(AdamWConfig::default()).keep_masters(model.unet.compute_dtype());
    let mut times = Vec::new();
    for i in 0..=a.iters {
        let began = Instant::now();
        let (_, mut grads) = dpo_grads(
            &schedule,
            5000.0,
            &unet,
            &reference,
            &batch,
            &unet,
            a.gradient_checkpointing,
        )
        .map_err(|e| likeness_models::ModelError::Invalid(e.to_string()))?;
        grads.clip_global_norm(1.0);
        unet = optim.step(1e-5, unet, grads);
        // Reading a weight back waits for the step's work to finish.
        let _ = unet.conv_in.weight.val().inner().into_data();
        let _ = B::sync(device);
        let ms = began.elapsed().as_secs_f64() * 1e3;
        times.push(ms);
        eprintln!(
            "dpo step {i}: {ms:.1} ms{}{}",
            if i == 0 { " (warm-up)" } else { "" },
            pool_note(placement)
        );
    }
    Ok(row(
        &format!(
            "DPO step (4 UNet passes + backward + AdamW, LoRA r4{}), 1 pair, {}px",
            if a.gradient_checkpointing {
                ", grad ckpt"
            } else {
                ""
            },
            a.size
        ),
        label,
        &times,
    ))
}

/// A row from per-run times, the first of which is the untimed warm-up.
fn row(name: &str, device: &str, all: &[f64]) -> Row {
    let (first, times) = match all {
        [first, rest @ ..] if !rest.is_empty() => (Some(*first), rest),
        _ => (None, all),
    };
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    let min = times.iter().cloned().fold(f64::INFINITY, f64::min);
    Row {
        name: name.into(),
        device: device.into(),
        mean_ms: mean,
        min_ms: min,
        runs: times.len(),
        first_ms: first,
        peak_mib: None,
    }
}
