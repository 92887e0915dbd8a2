//! The README's demo command, run as written (minus the set-up `hack/demo.sh` does first): the
//! `palisade-demo` binary must show the policy's findings with secrets redacted, the attack
//! Events, the endpoint inventory, and the isolation refusing an outsider and being released.

use anyhow::{ensure, Context, Result};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_shows_findings_and_an_isolation() -> Result<()> {
    palisade_e2e::init_tracing();
    if !palisade_e2e::require_root() {
        return Ok(());
    }
    let bin = palisade_e2e::palisade::binaries()?.join("palisade-demo");
    let out = tokio::time::timeout(
        Duration::from_secs(240),
        tokio::process::Command::new(&bin)
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("the demo did not finish within 240 s")?
    .with_context(|| format!("running {}", bin.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "demo failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for want in [
        "Name:         demo-api-guard",
        "path-traversal",
        "AttackDetected",
        "GET /users/{id}",
        "outside/outsider-0 -> demo-api:8080: open",
        "outside/outsider-0 -> demo-api:8080: refused",
        "the node (kubelet probes) -> demo-api:8080/healthz: HTTP 200",
        "Phase:",
        "Isolated",
        "after kubectl delete: outside/outsider-0 -> demo-api:8080: open",
    ] {
        ensure!(
            stdout.contains(want),
            "the demo's output lacks {want:?}:\n{stdout}"
        );
    }
    for secret in ["s3cr3t-demo-token", "demo-secret-bearer", "wonderland"] {
        ensure!(
            !stdout.contains(secret),
            "the demo's output leaks {secret:?}:\n{stdout}"
        );
    }
    Ok(())
}
