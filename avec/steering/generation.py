"""Steered generation helpers: unsteered vs steered completions side by side."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..results import Result


@dataclass(frozen=True)
class Completions(Result):
    """prompts[i] completed without (``unsteered``) and with (``steered``) the vector."""

    prompts: tuple[str, ...]
    unsteered: tuple[str, ...]
    steered: tuple[str, ...]
    vector: str
    settings: str

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame({"prompt": self.prompts, "unsteered": self.unsteered, "steered": self.steered})

    def plot(self, ax=None):
        import matplotlib.pyplot as plt
        import textwrap

        fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(10, 0.9 + 1.1 * len(self.prompts)))
        ax.axis("off")
        cells = [[textwrap.fill(c, 45) for c in row] for row in zip(self.prompts, self.unsteered, self.steered)]
        table = ax.table(cellText=cells, colLabels=["prompt", "unsteered", "steered"], loc="center", cellLoc="left")
        table.auto_set_font_size(False)
        table.set_fontsize(7)
        table.scale(1, 3.2)
        ax.set_title(f"{self.vector} ({self.settings})", fontsize=8)
        return fig


def side_by_side(lm: Any, prompts: str | Sequence[str], steer: Any, max_new_tokens: int = 30, *,
                 seed: int | None = 0, do_sample: bool = False, temperature: float = 1.0,
                 top_p: float | None = None, chat: bool = False, samples: int = 1) -> Completions:
    """Complete each prompt ``samples`` times without and with ``steer`` (same seed for both)."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    prompts = [p for p in prompts for _ in range(samples)]
    kw = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_p=top_p, chat=chat)
    base = lm.generate(prompts, seed=seed, **kw)
    steered = lm.generate(prompts, steer=steer, seed=seed, **kw)
    settings = f"{'sampled T=' + str(temperature) if do_sample else 'greedy'}, {max_new_tokens} tokens, seed {seed}"
    return Completions(tuple(prompts), tuple(base), tuple(steered), repr(steer), settings)
