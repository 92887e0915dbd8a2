#!/usr/bin/env bash
# Builds a newer OpenSSL than Debian's (3.0) as shared libraries, cached under
# ${PALISADE_CACHE:-$HOME/.cache/palisade}, for the root test that checks the agent finds TLS
# secrets in its memory layout: 3.2 moved a connection's state into `SSL_CONNECTION`, and the
# distributions many images are built on (Alpine, Debian trixie, Fedora) ship 3.2 or later.
# The source is the one the `openssl-src` crate carries (crates.io is reachable here; OpenSSL's
# own site is not). A warm cache makes this a no-op. Prints the library directory on its last line.
set -euo pipefail
cache=${PALISADE_CACHE:-$HOME/.cache/palisade}
crate_version=300.6.1+3.6.3
openssl_version=${crate_version#*+}
dest="$cache/tools/openssl-$openssl_version"

if [ ! -e "$dest/lib/libssl.so.3" ]; then
  echo "building OpenSSL $openssl_version (cold: several minutes)" >&2
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  # cargo fetches the crate into its registry; a throwaway manifest names it.
  mkdir -p "$work/fetch/src"
  printf '[package]\nname = "fetch-openssl-src"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\nopenssl-src = "=%s"\n' \
    "$crate_version" > "$work/fetch/Cargo.toml"
  : > "$work/fetch/src/lib.rs"
  (cd "$work/fetch" && cargo fetch --quiet)
  src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"openssl-src-$crate_version/openssl" | head -n1)
  cp -r "$src" "$work/openssl"
  # The crate leaves out the scripts that build providers as modules (hence no-module) and that
  # write the shared libraries' symbol versions: the static libraries are built (position
  # independent, as configuring `shared` compiles them) and linked into shared ones here, every
  # symbol at the version the system's programs were linked against (3.0's ABI is kept in 3.x).
  log="$work/build.log"
  if ! (cd "$work/openssl" \
    && ./Configure linux-x86_64 shared no-module no-tests no-docs \
         --prefix="$dest" --libdir=lib --openssldir="$dest/ssl" \
    && make -j"$(nproc)" build_generated \
    && make -j"$(nproc)" libcrypto.a libssl.a) >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    exit 1
  fi
  printf 'OPENSSL_3.0.0 {\n  global: *;\n};\n' > "$work/versions.map"
  rm -rf "$dest.tmp" && mkdir -p "$dest.tmp/lib"
  link() { # $1 = library name, then what else it links against
    local name=$1; shift
    gcc -shared -o "$dest.tmp/lib/lib$name.so.3" -Wl,-soname,"lib$name.so.3" \
      -Wl,--version-script="$work/versions.map" \
      -Wl,--whole-archive "$work/openssl/lib$name.a" -Wl,--no-whole-archive "$@" -pthread
  }
  link crypto
  link ssl "$dest.tmp/lib/libcrypto.so.3"
  rm -rf "$dest" && mv "$dest.tmp" "$dest"
fi
echo "$dest/lib"
