"""Common behaviour of result objects: ``.to_frame()``, ``.plot()``, ``.to_dict()`` and notebook display."""

from __future__ import annotations

import base64
import dataclasses
import io
import math
from typing import Any


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

    def to_frame(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def plot(self, ax=None):  # pragma: no cover - abstract
        raise NotImplementedError

    def _repr_html_(self) -> str:
        table = self.to_frame().head(40).to_html(float_format=lambda x: f"{x:.4g}")
        return f"<div>{figure_html(self.plot())}{table}</div>"
