#!/usr/bin/env bash
# Palisade's overhead benchmark, from a fresh Debian machine (run as root: the agent loads eBPF, the
# stand-in kubelet makes cgroups and network namespaces). Installs what it needs (the toolchain,
# Debian's nginx-light and wrk), builds release binaries, then runs bench/ (palisade-bench): agent
# OFF vs agent ON in alternating rounds, side by side in one run. Prints markdown and rewrites
# docs/benchmarks.md. Extra arguments go to palisade-bench (e.g. --rounds 7, --no-write; --tls,
# --enforcement or --body-bytes 1024,65536 for the other reports in docs/).
set -euo pipefail
cd "$(dirname "$0")/.."
export PALISADE_CACHE=${PALISADE_CACHE:-$HOME/.cache/palisade}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PALISADE_CACHE/target}

if [ "$(id -u)" != 0 ]; then
  echo "hack/bench-overhead.sh: needs root (eBPF, cgroups, network namespaces)" >&2
  exit 1
fi

bash hack/install-toolchain.sh   # also installs wrk
if ! command -v nginx >/dev/null 2>&1; then
  echo "installing Debian's nginx-light (the benchmark's server)" >&2
  # Do not let the package start the distribution's own nginx on port 80: the benchmark runs its
  # own instances, inside the pods' network namespaces.
  added_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    added_policy=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
  if [ "$added_policy" = 1 ]; then
    rm -f /usr/sbin/policy-rc.d
    trap - EXIT
  fi
fi

PALISADE_CONTROL_PLANE_BIN=$(bash hack/build-control-plane.sh | tail -n1)
export PALISADE_CONTROL_PLANE_BIN
# Release builds: the figures are about the agent as shipped, not a debug build.
cargo build --release --locked -p palisade-operator -p palisade-node-agent -p palisade-bench --bins
export PALISADE_BIN_DIR=$CARGO_TARGET_DIR/release
export RUST_LOG=${RUST_LOG:-warn} PALISADE_LOG=${PALISADE_LOG:-warn}
exec "$PALISADE_BIN_DIR/palisade-bench" "$@"
