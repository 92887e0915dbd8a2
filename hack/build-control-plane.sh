#!/usr/bin/env bash
# Builds etcd, kube-apiserver and kubectl from the Go wrapper modules in e2e/k8s/, and helm from
# the Go module proxy (for the chart tests), and caches them by version under
# ${PALISADE_CACHE:-$HOME/.cache/palisade}. A warm cache makes this a no-op.
# Prints the directory that holds the binaries (helm as a link) on its last line.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${PALISADE_CACHE:-$HOME/.cache/palisade}

k8s_version=$(awk '$1=="require" && $2=="k8s.io/kubernetes" {print $3}' "$repo/e2e/k8s/kubernetes/go.mod")
etcd_version=$(awk '$1=="require" && $2=="go.etcd.io/etcd/server/v3" {print $3}' "$repo/e2e/k8s/etcd/go.mod")
bin="$cache/control-plane/k8s-$k8s_version-etcd-$etcd_version"
mkdir -p "$bin"

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
build_k8s() { # $1 = command name
  [ -x "$bin/$1" ] && return 0
  echo "building $1 $k8s_version (cold: several minutes)" >&2
  local stamp="-X k8s.io/component-base/version.gitVersion=$k8s_version -X k8s.io/client-go/pkg/version.gitVersion=$k8s_version"
  stamp+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(echo "$k8s_version" | cut -d. -f2)"
  stamp+=" -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z"
  (cd "$repo/e2e/k8s/kubernetes" && go build -trimpath -tags selinux,notest,grpcnotrace \
     -ldflags "-s -w $stamp" -o "$bin/$1.tmp" "k8s.io/kubernetes/cmd/$1")
  mv "$bin/$1.tmp" "$bin/$1"
}
build_etcd() {
  [ -x "$bin/etcd" ] && return 0
  echo "building etcd $etcd_version" >&2
  (cd "$repo/e2e/k8s/etcd" && go build -trimpath -ldflags "-s -w" -o "$bin/etcd.tmp" go.etcd.io/etcd/server/v3)
  mv "$bin/etcd.tmp" "$bin/etcd"
}
# helm is versioned apart from the control plane: built into its own cache dir, linked into $bin.
# v3.22.0's go.mod says go 1.26.0, the machine's Go.
helm_version=v3.22.0
build_helm() {
  local dir="$cache/tools/helm-$helm_version"
  if [ ! -x "$dir/helm" ]; then
    echo "building helm $helm_version (cold: a few minutes)" >&2
    rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
    (cd "$dir.tmp" && GOFLAGS= GOBIN="$dir.tmp" go install -trimpath \
       -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version" \
       "helm.sh/helm/v3/cmd/helm@$helm_version")
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
  fi
  ln -sfn "$dir/helm" "$bin/helm"
}
build_etcd
build_k8s kube-apiserver
build_k8s kubectl
build_helm
echo "$bin"
