"""A small reader for GGUF files, llama.cpp's single-file model format (versions 2 and 3).

    g = read_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")
    g.metadata["llama.block_count"]          # 30
    g.check_supported()                      # fail early, before a converter writes anything
    w = g.tensor("token_embd.weight")        # float32 numpy array, shape (49152, 576)

Layout (all little-endian): magic "GGUF", u32 version, u64 tensor count, u64 key/value count,
the key/values, one info record per tensor (name, dims, ggml type, offset), padding up to
`general.alignment`, then the tensor data. Only the standard library and numpy are used; the
`gguf` pip package is the independent reference the tests compare against.
"""
import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.errors import FormatError

# Every ggml type id a GGUF file may hold: (name, values per block, bytes per block). All are
# listed, not just the ones we dequantise, so that any tensor's byte size (and so whether it fits
# in the file) is known and an unsupported one can be named in the error.
GGML_TYPES = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36), 10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8),
    28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17), 40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18),
}
SUPPORTED_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 8: "Q8_0", 30: "BF16"}

# The quantised types as numpy record layouts: one record is one block of 32 values.
# Q4_0/Q4_1 pack value j in the low nibble of qs[j] and value j+16 in its high nibble.
_BLOCKS = {
    2: np.dtype([("d", "<f2"), ("qs", "u1", 16)]),                 # x = (nibble - 8) * d
    3: np.dtype([("d", "<f2"), ("m", "<f2"), ("qs", "u1", 16)]),   # x = nibble * d + m
    8: np.dtype([("d", "<f2"), ("qs", "i1", 32)]),                 # x = q * d
}

# Metadata value types with a fixed size: id -> (struct format, numpy dtype for whole arrays).
_SCALARS = {0: ("<B", "<u1"), 1: ("<b", "<i1"), 2: ("<H", "<u2"), 3: ("<h", "<i2"), 4: ("<I", "<u4"),
            5: ("<i", "<i4"), 6: ("<f", "<f4"), 7: ("<?", "<u1"), 10: ("<Q", "<u8"), 11: ("<q", "<i8"),
            12: ("<d", "<f8")}
_STRING, _ARRAY, _BOOL = 8, 9, 7


@dataclass
class GGUFTensorInfo:
    name: str
    shape: tuple[int, ...]  # PyTorch order: GGUF lists dims innermost first, so this is ne[] reversed
    ggml_type: int
    offset: int             # absolute byte offset of the data in the file
    nbytes: int


class _Cursor:
    """Reads values from the mapped file, turning every overrun or bad byte into a FormatError."""

    def __init__(self, buf, path):
        self.buf, self.path, self.pos = buf, path, 0

    def take(self, n: int, what: str) -> int:
        """Claims n bytes for `what` and returns where they start."""
        start = self.pos
        if n < 0 or start + n > len(self.buf):
            raise FormatError(f"{self.path}: file ends inside {what} (truncated or corrupt file)")
        self.pos += n
        return start

    def scalar(self, fmt: str, what: str):
        return struct.unpack_from(fmt, self.buf, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        n = self.scalar("<Q", what)
        start = self.take(n, what)
        try:
            return str(self.buf[start:start + n], "utf-8")
        except UnicodeDecodeError:
            raise FormatError(f"{self.path}: {what} is not valid UTF-8") from None

    def value(self, vtype: int, what: str):
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype][0], what)
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            etype, count = self.scalar("<I", what), self.scalar("<Q", what)
            if etype in _SCALARS:  # numbers in one numpy call: vocab-sized arrays are common
                dtype = np.dtype(_SCALARS[etype][1])
                a = np.frombuffer(self.buf, dtype, count, self.take(count * dtype.itemsize, what))
                return (a != 0).tolist() if etype == _BOOL else a.tolist()
            return [self.value(etype, what) for _ in range(count)]
        raise FormatError(f"{self.path}: {what} has unknown value type {vtype}")


