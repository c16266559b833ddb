//! LoRA on the networks' linear layers: walking every `Linear` by its diffusers/transformers
//! path, attaching trainable adapters to the chosen ones, and merging updates into weights.

use burn::module::Param;
use burn::prelude::*;
use rand::{SeedableRng, rngs::StdRng};

use crate::clip_text::ClipTextModel;
use crate::nn::{Linear, LoraAdapter};
use crate::unet::UNet2DConditionModel;
use crate::unet::attention::{BasicTransformerBlock, Transformer2DModel};

/// Every `Linear` of a network with its full weight path (without `.weight`).
pub trait Linears<B: Backend> {
    fn linears_mut(&mut self) -> Vec<(String, &mut Linear<B>)>;

    fn linears(&mut self) -> Vec<String> {
        self.linears_mut().into_iter().map(|(p, _)| p).collect()
    }
}

fn block_linears<'a, B: Backend>(
    prefix: &str,
    b: &'a mut BasicTransformerBlock<B>,
    out: &mut Vec<(String, &'a mut Linear<B>)>,
) {
    for (name, attn) in [("attn1", &mut b.attn1), ("attn2", &mut b.attn2)] {
        out.push((format!("{prefix}.{name}.to_q"), &mut attn.to_q));
        out.push((format!("{prefix}.{name}.to_k"), &mut attn.to_k));
        out.push((format!("{prefix}.{name}.to_v"), &mut attn.to_v));
        out.push((format!("{prefix}.{name}.to_out.0"), &mut attn.to_out.0));
    }
    out.push((format!("{prefix}.ff.net.0.proj"), &mut b.ff.net.0.proj));
    out.push((format!("{prefix}.ff.net.2"), &mut b.ff.net.2));
}

fn transformer_linears<'a, B: Backend>(
    prefix: &str,
    t: &'a mut Transformer2DModel<B>,
    out: &mut Vec<(String, &'a mut Linear<B>)>,
) {
    out.push((format!("{prefix}.proj_in"), &mut t.proj_in));
    for (k, b) in t.transformer_blocks.iter_mut().enumerate() {
        block_linears(&format!("{prefix}.transformer_blocks.{k}"), b, out);
    }
    out.push((format!("{prefix}.proj_out"), &mut t.proj_out));
}

impl<B: Backend> Linears<B> for UNet2DConditionModel<B> {
    fn linears_mut(&mut self) -> Vec<(String, &mut Linear<B>)> {
        let mut out = Vec::new();
        out.push((
            "time_embedding.linear_1".to_string(),
            &mut self.time_embedding.linear_1,
        ));
        out.push((
            "time_embedding.linear_2".to_string(),
            &mut self.time_embedding.linear_2,
        ));
        for (i, blk) in self.down_blocks.iter_mut().enumerate() {
            for (j, r) in blk.resnets.iter_mut().enumerate() {
                out.push((
                    format!("down_blocks.{i}.resnets.{j}.time_emb_proj"),
                    &mut r.time_emb_proj,
                ));
            }
            for (j, a) in blk.attentions.iter_mut().enumerate() {
                transformer_linears(&format!("down_blocks.{i}.attentions.{j}"), a, &mut out);
            }
        }
        for (j, r) in self.mid_block.resnets.iter_mut().enumerate() {
            out.push((
                format!("mid_block.resnets.{j}.time_emb_proj"),
                &mut r.time_emb_proj,
            ));
        }
        for (j, a) in self.mid_block.attentions.iter_mut().enumerate() {
            transformer_linears(&format!("mid_block.attentions.{j}"), a, &mut out);
        }
        for (i, blk) in self.up_blocks.iter_mut().enumerate() {
            for (j, r) in blk.resnets.iter_mut().enumerate() {
                out.push((
                    format!("up_blocks.{i}.resnets.{j}.time_emb_proj"),
                    &mut r.time_emb_proj,
                ));
            }
            for (j, a) in blk.attentions.iter_mut().enumerate() {
                transformer_linears(&format!("up_blocks.{i}.attentions.{j}"), a, &mut out);
            }
        }
        out
    }
}

