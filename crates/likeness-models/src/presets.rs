//! The public Stable Diffusion configs that single-file checkpoints do not carry, and the CLIP
//! BPE vocabulary bundled into the binary (MIT, from OpenAI CLIP via open_clip).

use serde_json::{Value, json};

use crate::error::Result;
use crate::single_file::Family;
use crate::tokenizer::ClipTokenizer;

/// CLIP's byte-pair merges as OpenAI published them (gzip).
pub const CLIP_BPE_GZ: &[u8] = include_bytes!("../assets/bpe_simple_vocab_16e6.txt.gz");

/// The scheduler config each family ships with (SD 1.5: PNDM; SD 2.1: DDIM, v-prediction).
pub fn scheduler_json(family: Family) -> Value {
    match family {
        Family::Sd1 => json!({
            "_class_name": "PNDMScheduler",
            "beta_end": 0.012,
            "beta_schedule": "scaled_linear",
            "beta_start": 0.00085,
            "num_train_timesteps": 1000,
            "set_alpha_to_one": false,
            "skip_prk_steps": true,
            "steps_offset": 1,
            "trained_betas": null,
            "clip_sample": false,
            "prediction_type": "epsilon"
        }),
        Family::Sd2 => json!({
            "_class_name": "DDIMScheduler",
            "beta_end": 0.012,
            "beta_schedule": "scaled_linear",
            "beta_start": 0.00085,
            "clip_sample": false,
            "num_train_timesteps": 1000,
            "prediction_type": "v_prediction",
            "set_alpha_to_one": false,
            "skip_prk_steps": true,
            "steps_offset": 1,
            "trained_betas": null
        }),
    }
}

/// The tokenizer a family uses, built from the bundled BPE (SD1 pads with `<|endoftext|>`,
/// SD2 with `!`).
pub fn bundled_tokenizer(family: Family) -> Result<ClipTokenizer> {
    let pad = match family {
        Family::Sd1 => "<|endoftext|>",
        Family::Sd2 => "!",
    };
    ClipTokenizer::from_bpe_gz(CLIP_BPE_GZ, pad, 77)
}

/// The text encoder config of each family (SD 1.5: CLIP ViT-L/14; SD 2.1: OpenCLIP ViT-H/14
/// without its last layer).
pub fn text_encoder_json(family: Family) -> Value {
    match family {
        Family::Sd1 => json!({
            "architectures": ["CLIPTextModel"],
            "vocab_size": 49408,
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "max_position_embeddings": 77,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5,
            "bos_token_id": 0,
            "eos_token_id": 2,
            "pad_token_id": 1,
            "projection_dim": 768
        }),
        Family::Sd2 => json!({
            "architectures": ["CLIPTextModel"],
            "vocab_size": 49408,
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 23,
            "num_attention_heads": 16,
            "max_position_embeddings": 77,
            "hidden_act": "gelu",
            "layer_norm_eps": 1e-5,
            "bos_token_id": 0,
            "eos_token_id": 2,
            "pad_token_id": 1,
            "projection_dim": 512
        }),
    }
}
