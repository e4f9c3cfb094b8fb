"""llama.cpp / repeng control-vector GGUF: export and import.

The format (as repeng writes it and llama.cpp reads it): architecture ``controlvector``, keys
``controlvector.model_hint`` (e.g. "llama") and ``controlvector.layer_count``, and one float32 tensor
``direction.{N}`` of shape ``[d_model]`` per layer N >= 1. llama.cpp adds ``direction.N`` to the output
of decoder layer N (0-based) at every token, i.e. our ``blocks.{N}.resid_post`` at all positions
(layer 0 cannot be steered in that format).

So only whole-vector (``[d_model]``) terms at residual points export; ``blocks.{l}.resid_pre`` is the
same value as ``blocks.{l-1}.resid_post`` and exports as ``direction.{l-1}``. Positions are not part of
the format: llama.cpp steers every token; an imported vector gets positions "all".
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.positions import ALL
from ..io import atomic_write
from ..models.gguf_file import check_gguf

_FLOAT_NAMES = ("F32", "F16", "BF16", "F64")
_FLOAT_TYPES: tuple = ()
try:
    from gguf.constants import GGMLQuantizationType as _GT

    _FLOAT_TYPES = tuple(getattr(_GT, n) for n in _FLOAT_NAMES if hasattr(_GT, n))
except ImportError:  # gguf is optional until a GGUF is read
    pass

_RESID = re.compile(r"^blocks\.(\d+)\.(resid_pre|resid_post)$")


def _layer_of(hook: str) -> int:
    m = _RESID.match(hook)
    if not m:
        raise ValueError(f"control-vector GGUF holds residual-stream additions only; {hook!r} cannot be exported "
                         "(use blocks.{l}.resid_post or blocks.{l}.resid_pre)")
    layer = int(m.group(1)) - (1 if m.group(2) == "resid_pre" else 0)
    if layer < 1:
        raise ValueError(f"{hook!r} would be llama.cpp layer {layer}; the format cannot steer before layer 1's output "
                         "(blocks.1.resid_post = blocks.2.resid_pre)")
    return layer


def write_control_vector(vector: Any, path: str | Path, model_hint: str | None = None) -> Path:
    """Write ``vector`` as a control-vector GGUF (atomically). Per-position terms raise a clear error."""
    import gguf

    directions: dict[int, torch.Tensor] = {}
    for t in vector.terms:
        if t.tensor.dim() != 1:
            raise ValueError(f"the term at {t.hook!r} is per position {list(t.tensor.shape)}; control-vector GGUF "
                             "holds one [d_model] vector per layer (e.g. use the mean over positions, or a CAA vector)")
        layer = _layer_of(t.hook)
        directions[layer] = directions.get(layer, 0) + t.tensor.float()
    hint = model_hint or (vector.model_id.split(":")[0] if vector.model_id.count(":") >= 1 else "llama")  # model_type
    def write(tmp: str) -> None:
        writer = gguf.GGUFWriter(tmp, "controlvector")
        writer.add_string("controlvector.model_hint", hint)
        writer.add_uint32("controlvector.layer_count", len(directions))
        for layer in sorted(directions):
            writer.add_tensor(f"direction.{layer}", directions[layer].numpy().astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    return atomic_write(path, write)


def read_control_vector(path: str | Path, lm: Any):
    """A control-vector GGUF (from repeng, llama.cpp tools or ``to_gguf``) as a SteeringVector for ``lm``:
    ``direction.N`` -> ``blocks.{N}.resid_post`` at all positions."""
    import gguf

    from .vector import SteeringVector, Term

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no GGUF file at {path}")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; a control vector is one .gguf file")
    check_gguf(path)  # not a GGUF, or truncated: a clear error before any tensor is read
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as err:  # corrupt header values: the reader raises ValueError/KeyError/...
        raise ValueError(f"{path} is not a readable GGUF file ({type(err).__name__}: {err})") from err
    arch = reader.fields.get("general.architecture")
    arch_name = _string(arch)
    if arch_name != "controlvector":
        raise ValueError(f"{path} is a GGUF of architecture {arch_name!r}, not a control vector")
    hint = _string(reader.fields.get("controlvector.model_hint"))
    terms = []
    for t in reader.tensors:
        m = re.match(r"^direction\.(\d+)$", t.name)
        if not m:
            raise ValueError(f"{path} holds a tensor {t.name!r}; a control vector holds only direction.N tensors "
                             "(one [d_model] float vector per layer N >= 1)")
        layer = int(m.group(1))
        if not 1 <= layer < lm.n_layers:
            raise ValueError(f"{path} has direction.{layer} but the model has layers 0..{lm.n_layers - 1} "
                             "(control vectors steer layers 1..n-1)")
        if t.tensor_type not in _FLOAT_TYPES:
            raise ValueError(f"direction.{layer} in {path} has GGML type {t.tensor_type.name}; control-vector "
                             "directions are float tensors (F32, or F16/BF16/F64)")
        shape = [int(d) for d in t.shape]
        if len(shape) != 1 and not all(d == 1 for d in shape[1:]):  # [d_model, 1, ...] is still one vector
            raise ValueError(f"direction.{layer} in {path} has shape {shape[::-1]} (GGUF dims {shape}); a control-vector "
                             f"direction is one vector of width d_model ({lm.d_model})")
        if shape[0] != lm.d_model:
            raise ValueError(f"direction.{layer} in {path} has width {shape[0]} but the model has d_model "
                             f"{lm.d_model}; the control vector was made for another model")
        data = torch.from_numpy(np.array(_as_float32(t), dtype=np.float32))
        if not torch.isfinite(data).all():
            raise ValueError(f"direction.{layer} in {path} contains NaN or inf")
        terms.append(Term(f"blocks.{layer}.resid_post", data, ALL, 0))
    if not terms:
        raise ValueError(f"{path} holds no direction.N tensors")
    terms.sort(key=lambda t: int(t.hook.split(".")[1]))
    return SteeringVector(tuple(terms), lm.model_id, {"method": "gguf", "file": path.name, "model_hint": hint})


def _string(field) -> str | None:
    if field is None:
        return None
    try:
        return bytes(field.parts[field.data[0]]).decode()
    except (IndexError, UnicodeDecodeError, TypeError):
        return None


def _as_float32(t) -> np.ndarray:
    if t.tensor_type.name == "BF16":  # stored as raw uint16 words (the reader returns bytes for BF16)
        words = np.asarray(t.data).view(np.uint16).reshape(-1).astype(np.uint32) << 16
        return words.view(np.float32)
    return np.asarray(t.data).reshape(-1)
