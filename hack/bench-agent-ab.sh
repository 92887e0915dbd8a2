#!/usr/bin/env bash
# Two agent builds compared on the whole machine, side by side: palisade-bench (the overhead
# benchmark, agent OFF vs ON in each round) run with agent A, then with agent B, PAIRS times,
# everything else (operator, control plane, bench) the same release build. The machines are noisy
# and drift over minutes; alternating is what makes the agents' figures comparable. Prints each
# run's paired and direct tables (palisade-bench --no-write: docs/ is left as it is).
#
#   bash hack/bench-agent-ab.sh AGENT_A AGENT_B [PAIRS] [palisade-bench arguments]
#
# AGENT_A/AGENT_B: palisade-node-agent binaries (e.g. copies of target/release/palisade-node-agent
# built at two commits). Needs what hack/bench-overhead.sh installs, and a release build of the
# operator and palisade-bench in $CARGO_TARGET_DIR/release. Default: 2 pairs, --rounds 2.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then
  sed -n '2,12p' "$0" >&2
  exit 2
fi
for agent in "$1" "$2"; do
  [ -x "$agent" ] || { echo "not an executable: $agent" >&2; exit 2; }
done
a=$(realpath "$1")
b=$(realpath "$2")
pairs=${3:-2}
case $pairs in
  '' | *[!0-9]*) echo "PAIRS must be a number, not '$pairs'" >&2; exit 2 ;;
esac
shift $(( $# < 3 ? $# : 3 ))
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--rounds 2 --seconds 5)
export PALISADE_CACHE=${PALISADE_CACHE:-$HOME/.cache/palisade}
release=${CARGO_TARGET_DIR:-$PALISADE_CACHE/target}/release
for bin in palisade-operator palisade-bench; do
  [ -x "$release/$bin" ] || { echo "no $release/$bin: build it with cargo build --release" >&2; exit 1; }
done
if [ -z "${PALISADE_CONTROL_PLANE_BIN:-}" ]; then
  PALISADE_CONTROL_PLANE_BIN=$(bash hack/build-control-plane.sh)
fi
export PALISADE_CONTROL_PLANE_BIN
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Directories named release-*: the bench warns about an agent whose path does not say release.
for side in a b; do
  mkdir "$work/release-$side"
  ln -s "$release/palisade-operator" "$work/release-$side/palisade-operator"
done
ln -s "$a" "$work/release-a/palisade-node-agent"
ln -s "$b" "$work/release-b/palisade-node-agent"
for pair in $(seq 1 "$pairs"); do
  for side in a b; do
    echo "=== agent $side ($( [ $side = a ] && echo "$a" || echo "$b" )), pair $pair, $(date -u +%T)"
    PALISADE_BIN_DIR="$work/release-$side" "$release/palisade-bench" --no-write "${args[@]}" > "$work/run.log" 2>&1 \
      || { tail -20 "$work/run.log"; exit 1; }
    # The paired table, then the direct one (absent when no round measured it): their rows.
    for heading in '| round | monitored throughput' 'capture programs µs/req |'; do
      awk -v h="$heading" 'index($0, h) {on = 1; next} on && /^\| [0-9*]/ {print; next} !/^\|/ {on = 0}' "$work/run.log"
    done
  done
done
