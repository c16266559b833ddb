//! DreamBooth end to end on tiny models: overfitting three synthetic photos, resume equal to an
//! uninterrupted run (also across a simulated kill -9), full fine-tuning, previews and events,
//! and the bad-input cases.
//!
//! `pipeline_sd1_eps` (random weights) serves where only the mechanics matter; the overfitting
//! test uses `dreambooth/tiny_sd1_pretrained`, the same architecture with a VAE that
//! reconstructs pictures and a UNet that denoises (see tests/fixtures/README.md), because with a
//! random VAE no generation can look like a photo.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use likeness_models::device::{CpuBackend as B, Precision};
use likeness_models::lora::LoraTargets;
use likeness_models::pipeline::{GenerateParams, SeededNoise, to_rgb8};
use likeness_models::sd::{LoadOptions, StableDiffusion};
use likeness_models::weights::WeightStore;
use likeness_train::checkpoint::{STATE_FILE, TensorFile, load_checkpoint_lora};
use likeness_train::data::{fit_square, to_signed_chw};
use likeness_train::dreambooth::{DreamBoothConfig, DreamBoothJob, train};
use likeness_train::optim::LrSchedule;
use likeness_train::run_dir::RunDir;
use likeness_train::trainable::{TEXT_ENCODER_FILE, TrainMode, UNET_FILE, load_by_path};
use likeness_train::{TrainError, TrainEvent, TrainOutcome};

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/data"
    ))
    .join(rel)
}

