//! Ops Likeness implements itself on top of Burn's, where Burn's own path is slow or memory-hungry
//! for diffusion training. Each has a parity test against the plain Burn op on the CPU backend.

pub mod attention;
