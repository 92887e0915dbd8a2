#!/usr/bin/env bash
# Copies the generated CRDs (crds/, written by `cargo run -p palisade-api --bin crdgen -- crds`)
# into the Helm chart's crds/ directory, byte for byte, and removes copies of CRDs that are gone.
# `helm package` does not follow symlinks out of the chart, hence a copy; e2e/tests/chart.rs fails
# when the two directories differ. Run it after regenerating the CRDs.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
dest="$repo/charts/palisade/crds"
mkdir -p "$dest"
find "$dest" -maxdepth 1 -name '*.yaml' -type f -delete
cp "$repo"/crds/*.yaml "$dest/"
ls "$dest"
