#!/usr/bin/env bash
# State dicts between real PyTorch and c10dtest, both directions. Needs python3 with torch 2.x
# (torch.testing._internal) and safetensors, OpenMPI, and a build with interop_test
# (test/interop/). CI runs it inside the Debian trixie root of scripts/test-libtorch2.sh.
#
#   scripts/test-interop.sh [BUILD_DIR]     (default: ${C10DTEST_BUILD_DIR:-build})
#
# 1. test/interop/make_reference.py writes, with PyTorch: a dict of every dtype (torch.save and
#    safetensors), FusionEmbeddingWithHook's state dict, CompositeParamModel's model and optimizer
#    state after Adam steps (and its initial state and inputs), and seeded differential cases with
#    PyTorch's own VerifyStateDictMixin._verify_msd verdicts.
# 2. interop_test runs at 1, 2 and 4 ranks under mpirun: it verifies its own values, sharded
#    (DTensor on 1-D and 2-D meshes, ShardedTensor), against those files, catches a planted
#    difference, checks that its verdicts agree with PyTorch's, and writes files of its own.
# 3. test/interop/check_written.py loads those with torch.load(weights_only=True) and
#    safetensors, reassembles the per-rank sharded files, and compares with assert_close.
# Exit code 0 when everything passed.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-${C10DTEST_BUILD_DIR:-build}}
bin=$build/test/interop_test
[ -x "$bin" ] || { echo "test-interop: no $bin (build the tests first)" >&2; exit 1; }
python3 -c 'import torch, safetensors' 2>/dev/null ||
  { echo "test-interop: python3 lacks torch or safetensors" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/c10dtest-interop.XXXXXX")
trap 'rm -rf "$work"' EXIT
t0=$SECONDS
summary=()
fail=0
python3 -W ignore::DeprecationWarning test/interop/make_reference.py "$work/ref"
tests=$("$bin" --gtest_list_tests | grep -c '^  ')
for n in 1 2 4; do
  s=$SECONDS
  log=$work/np$n.log
  set +e
  C10DTEST_INTEROP_DIR=$work/ref C10DTEST_INTEROP_OUT=$work/out/np$n \
    timeout 600 scripts/mpirun.sh -n "$n" -x C10DTEST_INTEROP_DIR -x C10DTEST_INTEROP_OUT \
    "$bin" --gtest_color=no >"$log" 2>&1
  rc=$?
  set -e
  grep -E '^(differential|\[  (PASSED|FAILED|SKIPPED) \])' "$log" | sed "s/^/  np$n: /"
  if [ "$rc" -ne 0 ] || ! grep -qxF "[  PASSED  ] $tests tests." "$log"; then
    cat "$log"
    summary+=("FAIL  interop_test at $n ranks (exit $rc; $tests tests expected to pass)")
    fail=1
    continue
  fi
  if python3 -W ignore::DeprecationWarning test/interop/check_written.py "$work/ref" \
       "$work/out/np$n" "$n"; then
    summary+=("PASS  $n ranks: C++ verified PyTorch's files; PyTorch loaded C++'s ($((SECONDS - s)) s)")
  else
    summary+=("FAIL  $n ranks: PyTorch rejected what C++ wrote")
    fail=1
  fi
done
echo "test-interop: $((SECONDS - t0)) s"
printf '  %s\n' "${summary[@]}"
exit "$fail"
