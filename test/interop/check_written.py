#!/usr/bin/env python3
"""Loads what interop_test wrote (C10DTEST_INTEROP_OUT) with PyTorch and safetensors, and checks
it against PyTorch's own values with torch.testing.assert_close.

    python3 test/interop/check_written.py REF_DIR OUT_DIR WORLD_SIZE

REF_DIR is make_reference.py's output (for the trained model and optimizer). Exit status 0 when
every check passed; each failure is printed with the file and key.
"""
import json
import os
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch.testing import assert_close

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

failures = []
checks = 0


def check(what, fn):
    global checks
    checks += 1
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - report and go on
        failures.append(f"{what}: {type(e).__name__}: {e}")


def same_tensors(expected, got, where, exact=True):
    def run():
        assert set(expected) == set(got), f"keys {sorted(set(expected) ^ set(got))} differ"
        for k, v in expected.items():
            g = got[k]
            assert g.dtype == v.dtype, f"{k}: dtype {g.dtype} vs {v.dtype}"
            assert g.shape == v.shape, f"{k}: shape {tuple(g.shape)} vs {tuple(v.shape)}"
            if exact:
                assert_close(g, v, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{k}: {m}")
            else:
                assert_close(g, v, msg=lambda m: f"{k}: {m}")
    check(where, run)


def main():
    ref, out, world = sys.argv[1], sys.argv[2], int(sys.argv[3])
    expected_pt = common.formula_dict(with_complex=True)
    expected_st = common.formula_dict(with_complex=False)

    # torch.load with weights_only=True: only the classes PyTorch allows for plain state dicts.
    pt = torch.load(f"{out}/formula.pt", weights_only=True)
    same_tensors(expected_pt, pt, "formula.pt")
    st = load_file(f"{out}/formula.safetensors")
    same_tensors(expected_st, st, "formula.safetensors")
    with safe_open(f"{out}/formula.safetensors", "pt") as f:
        check("formula.safetensors metadata", lambda: f.metadata()["format"] == "pt" or 1 / 0)

    # The model and optimizer C++ trained, against Python's own run.
    py_msd = torch.load(f"{ref}/composite_msd.pt", weights_only=True)
    py_osd = torch.load(f"{ref}/composite_osd.pt", weights_only=True)
    same_tensors(py_msd, torch.load(f"{out}/composite_msd.pt", weights_only=True),
                 "composite_msd.pt", exact=False)
    same_tensors(py_msd, load_file(f"{out}/composite_msd.safetensors"),
                 "composite_msd.safetensors", exact=False)
    c_osd = torch.load(f"{out}/composite_osd.pt", weights_only=True)
    names = [n for n, _ in common_model_names()]

    def osd():
        assert len(c_osd["state"]) == len(py_osd["state"]) == len(names)
        for i, fqn in enumerate(names):
            c, p = c_osd["state"][fqn], py_osd["state"][i]
            assert int(c["step"]) == int(p["step"].item()), f"{fqn}: step"
            for k in ("exp_avg", "exp_avg_sq"):
                assert_close(c[k], p[k], msg=lambda m: f"state.{fqn}.{k}: {m}")
        g, pg = c_osd["param_groups"][0], py_osd["param_groups"][0]
        for k in ("lr", "eps", "weight_decay", "amsgrad"):
            assert g[k] == pg[k], f"param_groups.0.{k}: {g[k]} vs {pg[k]}"
        assert tuple(g["betas"]) == tuple(pg["betas"])
        assert sorted(g["params"]) == sorted(names)
    check("composite_osd.pt", osd)

    def osd_safetensors():
        flat = load_file(f"{out}/composite_osd.safetensors")
        with safe_open(f"{out}/composite_osd.safetensors", "pt") as f:
            values = json.loads(f.metadata()["c10dtest.values"])
        for i, fqn in enumerate(names):
            for k in ("exp_avg", "exp_avg_sq"):
                assert_close(flat[f"state.{fqn}.{k}"], py_osd["state"][i][k])
            assert values[f"state.{fqn}.step"] == {"int": int(py_osd["state"][i]["step"].item())}
        assert values["param_groups.0.lr"] == {"float": py_osd["param_groups"][0]["lr"]}
    check("composite_osd.safetensors", osd_safetensors)

    # Sharded: every rank's file holds its pieces; c10dtest.shards gives their global offsets.
    def reassemble():
        full, covered = {}, {}
        for r in range(world):
            path = f"{out}/formula.rank{r}.safetensors"
            with safe_open(path, "pt") as f:
                shards = json.loads(f.metadata().get("c10dtest.shards", "{}"))
                for name in f.keys():
                    t = f.get_tensor(name)
                    s = shards.get(name)
                    if s is None:  # a plain tensor: the whole value
                        full[name] = t
                        continue
                    key = s["key"]
                    dest = full.setdefault(key, torch.empty(s["global_shape"], dtype=t.dtype))
                    mask = covered.setdefault(key, torch.zeros(s["global_shape"], dtype=torch.bool))
                    index = tuple(slice(o, o + n) for o, n in zip(s["offsets"], t.shape))
                    dest[index] = t
                    mask[index] = True
        for key, mask in covered.items():
            assert bool(mask.all()), f"{key}: not every element is in some rank's file"
        same_tensors(expected_st, full, f"formula.rank*.safetensors ({world} ranks)")
    check("reassembly", reassemble)

    print(f"check_written: {out}: {checks - len(failures)}/{checks} checks passed "
          f"(torch {torch.__version__})")
    for f in failures:
        print("  FAIL", f)
    return 1 if failures else 0


def common_model_names():
    from torch.testing._internal.common_dist_composable import CompositeParamModel
    torch.manual_seed(0)
    return list(CompositeParamModel(torch.device("cpu")).named_parameters())


if __name__ == "__main__":
    sys.exit(main())
