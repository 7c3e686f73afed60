#!/bin/bash
# llama_setup.sh DIR: a real llama.cpp for the GGUF tests, from the npm registry only.
#
# Installs node-llama-cpp (its git bundle holds the exact llama.cpp source its binaries were
# built from) and @node-llama-cpp/linux-x64 (prebuilt libllama / libggml, CPU backends) into
# DIR, takes llama.h and the ggml headers out of the bundle, and compiles
# tests/llama/llama_check.c against the prebuilt libraries into DIR/llama_check (RUNPATH to
# them, so nothing is installed system-wide). Idempotent: what is already in DIR at the
# pinned version is kept; llama_check is recompiled when its source is newer.
# Needs: node + npm (Debian: apt-get install nodejs npm), git, a C compiler; x86-64 Linux.
# Prints the path of llama_check last. Exit 1 with one clear line when anything is missing.
set -euo pipefail
VERSION=3.21.1
die() { echo "llama_setup: $*" >&2; exit 1; }
[ $# = 1 ] || { echo "usage: tools/llama_setup.sh DIR" >&2; exit 2; }
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$1"
dir=$(cd "$1" && pwd)
src="$root/tests/llama/llama_check.c"

[ "$(uname -s)-$(uname -m)" = Linux-x86_64 ] ||
    die "prebuilt llama.cpp binaries are set up for x86-64 Linux only, not $(uname -s)-$(uname -m)"
command -v git >/dev/null || die "git is not installed"

pkg="$dir/node_modules/node-llama-cpp/package.json"
bins="$dir/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64"
have_version() { [ -f "$1" ] && grep -q "\"version\": *\"$VERSION\"" "$1"; }
if ! have_version "$pkg" || ! have_version "$dir/node_modules/@node-llama-cpp/linux-x64/package.json"; then
    command -v npm >/dev/null || die "npm is not installed (Debian: apt-get install nodejs npm)"
    echo "llama_setup: installing node-llama-cpp@$VERSION into $dir" >&2
    [ -f "$dir/package.json" ] || echo '{"private": true}' > "$dir/package.json"
    # --ignore-scripts: the postinstall would try to download or build binaries; the
    # prebuilt ones come in @node-llama-cpp/linux-x64 itself.
    (cd "$dir" && npm install --save-exact --omit=optional --ignore-scripts --no-audit --no-fund \
        --loglevel=error "node-llama-cpp@$VERSION" "@node-llama-cpp/linux-x64@$VERSION" >&2) ||
        die "npm could not install node-llama-cpp@$VERSION (is the npm registry reachable?)"
    rm -rf "$dir/llama.cpp"
fi
lib=$(ls "$bins"/libllama.*so 2>/dev/null | head -1) || true
ggml=$(ls "$bins"/libggml.*so 2>/dev/null | head -1) || true
[ -n "$lib" ] && [ -n "$ggml" ] || die "no prebuilt libllama / libggml in $bins"

# llama.cpp's public headers, from the source the binaries were built from.
hdr="$dir/llama.cpp"
if [ ! -f "$hdr/include/llama.h" ] || [ ! -f "$hdr/ggml/include/ggml.h" ]; then
    bundle="$dir/node_modules/node-llama-cpp/llama/gitRelease.bundle"
    [ -f "$bundle" ] || die "node-llama-cpp has no llama/gitRelease.bundle"
    rm -rf "$hdr"
    git clone -q --no-checkout "$bundle" "$hdr" 2>/dev/null || die "cannot clone $bundle"
    git -C "$hdr" checkout -q HEAD -- include ggml/include || die "no headers in $bundle"
fi

exe="$dir/llama_check"
# Rebuilt when its source or this script changed, or the libraries moved (RUNPATH).
if [ ! -x "$exe" ] || [ "$src" -nt "$exe" ] || [ "$0" -nt "$exe" ] ||
   [ "$(cat "$dir/llama_check.libdir" 2>/dev/null)" != "$bins" ]; then
    ${CC:-cc} -std=c11 -O2 -Wall -Wextra -I"$hdr/include" -I"$hdr/ggml/include" \
        -DLLAMA_LIB_DIR="\"$bins\"" -o "$exe.tmp" "$src" \
        -L"$bins" -l:"$(basename "$lib")" -l:"$(basename "$ggml")" \
        -Wl,--enable-new-dtags -Wl,-rpath,"$bins" || die "cannot compile $src"
    mv "$exe.tmp" "$exe"
    echo "$bins" > "$dir/llama_check.libdir"
fi
echo "$exe"
