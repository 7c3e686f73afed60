#!/bin/sh
# Install the Debian packages moet builds, tests, benchmarks and runs its demo with.
# Node.js/npm are only needed by the llama.cpp GGUF test (tools/llama_setup.sh); an
# existing npm (e.g. nodesource's nodejs) is kept rather than replaced by Debian's.
# clang (libFuzzer, ASan, UBSan) and libomp-dev (its OpenMP) build the fuzz targets (make fuzz).
set -e
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
PKGS="build-essential pkg-config git libopenblas-dev libopenblas0-openmp libhdf5-dev libyaml-dev \
      libcjson-dev libcmocka-dev libpcre2-dev libutf8proc-dev libopenmpi-dev openmpi-bin \
      python3 python3-numpy python3-h5py python3-torch bible-kjv clang libomp-dev"
command -v npm > /dev/null 2>&1 || PKGS="$PKGS nodejs npm"
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  echo "installing:$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi
