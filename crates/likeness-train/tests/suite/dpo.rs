//! DreamBooth-DPO on the tiny fixture models: the loss's gradient points the right way, one
//! stage end to end (scores, pairs inside the window, a loadable LoRA), interruption and resume,
//! the bad-input cases, and the evaluation's table and plot.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::prelude::*;
use likeness_models::device::CpuBackend as B;
use likeness_models::lora::{self, LoraSet, LoraShape, LoraTargets};
use likeness_models::lora_files::{ExportInfo, LoraFormat, read_lora_file, write_lora_file};
use likeness_models::schedulers::NoiseSchedule;
use likeness_models::sd::{LoadOptions, StableDiffusion};
use likeness_train::TrainEvent;
use likeness_train::dpo::{
    DpoBatch, DpoConfig, DpoJob, DpoLossRecord, DpoSource, STAGE_LORA_FILE, dpo_grads, dpo_terms,
    read_jsonl, sample_seed, stage_dir, train_dpo,
};
use likeness_train::eval::{EvalConfig, evaluate};
use likeness_train::optim::{AdamW, AdamWConfig, FlatGrads};
use likeness_train::pairs::{Pair, ScoredImage};
use rand::SeedableRng;
use rand::rngs::StdRng;

type A = Autodiff<B>;

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/data"
    ))
    .join(rel)
}

