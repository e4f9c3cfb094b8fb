"""What a tour section gets: the tour's model (loaded once) and settings; ``on_model`` pins a section
to another model, sharing the same model cache. Kept apart from ``tour.py`` so that technique packages
can import it without importing every other package's sections."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class TourContext:
    model_name: str = "smollm2"
    quick: bool = False
    _models: dict = field(default_factory=dict)
    load_seconds: float | None = None
    results: dict = field(default_factory=dict)  # results one section computes and a later one shows again

    def memo(self, key: str, make: Callable[[], Any]) -> Any:
        """``make()`` once per tour: a later section reuses an earlier one's result (the same numbers, not a
        second run), or computes it when the tour was run without that section."""
        if key not in self.results:
            self.results[key] = make()
        return self.results[key]

    @property
    def lm(self):
        if self.model_name not in self._models:
            from ...models import load

            t = time.time()
            self._models[self.model_name] = load(self.model_name)
            self.load_seconds = time.time() - t
        return self._models[self.model_name]

    def on(self, name: str, quick: bool | None = None) -> "TourContext":
        """The same tour seen through the model ``name`` (loaded once, into the shared cache);
        ``quick`` overrides the tour's setting."""
        return TourContext(model_name=name, quick=self.quick if quick is None else quick, _models=self._models,
                           results=self.results)


def on_model(name: str, fn: Callable[[Any, Any], None], quick: bool | None = None) -> Callable[[Any, Any], None]:
    """The section ``fn`` run on the model ``name`` whatever the tour's model; when the tour already
    runs on ``name`` it says so and stops (the unpinned section is the same run). ``quick`` overrides
    the tour's setting (for sections whose full size does not fit the time on that model)."""

    def section(ctx: Any, s: Any) -> None:
        if getattr(ctx, "model_name", None) == name:
            s.text(f"The tour's model is {name}: the section of the same name above already ran on it.")
            return
        fn(ctx.on(name, quick), s)

    section.__name__ = f"{fn.__name__}_on_{name.replace('-', '_')}"
    section.__doc__ = fn.__doc__
    return section


def shipped_on_tour_model(ctx: TourContext, name: str) -> tuple[Any, Any, dict]:
    """(the tour's model, the dictionary shipped as ``name`` loaded, its JSON record); a clear error when the
    dictionary was trained on another model than the tour's (its record names the model it reads)."""
    from ...dictionaries.shipped import info, load_shipped
    from ...models.lm import LanguageModel

    lm = ctx.lm
    rec = info(name)
    if not isinstance(lm, LanguageModel) or lm.model_id != rec["model_id"]:
        raise RuntimeError(f"the shipped dictionary {name!r} reads {rec['model']} ({rec['model_id']}); this tour's "
                           f"model is {getattr(lm, 'model_id', lm)!r}: run the tour with --model {rec['model']}")
    return lm, load_shipped(name), rec
