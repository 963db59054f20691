//! The manifest set: control-plane settings, trust policy, environments and services.
//!
//! `raw` is the file format as written, `validate` the pure conversion into `model`.
//! Reading the directory is the `controlplane` crate's job (`controlplane::manifest::load`).

pub mod example;
pub mod model;
pub mod raw;
pub mod validate;

pub use model::*;
pub use validate::{validate, CONTROLPLANE_FILE};