fn tmp(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("likeness-dpo-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

const MODEL: &str = "dreambooth/tiny_sd1_pretrained";

fn load_model() -> StableDiffusion<B> {
    StableDiffusion::<B>::load(
        &fixture(MODEL),
        &LoadOptions::default(),
        &Default::default(),
    )
    .unwrap()
}

/// Concept photos: an orange disc on blue.
fn concept(tag: &str) -> PathBuf {
    let dir = tmp(tag);
    for (i, dx) in [-2i32, 0, 2].into_iter().enumerate() {
        image::RgbImage::from_fn(32, 32, |x, y| {
            let (fx, fy) = (x as f32 - 16.0 - dx as f32, y as f32 - 16.0);
            if (fx * fx + fy * fy).sqrt() < 10.0 {
                image::Rgb([250, 140, 20])
            } else {
                image::Rgb([30, 60, 200])
            }
        })
        .save(dir.join(format!("photo{i}.png")))
        .unwrap();
    }
    dir
}

/// A source LoRA file: attention adapters with small random `up` so it changes the model.
fn source_lora(dir: &Path) -> PathBuf {
    let model = load_model();
    let (mut unet, _) = lora::attach(
        model.unet.clone(),
        &LoraTargets::unet_attention(),
        LoraShape {
            rank: 2,
            alpha: 2.0,
        },
        7,
    );
    let mut set = LoraSet::default();
    set.add_adapters("unet", &mut unet).unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    for l in &mut set.layers {
        l.up = likeness_models::rng::randn(&mut rng, l.up.len())
            .into_iter()
            .map(|v| v * 0.05)
            .collect();
    }
    let path = dir.join("source.safetensors");
    write_lora_file(
        &path,
        &set,
        LoraFormat::Diffusers,
        &ExportInfo::for_model(&model),
    )
    .unwrap();
    path
}

/// Settings for a seconds-long stage: 2 prompts × 3 samples, 2 sampler steps, 2 DPO steps.
fn config(tag: &str) -> (DpoConfig, PathBuf) {
    let dir = tmp(tag);
    let mut c = DpoConfig::new(
        &fixture(MODEL),
        DpoSource::Lora(source_lora(&dir)),
        &concept(&format!("{tag}-concept")),
        &fixture("scoring/clip"),
        "sks",
        "dog",
    );
    c.dino = Some(fixture("scoring/dino"));
    c.stages = 1;
    c.prompts_per_stage = 2;
    c.samples_per_prompt = 3;
    c.sample_steps = 2;
    c.steps_per_stage = 2;
    c.checkpoint_every = 0;
    // Of the two orderings of a pair exactly one points into the upper half-plane.
    c.filter.angle_min = 0.0;
    c.filter.angle_max = 180.0;
    c.lr = 1e-3;
    (c, dir.join("run"))
}

fn run(
    job: DpoJob,
    cancel_after: Option<usize>,
) -> likeness_train::Result<likeness_train::dpo::DpoOutcome> {
    let cancel = AtomicBool::new(false);
    let mut sink = |e: TrainEvent| {
        if let (TrainEvent::Step { step, .. }, Some(k)) = (&e, cancel_after)
            && *step >= k
        {
            cancel.store(true, Ordering::SeqCst);
        }
    };
    train_dpo::<B>(job, &Default::default(), &mut sink, &cancel)
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

#[test]
fn one_step_prefers_the_winner_relative_to_the_reference() {
    let model = load_model();
    let device = Default::default();
    // The reference is the stage-start model: the same adapters, frozen, without autodiff.
    let (mut reference, _) = lora::attach(
        model.unet.clone(),
        &LoraTargets::unet_attention(),
        LoraShape {
            rank: 4,
            alpha: 4.0,
        },
        1,
    );
    let mut start = LoraSet::default();
    start.add_adapters("unet", &mut reference).unwrap();
    let mut unet_ad = start
        .attach_to(
            "unet",
            likeness_models::unet::UNet2DConditionModel::<A>::from_inner(model.unet.clone()),
        )
        .unwrap();

    let schedule = NoiseSchedule::from_config(&model.scheduler_config).unwrap();
    let mut rng = StdRng::seed_from_u64(11);
    let shape = [2, 4, 8, 8];
    let n: usize = shape.iter().product();
    let lat = |rng: &mut StdRng| {
        Tensor::<B, 4>::from_data(
            TensorData::new(likeness_models::rng::randn(rng, n), shape),
            &device,
        )
    };
    let winners = lat(&mut rng);
    let losers = lat(&mut rng);
    let ctx = model.encode_text("a photo of sks dog", 0).unwrap();
    let context = Tensor::cat(vec![ctx.clone(), ctx], 0);
    let batch = DpoBatch::draw(winners, losers, context, &schedule, &mut rng);

    let before = dpo_terms(&schedule, 5000.0, &unet_ad, &reference, &batch).unwrap();
    let inside0: Vec<f32> = before.inside.clone().into_data().to_vec().unwrap();
    let loss0: f32 = before.loss.clone().into_scalar();
    // Model and reference start equal: no margin, loss log 2.
    assert!(inside0.iter().all(|v| v.abs() < 1e-3), "{inside0:?}");
    assert!((loss0 - std::f32::consts::LN_2).abs() < 1e-3, "{loss0}");

    // The UNet's layers recomputed in backward give the same loss and gradients.
    let (ck_terms, ck_grads) = dpo_grads(
        &schedule, 5000.0, &unet_ad, &reference, &batch, &unet_ad, true,
    )
    .unwrap();
    let ck_loss: f32 = ck_terms.loss.into_scalar();
    assert!(
        (ck_loss - loss0).abs() <= 1e-6 * loss0.abs(),
        "{ck_loss} vs {loss0}"
    );

    let mut optim = AdamW::<B>::new(AdamWConfig::default());
    let grads = FlatGrads::from_loss(before.loss, &unet_ad);
    assert!(!grads.is_empty());
    assert_eq!(ck_grads.len(), grads.len());
    let mut worst = 0f32;
    for (id, g) in grads.tensors() {
        let want: Vec<f32> = g.into_data().to_vec().unwrap();
        let got: Vec<f32> = ck_grads
            .get(&id)
            .expect("a gradient")
            .into_data()
            .to_vec()
            .unwrap();
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
        let diff = got
            .iter()
            .zip(&want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        worst = worst.max(diff / scale);
    }
    println!("DPO gradients, layers recomputed against plain: largest relative error {worst:.3e}");
    assert!(worst <= 1e-4, "{worst:.3e}");
    unet_ad = optim.step(1e-3, unet_ad, grads);

    let after = dpo_terms(&schedule, 5000.0, &unet_ad, &reference, &batch).unwrap();
    let inside1: Vec<f32> = after.inside.clone().into_data().to_vec().unwrap();
    let loss1: f32 = after.loss.into_scalar();
    // inside = −β/2·((L_w − L_l) − ref): positive means the winner's error fell relative to
    // the loser's, against the reference.
    let mean1 = inside1.iter().sum::<f32>() / inside1.len() as f32;
    assert!(mean1 > 0.0, "margin after one step: {inside1:?}");
    assert!(loss1 < loss0, "loss {loss0} -> {loss1}");
}

#[test]
fn sample_seeds_are_disjoint_per_stage_prompt_and_sample() {
    assert_eq!(sample_seed(5, 0, 0, 0), 5);
    assert_eq!(sample_seed(5, 1, 2, 3), 5 + 1_000_000 + 2000 + 3);
}

#[test]
fn a_stage_writes_scores_pairs_in_the_window_and_a_lora() {
    let (mut c, out) = config("stage");
    c.stages = 2;
    let (lo, hi) = (c.filter.angle_min, c.filter.angle_max);
    let outcome = run(
        DpoJob::New {
            config: Box::new(c),
            run_dir: out.clone(),
        },
        None,
    )
    .unwrap();
    assert_eq!(outcome.stages_done, 2);
    assert!(!outcome.cancelled);
    // Stage 2 regenerates with stage 1's model, from its own prompt slice and seeds.
    let stage2: Vec<ScoredImage> = read_jsonl(&stage_dir(&out, 2).join("scores.jsonl")).unwrap();
    assert_eq!(stage2.len(), 6);
    assert_eq!(stage2[0].seed, 1_000_000);
    assert!(stage_dir(&out, 2).join(STAGE_LORA_FILE).is_file());
    let stage = stage_dir(&out, 1);
    assert_eq!(lines(&stage.join("images/index.jsonl")), 6);
    for i in 0..2 {
        for s in 0..3 {
            assert!(stage.join(format!("images/p{i:03}-s{s:02}.png")).is_file());
            assert!(
                stage
                    .join(format!("latents/p{i:03}-s{s:02}.safetensors"))
                    .is_file()
            );
        }
    }
    let scores: Vec<ScoredImage> = read_jsonl(&stage.join("scores.jsonl")).unwrap();
    assert_eq!(scores.len(), 6);
    assert!(
        scores
            .iter()
            .all(|s| s.is.is_finite() && s.ts.is_finite() && s.dino.is_some())
    );
    let pairs: Vec<Pair> = read_jsonl(&stage.join("pairs.jsonl")).unwrap();
    assert!(!pairs.is_empty());
    for p in &pairs {
        assert!(p.angle_deg >= lo && p.angle_deg <= hi, "{p:?}");
    }
    let losses: Vec<DpoLossRecord> = read_jsonl(&stage.join("loss.jsonl")).unwrap();
    assert_eq!(losses.len(), 2);
    assert!(
        losses
            .iter()
            .all(|l| l.loss.is_finite() && (0.0..=1.0).contains(&l.implicit_accuracy))
    );
    let set = read_lora_file(&stage.join(STAGE_LORA_FILE)).unwrap();
    assert!(!set.layers.is_empty());
    assert!(
        set.layers
            .iter()
            .all(|l| l.network == "unet" && l.rank == 2)
    );
}

#[test]
fn no_pair_in_the_window_is_a_clear_error_with_the_histogram() {
    let (mut c, out) = config("nopairs");
    c.filter.angle_min = 179.0;
    c.filter.angle_max = 180.0;
    let err = run(
        DpoJob::New {
            config: Box::new(c),
            run_dir: out,
        },
        None,
    )
    .unwrap_err()
    .to_string();
    eprintln!("{err}");
    assert!(err.contains("179"), "{err}");
    assert!(err.contains("°,"), "no histogram: {err}");
    assert!(!err.contains('\n'), "{err}");
}

#[test]
fn bad_scorer_inputs_fail_before_generating() {
    let (mut c, out) = config("badclip");
    c.clip = fixture("pipeline_sd1_eps/text_encoder");
    let err = run(
        DpoJob::New {
            config: Box::new(c),
            run_dir: out.clone(),
        },
        None,
    )
    .unwrap_err()
    .to_string();
    eprintln!("{err}");
    assert!(err.contains("text_encoder"), "{err}");
    assert!(!stage_dir(&out, 1).exists());

    let (mut c, out) = config("noconcept");
    c.concept = tmp("empty-concept");
    let err = run(
        DpoJob::New {
            config: Box::new(c),
            run_dir: out,
        },
        None,
    )
    .unwrap_err()
    .to_string();
    eprintln!("{err}");
    assert!(err.contains("no images"), "{err}");
}

#[test]
fn an_interrupted_stage_resumes_and_finishes() {
    let (mut c, out) = config("resume");
    c.steps_per_stage = 3;
    let outcome = run(
        DpoJob::New {
            config: Box::new(c),
            run_dir: out.clone(),
        },
        Some(1),
    )
    .unwrap();
    assert!(outcome.cancelled);
    let stage = stage_dir(&out, 1);
    assert!(!stage.join(STAGE_LORA_FILE).exists());
    assert!(stage.join("checkpoints/step-000001/state.json").is_file());
    let scores_before = std::fs::read_to_string(stage.join("scores.jsonl")).unwrap();

    let outcome = run(
        DpoJob::Resume {
            run_dir: out.clone(),
        },
        None,
    )
    .unwrap();
    assert!(!outcome.cancelled);
    assert_eq!(outcome.stages_done, 1);
    assert!(stage.join(STAGE_LORA_FILE).is_file());
    assert_eq!(
        std::fs::read_to_string(stage.join("scores.jsonl")).unwrap(),
        scores_before
    );
    let losses: Vec<DpoLossRecord> = read_jsonl(&stage.join("loss.jsonl")).unwrap();
    assert_eq!(losses.iter().map(|l| l.step).collect::<Vec<_>>(), [1, 2, 3]);
}

#[test]
fn eval_writes_the_table_and_both_plots() {
    let (c, out) = config("eval");
    let concept = c.concept.clone();
    run(
        DpoJob::New {
            config: Box::new(c),
            run_dir: out.clone(),
        },
        None,
    )
    .unwrap();
    let (db, _) = dreambooth_run("eval-db", false);
    let dest = tmp("eval-out");
    let mut e = EvalConfig::new(
        &fixture(MODEL),
        &concept,
        &fixture("scoring/clip"),
        "sks",
        "dog",
    );
    let prompts = dest.join("prompts.txt");
    std::fs::write(&prompts, "a photo of {}\n{} on the beach\n").unwrap();
    e.prompts = Some(prompts);
    e.runs = vec![db, out];
    e.seeds = 2;
    e.sample_steps = 2;
    e.out = dest.join("eval");
    let report = evaluate::<B>(
        &e,
        &Default::default(),
        likeness_models::device::Precision::F32,
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap()
    .unwrap();
    assert_eq!(report.rows.len(), 3);
    assert!(report.rows.iter().all(|r| r.n == 4
        && r.is_mean.is_finite()
        && r.ts_mean.is_finite()
        && r.is_se.is_finite()
        && r.ts_se.is_finite()));
    let csv = std::fs::read_to_string(&report.csv).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 4, "{csv}");
    assert!(rows[1].starts_with("base,base,,"), "{csv}");
    assert!(rows[2].starts_with("db-step-1,dreambooth,1,"), "{csv}");
    assert!(rows[3].starts_with("run-stage-1,dpo,1,"), "{csv}");
    assert!(std::fs::metadata(&report.png).unwrap().len() > 1000);
    assert!(
        std::fs::read_to_string(&report.svg)
            .unwrap()
            .contains("<svg")
    );
    assert_eq!(lines(&e.out.join("base/index.jsonl")), 4);
}

/// A one-step DreamBooth run (LoRA or full) on the concept photos.
fn dreambooth_run(tag: &str, full: bool) -> (PathBuf, PathBuf) {
    use likeness_train::dreambooth::{DreamBoothConfig, DreamBoothJob, train};
    let photos = concept(&format!("{tag}-photos"));
    let mut c = DreamBoothConfig::new(&fixture(MODEL), &photos, "sks", "dog");
    c.steps = 1;
    c.checkpoint_every = 0;
    c.sample_every = 0;
    if full {
        c.mode = likeness_train::trainable::TrainMode::Full {
            text_encoder: false,
        };
    }
    let out = tmp(&format!("{tag}-db")).join("db");
    train::<B>(
        DreamBoothJob::New {
            config: Box::new(c),
            run_dir: out.clone(),
        },
        &Default::default(),
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap();
    (out, photos)
}

#[test]
fn starts_from_a_dreambooth_run_lora_or_full() {
    for full in [false, true] {
        let tag = if full { "from-full" } else { "from-lora" };
        let (db, _) = dreambooth_run(tag, full);
        let (mut c, out) = config(tag);
        c.source = DpoSource::Run(db);
        c.steps_per_stage = 1;
        let outcome = run(
            DpoJob::New {
                config: Box::new(c),
                run_dir: out.clone(),
            },
            None,
        )
        .unwrap();
        assert_eq!(outcome.stages_done, 1);
        let set = read_lora_file(&stage_dir(&out, 1).join(STAGE_LORA_FILE)).unwrap();
        // DreamBooth's default rank is 4; a full source gets fresh rank-4 adapters.
        assert!(set.layers.iter().all(|l| l.rank == 4), "{tag}");
    }
}
