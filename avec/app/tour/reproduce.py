"""Run one steering reproduction on its own: the same section function `avec tour` runs, printed to
the terminal and optionally written as a one-section HTML report (``avec steer-repro NAME``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..report.html import Report, Section


@dataclass
class EchoSection(Section):
    """A report section that also prints what it receives (tables as text; figures only in the HTML)."""

    echo: Callable[[str], Any] | None = None

    def _say(self, text: str) -> None:
        if self.echo is not None:
            self.echo(text)

    def text(self, text: str) -> EchoSection:
        self._say(text)
        return super().text(text)

    def code(self, text: str) -> EchoSection:
        self._say(text)
        return super().code(text)

    def table(self, frame: Any, float_format: str = "{:.4g}") -> EchoSection:
        if self.echo is not None:
            import pandas as pd

            with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_colwidth", 70):
                self._say(frame.to_string(float_format=lambda x: float_format.format(x)) + "\n")
        return super().table(frame, float_format)

    def figure(self, fig) -> EchoSection:
        self._say("[figure: written to the HTML report (--out)]")
        return super().figure(fig)


def reproduction_names() -> list[str]:
    from .steering import REPRODUCTIONS

    return list(REPRODUCTIONS)


def reproduce(name: str, model: Any = "smollm2", *, out: str | Path | None = None, quick: bool = False,
              echo: Callable[[str], Any] | None = None) -> Report:
    """Run the reproduction ``name`` (see ``reproduction_names()``) on ``model`` and return its report.

    model: a bundled name / HF id / path (loaded as the tour loads it) or a loaded ``LanguageModel``
    out:   also write the report as a self-contained HTML file
    echo:  called with each text and table (as text) as the section produces them, e.g. ``print``
    """
    from .context import TourContext
    from .steering import REPRODUCTIONS

    if name not in REPRODUCTIONS:
        raise ValueError(f"unknown reproduction {name!r}; choose one of {', '.join(REPRODUCTIONS)}")
    title, fn = REPRODUCTIONS[name]
    if isinstance(model, str):
        ctx = TourContext(model_name=model, quick=quick)
    else:
        if not hasattr(model, "generate") or not hasattr(model, "n_layers"):
            raise TypeError(f"model must be a model name or a LanguageModel, got {type(model).__name__}")
        ctx = TourContext(model_name=model.name, quick=quick, _models={model.name: model})
    label = ctx.model_name
    report = Report(f"avec steer-repro {name} - {label}")
    section = EchoSection(f"{title} ({label})", echo=echo)
    report.sections.append(section)
    t = time.time()
    fn(ctx, section)
    section.seconds = time.time() - t
    if out is not None:
        report.save(out)
    return report
