"""Common behaviour of result objects: ``.to_frame()``, ``.plot()``, ``.to_dict()`` and notebook display."""

from __future__ import annotations

import base64
import dataclasses
import io
import math
from typing import Any, Mapping


def figure_png(fig, dpi: int = 110) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def figure_html(fig, dpi: int = 110) -> str:
    data = base64.b64encode(figure_png(fig, dpi)).decode()
    return f'<img alt="figure" src="data:image/png;base64,{data}"/>'


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data: tensors and arrays become nested lists, tuples lists, numpy scalars
    Python numbers; NaN and infinities become None (JSON has no such numbers, and browsers' ``JSON.parse``
    refuses them). Anything else that JSON cannot hold raises TypeError naming its type."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    import numpy as np

    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if type(value).__name__ == "DataFrame":  # column -> values (its own to_dict nests by index)
        return jsonable(value.to_dict(orient="list"))
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        torch = None
    if torch is not None and isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        if t.is_floating_point():
            t = t.double()
        return jsonable(t.tolist())
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if hasattr(value, "to_dict") and callable(value.to_dict):
        return jsonable(value.to_dict())
    raise TypeError(f"cannot put a {type(value).__name__} into JSON data")


def _nan(value: Any) -> Any:
    if value is None:
        return math.nan
    if isinstance(value, list):
        return [_nan(v) for v in value]
    return value


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def restore(value: Any, annotation: str) -> Any:
    """JSON data (``jsonable``'s output) back to the type an annotation string names: ``torch.Tensor``
    (NaN where JSON has null; a mapping of them for ``Mapping[str, torch.Tensor]``), ``np.ndarray`` (the same),
    ``pd.DataFrame`` (from column lists), ``tuple``, ``float`` (null -> NaN), ``Path``; anything else as it is."""
    if "Tensor" in annotation:
        import torch

        if value is None and "None" in annotation:
            return None
        if isinstance(value, dict):
            return {k: torch.tensor(_nan(v)) for k, v in value.items()}
        return torch.tensor(_nan(value))
    if "ndarray" in annotation:
        import numpy as np

        return None if value is None else np.asarray(_nan(value))
    if "DataFrame" in annotation:
        import pandas as pd

        return None if value is None else pd.DataFrame(value)
    head = annotation.split("[")[0]
    if value is None:
        return math.nan if head in ("float", "<class 'float'>") else None
    if "tuple" in head:
        return _tuples(value)
    if "Path" in head:
        from pathlib import Path

        return Path(value)
    return value


class Result:
    """Mixin for frozen result dataclasses: subclasses implement ``to_frame`` and ``plot``; ``to_dict``
    (the JSON form that the CLI, the report and the web app render) defaults to every field."""

    def to_dict(self) -> dict:
        """``{"type": class name, field: value, ...}`` with every dataclass field as plain JSON data
        (``jsonable``): ``json.dumps(result.to_dict(), allow_nan=False)`` always works."""
        out = {"type": type(self).__name__}
        for f in dataclasses.fields(self):
            if not f.name.startswith("_"):
                out[f.name] = jsonable(getattr(self, f.name))
        return out

    @classmethod
    def from_dict(cls, d: Mapping) -> "Result":
        """The result back from its ``to_dict()`` (after a JSON round trip): what the CLI and the report render,
        so that they show exactly the JSON the web app draws. Fields are restored from their annotations:
        tensors from nested lists (``None`` back to NaN), tuples from lists; keys that are not fields (a
        subclass's extra derived values, ``type``) are ignored. Subclasses whose ``to_dict`` is not every
        field override this."""
        name = d.get("type", cls.__name__)
        if name != cls.__name__:
            raise ValueError(f"a {name!r} dict cannot make a {cls.__name__}")
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name in d:
                kwargs[f.name] = restore(d[f.name], str(f.type))
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ValueError(f"the {cls.__name__} dict has no {f.name!r}")
        return cls(**kwargs)

    def to_frame(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def plot(self, ax=None):  # pragma: no cover - abstract
        raise NotImplementedError

    def _repr_html_(self) -> str:
        table = self.to_frame().head(40).to_html(float_format=lambda x: f"{x:.4g}")
        return f"<div>{figure_html(self.plot())}{table}</div>"
