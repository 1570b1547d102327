"""Deterministic "hashed" weights for GPT-Neo test models: every float32 parameter value is a pure
integer function of (tensor name, flat element index), so the C++ tests can rebuild exactly the same
weights in memory with no file. The specification (normative) is docs/gpt_neo.md, section
"Hashed weights"; this module is its reference implementation. numpy only.

    fnv1a64(name)            64-bit FNV-1a over the UTF-8 bytes of the tensor name
    splitmix64(z)            the SplitMix64 output function (Steele, Lea, Flood 2014)
    h  = splitmix64(fnv1a64(name) + index * 0x9E3779B97F4A7C15 mod 2^64)
                             (output number `index`, 0-based, of a SplitMix64 generator whose
                             state starts at fnv1a64(name))
    m  = (h >> 40) - 2^23                    integer in [-2^23, 2^23)
    u  = m / 2^23                            in [-1, 1), exact in float32 and float64
    value = float32(offset + u * 2^-e)       e and offset from the tensor's kind (tensor_kind)

All scales are powers of two, so u * 2^-e is exact; only the LayerNorm weights (offset 1) round,
once, from the exact float64 value to float32 (round to nearest even).

Usage as a script: python3 scripts/hashed_weights.py   (prints the test vectors of docs/gpt_neo.md)
"""
import struct

import numpy as np

MASK64 = (1 << 64) - 1
FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
GOLDEN = 0x9E3779B97F4A7C15
SM_MUL1 = 0xBF58476D1CE4E5B9
SM_MUL2 = 0x94D049BB133111EB


def fnv1a64(name: str) -> int:
    h = FNV_OFFSET
    for byte in name.encode("utf-8"):
        h ^= byte
        h = (h * FNV_PRIME) & MASK64
    return h


def splitmix64(z: int) -> int:
    """Adds the golden gamma, then mixes: splitmix64(s + i*GOLDEN) is the i-th output from state s."""
    z = (z + GOLDEN) & MASK64
    z = ((z ^ (z >> 30)) * SM_MUL1) & MASK64
    z = ((z ^ (z >> 27)) * SM_MUL2) & MASK64
    return z ^ (z >> 31)


def hashed_u_scalar(name: str, index: int) -> float:
    """u in [-1, 1) for one element, in plain Python integers (the slow, obviously-correct path)."""
    h = splitmix64((fnv1a64(name) + index * GOLDEN) & MASK64)
    return ((h >> 40) - (1 << 23)) / float(1 << 23)


def hashed_u(name: str, count: int, chunk: int = 1 << 22) -> np.ndarray:
    """u for indices 0..count-1 as float64 (numpy uint64 arithmetic wraps mod 2^64, as wanted)."""
    seed = np.uint64(fnv1a64(name))
    out = np.empty(count, dtype=np.float64)
    with np.errstate(over="ignore"):
        for start in range(0, count, chunk):
            idx = np.arange(start, min(count, start + chunk), dtype=np.uint64)
            z = seed + idx * np.uint64(GOLDEN)
            z = z + np.uint64(GOLDEN)
            z = (z ^ (z >> np.uint64(30))) * np.uint64(SM_MUL1)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(SM_MUL2)
            z = z ^ (z >> np.uint64(31))
            m = (z >> np.uint64(40)).astype(np.int64) - (1 << 23)
            out[start:start + len(idx)] = m.astype(np.float64) / float(1 << 23)
    return out


def linear_exponent(fan_in: int) -> int:
    """The smallest e >= 0 with 4^e >= fan_in, i.e. 2^-e <= 1/sqrt(fan_in) < 2^-(e-1)."""
    e = 0
    while (1 << (2 * e)) < fan_in:
        e += 1
    return e


def tensor_kind(name: str, shape) -> tuple[str, float, int]:
    """(kind, offset, e): value = float32(offset + u * 2^-e). Raises on a name it does not know."""
    if name.endswith("wte.weight"):
        return "token_embedding", 0.0, 1
    if name.endswith("wpe.weight"):
        return "position_embedding", 0.0, 2
    last = name.split(".")[-2] if "." in name else ""
    if last.startswith("ln_"):
        if name.endswith(".weight"):
            return "layernorm_weight", 1.0, 3
        if name.endswith(".bias"):
            return "layernorm_bias", 0.0, 4
    if name.endswith(".weight") and len(shape) == 2:  # nn.Linear, [out, in]
        return "linear_weight", 0.0, linear_exponent(int(shape[1]))
    if name.endswith(".bias") and len(shape) == 1:
        return "linear_bias", 0.0, 4
    raise ValueError(f"no hashed-weight rule for tensor {name!r} of shape {tuple(shape)}")


def hashed_tensor(name: str, shape) -> np.ndarray:
    """The float32 tensor of the given name and shape (row-major flat index)."""
    _, offset, e = tensor_kind(name, shape)
    count = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
    values = hashed_u(name, count) * (2.0 ** -e)  # exact
    if offset != 0.0:
        values = values + offset  # exact in float64 (|u| 2^-e has at most 23 + e fraction bits)
    return values.astype(np.float32).reshape(shape)


