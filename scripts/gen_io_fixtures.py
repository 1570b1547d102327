#!/usr/bin/env python3
"""Writes the small file-format fixtures in tests/ref/ that tests/io/test_io.cpp reads, using writers
independent of ours: numpy (np.save, np.lib.format.write_array), the `safetensors` package (numpy
and torch front-ends) and a hand-rolled safetensors writer (json + struct). The fixtures are
committed, so the C++ tests need no Python. Re-run with: python3 scripts/gen_io_fixtures.py

Values the C++ test can recompute: the "ramp" array of shape [7, 5] holds (k - 17) / 4 for
k = 0..34 in row-major order, exact in F16, BF16, F32 and F64. The "special_*" arrays hold edge
values (max, subnormals, signed zeros, inf, NaN) together with their float32 conversion made by
numpy or torch ("*_as_f32"), which the test compares bit for bit with ours.
Needs: numpy; safetensors and torch are optional (their fixtures are skipped without them).
"""
import json
import os
import struct

import numpy as np

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "ref")
ROWS, COLS = 7, 5


def ramp(dtype):
    return ((np.arange(ROWS * COLS, dtype=np.float64) - 17) / 4).reshape(ROWS, COLS).astype(dtype)


def special_f16():
    bits = np.array([0x3C00,  # 1.0
                     0xC100,  # -2.5
                     0x7BFF,  # 65504, the largest half
                     0x0001,  # 2^-24, the smallest subnormal
                     0x03FF,  # the largest subnormal
                     0x0400,  # 2^-14, the smallest normal
                     0x8000,  # -0.0
                     0x7C00,  # inf
                     0xFC00,  # -inf
                     0x7E00,  # NaN
                     0x3555,  # 0.333251953125
                     0x8001], dtype=np.uint16)
    return bits.view(np.float16)


def special_bf16_bits():
    return np.array([0x3F80,  # 1.0
                     0xC020,  # -2.5
                     0x7F7F,  # the largest bfloat16, 3.3895e38
                     0x0001,  # 2^-133, the smallest subnormal
                     0x007F,  # the largest subnormal
                     0x0080,  # 2^-126, the smallest normal
                     0x8000,  # -0.0
                     0x7F80,  # inf
                     0xFF80,  # -inf
                     0x7FC0,  # NaN
                     0x3EAB,  # 0.333984375
                     0x8001], dtype=np.uint16)


def write_safetensors_by_hand(path, arrays, metadata):
    """arrays: list of (name, dtype string, shape, raw bytes), laid out in the given order.
    The header is NOT padded (so data is unaligned) and __metadata__ comes last: both legal."""
    header = {}
    offset = 0
    for name, dtype, shape, raw in arrays:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    header["__metadata__"] = metadata
    text = json.dumps(header).encode("utf-8")
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for _, _, _, raw in arrays:
            f.write(raw)


