"""`avec tour`: run each technique on the bundled models and write one HTML report.

Each section is a function ``(TourContext, Section) -> None``; sections are listed in ``SECTIONS``
in reading order. A failing section is reported in the page (with its traceback) and the tour
goes on, so one broken technique never hides the others; the command then exits non-zero.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Callable

from .context import TourContext, on_model  # noqa: F401 - re-exported for sections
from ..report.html import Report, Section


def model_card(ctx: TourContext, s: Section) -> None:
    import pandas as pd

    lm = ctx.lm
    d = lm.dims
    n_params = sum(p.numel() for p in lm.hf.parameters())
    s.text(f"{lm!r}; {n_params / 1e6:.1f} M parameters; loaded in {ctx.load_seconds:.1f} s "
           f"(float weights cached from the bundled GGUF).")
    s.table(pd.DataFrame({"value": [lm.arch.family, lm.config.model_type, d.n_layers, d.d_model, d.n_heads,
                                    d.d_head, getattr(lm.config, "num_key_value_heads", d.n_heads), d.d_mlp, d.vocab,
                                    lm.config._attn_implementation]},
                         index=["adapter", "model_type", "layers", "d_model", "heads", "d_head", "kv heads",
                                "d_mlp", "vocab", "attention"]))
    kinds = {}
    for name in lm.hook_points:
        site = lm.site(name)
        key = name if site.layer is None else "blocks.{l}." + name.split(".", 2)[2]
        kinds.setdefault(key, (site, 0))
        kinds[key] = (site, kinds[key][1] + 1)
    rows = []
    for key, (site, count) in kinds.items():
        rows.append({"hook point": key, "count": count, "module": site.module.replace(f".{site.layer}.", ".{l}.") if site.layer is not None else site.module,
                     "reads": f"{site.kind}[{site.index}]" if site.kind == "output" else "input",
                     "layout": site.layout, "editable": not site.read_only})
    s.text(f"{len(lm.hook_points)} hook points; TransformerLens spellings (blocks.6.hook_resid_pre) are accepted too.")
    s.table(pd.DataFrame(rows))
    prompts = ["The Eiffel Tower is in the city of", "My favourite food is", "def fibonacci(n):"]
    outs = lm.generate(prompts, max_new_tokens=20)
    s.table(pd.DataFrame({"prompt": prompts, "greedy completion": outs}))


def residual_norm_section(ctx: TourContext, s: Section) -> None:
    from ...lens import residual_norms

    prompts = ["The Eiffel Tower is in the city of Paris, which is the capital of France.",
               "I hate you because you never listen to me.",
               "The mitochondria is the powerhouse of the cell.",
               "import numpy as np\nx = np.zeros(10)",
               "Once upon a time, a little mouse looked for cheese in a maze."]
    norms = residual_norms(ctx.lm, prompts)
    s.text("Mean L2 norm of the residual stream entering each block (first token excluded), from one batched "
           "run that caches only the residual points. Growth = ratio to the previous layer.")
    s.figure(norms.plot())
    s.table(norms.to_frame())


def _sections() -> list[tuple[str, Callable[[TourContext, Section], None]]]:
    """Every technique's sections, in reading order (each technique lists its own in avec/app/tour/<technique>.py)."""
    from . import dictionaries, lens, maze, patching, probes, steering

    return [("Model card", model_card), ("Residual stream norms by layer", residual_norm_section),
            *steering.SECTIONS, *lens.SECTIONS, *patching.SECTIONS, *probes.SECTIONS,
            *dictionaries.SECTIONS, *maze.SECTIONS]


SECTIONS = _sections()


def run_tour(out: str | Path = "avec-tour.html", model: str = "smollm2", quick: bool = False,
             only: list[str] | None = None) -> tuple[Path, list[str]]:
    """Write the report; returns (path, titles of sections that failed)."""
    from tqdm.auto import tqdm

    ctx = TourContext(model_name=model, quick=quick)
    report = Report(f"avec tour - {model}")
    failed = []
    chosen = [(t, f) for t, f in SECTIONS if not only or any(o.lower() in t.lower() for o in only)]
    for title, fn in tqdm(chosen, desc="avec tour", unit="section"):
        section = report.section(title)
        t = time.time()
        try:
            fn(ctx, section)
        except Exception:  # noqa: BLE001 - shown in the report, and the exit code says it
            failed.append(title)
            section.text("This section failed:")
            section.code(traceback.format_exc())
        section.seconds = time.time() - t
        report.save(out)  # write as we go: a long tour leaves a readable partial report
    return report.save(out), failed
