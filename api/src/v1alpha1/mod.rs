//! `palisade.dev/v1alpha1`.
mod common;
mod isolation;
mod monitor;
mod policy;

pub use common::*;
pub use isolation::*;
pub use monitor::*;
pub use policy::*;