def main():
    os.makedirs(OUT, exist_ok=True)
    written = []

    def path(name):
        written.append(name)
        return os.path.join(OUT, name)

    # ---- npy, written by numpy ----
    np.save(path("io_np_f32.npy"), ramp(np.float32))
    np.save(path("io_np_f16.npy"), ramp(np.float16))
    np.save(path("io_np_f64.npy"), ramp(np.float64))
    np.save(path("io_np_1d.npy"), np.arange(6, dtype=np.float32) * 0.5)
    with open(path("io_np_v2.npy"), "wb") as f:
        np.lib.format.write_array(f, ramp(np.float32), version=(2, 0))
    with open(path("io_np_v3.npy"), "wb") as f:
        np.lib.format.write_array(f, ramp(np.float32), version=(3, 0))
    np.save(path("io_np_special_f16.npy"), special_f16())
    np.save(path("io_np_special_f16_as_f32.npy"), special_f16().astype(np.float32))
    # Files our reader must reject.
    np.save(path("io_np_bad_fortran.npy"), np.asfortranarray(ramp(np.float32)))
    np.save(path("io_np_bad_bigendian.npy"), ramp(np.dtype(">f4")))
    np.save(path("io_np_bad_int32.npy"), np.arange(6, dtype=np.int32).reshape(2, 3))

    metadata = {"model": "tiny-test", "layer": "2", "note": "caf\u00e9 \u2603 \"quoted\""}
    story_lengths = np.array([2, 4, 1], dtype=np.int64)
    token_ids = np.array([5, -1, 70000, 0, 2**31 - 1, -2**31, 42], dtype=np.int32)

    # ---- safetensors, written by the safetensors package (numpy front-end) ----
    try:
        from safetensors.numpy import save_file
        save_file({
            "activations": ramp(np.float32),
            "act_f16": ramp(np.float16),
            "act_f64": ramp(np.float64),
            "story_lengths": story_lengths,
            "token_ids": token_ids,
            "special_f16": special_f16(),
            "special_f16_as_f32": special_f16().astype(np.float32),
        }, path("io_st_lib.safetensors"), metadata=metadata)
        # The byte layout our writer must reproduce exactly (one metadata key: the reference keeps
        # metadata in a hash map, so with several keys its order is not fixed).
        save_file({
            "W_enc": ramp(np.float32),
            "b_enc": np.arange(5, dtype=np.float32) - 2,
            "b_dec": np.arange(1, 4, dtype=np.float64) / 3,
        }, path("io_st_ref_layout.safetensors"), metadata={"sae_lens_version": "6.0.0"})
        # The reference orders tensors by dtype (its Dtype enum, reversed), not by element size:
        # I64 before F64 (feature_stats.safetensors holds both), F32 before I32, F16 before I16.
        save_file({
            "a_f64": np.array([0.5, -1.25], dtype=np.float64),
            "b_i64": np.array([-1, 2**40], dtype=np.int64),
            "c_i32": np.array([7, -8], dtype=np.int32),
            "d_f32": np.array([1.5, 2.5], dtype=np.float32),
            "e_i16": np.array([3, -4], dtype=np.int16),
            "f_f16": np.array([0.25, -2.0], dtype=np.float16),
        }, path("io_st_ref_dtype_order.safetensors"))
    except ImportError:
        print("safetensors not installed: io_st_lib.safetensors, io_st_ref_layout.safetensors and "
              "io_st_ref_dtype_order.safetensors not written")

    # ---- safetensors with bfloat16, via torch (its own bf16 -> f32 conversion) ----
    try:
        import torch
        from safetensors.torch import save_file as save_torch
        bf16 = torch.from_numpy(special_bf16_bits().astype(np.int16)).view(torch.bfloat16)
        save_torch({
            "act_bf16": torch.from_numpy(ramp(np.float32)).to(torch.bfloat16),
            "special_bf16": bf16,
            "special_bf16_as_f32": bf16.float(),
        }, path("io_st_torch.safetensors"), metadata={"writer": "safetensors.torch"})
    except ImportError:
        print("torch or safetensors not installed: io_st_torch.safetensors not written")

    # ---- safetensors written by hand: unpadded header, metadata last, BF16 from bit patterns ----
    bf16_bits = special_bf16_bits()
    bf16_as_f32 = (bf16_bits.astype(np.uint32) << 16).view(np.float32)
    ramp_bf16 = (ramp(np.float32).view(np.uint32) >> 16).astype(np.uint16)  # exact: ramp fits in 8 bits
    write_safetensors_by_hand(path("io_st_hand.safetensors"), [
        ("token_ids", "I32", [7], token_ids.tobytes()),
        ("act_bf16", "BF16", [ROWS, COLS], ramp_bf16.tobytes()),
        ("special_bf16", "BF16", [len(bf16_bits)], bf16_bits.tobytes()),
        ("special_bf16_as_f32", "F32", [len(bf16_bits)], bf16_as_f32.tobytes()),
        ("activations", "F32", [ROWS, COLS], ramp(np.float32).tobytes()),
        ("story_lengths", "I64", [3], story_lengths.tobytes()),
        ("scalar", "F64", [], np.float64(0.1).tobytes()),
        ("empty", "F32", [0, 5], b""),
    ], {"writer": "hand", "unicode": "\u00fc\U0001F600"})

    for name in written:
        print(f"{name}: {os.path.getsize(os.path.join(OUT, name))} bytes")


if __name__ == "__main__":
    main()
