#!/usr/bin/env bash
# Installs what c10dtest needs on Debian 12 (or Ubuntu), only when something is missing.
# Usage: scripts/install-deps.sh [PACKAGE...]   (the given packages instead; the test stages use
# it for their own: Slurm, iproute2, buildah, ...)
set -euo pipefail

packages=(g++ make cmake git libtorch-dev libgloo-dev libopenmpi-dev openmpi-bin python3
          libgtest-dev libgmock-dev nlohmann-json3-dev)
if [ $# -gt 0 ]; then
  packages=("$@")
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "c10dtest: installing ${missing[*]}"
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "c10dtest: need root or sudo to install ${missing[*]}" >&2; exit 1; }
  sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
