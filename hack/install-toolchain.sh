#!/usr/bin/env bash
# Installs everything a fresh Debian machine needs to build and test Palisade:
# Debian packages, rust-src (for -Z build-std=core), and bpf-linker linked against rustc's own LLVM.
# Idempotent: each step is skipped when its result is already there.
set -euo pipefail

need_pkgs=()
for p in protobuf-compiler:protoc iproute2:ip util-linux:nsenter util-linux:setpriv openssl:openssl python3:python3 wrk:wrk jq:jq; do
  command -v "${p#*:}" >/dev/null 2>&1 || need_pkgs+=("${p%%:*}")
done
# nginx is one of the server stacks the e2e suite captures (and the benchmark's server).
command -v nginx >/dev/null 2>&1 || need_pkgs+=(nginx-light)
# The reference WAF that palisade-eval --waf modsecurity replays the corpora through: Debian's
# ModSecurity v3 module for that same nginx (nginx-light depends on nginx, which provides the
# module's nginx-abi) and the OWASP CRS rules. The module is only linked into
# /etc/nginx/modules-enabled; nothing here starts or enables a system nginx.
[ -e /usr/share/nginx/modules-available/mod-http-modsecurity.conf ] || need_pkgs+=(libnginx-mod-http-modsecurity)
[ -d /usr/share/modsecurity-crs/rules ] || need_pkgs+=(modsecurity-crs)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need_pkgs[*]}" >&2
  # Keep packages (nginx) from starting their own services: tests run their own instances.
  # (The module packages trigger nginx-reload, which only acts on a running nginx.)
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
  if trap -p EXIT | grep -q policy-rc.d; then rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi
fi

rustup component list --installed | grep -q '^rust-src' || rustup component add rust-src

# bpf-linker must link the very LLVM that rustc uses, or it cannot read rustc's bitcode.
llvm_major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
bpf_linker_version=0.13.0
if ! bpf-linker --version 2>/dev/null | grep -q "$bpf_linker_version"; then
  sysroot=$(rustc --print sysroot)
  libllvm=$(ls "$sysroot"/lib/libLLVM.so.* | head -n1)
  llvm_prefix=${PALISADE_CACHE:-$HOME/.cache/palisade}/rustllvm
  mkdir -p "$llvm_prefix/lib"
  ln -sf "$libllvm" "$llvm_prefix/lib/libLLVM.so"
  ln -sf "$libllvm" "$llvm_prefix/lib/"
  echo "building bpf-linker $bpf_linker_version against rustc's LLVM $llvm_major (about 3 minutes)" >&2
  LLVM_PREFIX="$llvm_prefix" cargo install --locked bpf-linker --version "$bpf_linker_version" \
    --no-default-features --features "llvm-$llvm_major"
fi
