"""Common behaviour of result objects: ``.to_frame()``, ``.plot()`` and notebook display."""

from __future__ import annotations

import base64
import io


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


class Result:
    """Mixin for frozen result dataclasses: subclasses implement ``to_frame`` and ``plot``."""

    def to_frame(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def plot(self, ax=None):  # pragma: no cover - abstract
        raise NotImplementedError

    def _repr_html_(self) -> str:
        table = self.to_frame().head(40).to_html(float_format=lambda x: f"{x:.4g}")
        return f"<div>{figure_html(self.plot())}{table}</div>"
