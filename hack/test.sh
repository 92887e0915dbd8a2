#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine (run as root: the e2e suite loads eBPF,
# makes cgroups and network namespaces). Installs what it needs, caches what is slow, and prints
# the time of each phase. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
export PALISADE_CACHE=${PALISADE_CACHE:-$HOME/.cache/palisade}
# One target dir across clones, so a warm CI run rebuilds only what changed.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PALISADE_CACHE/target}
export CARGO_TERM_COLOR=never RUST_BACKTRACE=1
# Incremental caches are keyed by the clone's path and CI clones afresh: they would only fill the disk.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}

phase_start=$(date +%s); suite_start=$phase_start
phase() { # $1 = name of the phase that just ended
  local now; now=$(date +%s)
  printf '== phase %-28s %4ss (total %ss)\n' "$1" $((now - phase_start)) $((now - suite_start))
  phase_start=$now
}

if [ "$(id -u)" != 0 ]; then
  echo "hack/test.sh: the e2e suite needs root (eBPF, cgroups, network namespaces)" >&2
  exit 1
fi

bash hack/install-toolchain.sh
phase "toolchain"
cp_bin=$(bash hack/build-control-plane.sh | tail -n1)
export PALISADE_CONTROL_PLANE_BIN=$cp_bin
phase "control plane binaries"
# OpenSSL 3.6 for the root test of the TLS key search on a newer layout than Debian's 3.0.
PALISADE_OPENSSL_LIB=$(bash hack/build-openssl.sh | tail -n1)
export PALISADE_OPENSSL_LIB
phase "OpenSSL 3.6 (for a test)"

cargo fmt --all --check
cargo clippy --all-targets --locked -- -D warnings
phase "fmt + clippy"

cargo build --locked --bins
export PALISADE_BIN_DIR=$CARGO_TARGET_DIR/debug
phase "build"

# Unit tests, the CRD drift check (api/tests), the kernel capture tests and the e2e suite
# against a real kube-apiserver. Test binaries run one after another; tests inside one run in
# parallel.
test_log=$(mktemp)
status=0
cargo test --locked --no-fail-fast --lib --bins --tests -- --test-threads=2 2>&1 | tee "$test_log" || status=$?
phase "tests"

# One closing line for the whole suite. Tests that cannot run here print "SKIPPED: <why>" and
# are counted as skipped, not passed.
skipped=$(grep -c '^SKIPPED' "$test_log" || true)
awk -v skipped="$skipped" '
  /^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
  END { printf "tests: %d passed, %d failed, %d skipped\n", p - skipped, f, skipped }' "$test_log"
rm -f "$test_log"
exit "$status"
