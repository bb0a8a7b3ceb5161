"""Shared by the interop scripts: the values both sides compute independently, PyTorch's reference
modules, and the training run both sides repeat. test/interop/interop_test.cpp holds the C++ twin
of every function here; keep them in step."""
import torch
from torch import nn

# (name, dtype, shape) of the "formula" dict: every dtype both formats share, 0-d and empty
# tensors. A name ending in ".t" is saved as a non-contiguous view (a transpose).
FORMULA = [
    ("f32", torch.float32, (7, 5)),
    ("f64", torch.float64, (6, 3)),
    ("f16", torch.float16, (9, 4)),
    ("bf16", torch.bfloat16, (5, 8)),
    ("i64", torch.int64, (10,)),
    ("i32", torch.int32, (4, 4)),
    ("i16", torch.int16, (3, 7)),
    ("i8", torch.int8, (6,)),
    ("u8", torch.uint8, (2, 3, 4)),
    ("bool", torch.bool, (7, 3)),
    ("scalar", torch.float32, ()),
    ("empty", torch.float32, (0, 3)),
    ("view.t", torch.float32, (4, 6)),
]
COMPLEX = [("c64", torch.complex64, (5, 2)), ("c128", torch.complex128, (3,))]


def formula(dtype, shape, salt):
    """arange * 0.37 - 3 + salt in float64, then cast: the same bits on both sides."""
    n = 1
    for s in shape:
        n *= s
    v = torch.arange(n, dtype=torch.float64).reshape(shape) * 0.37 - 3.0 + salt
    if dtype == torch.bool:
        return (torch.arange(n).reshape(shape) % 3) == 0
    if dtype.is_complex:
        return torch.complex(v, -v).to(dtype)
    return v.to(dtype)


def formula_dict(with_complex):
    out = {}
    for i, (name, dtype, shape) in enumerate(FORMULA + (COMPLEX if with_complex else [])):
        if name.endswith(".t"):
            out[name] = formula(dtype, (shape[1], shape[0]), i).t()  # non-contiguous
        else:
            out[name] = formula(dtype, shape, i)
    return out


class FusionEmbedding(nn.Module):
    def __init__(self, vocab_size, fusion_vocab_size, embed_dim):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.fusion_embedding = nn.Embedding(fusion_vocab_size, embed_dim)


class FusionEmbeddingWithHook(FusionEmbedding):
    """As PyTorch's test_state_dict.py: 'embedding.weight' is saved as 'weight'."""

    def __init__(self, *args):
        super().__init__(*args)
        self._register_state_dict_hook(FusionEmbeddingWithHook._hook)

    @staticmethod
    def _hook(module, state_dict, prefix, *args):
        state_dict[prefix + "weight"] = state_dict.pop(prefix + "embedding.weight")
        return state_dict


def fill_with_formula(module):
    """Every parameter, then every buffer, in registration order gets formula values (salt = 100
    plus its index)."""
    tensors = list(module.parameters()) + list(module.buffers())
    with torch.no_grad():
        for i, t in enumerate(tensors):
            t.copy_(formula(t.dtype, tuple(t.shape), 100 + i))


STEPS = 3
LR = 1e-3
