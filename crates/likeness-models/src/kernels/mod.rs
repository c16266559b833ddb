//! Ops Likeness implements itself on top of Burn's, where Burn's own path is slow or memory-hungry
//! for diffusion training. Each has a parity test against the plain Burn computation on the CPU
//! backend (`tests/suite/kernels.rs`).
//!
//! They are autodiff ops with their own backward. Likeness' model code is generic over
//! `Backend`; a backend-extension trait would have to be threaded through every module and
//! trainer, so instead each op recognises by type the autodiff backends Likeness runs
//! ([`crate::device::dispatch`]'s backends under `Autodiff`, with and without gradient
//! checkpointing) and leaves every other backend to Burn's ops.

use std::any::Any;

use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use burn::tensor::ops::FloatTensor;

/// A process-wide choice among named variants: the enum (`Copy`, `u8` discriminants in order),
/// `ALL` in that order (the first is the default [`named_choice`] falls back to), each one's
/// `name()` and `from_name()`.
macro_rules! named_choices {
    (
        $(#[$meta:meta])*
        pub enum $ty:ident {
            $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(u8)]
        pub enum $ty {
            $($(#[$vmeta])* $variant,)+
        }

        impl $ty {
            /// Every choice, in discriminant order (the first is the default).
            pub const ALL: &'static [$ty] = &[$($ty::$variant,)+];

            /// The name the environment variable and the benchmark use.
            pub fn name(self) -> &'static str {
                match self {
                    $($ty::$variant => $text,)+
                }
            }

            /// The choice of this name.
            pub fn from_name(name: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|c| c.name() == name)
            }
        }
    };
}

pub mod attention;
pub mod conv;
#[cfg(any(feature = "cuda", feature = "wgpu"))]
pub mod cube;
pub mod geglu;
pub mod group_norm;
pub mod matmul;

/// Whether these ops are on: yes unless `LIKENESS_KERNELS` is `0`, `off` or `false` (for
/// side-by-side measurements against Burn's own ops in one binary).
pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        !matches!(
            std::env::var("LIKENESS_KERNELS").as_deref(),
            Ok("0" | "off" | "false")
        )
    })
}

/// A process-wide choice stored as a small number: set explicitly, else decided once (from the
/// environment) on first read. The kernels' policies (`attention::kernel_policy`,
/// `conv::conv_policy`) are each one of these.
struct Setting(std::sync::atomic::AtomicU8);

impl Setting {
    const UNSET: u8 = u8::MAX;

    const fn new() -> Self {
        Self(std::sync::atomic::AtomicU8::new(Self::UNSET))
    }

    /// The value set, else `decide()` (kept unless a `set` came first).
    fn get(&self, decide: impl FnOnce() -> u8) -> u8 {
        use std::sync::atomic::Ordering;
        let v = self.0.load(Ordering::Relaxed);
        if v != Self::UNSET {
            return v;
        }
        let decided = decide();
        match self
            .0
            .compare_exchange(Self::UNSET, decided, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => decided,
            Err(set) => set,
        }
    }

    fn set(&self, v: u8) {
        self.0.store(v, std::sync::atomic::Ordering::Relaxed);
    }
}

/// One of `all` (in discriminant order, the first the default) held in `setting`: set there,
/// else named by environment variable `var` (`name` gives each one's name; an unknown name is
/// warned about and the default kept).
fn named_choice<T: Copy>(
    setting: &Setting,
    var: &str,
    all: &[T],
    name: impl Fn(T) -> &'static str,
) -> T {
    let from_env = || {
        let Ok(wanted) = std::env::var(var) else {
            return 0;
        };
        all.iter()
            .position(|&c| name(c) == wanted)
            .unwrap_or_else(|| {
                let names: Vec<_> = all.iter().map(|&c| name(c)).collect();
                tracing::warn!(
                    "{var}={wanted} is not one of {}; {} runs",
                    names.join(", "),
                    name(all[0])
                );
                0
            }) as u8
    };
    all[usize::from(setting.get(from_env)).min(all.len() - 1)]
}

/// Whether Likeness' CubeCL kernels run on backend `I` (a CubeCL backend, kernels on).
fn cube_applies<I: Backend>() -> bool {
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    return cube::enabled() && cube::applies::<I>();
    #[cfg(not(any(feature = "cuda", feature = "wgpu")))]
    false
}

/// `t` as a tensor of backend `A`, if `B` is `A`.
fn downcast<B: Backend, A: Backend, const D: usize>(t: &Tensor<B, D>) -> Option<Tensor<A, D>> {
    (t as &dyn Any).downcast_ref::<Tensor<A, D>>().cloned()
}

fn float<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

