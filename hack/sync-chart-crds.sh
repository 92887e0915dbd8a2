#!/usr/bin/env bash
# Copies the generated CRDs (crds/, written by `cargo run -p palisade-api --bin crdgen -- crds`)
# into the Helm chart's crds/ directory, byte for byte, and removes copies of CRDs that are gone.
# `helm package` does not follow symlinks out of the chart, hence a copy; e2e/tests/chart.rs fails
# when the two directories differ. Run it after regenerating the CRDs. The optional CRDs
# (crds/optional/: kinds Palisade writes but does not own) go to the chart's files/, which a
# template installs only when asked (policyReport.installCRD).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
dest="$repo/charts/palisade/crds"
mkdir -p "$dest"
find "$dest" -maxdepth 1 -name '*.yaml' -type f -delete
cp "$repo"/crds/*.yaml "$dest/"
ls "$dest"
files="$repo/charts/palisade/files"
mkdir -p "$files"
find "$files" -maxdepth 1 -name '*.yaml' -type f -delete
cp "$repo"/crds/optional/*.yaml "$files/"
ls "$files"
