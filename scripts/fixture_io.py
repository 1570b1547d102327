"""Writer (and reader) of the reference fixtures: safetensors files of named arrays, written by the
Python generators (scripts/gen_*.py) and committed under tests/ref/, so the C++ tests need no
Python. The C++ side reads them with the project's own safetensors reader (tests/util/fixture.h).

Arrays are float32, float64, int64 or int32 (Python floats become F64, ints I64; 0-d arrays keep shape
[]); text (e.g. the torch version) goes into the header's __metadata__. The file layout is the
safetensors format (8-byte little-endian header length, a JSON header, then the data); this module
writes it with numpy alone, tensors in the order given, so regenerating is byte-reproducible.
"""
import json
import struct

import numpy as np

DTYPE_NAMES = {np.dtype("float32"): "F32", np.dtype("float64"): "F64", np.dtype("int64"): "I64",
               np.dtype("int32"): "I32"}
NAME_DTYPES = {name: dtype for dtype, name in DTYPE_NAMES.items()}


class FixtureWriter:
    """Collects named arrays and text in insertion order; save() writes them."""

    def __init__(self):
        self.arrays = {}
        self.texts = {}

    def put(self, name, value, dtype=None):
        """Stores a numpy array, torch tensor (detached, moved to CPU) or Python number.

        dtype: force a numpy dtype; otherwise float32/float64/int64 are kept and Python floats
        become float64, Python ints int64.
        """
        if name in self.arrays or name in self.texts:
            raise ValueError(f"duplicate fixture name {name!r}")
        if hasattr(value, "detach"):  # torch.Tensor, without importing torch here
            value = value.detach().cpu().numpy()
        array = np.asarray(value, dtype=dtype)
        if array.dtype not in DTYPE_NAMES:
            raise TypeError(f"{name}: dtype {array.dtype} is not float32, float64, int64 or int32")
        self.arrays[name] = np.array(array, order="C", copy=True)

    def put_text(self, name, text):
        if name in self.arrays or name in self.texts:
            raise ValueError(f"duplicate fixture name {name!r}")
        self.texts[name] = str(text)

    def save(self, path):
        header = {}
        if self.texts:
            header["__metadata__"] = dict(self.texts)
        offset = 0
        blobs = []
        for name, array in self.arrays.items():
            data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes(order="C")
            header[name] = {"dtype": DTYPE_NAMES[array.dtype], "shape": list(array.shape),
                            "data_offsets": [offset, offset + len(data)]}
            blobs.append(data)
            offset += len(data)
        text = json.dumps(header, separators=(",", ":")).encode("utf-8")
        text += b" " * (-len(text) % 8)  # the data region starts 8-byte aligned
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(text)))
            f.write(text)
            for blob in blobs:
                f.write(blob)


def read_fixture(path):
    """Returns ({name: numpy array}, {name: text}) of a fixture written by FixtureWriter."""
    with open(path, "rb") as f:
        blob = f.read()
    (length,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + length])
    texts = header.pop("__metadata__", {})
    data = blob[8 + length:]
    arrays = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        dtype = NAME_DTYPES[entry["dtype"]].newbyteorder("<")
        arrays[name] = np.frombuffer(data[begin:end], dtype=dtype).reshape(entry["shape"])
    return arrays, texts
