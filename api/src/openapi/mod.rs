//! OpenAPI documents, both ways:
//!
//! - [`parse_operations`] reads the operations (method, full path template, deprecated) of the
//!   document an ApiMonitor references (`spec.openApi`), for shadow and zombie endpoints. The
//!   operator runs it and sends the result to the agents in `MonitorConfig.api_operations`.
//! - [`inventory_to_openapi`] writes an OpenAPI 3.0.3 document from the endpoints a monitor
//!   discovered (`status.endpoints`), which `palisadectl openapi` prints.

mod export;
mod parse;

pub use export::inventory_to_openapi;
pub use parse::{parse_operations, OpenApiError, MAX_DOCUMENT_BYTES, MAX_OPERATIONS};

/// The HTTP methods an OpenAPI path item can hold operations for, lower case as in documents.
pub const OPERATION_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];
