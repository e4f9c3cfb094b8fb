"""CLI commands of probes: ``avec probe`` and ``avec ccs``. ``register(app)`` adds them."""

from __future__ import annotations

from typing import Optional

import typer

from ...io import FIGURE_SUFFIXES, atomic_savefig, check_out_option


def _data(name: str, text: str, label: str, kind: Optional[str], limit: Optional[int]):
    """A bundled set by name, or a user CSV / JSONL file."""
    from ...data import labelled as L

    if name.endswith(".csv"):
        data = L.from_csv(name, text, label, kind)
    elif name.endswith(".jsonl"):
        data = L.from_jsonl(name, text, label, kind)
    else:
        data = L.load(name)
    return data.sample(limit) if limit else data


def _layers(spec: Optional[str], n_layers: int):
    """'0,6,12' or 'start:stop:step' (clipped to the model's layers); None = all."""
    if not spec:
        return None
    if ":" in spec:
        parts = [int(p) if p else None for p in spec.split(":")]
        start, stop, step = (p if p is not None else d for p, d in zip(parts + [None] * 3, (0, n_layers, 1)))
        return list(range(start, min(stop, n_layers), step))
    return [int(x) for x in spec.split(",")]


def register(app: typer.Typer) -> None:
    @app.command("probe")
    def probe_cmd(data: str = typer.Argument("sentiment", help="bundled set (truth, truth/capitals, sentiment, continent, "
                                             "latitude, ...) or a .csv/.jsonl file"),
                  model: str = typer.Option("smollm2"),
                  layers: Optional[str] = typer.Option(None, help="e.g. '0,6,12' or '0:30:3' (default: all)"),
                  limit: Optional[int] = typer.Option(None, help="use a class-balanced sample of this many items"),
                  text: str = typer.Option("text", help="text column of a user file"),
                  label: str = typer.Option("label", help="label column of a user file"),
                  kind: Optional[str] = typer.Option(None, help="binary | multiclass | continuous (default: inferred)"),
                  folds: int = typer.Option(5, help="k-fold cross-validation: mean and std of the held-out score per "
                                            "layer (0 = only the single 75/25 split)"),
                  groups: str = typer.Option("auto", help="keep related examples on one side of every split: 'auto' "
                                             "(a pair/pair_id/group/subject column, else detected minimal pairs), "
                                             "'none', or a column name of the data"),
                  position: int = typer.Option(-1, help="token position read (-1 = last)"),
                  save_vector: Optional[str] = typer.Option(None, help="save the best layer's direction as a steering "
                                                            "vector (.safetensors)"),
                  out: Optional[str] = typer.Option(None, help="save the accuracy-by-layer plot (.png)")) -> None:
        """Linear probes at every layer: test accuracy (or R^2), best layer, mean-difference baseline."""
        from ...models import load
        from ...probes.linear import KINDS, probe

        if kind is not None and kind not in KINDS:
            raise typer.BadParameter(f"{kind!r} is not a kind; use one of {', '.join(KINDS)} (or leave it out to "
                                     "infer it from the labels)", param_hint="--kind")
        check_out_option(out, FIGURE_SUFFIXES)
        check_out_option(save_vector, (".safetensors",), what="--save-vector")
        if folds < 0 or folds == 1:
            raise typer.BadParameter(f"folds must be 0 (no cross-validation) or at least 2, got {folds}",
                                     param_hint="--folds")
        ds = _data(data, text, label, kind, limit)
        if groups not in ("auto", "none") and groups not in ds.extra:
            raise typer.BadParameter(f"{data} has no column {groups!r}; columns: {sorted(ds.extra)} (or 'auto', 'none')",
                                     param_hint="--groups")
        keys = None if groups == "none" else "auto" if groups == "auto" else ds.extra[groups]
        lm = load(model)
        res = probe(lm, ds, _layers(layers, lm.n_layers), position=position, progress=True, folds=folds or None,
                    groups=keys, kind=kind)
        i = res.layers.index(res.best_layer)
        cv = f", {folds}-fold CV {res.metric} {float(res.cv_mean[i]):.3f} +- {float(res.cv_std[i]):.3f}" if folds else ""
        typer.echo(f"{ds!r}: best layer {res.best_layer}{cv}, test {res.metric} {float(res.test_score[i]):.3f} "
                   f"(chance {res.chance:.3f}, n_test={res.n_test}); groups: {res.groups}")
        typer.echo(res.to_frame().to_string(index=False, float_format=lambda x: f"{x:.3f}"))
        if save_vector:
            typer.echo(f"wrote {res.to_steering_vector(lm).save(save_vector)}")
        if out:
            atomic_savefig(res.plot(), out, dpi=120, bbox_inches="tight")
            typer.echo(f"wrote {out}")

    @app.command("ccs")
    def ccs_cmd(data: str = typer.Argument("truth/capitals", help="bundled binary set or a .csv/.jsonl file"),
                model: str = typer.Option("smollm2"),
                layers: Optional[str] = typer.Option("0:30:3", help="e.g. '0,6,12' or '0:30:3'"),
                limit: Optional[int] = typer.Option(200, help="statements used (class-balanced sample)"),
                pca: Optional[int] = typer.Option(16, help="train on the top-k principal components (0 = off)"),
                restarts: int = typer.Option(10),
                confound: bool = typer.Option(False, help="also run the distractor-word confound experiment"),
                out: Optional[str] = typer.Option(None, help="save the plot (.png)")) -> None:
        """CCS vs a supervised probe on contrast pairs (Yes/No), test accuracy up to sign, per layer."""
        from ...models import load
        from ...probes.ccs import ccs, confound_experiment

        check_out_option(out, FIGURE_SUFFIXES)
        lm = load(model)
        ds = _data(data, "text", "label", "binary", limit)
        kw = dict(pca=pca or None, n_restarts=restarts)
        if confound:
            plain, res = confound_experiment(lm, ds, _layers(layers, lm.n_layers), **kw)
            typer.echo("plain pairs:")
            typer.echo(plain.to_frame().to_string(index=False, float_format=lambda x: f"{x:.3f}"))
            typer.echo("pairs with a distractor word:")
        else:
            res = ccs(lm, ds, layers=_layers(layers, lm.n_layers), **kw)
        typer.echo(res.to_frame().to_string(index=False, float_format=lambda x: f"{x:.3f}"))
        if out:
            atomic_savefig(res.plot(), out, dpi=120, bbox_inches="tight")
            typer.echo(f"wrote {out}")