fn tmp(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("likeness-train-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// An orange disc on blue, `size` px, the disc shifted right by `dx`.
fn disc(size: u32, dx: i32) -> image::RgbImage {
    let c = size as f32 / 2.0;
    image::RgbImage::from_fn(size, size, |x, y| {
        let (fx, fy) = (x as f32 + 0.5 - c - dx as f32, y as f32 + 0.5 - c);
        if (fx * fx + fy * fy).sqrt() < size as f32 * 0.3 {
            image::Rgb([250, 140, 20])
        } else {
            image::Rgb([30, 60, 200])
        }
    })
}

const SHIFTS: [i32; 3] = [-2, 0, 2];

/// Three 32×32 photos (squared to 16 px by the trainer).
fn photos(tag: &str) -> PathBuf {
    let dir = tmp(tag);
    for (i, dx) in SHIFTS.into_iter().enumerate() {
        disc(32, dx)
            .save(dir.join(format!("photo{i}.png")))
            .unwrap();
    }
    dir
}

/// Settings for quick runs: no checkpoints or previews unless a test asks.
fn config(model: &str, images: &Path) -> DreamBoothConfig {
    let mut c = DreamBoothConfig::new(&fixture(model), images, "sks", "dog");
    c.checkpoint_every = 0;
    c.sample_every = 0;
    c.samples.steps = 2;
    c.class_images = 2;
    c
}

fn lora(rank: usize, unet_targets: LoraTargets, text: bool) -> TrainMode {
    TrainMode::Lora {
        rank,
        alpha: rank as f64,
        unet_targets,
        text_targets: text.then(LoraTargets::text_extended),
    }
}

type Run = (Result<TrainOutcome, TrainError>, Vec<TrainEvent>);

/// Runs a job, collecting the events; `on_event` may set the cancel flag.
fn run_with(job: DreamBoothJob, mut on_event: impl FnMut(&TrainEvent, &AtomicBool)) -> Run {
    let cancel = AtomicBool::new(false);
    let mut events = Vec::new();
    let r = train::<B>(
        job,
        &Default::default(),
        &mut |e| {
            on_event(&e, &cancel);
            events.push(e);
        },
        &cancel,
    );
    (r, events)
}

fn run(job: DreamBoothJob) -> Run {
    run_with(job, |_, _| {})
}

fn new_job(config: DreamBoothConfig, out: &Path) -> DreamBoothJob {
    DreamBoothJob::New {
        config: Box::new(config),
        run_dir: out.to_path_buf(),
    }
}

fn resume_job(out: &Path) -> DreamBoothJob {
    DreamBoothJob::Resume {
        run_dir: out.to_path_buf(),
        steps: None,
        model: None,
    }
}

fn mean(v: &[f32]) -> f32 {
    v.iter().sum::<f32>() / v.len() as f32
}

fn logged_losses(out: &Path) -> Vec<f32> {
    RunDir::open(out)
        .unwrap()
        .read_losses()
        .unwrap()
        .iter()
        .map(|r| r.loss)
        .collect()
}

fn load_model(rel: &str) -> StableDiffusion<B> {
    StableDiffusion::<B>::load(&fixture(rel), &LoadOptions::default(), &Default::default()).unwrap()
}

/// Generations of `prompt` at `seeds` (DDIM, 20 steps, no guidance), as 8-bit RGB.
fn generate(model: &StableDiffusion<B>, prompt: &str, seeds: &[u64]) -> Vec<image::RgbImage> {
    seeds
        .iter()
        .map(|&seed| {
            let p = GenerateParams {
                prompt: prompt.into(),
                steps: 20,
                guidance: 1.0,
                seed,
                width: 16,
                height: 16,
                ..Default::default()
            };
            let mut noise = SeededNoise::new(seed, 1);
            let l = model.sample(&p, None, &mut noise, &mut |_, _| {}).unwrap();
            to_rgb8(model.decode(l)).unwrap().remove(0)
        })
        .collect()
}

/// Mean absolute pixel difference (0–255) of each generation to its nearest photo, averaged.
fn distance(gens: &[image::RgbImage], photos: &[image::RgbImage]) -> f32 {
    let d = |a: &image::RgbImage, b: &image::RgbImage| {
        a.as_raw()
            .iter()
            .zip(b.as_raw())
            .map(|(x, y)| (*x as f32 - *y as f32).abs())
            .sum::<f32>()
            / a.as_raw().len() as f32
    };
    let per: Vec<f32> = gens
        .iter()
        .map(|g| photos.iter().map(|p| d(g, p)).fold(f32::MAX, f32::min))
        .collect();
    mean(&per)
}

#[test]
fn lora_overfits_three_photos_and_generations_move_toward_them() {
    let model_dir = "dreambooth/tiny_sd1_pretrained";
    let images = photos("overfit-photos");
    let out = tmp("overfit-run");
    let mut c = config(model_dir, &images);
    c.steps = 200;
    c.lr = 1e-2;
    c.batch = 4;
    c.mode = lora(8, LoraTargets::unet_extended(), false);
    let started = std::time::Instant::now();
    let outcome = run(new_job(c.clone(), &out)).0.unwrap();
    let l = &outcome.losses;
    let (first, last) = (mean(&l[..25]), mean(&l[l.len() - 25..]));
    println!(
        "{} LoRA steps in {:.1}s; mean loss of the first 25 steps {first:.4}, last 25 {last:.4}",
        l.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(last < first * 0.85, "loss did not fall: {first} → {last}");

    let targets: Vec<image::RgbImage> = SHIFTS
        .into_iter()
        .map(|dx| fit_square(&image::DynamicImage::ImageRgb8(disc(32, dx)), 16))
        .collect();
    let seeds = [0, 1, 2, 3, 4, 5, 6, 7];
    let mut model = load_model(model_dir);
    let g0 = generate(&model, &c.instance_prompt(), &seeds);
    let before = distance(&g0, &targets);
    let set = load_checkpoint_lora(&out, None).unwrap();
    assert_eq!(
        set.layers.len(),
        12 * 4,
        "12 linears in each of 4 transformers"
    );
    assert!(set.merge_into("unet", &mut model.unet, 1.0).is_empty());
    let g1 = generate(&model, &c.instance_prompt(), &seeds);
    let after = distance(&g1, &targets);
    // Rows: base generations, trained generations, the photos (to look at, ×4).
    let mut grid = image::RgbImage::new(16 * 8, 48);
    for (row, pics) in [&g0, &g1, &targets].into_iter().enumerate() {
        for (i, g) in pics.iter().enumerate() {
            image::imageops::replace(&mut grid, g, 16 * i as i64, 16 * row as i64);
        }
    }
    let grid_path = out.join("before-after.png");
    image::imageops::resize(&grid, 512, 192, image::imageops::FilterType::Nearest)
        .save(&grid_path)
        .unwrap();
    println!(
        "pixel distance of 8 generations to the nearest photo: base {before:.1}, trained {after:.1} ({})",
        grid_path.display()
    );
    assert!(
        after < before * 0.85,
        "generations did not move toward the photos: {before} → {after}"
    );
}

#[test]
fn full_fine_tune_lowers_the_loss_and_saves_diffusers_keys() {
    let images = photos("full-photos");
    let out = tmp("full-run");
    let mut c = config("pipeline_sd1_eps", &images);
    c.steps = 60;
    c.lr = 1e-3;
    c.mode = TrainMode::Full { text_encoder: true };
    let outcome = run(new_job(c, &out)).0.unwrap();
    let l = &outcome.losses;
    let (first, last) = (mean(&l[..15]), mean(&l[l.len() - 15..]));
    println!("full fine-tune: mean loss of the first 15 steps {first:.4}, last 15 {last:.4}");
    assert!(last < first * 0.9, "loss did not fall: {first} → {last}");

    // The checkpoint's UNet has exactly the base file's keys and shapes, and loads.
    let ck = outcome.checkpoint.unwrap();
    for (saved, base) in [
        (
            UNET_FILE,
            "pipeline_sd1_eps/unet/diffusion_pytorch_model.safetensors",
        ),
        (
            TEXT_ENCODER_FILE,
            "pipeline_sd1_eps/text_encoder/model.safetensors",
        ),
    ] {
        let a = WeightStore::open(&[ck.join(saved)]).unwrap();
        let b = WeightStore::open(&[fixture(base)]).unwrap();
        let mut ka = a.keys();
        let mut kb = b.keys();
        ka.sort();
        kb.sort();
        assert_eq!(ka, kb, "{saved}");
        for k in &ka {
            assert_eq!(a.shape(k), b.shape(k), "{saved}: {k}");
        }
    }
    let base = load_model("pipeline_sd1_eps");
    let trained = load_by_path(base.unet.clone(), &ck.join(UNET_FILE)).unwrap();
    let w0 = base
        .unet
        .conv_in
        .weight
        .val()
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    let w1 = trained
        .conv_in
        .weight
        .val()
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    assert_ne!(w0, w1, "full fine-tuning changes conv_in");
    assert!(
        load_checkpoint_lora(&out, None).is_err(),
        "no adapters in a full run"
    );
}

/// 4 steps straight vs 2 steps, a stop (the cancel flag, as Ctrl-C), a simulated kill -9 of a
/// third checkpoint, and a resume: the loss curves must be equal.
fn resume_matches_uninterrupted(tag: &str, mode: TrainMode, precision: Precision) {
    let images = photos(&format!("{tag}-photos"));
    let mut c = config("pipeline_sd1_eps", &images);
    c.mixed_precision = precision;
    c.steps = 4;
    c.lr = 1e-3;
    c.mode = mode;
    c.batch = 2;
    c.grad_accum = 2;
    c.random_flip = true;
    c.noise_offset = 0.05;
    c.min_snr_gamma = Some(5.0);
    c.lr_schedule = LrSchedule::Cosine;
    c.warmup_steps = 1;
    c.prior_preservation = true;
    c.checkpoint_every = 1;

    let straight = tmp(&format!("{tag}-straight"));
    run(new_job(c.clone(), &straight)).0.unwrap();
    let expected = logged_losses(&straight);

    let parts = tmp(&format!("{tag}-parts"));
    c.checkpoint_every = 0;
    let (first, _) = run_with(new_job(c, &parts), |e, cancel| {
        if matches!(e, TrainEvent::Step { step: 2, .. }) {
            cancel.store(true, Ordering::SeqCst);
        }
    });
    let first = first.unwrap();
    assert!(first.cancelled);
    assert_eq!(first.step, 2);
    let class_dir = parts.join("class_images");
    let class_time = std::fs::metadata(class_dir.join("class-0000.png"))
        .unwrap()
        .modified()
        .unwrap();

    // What a kill -9 during the next checkpoint leaves: a temporary folder and a step folder
    // without its completion marker, plus a cut line in loss.jsonl.
    let cks = parts.join("checkpoints");
    std::fs::create_dir_all(cks.join(".tmp-step-000003-999")).unwrap();
    std::fs::write(
        cks.join(".tmp-step-000003-999/adapters.safetensors"),
        b"junk",
    )
    .unwrap();
    std::fs::create_dir_all(cks.join("step-000003")).unwrap();
    std::fs::write(cks.join("step-000003/optimizer.safetensors"), b"junk").unwrap();
    let mut log = std::fs::read_to_string(parts.join("loss.jsonl")).unwrap();
    log.push_str("{\"step\":3,\"lo");
    std::fs::write(parts.join("loss.jsonl"), log).unwrap();

    let (second, events) = run(resume_job(&parts));
    let second = second.unwrap();
    assert!(!second.cancelled);
    assert_eq!(second.step, 4);
    assert!(matches!(
        events
            .iter()
            .find(|e| matches!(e, TrainEvent::Started { .. })),
        Some(TrainEvent::Started { start_step: 2, .. })
    ));
    assert!(!cks.join(".tmp-step-000003-999").exists());
    assert!(
        cks.join("step-000003").join(STATE_FILE).is_file() || !cks.join("step-000003").exists()
    );
    assert_eq!(
        std::fs::metadata(class_dir.join("class-0000.png"))
            .unwrap()
            .modified()
            .unwrap(),
        class_time,
        "class images are generated once"
    );

    let got = logged_losses(&parts);
    assert_eq!(got.len(), 4, "{got:?}");
    let worst = expected
        .iter()
        .zip(&got)
        .map(|(a, b)| ((a - b) / a).abs())
        .fold(0f32, f32::max);
    println!(
        "{tag}: straight {expected:?}\n{tag}: resumed  {got:?}\n{tag}: max relative difference {worst:.2e}"
    );
    assert!(worst <= 1e-5, "{tag}: resumed losses differ by {worst}");
}

#[test]
fn lora_resume_matches_uninterrupted_run() {
    let mode = lora(2, LoraTargets::unet_extended(), true);
    resume_matches_uninterrupted("resume-lora", mode, Precision::F32);
}

/// Under mixed precision the networks hold the adapters in bf16 between steps and the optimizer
/// their f32 values: a checkpoint must hold those (a resume from the bf16 copies would differ).
#[test]
fn lora_resume_in_mixed_precision_matches_uninterrupted_run() {
    let mode = lora(2, LoraTargets::unet_extended(), true);
    resume_matches_uninterrupted("resume-lora-bf16", mode, Precision::Bf16);
}

#[test]
fn full_resume_matches_uninterrupted_run() {
    let mode = TrainMode::Full { text_encoder: true };
    resume_matches_uninterrupted("resume-full", mode, Precision::F32);
}

/// The UNet's layers recomputed in backward train the same: LoRA with prior preservation and a
/// text-encoder LoRA (its gradients come through the context), and a full fine-tune with the
/// text encoder (the time embedding's through its own piece).
#[test]
fn gradient_checkpointing_gives_the_same_losses() {
    let images = photos("gc-photos");
    let modes = [
        ("lora", lora(2, LoraTargets::unet_extended(), true)),
        ("full", TrainMode::Full { text_encoder: true }),
    ];
    for (name, mode) in modes {
        let mut c = config("pipeline_sd1_eps", &images);
        c.mode = mode;
        c.steps = 3;
        c.lr = 1e-3;
        c.prior_preservation = name == "lora";
        let a = run(new_job(c.clone(), &tmp(&format!("gc-{name}-plain"))))
            .0
            .unwrap()
            .losses;
        c.gradient_checkpointing = true;
        let b = run(new_job(c, &tmp(&format!("gc-{name}-layers"))))
            .0
            .unwrap()
            .losses;
        println!("{name}: plain {a:?}\n{name}: layers recomputed {b:?}");
        assert_eq!(a.len(), 3);
        for (x, y) in a.iter().zip(&b) {
            assert!(((x - y) / x).abs() < 1e-5, "{name}: {x} vs {y}");
        }
        // The first step's loss is the same model's: the later ones show the updates agree.
        assert!(a[2] != a[0], "{name}: the model trained");
    }
}

/// bf16 mixed precision: the base weights in bf16, the adapters (UNet and text encoder), their
/// optimiser state and the checkpoint in f32; losses follow the f32 run within bf16's rounding.
#[test]
fn mixed_precision_trains_f32_adapters_on_a_bf16_base() {
    let images = photos("mixed-photos");
    let mut c = config("pipeline_sd1_eps", &images);
    c.mode = lora(2, LoraTargets::unet_attention(), true);
    c.steps = 3;
    c.lr = 1e-3;
    let full = run(new_job(c.clone(), &tmp("mixed-f32"))).0.unwrap().losses;
    c.mixed_precision = Precision::Bf16;
    c.checkpoint_every = 3;
    let out = tmp("mixed-bf16");
    let half = run(new_job(c, &out)).0.unwrap().losses;
    println!("f32 {full:?}\nbf16 mixed {half:?}");
    assert_eq!(full.len(), half.len());
    for (x, y) in full.iter().zip(&half) {
        assert!(y.is_finite());
        assert!(((x - y) / x).abs() < 0.05, "f32 {x} vs mixed {y}");
    }
    let ckpt = out.join("checkpoints/step-000003");
    for file in ["adapters.safetensors", "optimizer.safetensors"] {
        let bytes = std::fs::read(ckpt.join(file)).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert!(!st.is_empty(), "{file} is empty");
        for (key, view) in st.tensors() {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{file}: {key}");
        }
    }
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(saved["dreambooth"]["mixed_precision"], "bf16");
}

#[test]
fn run_folder_holds_config_losses_checkpoints_and_galleries() {
    let images = photos("files-photos");
    let out = tmp("files-run");
    let mut c = config("pipeline_sd1_eps", &images);
    c.steps = 4;
    c.checkpoint_every = 2;
    c.sample_every = 2;
    c.samples.seeds = vec![3, 4];
    c.samples.prompts = vec!["a photo of sks dog".into(), "a sks dog on the beach".into()];
    let (r, events) = run(new_job(c, &out));
    let outcome = r.unwrap();
    assert_eq!(outcome.losses.len(), 4);

    let kinds: Vec<String> = events
        .iter()
        .filter(|e| !matches!(e, TrainEvent::Status { .. }))
        .map(|e| match e {
            TrainEvent::Started { .. } => "start".into(),
            TrainEvent::Step { step, .. } => format!("step{step}"),
            TrainEvent::Checkpoint { step, .. } => format!("ck{step}"),
            TrainEvent::Sample { step, .. } => format!("sample{step}"),
            TrainEvent::Finished { .. } => "end".into(),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "start", "sample0", "step1", "step2", "ck2", "sample2", "step3", "step4", "ck4",
            "sample4", "end"
        ]
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["trainer"], "dreambooth");
    assert_eq!(config["dreambooth"]["resolution"], 16);
    assert!(config["fingerprint"]["files"].as_array().unwrap().len() >= 8);
    assert_eq!(logged_losses(&out).len(), 4);
    for step in ["step-000002", "step-000004"] {
        let d = out.join("checkpoints").join(step);
        for f in [
            "adapters.safetensors",
            "optimizer.safetensors",
            "state.json",
        ] {
            assert!(d.join(f).is_file(), "{}", d.join(f).display());
        }
    }
    let names = |step: &str| {
        let mut v: Vec<String> = std::fs::read_dir(out.join("samples").join(step))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let before = names("step-000000");
    assert_eq!(
        before,
        [
            "p00-seed3.png",
            "p00-seed4.png",
            "p01-seed3.png",
            "p01-seed4.png"
        ]
    );
    assert_eq!(names("step-000002"), before);
    assert_eq!(names("step-000004"), before);
    let set = load_checkpoint_lora(&out, Some(2)).unwrap();
    let adapters =
        TensorFile::read(&out.join("checkpoints/step-000002/adapters.safetensors")).unwrap();
    assert!(adapters.tensors.keys().all(|k| k.starts_with("unet.")));
    assert!(
        adapters
            .get("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_down.weight")
            .is_some()
    );
    assert_eq!(adapters.tensors.len(), set.layers.len() * 3);
}

#[test]
fn bad_photo_folders_are_reported() {
    // Empty folder: a clear error.
    let empty = tmp("empty-photos");
    let err = run(new_job(
        config("pipeline_sd1_eps", &empty),
        &tmp("empty-run"),
    ))
    .0
    .unwrap_err();
    println!("{err}");
    assert!(matches!(err, TrainError::NoImages { .. }));
    assert!(err.to_string().contains("no usable images"));

    // Only non-images: the error lists them.
    std::fs::write(empty.join("notes.txt"), "hello").unwrap();
    let err = run(new_job(
        config("pipeline_sd1_eps", &empty),
        &tmp("text-run"),
    ))
    .0
    .unwrap_err()
    .to_string();
    assert!(err.contains("notes.txt"), "{err}");

    // Mixed: non-images skipped and listed, small photos upscaled and listed.
    let mixed = photos("mixed-photos");
    std::fs::write(mixed.join("readme.md"), "# not a photo").unwrap();
    std::fs::write(mixed.join("broken.png"), b"\x89PNG\r\n\x1a\nbroken").unwrap();
    disc(8, 0).save(mixed.join("tiny.png")).unwrap();
    let mut c = config("pipeline_sd1_eps", &mixed);
    c.steps = 1;
    let (r, events) = run(new_job(c, &tmp("mixed-run")));
    r.unwrap();
    let Some(TrainEvent::Started {
        photos,
        skipped,
        upscaled,
        ..
    }) = events
        .iter()
        .find(|e| matches!(e, TrainEvent::Started { .. }))
    else {
        panic!("no Started event");
    };
    assert_eq!(*photos, 4);
    let skipped: Vec<String> = skipped
        .iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(skipped, ["broken.png", "readme.md"]);
    assert_eq!(upscaled.len(), 1);
    assert!(upscaled[0].ends_with("tiny.png"));
}

#[test]
fn a_nan_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint() {
    let images = photos("nan-photos");
    let out = tmp("nan-run");
    let mut c = config("pipeline_sd1_eps", &images);
    c.steps = 20;
    c.lr = 1e30;
    c.max_grad_norm = None;
    c.checkpoint_every = 1;
    let (r, events) = run(new_job(c, &out));
    let err = r.unwrap_err();
    println!("{err}");
    let TrainError::NonFiniteLoss {
        step,
        last_checkpoint: Some(last),
        ..
    } = &err
    else {
        panic!("expected a non-finite loss, got {err}");
    };
    assert!(err.to_string().contains("last good checkpoint"));
    assert!(matches!(events.last(), Some(TrainEvent::Error { .. })));
    assert!(last.ends_with(format!("step-{:06}", step - 1)));
    assert!(last.join(STATE_FILE).is_file());
    assert!(
        !out.join("checkpoints")
            .join(format!("step-{step:06}"))
            .exists()
    );
    load_checkpoint_lora(&out, None).unwrap();
}

#[test]
fn resume_with_another_base_model_is_refused() {
    let images = photos("mismatch-photos");
    let out = tmp("mismatch-run");
    let mut c = config("pipeline_sd1_eps", &images);
    c.steps = 1;
    run(new_job(c, &out)).0.unwrap();
    let err = run(DreamBoothJob::Resume {
        run_dir: out.clone(),
        steps: Some(2),
        model: Some(fixture("pipeline_sd2_v")),
    })
    .0
    .unwrap_err();
    println!("{err}");
    assert!(matches!(err, TrainError::ModelMismatch { .. }));
    assert!(err.to_string().contains("refusing to resume"));

    // A new run into a folder that holds one is refused too.
    let mut c = config("pipeline_sd1_eps", &images);
    c.steps = 1;
    let err = run(new_job(c, &out)).0.unwrap_err().to_string();
    assert!(err.contains("already holds a training run"), "{err}");

    // The same model resumes (and extends the run).
    let outcome = run(DreamBoothJob::Resume {
        run_dir: out.clone(),
        steps: Some(2),
        model: None,
    })
    .0
    .unwrap();
    assert_eq!(outcome.step, 2);
    assert_eq!(logged_losses(&out).len(), 2);
}

#[test]
fn photos_are_squared_to_the_resolution() {
    let wide = image::RgbImage::from_fn(64, 32, |x, _| image::Rgb([(x * 4) as u8, 0, 0]));
    let sq = fit_square(&image::DynamicImage::ImageRgb8(wide), 16);
    assert_eq!(sq.dimensions(), (16, 16));
    // Centre crop: the middle half of the gradient remains.
    let left = sq.get_pixel(0, 8).0[0];
    let right = sq.get_pixel(15, 8).0[0];
    assert!(
        (50..80).contains(&left) && (175..205).contains(&right),
        "{left} {right}"
    );
    let chw = to_signed_chw(&sq);
    assert_eq!(chw.len(), 3 * 16 * 16);
    assert!(chw.iter().all(|v| (-1.0..=1.0).contains(v)));
}
