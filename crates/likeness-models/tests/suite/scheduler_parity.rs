//! Schedulers against diffusers 0.35.2: timesteps, sigmas and every step of the cases in
//! `tests/fixtures/data/schedulers/`, plus `from_config` semantics and config errors.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use likeness_models::ModelError;
use likeness_models::schedulers::{
    NoiseSchedule, PredictionType, SchedulerConfig, SchedulerKind, SchedulerOverrides,
    build_scheduler, sanitize_json,
};

type B = burn::backend::Flex;

const TOL: f64 = 1e-4;
const SCHEDULE_TOL: f64 = 1e-6;

fn fixtures() -> PathBuf {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/data/schedulers"
    ))
    .to_path_buf()
}

/// max |a - b| / max |b|.
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .fold(0.0, f64::max);
    let scale = b.iter().map(|y| (*y as f64).abs()).fold(0.0, f64::max);
    if scale == 0.0 { diff } else { diff / scale }
}

/// Element-wise relative error of a schedule (timesteps, sigmas), worst element.
fn schedule_err(a: &[f64], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "schedule length mismatch: {a:?} vs {b:?}");
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let d = (x - *y as f64).abs();
            if *y == 0.0 { d } else { d / (*y as f64).abs() }
        })
        .fold(0.0, f64::max)
}

struct Io {
    bytes: Vec<u8>,
}

impl Io {
    fn open(path: &Path) -> Self {
        Self {
            bytes: std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        }
    }

    fn get(&self, name: &str) -> Option<(Vec<usize>, Vec<u8>)> {
        let st = safetensors::SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(name).ok()?;
        Some((t.shape().to_vec(), t.data().to_vec()))
    }

    fn f32(&self, name: &str) -> Option<Vec<f32>> {
        let (_, data) = self.get(name)?;
        Some(
            data.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )
    }