impl<B: Backend> Linears<B> for ClipTextModel<B> {
    fn linears_mut(&mut self) -> Vec<(String, &mut Linear<B>)> {
        let mut out = Vec::new();
        for (i, l) in self.text_model.encoder.layers.iter_mut().enumerate() {
            let p = format!("text_model.encoder.layers.{i}");
            out.push((format!("{p}.self_attn.q_proj"), &mut l.self_attn.q_proj));
            out.push((format!("{p}.self_attn.k_proj"), &mut l.self_attn.k_proj));
            out.push((format!("{p}.self_attn.v_proj"), &mut l.self_attn.v_proj));
            out.push((format!("{p}.self_attn.out_proj"), &mut l.self_attn.out_proj));
            out.push((format!("{p}.mlp.fc1"), &mut l.mlp.fc1));
            out.push((format!("{p}.mlp.fc2"), &mut l.mlp.fc2));
        }
        out
    }
}

/// Which layers get adapters, by the last components of their path.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LoraTargets {
    pub suffixes: Vec<String>,
}

impl LoraTargets {
    /// The UNet's attention projections (diffusers' DreamBooth LoRA default).
    pub fn unet_attention() -> Self {
        Self::of(&["to_q", "to_k", "to_v", "to_out.0"])
    }

    /// Attention projections plus the feed-forward and the transformer's in/out projections.
    pub fn unet_extended() -> Self {
        Self::of(&[
            "to_q",
            "to_k",
            "to_v",
            "to_out.0",
            "ff.net.0.proj",
            "ff.net.2",
            "proj_in",
            "proj_out",
        ])
    }

    /// The text encoder's attention projections.
    pub fn text_attention() -> Self {
        Self::of(&["q_proj", "k_proj", "v_proj", "out_proj"])
    }

    /// Attention and MLP of the text encoder.
    pub fn text_extended() -> Self {
        Self::of(&["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"])
    }

    fn of(s: &[&str]) -> Self {
        Self {
            suffixes: s.iter().map(|s| s.to_string()).collect(),
        }
    }

    pub fn matches(&self, path: &str) -> bool {
        self.suffixes
            .iter()
            .any(|s| path == s || path.ends_with(&format!(".{s}")))
    }
}

/// Rank and alpha of new adapters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoraShape {
    pub rank: usize,
    pub alpha: f64,
}

/// Freezes every parameter of `net` and attaches fresh adapters to the targeted layers: `down`
/// kaiming-uniform (as PEFT/torch's Linear init), `up` zeros, so training starts at the base
/// model. Returns the paths that got adapters.
pub fn attach<B: Backend, M: Module<B> + Linears<B>>(
    net: M,
    targets: &LoraTargets,
    shape: LoraShape,
    seed: u64,
) -> (M, Vec<String>) {
    let mut net = net.no_grad();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut paths = Vec::new();
    for (path, lin) in net.linears_mut() {
        if !targets.matches(&path) {
            continue;
        }
        let device = lin.weight.device();
        let [d_out, d_in] = lin.weight.dims();
        // kaiming_uniform(a=sqrt(5)) on [rank, in] gives a bound of 1/sqrt(in).
        let bound = 1.0 / (d_in as f32).sqrt();
        let down: Vec<f32> = (0..shape.rank * d_in)
            .map(|_| rand::Rng::random_range(&mut rng, -bound..bound))
            .collect();
        let down = Tensor::<B, 2>::from_data(TensorData::new(down, [shape.rank, d_in]), &device);
        let up = Tensor::<B, 2>::zeros([d_out, shape.rank], &device);
        lin.lora = Some(LoraAdapter {
            down: Param::from_tensor(down),
            up: Param::from_tensor(up),
            alpha: shape.alpha,
        });
        paths.push(path);
    }
    (net, paths)
}

/// The trained adapters of a network, by layer path.
pub fn adapters<B: Backend, M: Linears<B>>(net: &mut M) -> Vec<(String, LoraAdapter<B>)> {
    net.linears_mut()
        .into_iter()
        .filter_map(|(p, l)| l.lora.clone().map(|a| (p, a)))
        .collect()
}

/// Folds every attached adapter into its base weight and removes it.
pub fn merge_adapters<B: Backend, M: Linears<B>>(net: &mut M) {
    for (_, lin) in net.linears_mut() {
        if let Some(a) = lin.lora.take() {
            let delta = a.delta_weight();
            lin.merge_delta(delta);
        }
    }
}

/// One layer's low-rank update as plain data: `down` [rank, in], `up` [out, rank] (row-major
/// f32), `alpha` (scale = alpha / rank).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraLayer {
    /// `unet` or `text_encoder`.
    pub network: String,
    /// The layer's diffusers/transformers path, e.g. `down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`.
    pub path: String,
    pub rank: usize,
    pub d_in: usize,
    pub d_out: usize,
    pub down: Vec<f32>,
    pub up: Vec<f32>,
    pub alpha: f32,
}

/// A set of LoRA layers with free-form string metadata: what a LoRA file holds, whatever its
/// format on disk.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoraSet {
    pub layers: Vec<LoraLayer>,
    pub metadata: std::collections::BTreeMap<String, String>,
}

impl LoraSet {
    /// Collects the adapters of a network as data.
    pub fn add_adapters<B: Backend, M: Linears<B>>(
        &mut self,
        network: &str,
        net: &mut M,
    ) -> crate::Result<()> {
        for (path, a) in adapters(net) {
            let [rank, d_in] = a.down.dims();
            let d_out = a.up.dims()[0];
            let read = |t: Tensor<B, 2>| {
                t.into_data()
                    .convert::<f32>()
                    .to_vec::<f32>()
                    .map_err(|e| crate::ModelError::Invalid(format!("reading {path}: {e:?}")))
            };
            self.layers.push(LoraLayer {
                network: network.to_string(),
                down: read(a.down.val())?,
                up: read(a.up.val())?,
                path,
                rank,
                d_in,
                d_out,
                alpha: a.alpha as f32,
            });
        }
        Ok(())
    }

    /// Merges the layers of `network` into `net`'s weights with an extra `scale` (a LoRA file
    /// applied at strength `scale`). Returns the layer paths that found no place.
    pub fn merge_into<B: Backend, M: Linears<B>>(
        &self,
        network: &str,
        net: &mut M,
        scale: f32,
    ) -> Vec<String> {
        let mut by_path: std::collections::HashMap<&str, &LoraLayer> = self
            .layers
            .iter()
            .filter(|l| l.network == network)
            .map(|l| (l.path.as_str(), l))
            .collect();
        for (path, lin) in net.linears_mut() {
            let Some(l) = by_path.remove(path.as_str()) else {
                continue;
            };
            let [d_out, d_in] = lin.weight.dims();
            if d_out != l.d_out || d_in != l.d_in {
                by_path.insert(&l.path, l);
                continue;
            }
            let device = lin.weight.device();
            let down = Tensor::<B, 2>::from_data(
                TensorData::new(l.down.clone(), [l.rank, l.d_in]),
                &device,
            );
            let up = Tensor::<B, 2>::from_data(
                TensorData::new(l.up.clone(), [l.d_out, l.rank]),
                &device,
            );
            let s = scale as f64 * l.alpha as f64 / l.rank.max(1) as f64;
            lin.merge_delta(up.matmul(down) * s);
        }
        let mut left: Vec<String> = by_path.keys().map(|p| format!("{network}.{p}")).collect();
        left.sort();
        left
    }

    /// Attaches the layers of `network` as trainable adapters (resuming or continuing training).
    pub fn attach_to<B: Backend, M: Module<B> + Linears<B>>(
        &self,
        network: &str,
        net: M,
    ) -> crate::Result<M> {
        let mut net = net.no_grad();
        let by_path: std::collections::HashMap<&str, &LoraLayer> = self
            .layers
            .iter()
            .filter(|l| l.network == network)
            .map(|l| (l.path.as_str(), l))
            .collect();
        let mut placed = 0;
        for (path, lin) in net.linears_mut() {
            let Some(l) = by_path.get(path.as_str()) else {
                continue;
            };
            let [d_out, d_in] = lin.weight.dims();
            if d_out != l.d_out || d_in != l.d_in {
                return Err(crate::ModelError::Invalid(format!(
                    "LoRA layer {network}.{path} is {}x{}, the model's is {d_out}x{d_in}",
                    l.d_out, l.d_in
                )));
            }
            let device = lin.weight.device();
            lin.lora = Some(LoraAdapter {
                down: Param::from_tensor(Tensor::from_data(
                    TensorData::new(l.down.clone(), [l.rank, l.d_in]),
                    &device,
                )),
                up: Param::from_tensor(Tensor::from_data(
                    TensorData::new(l.up.clone(), [l.d_out, l.rank]),
                    &device,
                )),
                alpha: l.alpha as f64,
            });
            placed += 1;
        }
        if placed != by_path.len() {
            return Err(crate::ModelError::Invalid(format!(
                "{} of {} {network} LoRA layers found no place in the model",
                by_path.len() - placed,
                by_path.len()
            )));
        }
        Ok(net)
    }
}