fn wrap<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// Calls `$callback!(Inner, Strategy)` for every (inner backend, checkpointing) pair recognised.
macro_rules! for_each_autodiff_backend {
    ($callback:ident) => {
        for_each_autodiff_backend!(@inner $callback, burn::backend::Flex);
        #[cfg(feature = "cuda")]
        {
            for_each_autodiff_backend!(@inner $callback, burn::backend::Cuda<f32>);
            for_each_autodiff_backend!(@inner $callback, burn::backend::Cuda<half::f16>);
            for_each_autodiff_backend!(@inner $callback, burn::backend::Cuda<half::bf16>);
        }
        #[cfg(all(feature = "cuda", feature = "fusion"))]
        {
            type Unfused<F> = burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, F, i32, u8>;
            for_each_autodiff_backend!(@inner $callback, Unfused<f32>);
            for_each_autodiff_backend!(@inner $callback, Unfused<half::f16>);
            for_each_autodiff_backend!(@inner $callback, Unfused<half::bf16>);
        }
        #[cfg(feature = "wgpu")]
        {
            for_each_autodiff_backend!(@inner $callback, burn::backend::Wgpu<f32>);
            for_each_autodiff_backend!(@inner $callback, burn::backend::Wgpu<half::f16>);
        }
    };
    (@inner $callback:ident, $inner:ty) => {
        $callback!($inner, burn::backend::autodiff::checkpoint::strategy::NoCheckpointing);
        $callback!($inner, burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing);
    };
}
use for_each_autodiff_backend;

/// Whether these ops use their own backward on backend `B`: one of the autodiff backends
/// recognised (see the module notes); elsewhere Burn's ops run.
pub fn has_fused_backward<B: Backend>() -> bool {
    macro_rules! check {
        ($inner:ty, $strategy:ty) => {
            if std::any::TypeId::of::<B>()
                == std::any::TypeId::of::<burn::backend::Autodiff<$inner, $strategy>>()
            {
                return true;
            }
        };
    }
    for_each_autodiff_backend!(check);
    false
}

/// Whether autodiff tracks `t`: a leaf that takes gradients, or computed from one. Known on the
/// autodiff backends recognised (module notes); `true` on any other, the answer that costs work
/// rather than gradients.
pub fn is_tracked<B: Backend, const D: usize>(t: &Tensor<B, D>) -> bool {
    macro_rules! check {
        ($inner:ty, $strategy:ty) => {
            if let Some(t) = downcast::<B, burn::backend::Autodiff<$inner, $strategy>, D>(t) {
                return !float(t).node.requirement.is_none();
            }
        };
    }
    for_each_autodiff_backend!(check);
    true
}

/// `.to_dtype(d)`: [`crate::nn::in_dtype`] as a method — a cast only where the dtype differs.
trait ToDtype {
    fn to_dtype(self, dtype: burn::tensor::DType) -> Self;
}

impl<B: Backend, const D: usize> ToDtype for Tensor<B, D> {
    fn to_dtype(self, dtype: burn::tensor::DType) -> Self {
        crate::nn::in_dtype(self, dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::{Setting, named_choice};

    /// A choice from its variable's name; an unknown name or none gives the first.
    #[test]
    fn a_named_choice_is_read_from_the_environment() {
        #[derive(Debug, Clone, Copy, PartialEq)]
        enum C {
            A,
            B,
        }
        let name = |c: C| match c {
            C::A => "a",
            C::B => "b",
        };
        // SAFETY: these variables are this test's own; nothing else reads or writes them.
        unsafe {
            std::env::set_var("LIKENESS_TEST_CHOICE_KNOWN", "b");
            std::env::set_var("LIKENESS_TEST_CHOICE_UNKNOWN", "c");
        }
        let all = [C::A, C::B];
        let pick = |var| named_choice(&Setting::new(), var, &all, name);
        assert_eq!(pick("LIKENESS_TEST_CHOICE_KNOWN"), C::B);
        assert_eq!(pick("LIKENESS_TEST_CHOICE_UNKNOWN"), C::A);
        assert_eq!(pick("LIKENESS_TEST_CHOICE_UNSET"), C::A);
        let set = Setting::new();
        set.set(1);
        assert_eq!(
            named_choice(&set, "LIKENESS_TEST_CHOICE_UNSET", &all, name),
            C::B
        );
    }

    /// Decided once on first read; a `set` wins over the decision, before or after it.
    #[test]
    fn a_setting_is_decided_once_and_set_wins() {
        let s = Setting::new();
        assert_eq!(s.get(|| 2), 2);
        assert_eq!(s.get(|| unreachable!("decided already")), 2);
        s.set(1);
        assert_eq!(s.get(|| unreachable!("set")), 1);
        let t = Setting::new();
        t.set(0);
        assert_eq!(t.get(|| 2), 0);
    }
}
