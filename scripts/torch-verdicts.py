#!/usr/bin/env python3
"""Writes PyTorch's own verdicts on seeded comparison cases, for c10dtest's PyTorch-compatibility
preset (VerifyOptions::like_pytorch) to be checked against: test/verify/data/torch_verdicts.txt,
read by the verify_test case CompareTensors.LikePyTorchMatchesRecordedTorchVerdicts.

Needs Python with torch (any 2.x; the recorded file names the version it came from):

    python3 scripts/torch-verdicts.py --seed 1 > test/verify/data/torch_verdicts.txt

Two kinds of line, after '#' comments:
  tensor <dtype> <expected bytes, hex> <actual bytes, hex> <0|1>
      torch.allclose(expected, actual) on one element, as VerifyStateDictMixin._compare_tensor
      calls it (reference first). The bytes are the element's, little-endian.
  number <expected> <actual> <0|1>
      whether PyTorch's TestCase.assertEqual(expected, actual) passes, as _verify_osd compares
      param_groups values (reference first); each value is written type:repr (int:1, float:0.1,
      bool:True; floats as float.hex()).
"""
import argparse
import math
import random
import sys

import torch
from torch.testing._internal.common_utils import TestCase

DTYPES = {
    "Float": torch.float32,
    "Double": torch.float64,
    "BFloat16": torch.bfloat16,
    "Half": torch.float16,
    "Long": torch.int64,
    "Int": torch.int32,
    "Byte": torch.uint8,
    "Bool": torch.bool,
}


def hexbytes(t):
    return bytes(t.reshape(1).view(torch.uint8).tolist()).hex()


def float_pairs(rng, dtype, n):
    """Pairs of one element near the edge of torch.allclose's tolerance, plus special values."""
    finfo = torch.finfo(dtype)
    specials = [0.0, -0.0, finfo.tiny, -finfo.tiny, finfo.max, -finfo.max, math.inf, -math.inf,
                math.nan, 1.0, -1.0, 1e-8, 1e-5]
    out = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.1:
            e = rng.choice(specials)
            a = rng.choice(specials + [e])
        else:
            e = rng.choice([-1, 1]) * 10 ** rng.uniform(-12, math.log10(finfo.max) - 1)
            edge = 1e-8 + 1e-5 * abs(e)
            a = e + edge * rng.uniform(-1.5, 1.5)
        et = torch.tensor([e], dtype=torch.float64).to(dtype)
        at = torch.tensor([a], dtype=torch.float64).to(dtype)
        if kind > 0.9:
            # A few ulps away, in the dtype itself.
            steps = rng.randint(-3, 3)
            at = et.clone()
            for _ in range(abs(steps)):
                at = torch.nextafter(at.to(torch.float32 if dtype in (torch.bfloat16, torch.float16)
                                           else dtype),
                                     torch.tensor([math.copysign(math.inf, steps)],
                                                  dtype=torch.float32 if dtype in (
                                                      torch.bfloat16, torch.float16) else dtype))
                at = at.to(dtype)
        out.append((et, at))
    return out


def int_pairs(rng, dtype, n):
    info = torch.iinfo(dtype) if dtype != torch.bool else None
    out = []
    for _ in range(n):
        if dtype == torch.bool:
            e, a = rng.random() < 0.5, rng.random() < 0.5
        else:
            e = rng.choice([0, 1, info.max, info.min, rng.randint(info.min, info.max),
                            int(rng.choice([-1, 1]) * 10 ** rng.uniform(0, math.log10(info.max)))])
            e = max(info.min, min(info.max, e))
            a = max(info.min, min(info.max, e + rng.randint(-3, 3) * rng.choice([1, 1, 10, 1000])))
        out.append((torch.tensor([e], dtype=dtype), torch.tensor([a], dtype=dtype)))
    return out


def number_text(v):
    if isinstance(v, bool):
        return "bool:" + repr(v)
    if isinstance(v, int):
        return "int:" + repr(v)
    return "float:" + v.hex()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--per-dtype", type=int, default=1500)
    args = p.parse_args()
    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    w = sys.stdout.write
    w(f"# torch {torch.__version__}, scripts/torch-verdicts.py --seed {args.seed} "
      f"--per-dtype {args.per_dtype}\n")
    for name, dtype in DTYPES.items():
        pairs = (float_pairs(rng, dtype, args.per_dtype) if dtype.is_floating_point
                 else int_pairs(rng, dtype, args.per_dtype))
        for e, a in pairs:
            w(f"tensor {name} {hexbytes(e)} {hexbytes(a)} {int(torch.allclose(e, a))}\n")
    values = [0, 1, -1, 3, 2 ** 53, 2 ** 53 + 1, 10 ** 18, True, False, 0.0, 1.0, -1.0, 3.0,
              0.1, 0.1 + 1e-9, 0.1 + 1e-6, 0.1 * (1 + 1e-7), 1e15, 1e15 + 1, 2.0 ** 53, 1e-9,
              1e-7, 2e-7, math.nan, math.inf, -math.inf, 0.9, 0.999, 0.99]
    case = TestCase()
    for e in values:
        for a in values:
            try:
                case.assertEqual(e, a)
                ok = 1
            except AssertionError:
                ok = 0
            w(f"number {number_text(e)} {number_text(a)} {ok}\n")


if __name__ == "__main__":
    main()
