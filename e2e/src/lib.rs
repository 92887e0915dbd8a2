//! End-to-end harness for Palisade: a real etcd and kube-apiserver on loopback
//! ([`ControlPlane`]) and a stand-in kubelet ([`FakeKubelet`]) that runs pods as real processes
//! in kubelet-layout cgroups and their own network namespaces.
//!
//! Everything the harness starts is stopped by pid when its guard drops; ports are picked free.
//! Set `PALISADE_E2E_KEEP=1` to keep logs, `PALISADE_CONTROL_PLANE_BIN=<dir>` to use prebuilt
//! binaries and `RUST_LOG` to tune the log filter.

use std::path::PathBuf;

pub mod argocd;
mod certs;
pub mod control_plane;
pub mod host;
pub mod kubelet;
pub mod palisade;
pub mod process;

pub use control_plane::ControlPlane;
pub use host::{cgroup2_root, cgroup_pids};
pub use kubelet::{FakeKubelet, PodLaunch, RunningPod};
pub use process::{free_port, ChildGuard};

/// Installs a tracing subscriber (env filter from `RUST_LOG`, default `info`; test writer).
/// Safe to call from every test: only the first call installs it.
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// The Cargo workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// True when running as root (uid 0). Otherwise prints `SKIPPED: <test>: needs root (...)` and
/// returns false, so a test can `if !require_root() { return; }`.
pub fn require_root() -> bool {
    if is_root() {
        return true;
    }
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("<unnamed test>");
    println!("SKIPPED: {test}: needs root (cgroups, network namespaces and bridges)");
    false
}

fn is_root() -> bool {
    // Effective uid from /proc (no libc call needed): the second field of the `Uid:` line.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}
