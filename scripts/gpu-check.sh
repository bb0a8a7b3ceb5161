#!/usr/bin/env bash
# The GPU checks: on a machine with an NVIDIA GPU and a pip-installed torch 2.x (with CUDA),
# configures c10dtest against that torch's LibTorch, builds it, and runs
#   1. every CPU test (CTest, without the package checks) against LibTorch 2.x;
#   2. NCCL at world size 1: the device, scenario and verifier suites with --c10dtest_backend=nccl;
#   3. Gloo with CUDA tensors at world size 4 on the GPU(s): --c10dtest_device=cuda under mpirun;
#   4. NCCL at world size 2: with one GPU, a clean skip of every test naming the shared GPU (with
#      two or more, the suite passes);
# then prints a summary. Needs no network.
#
#   scripts/gpu-check.sh
#
# Environment (all optional):
#   PYTHON                     the Python whose torch is used (default python3)
#   C10DTEST_GLOO_INCLUDE_DIR  gloo headers (default: .gloo-include/ in this checkout, else the
#                              system's /usr/include/gloo). torch wheels ship none; Debian's
#                              libgloo-dev headers work (copy /usr/include/gloo to .gloo-include/)
#   C10DTEST_JSON_INCLUDE_DIR  nlohmann/json.hpp's directory (default: .json-include/, else
#                              /usr/include); copy Debian's /usr/include/nlohmann to .json-include/
#   C10DTEST_GTEST_SOURCE_DIR  GoogleTest sources when no GTest package is installed (default:
#                              .googletest-src/ in this checkout, else /usr/src/googletest)
#   C10DTEST_BUILD_DIR         build directory (default build-gpu)
#   C10DTEST_BUILD_TYPE        CMAKE_BUILD_TYPE (default RelWithDebInfo, as scripts/build.sh;
#                              every type passes, scripts/test-libtorch2.sh uses Release)
#   C10DTEST_GPU_CHECK_LOGS    where each step's log goes (default <build dir>/gpu-check)
#
# Exit status: 0 every step passed on a GPU; 1 a step failed; 2 the set-up is incomplete (no
# torch, no gloo headers, configure or build failed); 3 no GPU is visible (the CPU steps ran, the
# GPU steps were skipped: nothing about CUDA was shown).
set -uo pipefail
cd "$(dirname "$0")/.."
src=$(pwd)
start_all=$SECONDS

say() { printf 'gpu-check: %s\n' "$*"; }
die() { say "$*"; exit 2; }

python=${PYTHON:-python3}
build=${C10DTEST_BUILD_DIR:-build-gpu}
logs=${C10DTEST_GPU_CHECK_LOGS:-$build/gpu-check}
mkdir -p "$logs"

# --- what this machine has --------------------------------------------------------------------
info=$("$python" - <<'EOF' 2>&1
import os, torch
print("torch", torch.__version__)
print("prefix", torch.utils.cmake_prefix_path)
print("cuda", torch.version.cuda or "none")
print("gpus", torch.cuda.device_count() if torch.cuda.is_available() else 0)
nccl = ""
try:
    import nvidia.nccl as n
    for p in list(getattr(n, "__path__", [])):
        if os.path.exists(os.path.join(p, "include", "nccl.h")):
            nccl = os.path.join(p, "include")
except ImportError:
    pass
print("nccl", nccl or "none")
EOF
) || die "no usable torch in $python: $info"
field() { printf '%s\n' "$info" | awk -v k="$1" '$1 == k {print $2}'; }
torch_version=$(field torch)
torch_prefix=$(field prefix)
torch_cuda=$(field cuda)
gpus=$(field gpus)
nccl_include=$(field nccl)
say "torch $torch_version (CUDA $torch_cuda), $gpus GPU(s) visible, LibTorch at $torch_prefix"

