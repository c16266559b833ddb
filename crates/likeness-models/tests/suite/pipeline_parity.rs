//! The whole text-to-image pipeline against diffusers' StableDiffusionPipeline: given the same
//! initial latents (and, for the ancestral sampler, the same per-step noise), the final latents and
//! the decoded images match for every sampler, for an epsilon (SD1-like) and a v-prediction
//! (SD2-like) model, with classifier-free guidance on; and a single-file LDM checkpoint of the same
//! weights gives the same result as the diffusers folder.

use crate::common;

use common::{B, Io, assert_close, fixture, values};
use likeness_models::pipeline::{GenerateParams, NoiseSource};
use likeness_models::schedulers::SchedulerKind;
use likeness_models::sd::{LoadOptions, StableDiffusion};

/// Replays the noise diffusers drew, step by step.
struct Recorded {
    steps: Vec<f32>,
    per_step: usize,
}

impl NoiseSource for Recorded {
    fn initial(&mut self, _count: usize, _per_image: usize) -> Vec<f32> {
        unreachable!("initial latents are given")
    }
    fn step(&mut self, step: usize, count: usize, per_image: usize) -> Vec<f32> {
        assert_eq!(count * per_image, self.per_step);
        self.steps[step * self.per_step..(step + 1) * self.per_step].to_vec()
    }
}

const SAMPLERS: [(&str, SchedulerKind); 4] = [
    ("ddim", SchedulerKind::Ddim),
    ("euler", SchedulerKind::Euler),
    ("euler-a", SchedulerKind::EulerAncestral),
    ("dpmpp-2m", SchedulerKind::DpmPp2m),
];

fn params(kind: SchedulerKind) -> GenerateParams {
    GenerateParams {
        prompt: "a photo of sks dog".into(),
        negative_prompt: "blurry, low quality".into(),
        steps: 4,
        guidance: 7.5,
        scheduler: kind,
        seed: 0,
        count: 2,
        width: 16,
        height: 16,
        clip_skip: 0,
    }
}

fn check(model: &StableDiffusion<B>, io: &Io, label: &str) {
    let init = io.tensor::<4>("init_latents");
    for (name, kind) in SAMPLERS {
        let p = params(kind);
        let mut noise = Recorded {
            steps: if io.has(&format!("noise_{name}")) {
                io.values(&format!("noise_{name}"))
            } else {
                Vec::new()
            },
            per_step: init.dims().iter().product(),
        };
        let latents = model
            .sample(&p, Some(init.clone()), &mut noise, &mut |_, _| {})
            .expect("sampling");
        assert_close(
            &format!("{label} {name} final latents"),
            &values(latents.clone()),
            &io.values(&format!("final_latents_{name}")),
        );
        let image = model.decode(latents);
        assert_close(
            &format!("{label} {name} image"),
            &values(image),
            &io.values(&format!("image_{name}")),
        );
    }
}

#[test]
fn sd1_epsilon_pipeline_matches_diffusers() {
    let dir = fixture("pipeline_sd1_eps");
    let model = StableDiffusion::<B>::load(&dir, &LoadOptions::default(), &Default::default())
        .expect("load");
    assert!(
        model.info.unused_keys.is_empty(),
        "{:?}",
        model.info.unused_keys
    );
    check(&model, &Io::open("pipeline_sd1_eps/io.safetensors"), "sd1");
}

#[test]
fn sd2_v_prediction_pipeline_matches_diffusers() {
    let dir = fixture("pipeline_sd2_v");
    let model = StableDiffusion::<B>::load(&dir, &LoadOptions::default(), &Default::default())
        .expect("load");
    check(&model, &Io::open("pipeline_sd2_v/io.safetensors"), "sd2");
}

#[test]
fn single_file_sd1_matches_diffusers_folder() {
    let opts = LoadOptions {
        config_dir: Some(fixture("pipeline_sd1_eps")),
        ..Default::default()
    };
    let model = StableDiffusion::<B>::load(
        &fixture("single_file_sd1.safetensors"),
        &opts,
        &Default::default(),
    )
    .expect("load single file");
    check(
        &model,
        &Io::open("pipeline_sd1_eps/io.safetensors"),
        "single-file sd1",
    );
}

#[test]
fn single_file_sd2_matches_diffusers_folder() {
    let opts = LoadOptions {
        config_dir: Some(fixture("pipeline_sd2_v")),
        ..Default::default()
    };
    let model = StableDiffusion::<B>::load(
        &fixture("single_file_sd2.safetensors"),
        &opts,
        &Default::default(),
    )
    .expect("load single file");
    check(
        &model,
        &Io::open("pipeline_sd2_v/io.safetensors"),
        "single-file sd2",
    );
}
