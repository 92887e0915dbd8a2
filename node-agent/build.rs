//! Builds the eBPF programs (`node-agent-ebpf`, target bpfel-unknown-none) and leaves the object
//! in `$OUT_DIR/node-agent-ebpf`, which `src/capture` embeds with `include_bytes_aligned!`.
//!
//! The agent always embeds a freshly built object: there is no switch to skip this step.

use std::{env, path::PathBuf};

use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(
        env::var_os("CARGO_MANIFEST_DIR").ok_or_else(|| anyhow!("CARGO_MANIFEST_DIR not set"))?,
    );
    let workspace = manifest_dir
        .parent()
        .ok_or_else(|| anyhow!("node-agent has no parent directory"))?;
    let ebpf_dir = workspace.join("node-agent-ebpf");
    let common_dir = workspace.join("node-agent-common");

    // aya-build only watches the eBPF crate; the #[repr(C)] layouts live in the common crate and a
    // stale object with an old layout must never be embedded.
    println!("cargo:rerun-if-changed={}", common_dir.join("src").display());
    println!(
        "cargo:rerun-if-changed={}",
        common_dir.join("Cargo.toml").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("Cargo.toml").display()
    );
    println!("cargo:rerun-if-env-changed=PATH");

    if which("bpf-linker").is_none() {
        return Err(anyhow!(
            "bpf-linker was not found in PATH; it links the eBPF programs of node-agent-ebpf. \
             Install the eBPF toolchain with `bash hack/install-toolchain.sh` (it adds rust-src and \
             builds bpf-linker against rustc's own LLVM), make sure ~/.cargo/bin is in PATH, and \
             build again."
        ));
    }

    // aya-build passes `-Z build-std=core` only on nightly or when RUSTC_BOOTSTRAP=1; the child
    // cargo inherits this environment, so a stable toolchain is enough.
    // (set_var is safe in edition 2021; the build script is single-threaded at this point.)
    env::set_var("RUSTC_BOOTSTRAP", "1");

    let ebpf_dir_str = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non UTF-8 path {}", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [Package {
            name: "node-agent-ebpf",
            root_dir: ebpf_dir_str,
            ..Default::default()
        }],
        Toolchain::Custom("stable"),
    )
    .context(
        "building the eBPF programs (node-agent-ebpf) failed; if the toolchain is incomplete \
         (rust-src, bpf-linker), run `bash hack/install-toolchain.sh`",
    )?;
    Ok(())
}

/// Finds `name` in PATH without an extra build dependency.
fn which(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