    fn i64(&self, name: &str) -> Vec<i64> {
        let (_, data) = self.get(name).unwrap();
        data.chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    fn tensor(&self, name: &str) -> Tensor<B, 4> {
        let (shape, _) = self.get(name).unwrap_or_else(|| panic!("missing {name}"));
        let values = self.f32(name).unwrap();
        let shape: [usize; 4] = shape.try_into().unwrap();
        Tensor::from_data(TensorData::new(values, shape), &Default::default())
    }
}

fn values(t: Tensor<B, 4>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().unwrap()
}

fn load_cases() -> Vec<serde_json::Value> {
    let path = fixtures().join("cases.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&sanitize_json(&text)).unwrap()
}

#[test]
fn fixture_cases_match_diffusers() {
    let cases = load_cases();
    assert!(cases.len() >= 13, "expected all scheduler cases");
    let mut worst = 0.0f64;
    for case in cases {
        let name = case["name"].as_str().unwrap().to_string();
        let class = case["class"].as_str().unwrap();
        let config = SchedulerConfig::from_value(case["config"].clone(), &name).unwrap();
        let io = Io::open(&fixtures().join(case["file"].as_str().unwrap()));

        if class == "DDPMScheduler" {
            let sched = NoiseSchedule::from_config(&config).unwrap();
            let ts: Vec<usize> = io
                .i64("train_timesteps")
                .iter()
                .map(|&t| t as usize)
                .collect();
            let noisy = sched
                .add_noise(io.tensor("original"), io.tensor("noise"), &ts)
                .unwrap();
            let vel = sched
                .velocity(io.tensor("original"), io.tensor("noise"), &ts)
                .unwrap();
            let e_noisy = rel_err(&values(noisy), &io.f32("noisy").unwrap());
            let e_vel = rel_err(&values(vel), &io.f32("velocity").unwrap());
            println!("{name:<26} add_noise {e_noisy:.2e} velocity {e_vel:.2e}");
            assert!(e_noisy <= TOL && e_vel <= TOL, "{name}");
            worst = worst.max(e_noisy).max(e_vel);
            continue;
        }

        let kind = SchedulerKind::from_class_name(class).unwrap();
        let steps = case["num_inference_steps"].as_u64().unwrap() as usize;
        let mut sched =
            build_scheduler::<B>(kind, &config, SchedulerOverrides::default(), steps).unwrap();

        let want_t = io.f32("timesteps").unwrap();
        let e_t = schedule_err(sched.timesteps(), &want_t);
        assert!(
            e_t <= SCHEDULE_TOL,
            "{name}: timesteps {:?} vs {want_t:?}",
            sched.timesteps()
        );
        let e_s = match io.f32("sigmas") {
            Some(want_s) => {
                let e = schedule_err(sched.sigmas(), &want_s);
                assert!(
                    e <= SCHEDULE_TOL,
                    "{name}: sigmas {:?} vs {want_s:?}",
                    sched.sigmas()
                );
                e
            }
            None => 0.0,
        };
        let want_init = io.f32("init_noise_sigma").unwrap()[0] as f64;
        let e_init = (sched.init_noise_sigma() - want_init).abs() / want_init.abs();
        assert!(e_init <= SCHEDULE_TOL, "{name}: init_noise_sigma");

        let mut sample = io.tensor("sample_0");
        let mut e_scaled = 0.0f64;
        let mut e_prev = 0.0f64;
        for i in 0..steps {
            let scaled = sched.scale_model_input(sample.clone(), i);
            let e = rel_err(&values(scaled), &io.f32(&format!("scaled_{i}")).unwrap());
            assert!(e <= TOL, "{name}: scaled_{i} rel err {e:.2e}");
            e_scaled = e_scaled.max(e);
            let noise = io
                .f32(&format!("noise_{i}"))
                .map(|_| io.tensor(&format!("noise_{i}")));
            assert_eq!(noise.is_some(), sched.needs_noise(), "{name}: needs_noise");
            let prev = sched
                .step(io.tensor(&format!("model_output_{i}")), i, sample, noise)
                .unwrap();
            let e = rel_err(
                &values(prev.clone()),
                &io.f32(&format!("prev_sample_{i}")).unwrap(),
            );
            assert!(e <= TOL, "{name}: prev_sample_{i} rel err {e:.2e}");
            e_prev = e_prev.max(e);
            sample = prev;
        }
        println!(
            "{name:<26} timesteps {e_t:.1e} sigmas {e_s:.1e} init {e_init:.1e} \
             scaled {e_scaled:.2e} prev_sample {e_prev:.2e}"
        );
        worst = worst.max(e_scaled).max(e_prev);
    }
    println!("worst step rel err: {worst:.2e}");
}

/// The overrides the pipeline passes for `dpmpp-2m` turn a plain DPM config into the Karras one.
#[test]
fn karras_override_matches_karras_config() {
    let cases = load_cases();
    let find = |n: &str| cases.iter().find(|c| c["name"] == n).unwrap().clone();
    let plain =
        SchedulerConfig::from_value(find("dpmpp2m_eps")["config"].clone(), "plain").unwrap();
    let karras_case = find("dpmpp2m_karras_eps");
    let io = Io::open(&fixtures().join(karras_case["file"].as_str().unwrap()));
    let kind: SchedulerKind = "dpmpp-2m".parse().unwrap();
    let sched = build_scheduler::<B>(kind, &plain, kind.default_overrides(), 7).unwrap();
    assert!(schedule_err(sched.timesteps(), &io.f32("timesteps").unwrap()) <= SCHEDULE_TOL);
    assert!(schedule_err(sched.sigmas(), &io.f32("sigmas").unwrap()) <= SCHEDULE_TOL);
}

const SD15_PNDM: &str = r#"{"_class_name":"PNDMScheduler","beta_end":0.012,"beta_schedule":"scaled_linear","beta_start":0.00085,"num_train_timesteps":1000,"set_alpha_to_one":false,"skip_prk_steps":true,"steps_offset":1,"trained_betas":null,"clip_sample":false}"#;

#[test]
fn sd15_pndm_config_into_ddim_euler_dpm() {
    let cfg = SchedulerConfig::from_json_str(SD15_PNDM, "scheduler_config.json").unwrap();
    assert_eq!(cfg.class_name.as_deref(), Some("PNDMScheduler"));

    // DDIMScheduler.from_config(pndm.config).set_timesteps(30): DDIM's own default spacing
    // ("leading") since the file has none.
    let ddim =
        build_scheduler::<B>(SchedulerKind::Ddim, &cfg, SchedulerOverrides::default(), 30).unwrap();
    let expected: Vec<f64> = vec![
        958., 925., 892., 859., 826., 793., 760., 727., 694., 661., 628., 595., 562., 529., 496.,
        463., 430., 397., 364., 331., 298., 265., 232., 199., 166., 133., 100., 67., 34., 1.,
    ];
    assert_eq!(ddim.timesteps(), expected.as_slice());
    assert_eq!(ddim.init_noise_sigma(), 1.0);

    // Euler's default spacing is "linspace".
    let euler = build_scheduler::<B>(
        SchedulerKind::Euler,
        &cfg,
        SchedulerOverrides::default(),
        30,
    )
    .unwrap();
    let t = euler.timesteps();
    assert_eq!(t[0], 999.0);
    assert_eq!(t[1], 964.5516967773438);
    assert_eq!(t[2], 930.1034545898438);
    assert!((euler.init_noise_sigma() - 14.614646911621094).abs() < 1e-5);
    assert!((euler.sigmas()[1] - 11.917562484741211).abs() < 1e-5);

    // DPMSolverMultistepScheduler.from_config(pndm.config, use_karras_sigmas=True), 20 steps.
    let kind = SchedulerKind::DpmPp2m;
    let dpm = build_scheduler::<B>(kind, &cfg, kind.default_overrides(), 20).unwrap();
    let expected: Vec<f64> = vec![
        999., 962., 921., 876., 827., 772., 710., 640., 561., 474., 380., 285., 197., 123., 69.,
        35., 15., 6., 2., 0.,
    ];
    assert_eq!(dpm.timesteps(), expected.as_slice());
    let expected_sigmas = [
        14.614646911621094,
        11.725372314453125,
        9.340211868286133,
        7.383626937866211,
        5.789421081542969,
        4.499844074249268,
        3.4647555351257324,
        2.640847682952881,
        1.9909217357635498,
        1.4832167625427246,
        1.0907906293869019,
        0.7909495830535889,
        0.5647245049476624,
        0.396392285823822,
        0.2730397880077362,
        0.18416932225227356,
        0.12134244292974472,
        0.07786081731319427,
        0.04848191514611244,
        0.02916753478348255,
        0.0,
    ];
    let expected_sigmas: Vec<f32> = expected_sigmas.iter().map(|&s| s as f32).collect();
    assert!(schedule_err(dpm.sigmas(), &expected_sigmas) <= SCHEDULE_TOL);
}

/// Keys a saving class filled from its defaults (`_use_default_values`) are ignored by the
/// loading class, as diffusers' `extract_init_dict` does; explicit keys pass through.
#[test]
fn use_default_values_are_not_inherited() {
    let saved_by_ddim = r#"{"_class_name":"DDIMScheduler","beta_schedule":"scaled_linear",
        "beta_start":0.00085,"beta_end":0.012,"steps_offset":1,"timestep_spacing":"leading",
        "_use_default_values":["timestep_spacing","prediction_type"],"prediction_type":"epsilon"}"#;
    let cfg = SchedulerConfig::from_json_str(saved_by_ddim, "a.json").unwrap();
    let euler =
        build_scheduler::<B>(SchedulerKind::Euler, &cfg, SchedulerOverrides::default(), 4).unwrap();
    // linspace: 999, 666, 333, 0
    assert_eq!(euler.timesteps(), &[999.0, 666.0, 333.0, 0.0]);

    let explicit = saved_by_ddim.replace(r#""timestep_spacing","#, "");
    let cfg = SchedulerConfig::from_json_str(&explicit, "b.json").unwrap();
    let euler =
        build_scheduler::<B>(SchedulerKind::Euler, &cfg, SchedulerOverrides::default(), 4).unwrap();
    // leading: 750, 500, 250, 0 plus steps_offset
    assert_eq!(euler.timesteps(), &[751.0, 501.0, 251.0, 1.0]);
}

#[test]
fn prediction_type_override_wins() {
    let cfg = SchedulerConfig::from_json_str(SD15_PNDM, "scheduler_config.json").unwrap();
    let overrides = SchedulerOverrides {
        prediction_type: Some(PredictionType::VPrediction),
        use_karras_sigmas: None,
    };
    for kind in SchedulerKind::ALL {
        let s = build_scheduler::<B>(kind, &cfg, overrides, 5).unwrap();
        assert_eq!(s.prediction_type(), PredictionType::VPrediction, "{kind}");
    }
}

fn unsupported_field(err: ModelError) -> String {
    match err {
        ModelError::Unsupported { field, value, .. } => format!("{field}={value}"),
        other => panic!("expected an unsupported-value error, got {other}"),
    }
}

#[test]
fn unsupported_values_are_errors() {
    let bad_beta = SD15_PNDM.replace("scaled_linear", "sigmoid");
    let cfg = SchedulerConfig::from_json_str(&bad_beta, "scheduler/scheduler_config.json").unwrap();
    for kind in SchedulerKind::ALL {
        let err = build_scheduler::<B>(kind, &cfg, SchedulerOverrides::default(), 10)
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("scheduler/scheduler_config.json"),
            "{err}"
        );
        assert_eq!(unsupported_field(err), "beta_schedule=sigmoid");
    }
    assert_eq!(
        unsupported_field(NoiseSchedule::from_config(&cfg).unwrap_err()),
        "beta_schedule=sigmoid"
    );

    let sample_pred = SD15_PNDM.replace('}', r#","prediction_type":"sample"}"#);
    let cfg = SchedulerConfig::from_json_str(&sample_pred, "s.json").unwrap();
    for kind in SchedulerKind::ALL {
        let err = build_scheduler::<B>(kind, &cfg, SchedulerOverrides::default(), 10)
            .err()
            .unwrap();
        assert_eq!(unsupported_field(err), "prediction_type=sample");
    }
    assert_eq!(
        unsupported_field(NoiseSchedule::from_config(&cfg).unwrap_err()),
        "prediction_type=sample"
    );

    let thresholding = SD15_PNDM.replace('}', r#","thresholding":true}"#);
    let cfg = SchedulerConfig::from_json_str(&thresholding, "t.json").unwrap();
    let err = build_scheduler::<B>(SchedulerKind::Ddim, &cfg, SchedulerOverrides::default(), 10)
        .err()
        .unwrap();
    assert_eq!(unsupported_field(err), "thresholding=true");

    let spacing = SD15_PNDM.replace('}', r#","timestep_spacing":"karras"}"#);
    let cfg = SchedulerConfig::from_json_str(&spacing, "u.json").unwrap();
    let err = build_scheduler::<B>(
        SchedulerKind::Euler,
        &cfg,
        SchedulerOverrides::default(),
        10,
    )
    .err()
    .unwrap();
    assert_eq!(unsupported_field(err), "timestep_spacing=karras");
}

#[test]
fn ancestral_step_requires_noise_and_steps_in_range() {
    let cfg = SchedulerConfig::from_json_str(SD15_PNDM, "scheduler_config.json").unwrap();
    let mut s = build_scheduler::<B>(
        SchedulerKind::EulerAncestral,
        &cfg,
        SchedulerOverrides::default(),
        4,
    )
    .unwrap();
    assert!(s.needs_noise());
    let x = Tensor::<B, 4>::zeros([1, 4, 2, 2], &Default::default());
    assert!(s.step(x.clone(), 0, x.clone(), None).is_err());
    assert!(s.step(x.clone(), 4, x.clone(), Some(x.clone())).is_err());
    assert!(s.step(x.clone(), 0, x.clone(), Some(x)).is_ok());
}

#[test]
fn kind_names_round_trip() {
    for kind in SchedulerKind::ALL {
        assert_eq!(kind.name().parse::<SchedulerKind>().unwrap(), kind);
    }
    assert!("heun".parse::<SchedulerKind>().is_err());
}

#[test]
fn min_snr_matches_compute_snr() {
    let cfg = SchedulerConfig::from_json_str(SD15_PNDM, "scheduler_config.json").unwrap();
    let s = NoiseSchedule::from_config(&cfg).unwrap();
    assert_eq!(s.num_train_timesteps(), 1000);
    // diffusers.training_utils.compute_snr(DDPMScheduler.from_config(...), [0, 500, 999])
    for (t, want) in [
        (0, 1175.4405517578125),
        (500, 0.38185006380081177),
        (999, 0.004681912250816822),
    ] {
        let got = s.snr(t).unwrap();
        assert!(
            (got - want).abs() / want <= 1e-6,
            "snr({t}) = {got}, want {want}"
        );
    }
    assert!(s.snr(1000).is_none());
    // Min-SNR-γ weights, γ = 5 (diffusers' train_text_to_image.py): ε-prediction
    // min(snr, 5) / snr, v-prediction min(snr, 5) / (snr + 1).
    let v = s.clone().with_prediction_type(PredictionType::VPrediction);
    for (t, snr) in [(0, 1175.4405517578125), (500, 0.38185006380081177)] {
        let (eps_want, v_want) = (f64::min(snr, 5.0) / snr, f64::min(snr, 5.0) / (snr + 1.0));
        let (eps_got, v_got) = (s.min_snr_weight(t, 5.0), v.min_snr_weight(t, 5.0));
        assert!(
            (eps_got - eps_want).abs() <= 1e-6 * eps_want,
            "ε {t}: {eps_got}"
        );
        assert!((v_got - v_want).abs() <= 1e-6 * v_want, "v {t}: {v_got}");
    }
    assert_eq!(s.min_snr_weight(500, 5.0), 1.0);
    assert_eq!(s.min_snr_weight(1000, 5.0), 1.0);
}