def hashed_value_scalar(name: str, shape, index: int) -> np.float32:
    _, offset, e = tensor_kind(name, shape)
    return np.float32(offset + hashed_u_scalar(name, index) * 2.0 ** -e)


def fill_model(model) -> None:
    """Overwrites every parameter of a torch model in place (tied parameters once, by their first
    name in named_parameters(), which for GPTNeoForCausalLM is transformer.wte.weight)."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():  # remove_duplicate=True: tied ones appear once
            values = hashed_tensor(name, tuple(param.shape))
            param.copy_(torch.from_numpy(values).to(param.dtype))


def f32_hex(x) -> str:
    return "0x%08x" % struct.unpack("<I", struct.pack("<f", float(np.float32(x))))[0]


# (name, shape, index): test vectors for docs/gpt_neo.md and the C++ tests (TinyStories-33M shapes)
TEST_VECTORS = [
    ("transformer.wte.weight", (50257, 768), 0),
    ("transformer.wte.weight", (50257, 768), 1),
    ("transformer.wte.weight", (50257, 768), 38597375),  # the last element
    ("transformer.wpe.weight", (2048, 768), 12345),
    ("transformer.h.0.ln_1.weight", (768,), 0),
    ("transformer.h.0.ln_1.weight", (768,), 767),
    ("transformer.h.3.ln_2.bias", (768,), 5),
    ("transformer.h.0.attn.attention.q_proj.weight", (768, 768), 0),
    ("transformer.h.1.attn.attention.k_proj.weight", (768, 768), 589823),
    ("transformer.h.2.attn.attention.out_proj.bias", (768,), 100),
    ("transformer.h.2.mlp.c_fc.weight", (3072, 768), 2000000),
    ("transformer.h.3.mlp.c_proj.weight", (768, 3072), 7),
    ("transformer.ln_f.weight", (768,), 42),
    # the tiny fixture model's shapes (hidden 32, intermediate 96): other exponents
    ("transformer.h.0.attn.attention.v_proj.weight", (32, 32), 1000),
    ("transformer.h.1.mlp.c_proj.weight", (32, 96), 3071),
]

# (name, shape): whole-tensor checksums (TinyStories-33M shapes)
CHECKSUM_TENSORS = [
    ("transformer.wte.weight", (50257, 768)),
    ("transformer.wpe.weight", (2048, 768)),
    ("transformer.h.0.attn.attention.q_proj.weight", (768, 768)),
    ("transformer.h.2.mlp.c_fc.bias", (3072,)),
    ("transformer.h.3.mlp.c_proj.weight", (768, 3072)),
    ("transformer.ln_f.weight", (768,)),
]


def checksum(name, shape):
    """Sum of the tensor's float32 values in float64: exact, hence independent of the summation
    order, since every value is a multiple of 2^-(24+e) and the total stays far below 2^53 units."""
    return float(hashed_tensor(name, shape).astype(np.float64).sum())


def test_vectors():
    rows = []
    for name, shape, index in TEST_VECTORS:
        h = splitmix64((fnv1a64(name) + index * GOLDEN) & MASK64)
        kind, offset, e = tensor_kind(name, shape)
        value = hashed_value_scalar(name, shape, index)
        rows.append(dict(name=name, shape=shape, index=index, fnv=fnv1a64(name), h=h, m=(h >> 40) - (1 << 23),
                         kind=kind, offset=offset, e=e, value=value, hex=f32_hex(value)))
    return rows


def _self_check():
    # the vectorised path equals the scalar path, element for element, bit for bit
    for name, shape, index in TEST_VECTORS:
        count = index + 3
        vec = hashed_u(name, count, chunk=1 << 20)
        assert vec[index] == hashed_u_scalar(name, index), name
    small = hashed_tensor("transformer.h.0.ln_1.weight", (768,))
    for i in range(768):
        assert small[i] == hashed_value_scalar("transformer.h.0.ln_1.weight", (768,), i)
    # known FNV-1a 64 vectors
    assert fnv1a64("") == 0xCBF29CE484222325
    assert fnv1a64("a") == 0xAF63DC4C8601EC8C
    # SplitMix64 with state 0: the first output of the reference generator is 0xE220A8397B1DCDAF
    assert splitmix64(0) == 0xE220A8397B1DCDAF


if __name__ == "__main__":
    _self_check()
    print(f"fnv1a64('transformer.wte.weight') = 0x{fnv1a64('transformer.wte.weight'):016x}")
    print("| name | index | h (hex) | m | kind, offset, e | value | float32 bits |")
    print("|---|---|---|---|---|---|---|")
    for r in test_vectors():
        print(f"| `{r['name']}` {list(r['shape'])} | {r['index']} | 0x{r['h']:016x} | {r['m']} | {r['kind']}, "
              f"{r['offset']:g}, {r['e']} | {float(r['value']):.9g} | {r['hex']} |")
    print()
    print("| tensor | shape | sum of values (float64, exact) | as hex float |")
    print("|---|---|---|---|")
    for name, shape in CHECKSUM_TENSORS:
        total = checksum(name, shape)
        print(f"| `{name}` | {list(shape)} | {total!r} | `{total.hex()}` |")
