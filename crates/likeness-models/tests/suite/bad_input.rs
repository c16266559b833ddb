//! Bad model input gives one clear error naming the file (and key), never a panic.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{B, fixture};
use likeness_models::sd::{LoadOptions, StableDiffusion};
use likeness_models::single_file;

fn load_err(path: &Path) -> String {
    match StableDiffusion::<B>::load(path, &LoadOptions::default(), &Default::default()) {
        Ok(_) => panic!("{} loaded but should not", path.display()),
        Err(e) => {
            let s = e.to_string();
            assert!(!s.contains('\n'), "error is not one line: {s}");
            s
        }
    }
}

/// A copy of a fixture pipeline folder to break.
fn copy_pipeline(name: &str) -> (tempdir::Dir, PathBuf) {
    let tmp = tempdir::Dir::new(name);
    let dst = tmp.path().join("model");
    copy_dir(&fixture("pipeline_sd1_eps"), &dst);
    (tmp, dst)
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), to).unwrap();
        }
    }
}

mod tempdir {
    use std::path::{Path, PathBuf};
    pub struct Dir(PathBuf);
    impl Dir {
        pub fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!(
                "likeness-test-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[test]
fn missing_folder() {
    let e = load_err(Path::new("/nonexistent/likeness/model"));
    assert!(e.contains("/nonexistent/likeness/model"), "{e}");
}

#[test]
fn folder_that_is_not_a_model() {
    let tmp = tempdir::Dir::new("empty");
    let e = load_err(tmp.path());
    assert!(e.contains("model_index.json"), "{e}");
}

#[test]
fn missing_part() {
    let (_tmp, dir) = copy_pipeline("nounet");
    std::fs::remove_dir_all(dir.join("unet")).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("unet") && e.contains("missing"), "{e}");
}

#[test]
fn unsupported_config_field() {
    let (_tmp, dir) = copy_pipeline("badcfg");
    let p = dir.join("unet/config.json");
    let text = std::fs::read_to_string(&p).unwrap().replace(
        "\"class_embed_type\": null",
        "\"class_embed_type\": \"timestep\"",
    );
    std::fs::write(&p, text).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("class_embed_type"), "{e}");
    assert!(e.contains("config.json"), "{e}");
}

#[test]
fn truncated_weights() {
    let (_tmp, dir) = copy_pipeline("trunc");
    let p = dir.join("vae/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("truncated") && e.contains("diffusion_pytorch_model"),
        "{e}"
    );
}

#[test]
fn not_a_safetensors_file() {
    let (_tmp, dir) = copy_pipeline("notst");
    let p = dir.join("text_encoder/model.safetensors");
    std::fs::write(&p, b"<html>this is a download error page</html>").unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("not a safetensors file") && e.contains("model.safetensors"),
        "{e}"
    );
}

#[test]
fn shape_mismatch_names_the_key() {
    let (_tmp, dir) = copy_pipeline("shape");
    let p = dir.join("unet/config.json");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("\"cross_attention_dim\": 32", "\"cross_attention_dim\": 48");
    std::fs::write(&p, text).unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("attn2.to_k.weight") && e.contains("shape"),
        "{e}"
    );
}

#[test]
fn single_file_of_unknown_layout() {
    let tmp = tempdir::Dir::new("unknown");
    let p = tmp.path().join("lora.safetensors");
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2], &[0u8; 8]).unwrap();
    let data = safetensors::serialize([("lora_unet_x.lora_down.weight", view)], None).unwrap();
    std::fs::write(&p, data).unwrap();
    let e = load_err(&p);
    assert!(
        e.contains("unknown single-file layout") && e.contains("lora.safetensors"),
        "{e}"
    );
}

#[test]
fn single_file_architecture_is_read_from_shapes() {
    for (file, dir, family) in [
        ("single_file_sd1.safetensors", "pipeline_sd1_eps", "sd1"),
        ("single_file_sd2.safetensors", "pipeline_sd2_v", "sd2"),
    ] {
        let sf = single_file::open(&fixture(file)).expect("open");
        let cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixture(dir).join("unet/config.json")).unwrap(),
        )
        .unwrap();
        let got = &sf.arch.unet;
        for field in [
            "block_out_channels",
            "layers_per_block",
            "down_block_types",
            "up_block_types",
            "cross_attention_dim",
            "use_linear_projection",
            "in_channels",
            "out_channels",
        ] {
            assert_eq!(got[field], cfg[field], "{file}: unet {field}");
        }
        assert_eq!(
            serde_json::to_value(sf.arch.family).unwrap(),
            serde_json::json!(family)
        );
        let te: BTreeMap<String, serde_json::Value> = serde_json::from_str(
            &std::fs::read_to_string(fixture(dir).join("text_encoder/config.json")).unwrap(),
        )
        .unwrap();
        for field in [
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "vocab_size",
        ] {
            assert_eq!(
                sf.arch.text_encoder[field], te[field],
                "{file}: text {field}"
            );
        }
        let vae: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixture(dir).join("vae/config.json")).unwrap(),
        )
        .unwrap();
        for field in ["block_out_channels", "layers_per_block", "latent_channels"] {
            assert_eq!(sf.arch.vae[field], vae[field], "{file}: vae {field}");
        }
    }
}
