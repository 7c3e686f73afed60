#!/bin/sh
# Install the Debian packages moet builds, tests and benchmarks with.
set -e
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
PKGS="build-essential pkg-config libopenblas-dev libopenblas0-openmp libhdf5-dev libyaml-dev \
      libcjson-dev libcmocka-dev python3 python3-numpy python3-h5py python3-torch bible-kjv"
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi
