//! `likeness bench --profile`'s timing: a training step's backward is timed by Likeness' own
//! autodiff ops (`… bwd`), beside the forward's layers.

use crate::common;

use burn::backend::Autodiff;
use burn::prelude::*;
use common::{B, Io, fixture};
use likeness_models::profile;
use likeness_models::unet::UNet2DConditionModel;

#[test]
fn a_profiled_step_times_the_backward_of_each_own_op() {
    type A = Autodiff<B>;
    let device = Default::default();
    let model = UNet2DConditionModel::<A>::load_from_dir(fixture("unet_sd1"), &device).unwrap();
    let io = Io::open("unet_sd1/io.safetensors");
    let x = Tensor::<A, 4>::from_inner(io.tensor("sample"));
    let t = Tensor::<A, 1>::from_inner(io.tensor("timestep"));
    let ctx = Tensor::<A, 3>::from_inner(io.tensor("encoder_hidden_states"));
    // The table is the process's: other tests' layers may add to it while it is on, never take
    // from it, so the counts below are lower bounds.
    profile::set_enabled(true);
    let loss = model.forward(x, t, ctx).powi_scalar(2).mean();
    let grads = loss.backward();
    profile::set_enabled(false);
    assert!(model.conv_in.weight.grad(&grads).is_some());
    let table = profile::take();
    let calls = |kind: &str| {
        table
            .iter()
            .find(|(name, _)| *name == kind)
            .map_or(0, |(_, t)| t.calls)
    };
    println!("{table:?}");
    for kind in ["conv3x3", "group_norm", "layer_norm", "attention"] {
        let backward = format!("{kind} bwd");
        assert!(calls(kind) > 0, "{kind}: {table:?}");
        assert!(calls(&backward) > 0, "{backward}: {table:?}");
    }
}
