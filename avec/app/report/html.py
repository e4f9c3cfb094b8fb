"""A self-contained HTML report: sections of text, tables and inlined figures, written atomically."""

from __future__ import annotations

import html
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...io import atomic_write_text
from ...results import figure_html

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1050px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{border-bottom:2px solid #444} h2{margin-top:2em;border-bottom:1px solid #bbb}
table{border-collapse:collapse;font-size:0.85em;margin:0.6em 0} td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
th{background:#f3f3f3} pre{background:#f6f6f6;padding:0.6em;overflow-x:auto;font-size:0.85em}
.meta{color:#666;font-size:0.85em} img{max-width:100%} nav li{margin:0.15em 0}
"""


@dataclass
class Section:
    title: str
    parts: list[str] = field(default_factory=list)
    seconds: float | None = None

    def text(self, text: str) -> "Section":
        self.parts.append(f"<p>{html.escape(text)}</p>")
        return self

    def code(self, text: str) -> "Section":
        self.parts.append(f"<pre>{html.escape(text)}</pre>")
        return self

    def table(self, frame: Any, float_format: str = "{:.4g}") -> "Section":
        self.parts.append(frame.to_html(float_format=lambda x: float_format.format(x), border=0))
        return self

    def figure(self, fig) -> "Section":
        self.parts.append(figure_html(fig))
        return self

    def raw(self, markup: str) -> "Section":
        self.parts.append(markup)
        return self


class Report:
    """Collect sections, then ``save(path)`` one HTML file with everything inlined."""

    def __init__(self, title: str):
        self.title = title
        self.sections: list[Section] = []
        self.started = time.time()

    def section(self, title: str) -> Section:
        s = Section(title)
        self.sections.append(s)
        return s

    def render(self) -> str:
        toc = "".join(f'<li><a href="#s{i}">{html.escape(s.title)}</a></li>' for i, s in enumerate(self.sections))
        body = []
        for i, s in enumerate(self.sections):
            took = f'<p class="meta">computed in {s.seconds:.1f} s</p>' if s.seconds is not None else ""
            body.append(f'<h2 id="s{i}">{html.escape(s.title)}</h2>{took}{"".join(s.parts)}')
        stamp = time.strftime("%Y-%m-%d %H:%M")
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{_STYLE}</style></head><body><h1>{html.escape(self.title)}</h1>"
                f"<p class='meta'>generated {stamp}, {time.time() - self.started:.0f} s</p>"
                f"<nav><ol>{toc}</ol></nav>{''.join(body)}</body></html>")

    def save(self, path: str | os.PathLike) -> Path:
        return atomic_write_text(path, self.render())
