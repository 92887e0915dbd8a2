//! `palisade.dev/v1alpha1`.
mod common;
mod monitor;
mod policy;

pub use common::*;
pub use monitor::*;
pub use policy::*;