gloo=${C10DTEST_GLOO_INCLUDE_DIR:-}
if [ -z "$gloo" ]; then
  if [ -f "$src/.gloo-include/gloo/algorithm.h" ]; then gloo=$src/.gloo-include
  elif [ -f /usr/include/gloo/algorithm.h ]; then gloo=/usr/include
  fi
fi
[ -n "$gloo" ] || die "no gloo headers: copy Debian's /usr/include/gloo (libgloo-dev) to $src/.gloo-include/gloo, or set C10DTEST_GLOO_INCLUDE_DIR"

json=${C10DTEST_JSON_INCLUDE_DIR:-}
if [ -z "$json" ]; then
  if [ -f "$src/.json-include/nlohmann/json.hpp" ]; then json=$src/.json-include
  elif [ -f /usr/include/nlohmann/json.hpp ]; then json=/usr/include
  fi
fi
[ -n "$json" ] || die "no nlohmann/json.hpp: copy Debian's /usr/include/nlohmann (nlohmann-json3-dev) to $src/.json-include/nlohmann, or set C10DTEST_JSON_INCLUDE_DIR"

cmake_args=(-DCMAKE_PREFIX_PATH="$torch_prefix" -DCMAKE_BUILD_TYPE="${C10DTEST_BUILD_TYPE-RelWithDebInfo}"
            -DC10DTEST_WERROR=ON
            -DCMAKE_EXPORT_COMPILE_COMMANDS=ON
            -DC10DTEST_BUILD_BENCH=OFF -DC10DTEST_INSTALL=OFF
            -DC10DTEST_GLOO_INCLUDE_DIR="$gloo" -DC10DTEST_JSON_INCLUDE_DIR="$json")
if [ "$torch_cuda" != none ]; then
  cmake_args+=(-DC10DTEST_WITH_NCCL=ON)
  [ "$nccl_include" != none ] && cmake_args+=(-DC10DTEST_NCCL_INCLUDE_DIR="$nccl_include")
  # LibTorch's CMake files look for the CUDA toolkit (nvcc) themselves.
  if [ -x /usr/local/cuda/bin/nvcc ] && [ -z "${CUDAToolkit_ROOT:-}" ]; then
    cmake_args+=(-DCUDAToolkit_ROOT=/usr/local/cuda)
  fi
fi
gtest_src=${C10DTEST_GTEST_SOURCE_DIR:-}
if [ -z "$gtest_src" ] && [ ! -f /usr/include/gtest/gtest.h ]; then
  if [ -f "$src/.googletest-src/googletest/include/gtest/gtest.h" ]; then
    gtest_src=$src/.googletest-src
  elif [ -f /usr/src/googletest/googletest/include/gtest/gtest.h ]; then
    gtest_src=/usr/src/googletest
  fi
fi
[ -n "$gtest_src" ] && cmake_args+=(-DC10DTEST_GTEST_SOURCE_DIR="$gtest_src")
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)

# --- configure and build ----------------------------------------------------------------------
t=$SECONDS
if ! cmake -S . -B "$build" "${generator[@]}" "${cmake_args[@]}" >"$logs/configure.log" 2>&1; then
  tail -30 "$logs/configure.log"
  die "configure failed (log: $logs/configure.log)"
fi
grep 'c10dtest:' "$logs/configure.log" | sed 's/^-- /gpu-check: /'
if ! cmake --build "$build" -j "$(nproc)" >"$logs/build.log" 2>&1; then
  grep -E 'error|Error' "$logs/build.log" | head -30
  die "build failed (log: $logs/build.log)"
fi
say "configured and built in $((SECONDS - t)) s"

