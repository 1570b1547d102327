"""Reader and writer of our reference-fixture format (the C++ reader is tests/fixture.h).

A fixture is a small binary file of named arrays, written by a Python generator (scripts/gen_*.py)
and committed, so the C++ tests need no Python. Layout, all little-endian:

    8 bytes   magic b"SAEFIXT\\0"
    uint32    version (1)
    uint32    number of arrays
    per array:
      uint32  name length, then the name bytes (UTF-8, no terminator)
      uint32  dtype code: 0 = float32, 1 = float64, 2 = int64
      uint32  ndim (0 for a scalar)
      int64   dims[ndim]
      raw data, row-major (C order), prod(dims) elements of the dtype

Text (e.g. the torch version) is stored as a 1-D int64 array of its UTF-8 bytes (put_text).
Used by every generator; keep it dependency-free apart from numpy.
"""
import struct

import numpy as np

MAGIC = b"SAEFIXT\0"
VERSION = 1
DTYPE_CODES = {np.dtype("float32"): 0, np.dtype("float64"): 1, np.dtype("int64"): 2}
CODE_DTYPES = {code: dtype.newbyteorder("<") for dtype, code in DTYPE_CODES.items()}


class FixtureWriter:
    """Collects named arrays in insertion order; save() writes them."""

    def __init__(self):
        self.arrays = {}

    def put(self, name, value, dtype=None):
        """Stores a numpy array, torch tensor (detached, moved to CPU) or Python number.

        dtype: force a numpy dtype; otherwise float32/float64/int64 are kept and Python floats
        become float64, Python ints int64.
        """
        if name in self.arrays:
            raise ValueError(f"duplicate fixture array name {name!r}")
        if hasattr(value, "detach"):  # torch.Tensor, without importing torch here
            value = value.detach().cpu().numpy()
        array = np.asarray(value, dtype=dtype)
        if array.dtype not in DTYPE_CODES:
            raise TypeError(f"{name}: dtype {array.dtype} is not float32, float64 or int64")
        self.arrays[name] = np.array(array, order="C", copy=True)  # (ascontiguousarray would make 0-d 1-d)

    def put_text(self, name, text):
        self.put(name, np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64))

    def save(self, path):
        with open(path, "wb") as f:
            f.write(MAGIC)
            f.write(struct.pack("<II", VERSION, len(self.arrays)))
            for name, array in self.arrays.items():
                encoded = name.encode("utf-8")
                f.write(struct.pack("<I", len(encoded)))
                f.write(encoded)
                f.write(struct.pack("<II", DTYPE_CODES[array.dtype], array.ndim))
                f.write(struct.pack(f"<{array.ndim}q", *array.shape))
                f.write(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes(order="C"))


def read_fixture(path):
    """Returns {name: numpy array}; raises ValueError on a bad or truncated file."""
    with open(path, "rb") as f:
        blob = f.read()
    pos = 0

    def take(n):
        nonlocal pos
        if pos + n > len(blob):
            raise ValueError(f"{path}: truncated at byte {pos} (wanted {n} more bytes)")
        out = blob[pos:pos + n]
        pos += n
        return out

    if take(8) != MAGIC:
        raise ValueError(f"{path}: not a fixture (bad magic)")
    version, count = struct.unpack("<II", take(8))
    if version != VERSION:
        raise ValueError(f"{path}: fixture version {version}, this reader knows {VERSION}")
    arrays = {}
    for _ in range(count):
        (name_len,) = struct.unpack("<I", take(4))
        name = take(name_len).decode("utf-8")
        code, ndim = struct.unpack("<II", take(8))
        dims = struct.unpack(f"<{ndim}q", take(8 * ndim))
        dtype = CODE_DTYPES[code]
        count_elems = int(np.prod(dims, dtype=np.int64))
        arrays[name] = np.frombuffer(take(count_elems * dtype.itemsize), dtype=dtype).reshape(dims)
    if pos != len(blob):
        raise ValueError(f"{path}: {len(blob) - pos} trailing bytes after the last array")
    return arrays
