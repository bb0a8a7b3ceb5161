#!/usr/bin/env bash
# c10dtest against LibTorch 2.x, on a machine without a GPU: makes a Debian trixie root with
# debootstrap (LibTorch 2.6 with Gloo, libgloo-dev, OpenMPI, GoogleTest and python3-torch from
# Debian), copies this checkout in and runs scripts/gpu-check.sh there. That configures against
# the Python torch's LibTorch, builds with -Werror in C10DTEST_BUILD_TYPE (Release by default
# here: CI's run of a build type other than scripts/build.sh's RelWithDebInfo), runs every CPU
# test (CTest without the package checks) and, finding no GPU, skips the CUDA steps and exits 3, which is what this script
# expects. Then scripts/test-interop.sh checks state-dict files both ways against Debian's
# python3-torch and python3-safetensors. Then, when this machine has CUDA headers with nccl.h (/usr/local/cuda/include), the
# NCCL code path of src/comm/comm.cpp is compiled (not linked) against the headers of Debian's
# CUDA build of LibTorch 2.6 (libtorch-cuda-dev, unpacked only).
#
#   scripts/test-libtorch2.sh
#
# Environment:
#   C10DTEST_MIRROR       Debian mirror (default http://deb.debian.org/debian)
#   C10DTEST_TMP          parent of the temporary root (default ${TMPDIR:-/var/tmp}); ~3 GB
#   C10DTEST_CUDA_INCLUDE CUDA headers for the NCCL compile check (default /usr/local/cuda/include)
#   C10DTEST_KEEP_ROOT=1  keep the root (its path is printed) for debugging
#   C10DTEST_BUILD_TYPE   CMAKE_BUILD_TYPE of the build inside (default Release)
#
# Needs root (debootstrap, chroot, mounts); re-runs itself with sudo when not root.
set -euo pipefail
cd "$(dirname "$0")/.."
src=$(pwd)

if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "c10dtest: need root or sudo (debootstrap, chroot)" >&2; exit 1; }
  exec sudo --preserve-env=C10DTEST_MIRROR,C10DTEST_TMP,C10DTEST_CUDA_INCLUDE,C10DTEST_KEEP_ROOT,C10DTEST_BUILD_TYPE,TMPDIR \
    "$src/scripts/test-libtorch2.sh" "$@"
fi

log() { printf 'c10dtest-libtorch2: %s\n' "$*" >&2; }
timings=()
stage_start=$SECONDS
stage() { stage_start=$SECONDS; log "== $*"; }
stage_done() { timings+=("$(printf '%-22s %5ss' "$1" $((SECONDS - stage_start)))"); }