# --- steps ------------------------------------------------------------------------------------
if [ "$(id -u)" -eq 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
export OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
export PRTE_MCA_rmaps_default_mapping_policy=:oversubscribe  # the same for Open MPI 5
mpirun=$(command -v mpirun || true)
bin=$build/test
summary=()
failed=0
# step NAME LIMIT_S COMMAND...: runs the command, records PASS/FAIL with gtest's counts.
step() {
  local name=$1 limit=$2
  shift 2
  local t=$SECONDS log="$logs/$name.log"
  timeout -k 10 "$limit" "$@" >"$log" 2>&1
  local rc=$?
  local passed skipped
  passed=$(grep -oE '\[  PASSED  \] [0-9]+ test' "$log" | tail -1 | grep -oE '[0-9]+' || true)
  skipped=$(grep -oE '\[  SKIPPED \] [0-9]+ test' "$log" | tail -1 | grep -oE '[0-9]+' || true)
  # CTest's own count: "96% tests passed, 3 tests failed out of 83".
  local counts
  counts=$(grep -oE '[0-9]+ tests failed out of [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+' || true)
  if [ -n "$counts" ]; then
    passed=$(( $(echo "$counts" | tail -1) - $(echo "$counts" | head -1) ))
  fi
  local verdict=PASS
  [ "$rc" -eq 0 ] || { verdict="FAIL (exit $rc)"; failed=1; tail -40 "$log"; }
  summary+=("$(printf '%-34s %-14s %4ss  passed %-4s skipped %-4s' "$name" "$verdict" \
    $((SECONDS - t)) "${passed:--}" "${skipped:--}")")
  say "$name: $verdict"
}
skip_step() { summary+=("$(printf '%-34s %-14s %s' "$1" SKIP "$2")"); say "$1: skipped ($2)"; }

step cpu-ctest-libtorch2 900 ctest --test-dir "$build" -LE package -j "$(nproc)" --output-on-failure

if [ "$gpus" -lt 1 ]; then
  for s in nccl-np1 gloo-cuda-np4 nccl-np2-one-gpu; do skip_step "$s" "no GPU visible"; done
elif [ "$torch_cuda" = none ]; then
  for s in nccl-np1 gloo-cuda-np4 nccl-np2-one-gpu; do skip_step "$s" "torch without CUDA"; done
else
  for t in device_test scenarios_test verifier_test; do
    step "nccl-np1-$t" 300 "$bin/$t" --c10dtest_backend=nccl --gtest_color=no
  done
  for t in device_test scenarios_test verifier_test sharding_test state_dict_test; do
    if [ -n "$mpirun" ]; then
      step "gloo-cuda-np4-$t" 300 "$mpirun" -n 4 "$bin/$t" --c10dtest_device=cuda --gtest_color=no
    else
      step "gloo-cuda-np4-$t" 300 "$bin/$t" --c10dtest_world_size=4 --c10dtest_device=cuda \
        --gtest_color=no
    fi
  done
  # One GPU and two NCCL ranks: every test skipped, naming the GPU the ranks would share.
  check_skip() {
    "$bin/child_suite" --c10dtest_world_size=2 --c10dtest_backend=nccl \
      --gtest_filter='Passing.*' --gtest_color=no 2>&1 | tee /dev/stderr |
      if [ "$gpus" -eq 1 ]; then
        grep -q 'every DistributedTest is skipped: nccl world on cuda: ranks 0 and 1 would share GPU'
      else
        grep -q '\[  PASSED  \] 3 tests'
      fi
  }
  step nccl-np2-one-gpu 120 bash -c "$(declare -f check_skip); bin=$bin gpus=$gpus check_skip"
fi

# --- summary ----------------------------------------------------------------------------------
{
  echo "gpu-check: torch $torch_version, CUDA $torch_cuda, $gpus GPU(s), $(nproc) cores"
  printf '%s\n' "${summary[@]}"
  echo "gpu-check: total $((SECONDS - start_all)) s"
} | tee "$logs/summary.txt"
if [ "$failed" -ne 0 ]; then exit 1; fi
if [ "$gpus" -lt 1 ] || [ "$torch_cuda" = none ]; then
  say "no GPU checks ran: nothing about CUDA or NCCL was shown"
  exit 3
fi
say "every step passed"
