//! Palisade's node agent as a library: the binary in main.rs wires these together.

pub mod capture;
pub mod capture_filters;
pub mod cidr;
pub mod detect;
pub mod features;
pub mod http;
pub mod inventory;
pub mod isolation;
pub mod metrics;
pub mod openapi;
pub mod redact;
pub mod response;
pub mod runtime;
pub mod template;
pub mod tls_client;
pub mod workloads;
