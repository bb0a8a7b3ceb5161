#!/usr/bin/env python3
"""Writes the files PyTorch would hand a C++ port: state dicts saved by torch.save and by
safetensors, and the differential cases with PyTorch's own VerifyStateDictMixin verdicts.

    python3 test/interop/make_reference.py OUT_DIR [--seed N] [--cases N]

OUT_DIR gets:
  formula.pt / formula.safetensors     every dtype, 0-d, empty, a non-contiguous view (and
                                       complex tensors in the .pt only: safetensors has none)
  formula_p5.pt                        the same with pickle protocol 5
  fusion.pt / fusion.safetensors       FusionEmbeddingWithHook's state dict, formula values
  composite_init.pt, composite_inputs.pt
  composite_msd.{pt,safetensors}, composite_osd.{pt,safetensors}
                                       CompositeParamModel after STEPS Adam steps from init
  marker.pt                            {"w": 4096 x 1234.5}: interop_test checks that it maps
  diff/<k>.ref.pt, diff/<k>.dist.pt, diff/verdicts.txt
                                       "<k> <kind> pass|fail": _verify_msd(ref, dist)
"""
import argparse
import os
import random
import sys

import torch
from safetensors.torch import save_file
from torch.testing._internal.common_dist_composable import CompositeParamModel
from torch.testing._internal.common_utils import TestCase
from torch.testing._internal.distributed.common_state_dict import VerifyStateDictMixin

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def contiguous(sd):
    # safetensors refuses views that are not contiguous; torch.save keeps them as they are.
    return {k: v.contiguous() for k, v in sd.items()}


def composite(out):
    torch.manual_seed(0)
    model = CompositeParamModel(torch.device("cpu"))
    torch.save(model.state_dict(), f"{out}/composite_init.pt")
    inputs = {str(i): torch.randn(8, 100) for i in range(common.STEPS)}
    torch.save(inputs, f"{out}/composite_inputs.pt")
    optim = torch.optim.Adam(model.parameters(), lr=common.LR)
    for i in range(common.STEPS):
        optim.zero_grad()
        model(inputs[str(i)]).sum().backward()
        optim.step()
    msd = model.state_dict()
    osd = optim.state_dict()
    torch.save(msd, f"{out}/composite_msd.pt")
    torch.save(osd, f"{out}/composite_osd.pt")
    save_file(contiguous(msd), f"{out}/composite_msd.safetensors", metadata={"format": "pt"})
    flat = {f"state.{pid}.{k}": v for pid, st in osd["state"].items() for k, v in st.items()}
    save_file(flat, f"{out}/composite_osd.safetensors")


class Verifier(VerifyStateDictMixin, TestCase):
    def runTest(self):
        pass


def diff_cases(out, seed, count):
    """Seeded cases: (ref, dist) pairs of plain tensors, and PyTorch's verdict on each."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    os.makedirs(f"{out}/diff", exist_ok=True)
    v = Verifier()
    kinds = ["equal", "within", "beyond", "edge", "edge", "edge", "nan_both", "inf_both",
             "dtype", "shape", "broadcast", "missing", "extra", "int", "bool", "bf16_ulp",
             "f16_edge", "zero_atol"]
    lines = []
    for k in range(count):
        kind = kinds[k % len(kinds)] if k < len(kinds) else rng.choice(kinds)
        rows, cols = rng.randint(1, 9), rng.randint(1, 6)
        ref = {f"m{j}.weight": torch.randn(rows, cols) for j in range(rng.randint(1, 3))}
        dist = {n: t.clone() for n, t in ref.items()}
        key = rng.choice(sorted(ref))
        i, j = rng.randrange(rows), rng.randrange(cols)
        if kind == "within":
            dist[key] = ref[key] * (1 + 1e-7)
        elif kind == "beyond":
            dist[key][i, j] += 1e-2 + abs(float(ref[key][i, j])) * 1e-3
        elif kind == "edge":
            # Around allclose's boundary |a - b| <= 1e-8 + 1e-5 * |b| (b: the dist value).
            dist[key][i, j] = ref[key][i, j] * (1 + rng.uniform(0.5e-5, 1.5e-5))
        elif kind == "nan_both":
            ref[key][i, j] = float("nan")
            dist[key][i, j] = float("nan")
        elif kind == "inf_both":
            ref[key][i, j] = float("inf")
            dist[key][i, j] = float("inf")
        elif kind == "dtype":
            dist[key] = ref[key].double()
        elif kind == "shape":
            dist[key] = torch.randn(rows + 1, cols)
        elif kind == "broadcast":
            ref[key] = ref[key][:1].expand(rows + 1, cols).clone()
            dist[key] = ref[key][:1].clone()
        elif kind == "missing":
            ref["extra.weight"] = torch.randn(2, 2)
        elif kind == "extra":
            dist["extra.weight"] = torch.randn(2, 2)
        elif kind == "int":
            ref[key] = torch.randint(-50, 50, (rows, cols))
            dist[key] = ref[key].clone()
            if rng.random() < 0.5:
                dist[key][i, j] += 1
        elif kind == "bool":
            ref[key] = torch.rand(rows, cols) > 0.5
            dist[key] = ref[key].clone()
            if rng.random() < 0.5:
                dist[key][i, j] = ~dist[key][i, j]
        elif kind == "bf16_ulp":
            ref[key] = ref[key].bfloat16()
            dist[key] = ref[key].clone()
            bits = dist[key].view(torch.int16)
            bits[i, j] += rng.choice([0, 1])
        elif kind == "f16_edge":
            ref[key] = ref[key].half()
            dist[key] = (ref[key].float() * (1 + rng.uniform(0, 2e-3))).half()
        elif kind == "zero_atol":
            ref[key][i, j] = 0.0
            dist[key][i, j] = rng.choice([0.0, 5e-9, 2e-8, -5e-9])
        torch.save(ref, f"{out}/diff/{k}.ref.pt")
        torch.save(dist, f"{out}/diff/{k}.dist.pt")
        try:
            v._verify_msd(ref, dist)
            verdict = "pass"
        except Exception:  # AssertionError, or allclose's RuntimeError on dtypes and shapes
            verdict = "fail"
        lines.append(f"{k} {kind} {verdict}")
    with open(f"{out}/diff/verdicts.txt", "w") as f:
        f.write(f"# torch {torch.__version__}, seed {seed}\n")
        f.write("\n".join(lines) + "\n")
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cases", type=int, default=120)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    f = common.formula_dict(with_complex=True)
    torch.save(f, f"{a.out}/formula.pt")
    torch.save(f, f"{a.out}/formula_p5.pt", pickle_protocol=5)  # FRAME, MEMOIZE, STACK_GLOBAL
    save_file(contiguous(common.formula_dict(with_complex=False)), f"{a.out}/formula.safetensors",
              metadata={"format": "pt", "written_by": "make_reference.py"})
    fusion = common.FusionEmbeddingWithHook(4, 4, 4)
    common.fill_with_formula(fusion)
    torch.save(fusion.state_dict(), f"{a.out}/fusion.pt")
    save_file(fusion.state_dict(), f"{a.out}/fusion.safetensors")
    composite(a.out)
    torch.save({"w": torch.full((4096,), 1234.5)}, f"{a.out}/marker.pt")
    lines = diff_cases(a.out, a.seed, a.cases)
    passed = sum(1 for l in lines if l.endswith("pass"))
    print(f"make_reference: torch {torch.__version__}: files in {a.out}; {len(lines)} differential "
          f"cases ({passed} pass in PyTorch)")


if __name__ == "__main__":
    main()
