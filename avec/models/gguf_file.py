"""A GGUF file's header layout and whether the file is whole; the sha256 of a file.

``gguf_layout`` reads only the header (key/value table and tensor table) and computes the byte count the
tensors need, so a truncated download or copy is caught before its dequantization fails on it.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path


# -- GGUF header -------------------------------------------------------------------------------------

_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


class _Truncated(Exception):
    pass


def gguf_layout(path: str | os.PathLike) -> dict[str, int]:
    """Read a GGUF's header only: ``{"size", "expected_size", "n_tensors", "data_offset"}`` where
    ``expected_size`` is the byte count the header's tensor table needs. Raises ValueError (naming the
    file) if it is not a GGUF or its header is cut off or inconsistent."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        def read(n: int) -> bytes:
            if n < 0 or f.tell() + n > size:
                raise _Truncated
            return f.read(n)

        try:
            if read(4) != b"GGUF":
                raise ValueError(f"{path} is not a GGUF file (it does not start with the bytes 'GGUF')")
            end = "<"
            (version,) = struct.unpack("<I", read(4))
            if version not in (2, 3):
                if struct.unpack(">I", struct.pack("<I", version))[0] in (2, 3):
                    end = ">"
                else:
                    raise ValueError(f"{path} has GGUF version {version}; versions 2 and 3 are supported")
            u64 = lambda: struct.unpack(end + "Q", read(8))[0]  # noqa: E731
            n_tensors, n_kv = u64(), u64()
            if n_tensors > size or n_kv > size:
                raise _Truncated

            def skip_value(vtype: int):
                if vtype == 8:  # string
                    return read(u64())
                if vtype == 9:  # array
                    (itype,) = struct.unpack(end + "I", read(4))
                    count = u64()
                    if itype in _GGUF_SCALARS:
                        read(count * struct.calcsize(_GGUF_SCALARS[itype]))
                        return None
                    if count > size:
                        raise _Truncated
                    for _ in range(count):
                        skip_value(itype)
                    return None
                if vtype not in _GGUF_SCALARS:
                    raise ValueError(f"{path} has a corrupt GGUF header (unknown value type {vtype})")
                fmt = end + _GGUF_SCALARS[vtype]
                return struct.unpack(fmt, read(struct.calcsize(fmt)))[0]

            alignment = 32
            for _ in range(n_kv):
                key = read(u64())
                (vtype,) = struct.unpack(end + "I", read(4))
                value = skip_value(vtype)
                if key == b"general.alignment" and isinstance(value, int):
                    alignment = value
            if alignment <= 0 or alignment & (alignment - 1):
                raise ValueError(f"{path} has a corrupt GGUF header (alignment {alignment})")
            needed = 0
            for _ in range(n_tensors):
                name = read(u64())
                (n_dims,) = struct.unpack(end + "I", read(4))
                if n_dims > 8:
                    raise ValueError(f"{path} has a corrupt GGUF header (tensor {name!r} with {n_dims} dims)")
                dims = struct.unpack(end + "Q" * n_dims, read(8 * n_dims))
                (ttype,) = struct.unpack(end + "I", read(4))
                offset = u64()
                try:
                    block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
                except (ValueError, KeyError):
                    raise ValueError(f"{path} has tensor {name.decode(errors='replace')!r} of unknown type {ttype}") from None
                n = 1
                for d in dims:
                    n *= d
                needed = max(needed, offset + n * type_size // block)
            data_offset = f.tell() + (-f.tell() % alignment)
        except _Truncated:
            raise ValueError(f"{path} is truncated or corrupt: its GGUF header runs past the end of the file "
                             f"({size} bytes)") from None
    return {"size": size, "expected_size": data_offset + needed, "n_tensors": n_tensors, "data_offset": data_offset}


def check_gguf(path: str | os.PathLike, fix: str = "re-download or re-copy it") -> dict[str, int]:
    """``gguf_layout``, raising a clear error if the file is shorter than its header says."""
    path = Path(path)
    layout = gguf_layout(path)
    if layout["size"] < layout["expected_size"]:
        raise ValueError(
            f"{path} is truncated: it is {layout['size']} bytes but its GGUF header describes "
            f"{layout['n_tensors']} tensors needing {layout['expected_size']} bytes "
            f"({layout['expected_size'] - layout['size']} bytes missing); {fix}"
        )
    return layout


# -- checksums ---------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    """The sha256 hex digest of a file, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()