mirror=${C10DTEST_MIRROR:-http://deb.debian.org/debian}
packages=(libtorch-dev libgloo-dev libopenmpi-dev openmpi-bin libgtest-dev libgmock-dev cmake g++
          make python3-torch python3-safetensors python3-setuptools nlohmann-json3-dev ca-certificates)

# --- tools on this machine ----------------------------------------------------------------------
scripts/install-deps.sh debootstrap debian-archive-keyring

# --- the root, removed on every exit --------------------------------------------------------------
tmp=$(mktemp -d "${C10DTEST_TMP:-${TMPDIR:-/var/tmp}}/c10dtest-libtorch2.XXXXXX")
root=$tmp/root
cleanup() {
  local rc=$?
  set +e
  # Unmounts everything below the root, deepest first.
  awk -v t="$root/" 'index($2, t) == 1 {print $2}' /proc/self/mounts | sort -r |
    while read -r m; do umount "$m" 2>/dev/null || umount -l "$m"; done
  if [ "${C10DTEST_KEEP_ROOT:-0}" = 1 ]; then
    log "root kept in $root"
  else
    rm -rf "$tmp"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

stage "debootstrap trixie"
debootstrap --variant=minbase trixie "$root" "$mirror" >"$tmp/debootstrap.log" 2>&1 ||
  { tail -20 "$tmp/debootstrap.log"; exit 1; }
stage_done debootstrap

for d in proc sys dev dev/pts dev/shm; do
  mkdir -p "$root/$d"
  mount --bind "/$d" "$root/$d"
done
cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true

stage "apt-get install ${packages[*]}"
chroot "$root" env DEBIAN_FRONTEND=noninteractive sh -c \
  "apt-get update -qq && apt-get install -y -qq --no-install-recommends ${packages[*]} >/dev/null" ||
  exit 1
stage_done packages
chroot "$root" sh -c 'dpkg-query -W libtorch-dev libgloo-dev cmake g++' | sed 's/^/c10dtest-libtorch2:   /' >&2

# The checkout: tracked and untracked files that git does not ignore (no build directories).
mkdir -p "$root/src"
if git -C "$src" rev-parse >/dev/null 2>&1; then
  git -C "$src" ls-files -z --cached --others --exclude-standard |
    (cd "$src" && xargs -0 cp --parents -t "$root/src" 2>/dev/null)
else
  tar -C "$src" --exclude='./build*' -cf - . | tar -C "$root/src" -xf -
fi

stage "scripts/gpu-check.sh inside (LibTorch 2.x build and CPU tests; no GPU)"
set +e
chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
  C10DTEST_BUILD_TYPE="${C10DTEST_BUILD_TYPE:-Release}" \
  sh -c 'cd /src && scripts/gpu-check.sh' 2>&1 | tee "$tmp/gpu-check.out"
rc=${PIPESTATUS[0]}
set -e
stage_done gpu-check
summary=$root/src/build-gpu/gpu-check/summary.txt
if [ "$rc" -ne 3 ] || ! grep -Eq '^cpu-ctest-libtorch2 +PASS' "$summary"; then
  log "FAILED: gpu-check.sh exited $rc (expected 3: CPU steps passed, no GPU)"
  exit 1
fi
for s in nccl-np1 gloo-cuda-np4 nccl-np2-one-gpu; do
  grep -Eq "^$s +SKIP +no GPU visible" "$summary" || { log "FAILED: $s was not reported as skipped"; exit 1; }
done

# --- state dicts between real PyTorch 2.6 and c10dtest (torch.save and safetensors) -------------
stage "scripts/test-interop.sh inside (PyTorch writes, C++ verifies at 1, 2, 4 ranks, and back)"
chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
  sh -c 'cd /src && scripts/test-interop.sh build-gpu' ||
  { log "FAILED: scripts/test-interop.sh"; exit 1; }
stage_done interop

# --- the NCCL code path, compiled against LibTorch 2.6's CUDA headers -------------------------------
# Debian's CPU LibTorch lacks the CUDA build's generated headers (c10/cuda/impl/
# cuda_cmake_macros.h): the headers of its CUDA build (libtorch-cuda-dev, in contrib) are unpacked
# beside it, not installed. CUDA's own headers and nccl.h come from this machine.
cuda_include=${C10DTEST_CUDA_INCLUDE:-/usr/local/cuda/include}
if [ -f "$cuda_include/nccl.h" ] && [ -f "$cuda_include/cuda_runtime_api.h" ]; then
  stage "NCCL compile check of src/comm/comm.cpp (CUDA headers from $cuda_include)"
  mkdir -p "$root/opt/cuda-include"
  mount --bind -o ro "$cuda_include" "$root/opt/cuda-include"
  chroot "$root" env DEBIAN_FRONTEND=noninteractive sh -c "
    echo 'deb $mirror trixie contrib' >/etc/apt/sources.list.d/contrib.list &&
    apt-get update -qq && cd /tmp && apt-get download -qq libtorch-cuda-dev &&
    dpkg -x libtorch-cuda-dev_*.deb /opt/torch-cuda" >/dev/null ||
    { log "FAILED: could not fetch libtorch-cuda-dev"; exit 1; }
  # comm.cpp's own compile command from the build, with NCCL switched on, syntax only; the CUDA
  # build's headers come first.
  chroot "$root" sh -c '
    cd /src/build-gpu &&
    cmd=$(grep -o "\"command\": \"[^\"]*src/comm/comm.cpp\"" compile_commands.json | head -1 |
          sed "s/^\"command\": \"//; s/\"$//; s/ -o [^ ]*//; s/\\\\\"/\"/g") &&
    [ -n "$cmd" ] &&
    eval "${cmd%% *} -isystem /opt/torch-cuda/usr/include \
      -isystem /opt/torch-cuda/usr/include/torch/csrc/api/include -isystem /opt/cuda-include \
      ${cmd#* } -fsyntax-only -DUSE_C10D_NCCL -DC10DTEST_WITH_NCCL=1"
  ' || { log "FAILED: the NCCL path of src/comm/comm.cpp does not compile against LibTorch 2.6"; exit 1; }
  stage_done nccl-compile
else
  log "no nccl.h and cuda_runtime_api.h in $cuda_include: NCCL compile check skipped"
  timings+=("$(printf '%-22s %s' nccl-compile 'skipped (no CUDA headers)')")
fi

log "passed"
printf 'c10dtest-libtorch2:   %s\n' "${timings[@]}" >&2