class GGUFFile:
    """A parsed GGUF header; tensor data is read from the memory-mapped file on demand."""

    def __init__(self, path):
        self.path = path = Path(path)
        try:
            with open(path, "rb") as f:
                size = f.seek(0, 2)
                self._buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        except FileNotFoundError:
            raise FormatError(f"{path}: no such file") from None
        except OSError as e:
            raise FormatError(f"{path}: cannot read: {e.strerror or e}") from None
        cur = _Cursor(self._buf, path)
        if len(self._buf) < 4 or self._buf[:4] != b"GGUF":
            raise FormatError(f"{path}: not a GGUF file (it does not start with b'GGUF')")
        cur.pos = 4
        self.version = cur.scalar("<I", "the header")
        if self.version == 1:
            raise FormatError(f"{path}: GGUF version 1 (llama.cpp before Aug 2023) is not supported; "
                              "re-convert the model with a current llama.cpp")
        if self.version not in (2, 3):
            swapped = int.from_bytes(self.version.to_bytes(4, "little"), "big")
            hint = " (it is a big-endian GGUF file)" if swapped in (2, 3) else ""
            raise FormatError(f"{path}: GGUF version {self.version} is not supported{hint}; versions 2 and 3 are")
        n_tensors, n_kv = cur.scalar("<Q", "the header"), cur.scalar("<Q", "the header")

        self.metadata: dict[str, object] = {}
        for i in range(n_kv):
            key = cur.string(f"metadata entry {i}")
            if key in self.metadata:
                raise FormatError(f"{path}: metadata key {key!r} appears twice")
            self.metadata[key] = cur.value(cur.scalar("<I", f"metadata key {key!r}"), f"metadata key {key!r}")

        raw = []  # (name, ne, type, relative offset); placed once the data section's start is known
        for i in range(n_tensors):
            name = cur.string(f"tensor info {i}")
            what = f"the info of tensor {name!r}"
            ne = [cur.scalar("<Q", what) for _ in range(cur.scalar("<I", what))]
            raw.append((name, ne, cur.scalar("<I", what), cur.scalar("<Q", what)))

        align = self.metadata.get("general.alignment", 32)
        if not isinstance(align, int) or isinstance(align, bool) or align <= 0 or align & (align - 1):
            raise FormatError(f"{path}: general.alignment is {align!r}, not a power of two")
        data_start = -(-cur.pos // align) * align

        self.tensors: dict[str, GGUFTensorInfo] = {}
        for name, ne, ggml_type, offset in raw:
            if name in self.tensors:
                raise FormatError(f"{path}: tensor {name!r} appears twice")
            # An unknown type id (newer llama.cpp, or corruption) leaves the data's size unknown,
            # so like llama.cpp we refuse the file; a known but unsupported type fails in tensor().
            if ggml_type not in GGML_TYPES:
                raise FormatError(f"{path}: tensor {name!r} has unknown ggml type {ggml_type}")
            type_name, block, block_bytes = GGML_TYPES[ggml_type]
            row = ne[0] if ne else 1  # like ggml, missing dims count as 1
            if row % block:
                raise FormatError(f"{path}: tensor {name!r} has rows of {row} values, "
                                  f"not a multiple of the {type_name} block size {block}")
            nbytes = math.prod(ne) // block * block_bytes
            info = GGUFTensorInfo(name, tuple(reversed(ne)), ggml_type, data_start + offset, nbytes)
            if info.offset + nbytes > len(self._buf):
                raise FormatError(f"{path}: the data of tensor {name!r} ({nbytes} bytes at offset {info.offset}) "
                                  f"extends past the end of the file ({len(self._buf)} bytes); truncated file?")
            self.tensors[name] = info

    def check_supported(self) -> None:
        """Raises FormatError on the first tensor that tensor() could not dequantise."""
        for info in self.tensors.values():
            if info.ggml_type not in SUPPORTED_TYPES:
                raise self._unsupported(info)

    def _unsupported(self, info: GGUFTensorInfo) -> FormatError:
        return FormatError(f"{self.path}: tensor {info.name!r} has ggml type {GGML_TYPES[info.ggml_type][0]} "
                           f"({info.ggml_type}); supported types: {', '.join(SUPPORTED_TYPES.values())}")

    def tensor(self, name: str) -> np.ndarray:
        """The tensor as a new float32 array of shape info.shape (dequantised if need be)."""
        if name not in self.tensors:
            raise FormatError(f"{self.path}: no tensor named {name!r}")
        info = self.tensors[name]
        if info.ggml_type not in SUPPORTED_TYPES:
            raise self._unsupported(info)
        data = np.frombuffer(self._buf, np.uint8, info.nbytes, info.offset)
        t = info.ggml_type
        if t == 0:
            x = data.view("<f4").astype(np.float32)
        elif t == 1:
            x = data.view("<f2").astype(np.float32)
        elif t == 30:  # bfloat16 is the top half of a float32
            x = (data.view("<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            b = data.view(_BLOCKS[t])
            d = b["d"].astype(np.float32)[:, None]
            if t == 8:
                x = b["qs"].astype(np.float32) * d
            else:
                q = np.concatenate([b["qs"] & 0x0F, b["qs"] >> 4], axis=1).astype(np.float32)
                x = (q - 8) * d if t == 2 else q * d + b["m"].astype(np.float32)[:, None]
        return x.reshape(info.shape)


def read_gguf(path) -> GGUFFile:
    return GGUFFile(path)
