//! `likeness generate --lora FILE[:SCALE]` on the tiny fixture model: the merged LoRA gives
//! diffusers' latents (kohya file at scale 1, diffusers file at 0.5), the files are recorded in
//! index.jsonl and as `<lora:name:scale>` in the PNG parameters; what does not fit is one warning
//! line, a LoRA of which nothing fits a one-line error.

use crate::common;
use common::fixture;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tmp(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("likeness-cli-lora-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

fn read_f32(path: &Path, key: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(key).unwrap();
    let v = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (t.shape().to_vec(), v)
}

fn generate(model: &str, loras: &[String], init: &Path, saved: &Path, out: &Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_likeness"));
    cmd.args(["generate", "--model"]).arg(fixture(model)).args([
        "--prompt",
        "a photo of sks dog",
        "--negative-prompt",
        "blurry, low quality",
        "--steps",
        "4",
        "--count",
        "2",
        "--scheduler",
        "ddim",
        "--device",
        "cpu",
        "--quiet",
    ]);
    for l in loras {
        cmd.arg("--lora").arg(l);
    }
    cmd.arg("--latents")
        .arg(init)
        .arg("--save-latents")
        .arg(saved)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

fn write_init(dir: &Path) -> PathBuf {
    let (shape, init) = read_f32(&fixture("pipeline_sd1_eps/io.safetensors"), "init_latents");
    let path = dir.join("init.safetensors");
    let bytes: Vec<u8> = init.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, &bytes).unwrap();
    std::fs::write(
        &path,
        safetensors::serialize([("latents", view)], None).unwrap(),
    )
    .unwrap();
    path
}

fn write_lora(path: &Path, entries: &[(&str, Vec<usize>)]) {
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = entries
        .iter()
        .map(|(k, s)| {
            let n: usize = s.iter().product();
            let v = (0..n)
                .flat_map(|i| (0.01 * (i % 5) as f32).to_le_bytes())
                .collect();
            (k.to_string(), s.clone(), v)
        })
        .collect();
    let views = data.iter().map(|(k, s, v)| {
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), v);
        (k.clone(), view.unwrap())
    });
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    got.iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

#[test]
fn lora_files_give_diffusers_latents_and_are_recorded() {
    let dir = tmp("ok");
    let init = write_init(&dir);
    let expected = fixture("lora/sd1/io.safetensors");
    for (file, scale, key) in [
        ("lora_kohya.safetensors", None, "final_latents_ddim"),
        (
            "lora_diffusers.safetensors",
            Some("0.5"),
            "final_latents_ddim_scale_0.5",
        ),
    ] {
        let lora = fixture(&format!("lora/sd1/{file}"));
        let spec = match scale {
            Some(s) => format!("{}:{s}", lora.display()),
            None => lora.display().to_string(),
        };
        let out = dir.join(file.replace(".safetensors", ""));
        let saved = dir.join(format!("{file}.latents.safetensors"));
        let o = generate("pipeline_sd1_eps", &[spec], &init, &saved, &out);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{stderr}");
        assert!(!stderr.contains("warning"), "{stderr}");
        let err = rel_err(&read_f32(&saved, "latents").1, &read_f32(&expected, key).1);
        println!(
            "{file} at {}: relative error {err:.3e}",
            scale.unwrap_or("1")
        );
        assert!(err <= 1e-4, "{file}: relative error {err}");

        let index = std::fs::read_to_string(out.join("index.jsonl")).unwrap();
        let first: serde_json::Value = serde_json::from_str(index.lines().next().unwrap()).unwrap();
        let recorded = format!("{}:{}", lora.display(), scale.unwrap_or("1"));
        assert_eq!(first["loras"], serde_json::json!([recorded]));
        let png = out.join(first["file"].as_str().unwrap());
        let params = likeness_models::png_meta::read_parameters(&png)
            .unwrap()
            .unwrap();
        let tag = format!(
            "a photo of sks dog <lora:{}:{}>\n",
            file.trim_end_matches(".safetensors"),
            scale.unwrap_or("1")
        );
        assert!(params.starts_with(&tag), "{params}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn misfits_warn_once_or_fail_in_one_line() {
    let dir = tmp("bad");
    let init = write_init(&dir);
    let saved = dir.join("x.safetensors");
    let mixed = dir.join("mixed.safetensors");
    write_lora(
        &mixed,
        &[
            (
                "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
                vec![2, 8],
            ),
            (
                "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight",
                vec![8, 2],
            ),
            (
                "lora_unet_down_blocks_5_attentions_0_proj_in.lora_down.weight",
                vec![2, 8],
            ),
            (
                "lora_unet_down_blocks_5_attentions_0_proj_in.lora_up.weight",
                vec![8, 2],
            ),
            (
                "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
                vec![2, 32],
            ),
        ],
    );
    let o = generate(
        "pipeline_sd1_eps",
        &[format!("{}:0.3", mixed.display())],
        &init,
        &saved,
        &dir.join("a.png"),
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        warnings[0].contains("2 LoRA keys/layers not applied"),
        "{}",
        warnings[0]
    );
    assert!(
        warnings[0].contains("lora_unet_down_blocks_5_attentions_0_proj_in"),
        "{}",
        warnings[0]
    );
    assert!(
        warnings[0].contains("lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"),
        "{}",
        warnings[0]
    );

    let misfit = dir.join("misfit.safetensors");
    write_lora(
        &misfit,
        &[
            (
                "lora_unet_down_blocks_5_attentions_0_proj_in.lora_down.weight",
                vec![2, 8],
            ),
            (
                "lora_unet_down_blocks_5_attentions_0_proj_in.lora_up.weight",
                vec![8, 2],
            ),
        ],
    );
    for (lora, want) in [
        (
            dir.join("missing.safetensors").display().to_string(),
            "no such LoRA file",
        ),
        (
            fixture("pipeline_sd1_eps/io.safetensors")
                .display()
                .to_string(),
            "no LoRA layers found",
        ),
        (
            misfit.display().to_string(),
            "none of its 1 LoRA layers fits this model",
        ),
    ] {
        let o = generate(
            "pipeline_sd1_eps",
            &[lora],
            &init,
            &saved,
            &dir.join("b.png"),
        );
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{err}");
        assert!(
            lines[0].starts_with("error: ") && lines[0].contains(want),
            "{err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
