#!/usr/bin/env bash
# The Palisade demo on a fresh Debian machine (run as root): installs what it needs, builds,
# and runs e2e/src/bin/palisade-demo.rs. Pass --keep to leave the demo running until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
export PALISADE_CACHE=${PALISADE_CACHE:-$HOME/.cache/palisade}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PALISADE_CACHE/target}
bash hack/install-toolchain.sh
export PALISADE_CONTROL_PLANE_BIN=$(bash hack/build-control-plane.sh | tail -n1)
cargo build --locked --bins
export PALISADE_BIN_DIR=$CARGO_TARGET_DIR/debug
export RUST_LOG=${RUST_LOG:-warn}
exec "$PALISADE_BIN_DIR/palisade-demo" "$@"
