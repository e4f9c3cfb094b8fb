"""`avec steer`, `avec scan`, `avec caa` and `avec steer-repro NAME` (one command per reproduction of the
tour's steering sections): steering from the command line. ``register(app)`` adds them."""

from __future__ import annotations

from typing import List, Optional

import typer

from ...io import FIGURE_SUFFIXES, atomic_savefig, atomic_write, check_out_option

VECTOR_SUFFIXES = (".safetensors", ".gguf")


def _threads(threads: Optional[int]) -> None:
    if threads is not None and threads < 1:
        raise typer.BadParameter(f"--threads must be >= 1, got {threads}")


def _coeffs(coeffs: str) -> list[float]:
    """--coeffs "-10,-5,5,10" as floats; a bad entry or an empty list is refused."""
    try:
        out = [float(x) for x in coeffs.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"--coeffs must be comma-separated numbers (e.g. -10,-5,5,10), got {coeffs!r}") from None
    if not out:
        raise typer.BadParameter("--coeffs is empty; give comma-separated numbers (e.g. -10,-5,5,10)")
    return out


def steer(
    prompts: List[str] = typer.Argument(..., help="prompt(s) to complete"),
    model: str = typer.Option("smollm2", help="bundled name, HF id, local dir or .gguf"),
    plus: str = typer.Option(..., help="ActAdd prompt A (e.g. Love)"),
    minus: str = typer.Option(..., help="ActAdd prompt B (e.g. Hate)"),
    layer: int = typer.Option(6, help="inject at blocks.{layer}.resid_pre"),
    coeff: float = typer.Option(5.0, help="coefficient of the vector"),
    max_new_tokens: int = typer.Option(30, "--max-new-tokens", "-n"),
    sample: bool = typer.Option(False, help="sample instead of greedy"),
    temperature: float = typer.Option(1.0),
    top_p: Optional[float] = typer.Option(None, "--top-p"),
    seed: int = typer.Option(0),
    chat: bool = typer.Option(False, help="wrap prompts in the chat template"),
    pad: str = typer.Option(" ", help="token that right-pads the shorter of A/B"),
    save: Optional[str] = typer.Option(None, help="also save the vector (.safetensors or .gguf)"),
) -> None:
    """Steer generation with an ActAdd vector (A minus B) and print unsteered vs steered completions."""
    from ...models import load
    from ...steering.contrast import contrast
    from ...steering.generation import side_by_side

    check_out_option(save, VECTOR_SUFFIXES, what="--save")
    lm = load(model)
    vector = contrast(lm, plus, minus, at=layer, pad=pad)
    typer.echo(vector.describe())
    table = side_by_side(lm, prompts, coeff * vector, max_new_tokens, seed=seed, do_sample=sample,
                         temperature=temperature, top_p=top_p, chat=chat)
    for p, a, b in zip(table.prompts, table.unsteered, table.steered):
        typer.echo(f"\n=== {p!r}\n--- unsteered:\n{p}{a}\n--- steered ({coeff:g} x ({plus} - {minus}) @ layer {layer}):\n{p}{b}")
    if save:
        if save.endswith(".gguf"):
            typer.echo("a per-position ActAdd vector cannot go to GGUF; saving its mean over positions")
            from ...steering.vector import SteeringVector

            mean = SteeringVector.make(lm, layer, (coeff * vector)[vector.hooks[0]].mean(0), positions="all",
                                       recipe=dict(vector.recipe))
            path = mean.to_gguf(save)
        else:
            path = (coeff * vector).save(save)
        typer.echo(f"saved {path}")


def scan(
    prompt: str = typer.Argument(..., help="the prompt; the answer position is its last token"),
    model: str = typer.Option("smollm2"),
    plus: str = typer.Option(..., help="ActAdd prompt A"),
    minus: str = typer.Option(..., help="ActAdd prompt B"),
    layer: int = typer.Option(6),
    target: str = typer.Option(..., help="token X of logit(X) - logit(Y), e.g. ' love'"),
    against: str = typer.Option(..., help="token Y, e.g. ' hate'"),
    n: int = typer.Option(128, help="number of coefficients"),
    lo: float = typer.Option(-10.0),
    hi: float = typer.Option(10.0),
    heads: bool = typer.Option(False, help="split attention per head (Gemma: post-norm scale frozen from the run)"),
    clusters: int = typer.Option(4),
    plot: Optional[str] = typer.Option(None, help="write the plot to this PNG"),
    csv: Optional[str] = typer.Option(None, help="write the coefficient x component table to this CSV"),
) -> None:
    """Injection coefficient scan: n coefficients in one batched run, the metric decomposed by component."""
    from ...models import load
    from ...steering.contrast import contrast
    from ...steering.scan import coefficient_scan

    check_out_option(plot, FIGURE_SUFFIXES, what="--plot")
    check_out_option(csv, (".csv",), what="--csv")
    if n < 1:
        raise typer.BadParameter(f"--n must be >= 1, got {n}")
    lm = load(model)
    vector = contrast(lm, plus, minus, at=layer)
    result = coefficient_scan(lm, prompt, vector, (target, against), n=n, lo=lo, hi=hi, heads=heads,
                              n_clusters=clusters)
    typer.echo(f"{result.metric} at position {result.info['answer position']}; |total - logits| max {result.max_error:.2e}")
    frame = result.to_frame()
    picks = sorted({0, len(frame) // 4, len(frame) // 2, 3 * len(frame) // 4, len(frame) - 1})
    typer.echo(frame.iloc[picks][result.top(6) + ["total"]].round(3).to_string())
    typer.echo("\ncomponents by range of contribution:")
    typer.echo(result.cluster_frame().head(12).round(3).to_string())
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        atomic_savefig(result.plot(), plot, dpi=110, bbox_inches="tight")
        typer.echo(f"wrote {plot}")
    if csv:
        atomic_write(csv, frame.to_csv)
        typer.echo(f"wrote {csv}")


def caa(
    behaviour: str = typer.Argument(..., help="a shipped A/B dataset (e.g. corrigible, myopic-reward)"),
    model: str = typer.Option("smollm2"),
    layer: int = typer.Option(12, help="read and inject at blocks.{layer}.resid_pre"),
    coeffs: str = typer.Option("-10,-5,5,10", help="comma-separated coefficients"),
    train: int = typer.Option(30, help="number of train pairs"),
    test: int = typer.Option(60, help="number of test items"),
    all_positions: bool = typer.Option(False, "--all-positions", help="inject at every position instead of From(-1)"),
    save: Optional[str] = typer.Option(None, help="save the vector (.safetensors or .gguf)"),
) -> None:
    """CAA on a shipped A/B dataset: mean difference on the train split, p(match)/(p(A)+p(B)) on the test split."""
    from ...models import load
    from ...steering.caa import ab_pairs, load_ab, mean_difference
    from ...steering.evaluate import ab_eval

    check_out_option(save, VECTOR_SUFFIXES, what="--save")
    values = _coeffs(coeffs)
    lm = load(model)
    train_items, test_items = load_ab(behaviour, "train")[:train], load_ab(behaviour, "test")[:test]
    vector = mean_difference(lm, ab_pairs(lm, train_items), at=layer, name=behaviour)
    positions = "all" if all_positions else None
    typer.echo(vector.describe())
    base = ab_eval(lm, test_items)
    typer.echo(f"{len(test_items)} test items; p(A)+p(B) = {float((base.p_a + base.p_b).mean()):.3f}")
    typer.echo(f"coeff   0: p(match)/(p(A)+p(B)) = {base.score:.3f}")
    for c in values:
        typer.echo(f"coeff {c:+g}: p(match)/(p(A)+p(B)) = {ab_eval(lm, test_items, c * vector, positions=positions).score:.3f}")
    if save:
        path = vector.to_gguf(save) if save.endswith(".gguf") else vector.save(save)
        typer.echo(f"saved {path}")


def _reproduction_command(name: str, title: str):
    def command(
        model: str = typer.Option("smollm2", help="bundled name (smollm2, gemma3-270m), HF id, local dir or .gguf"),
        out: Optional[str] = typer.Option(None, help="also write a self-contained HTML report here"),
        quick: bool = typer.Option(False, help="smaller samples (as `avec tour --quick`)"),
        threads: Optional[int] = typer.Option(None, help="torch CPU threads (use 1 when other jobs share the cores)"),
    ) -> None:
        from ..tour.reproduce import reproduce

        check_out_option(out, (".html", ".htm"))
        _threads(threads)
        if threads:
            import torch

            torch.set_num_threads(threads)
        reproduce(name, model, out=out, quick=quick, echo=typer.echo)
        if out:
            typer.echo(f"wrote {out}")

    what = title.replace("Steering: ", "")
    command.__doc__ = f"{what[0].upper()}{what[1:]}: the `avec tour` section of that name, on --model."
    return command


def reproductions_app() -> typer.Typer:
    """`avec steer-repro NAME`: each reproduction of the steering tour as its own command."""
    from ..tour.steering import REPRODUCTIONS

    sub = typer.Typer(no_args_is_help=True, help="Run one steering reproduction (the same code as its `avec tour` "
                      "section), print its tables and optionally write an HTML report.")
    for name, (title, _) in REPRODUCTIONS.items():
        sub.command(name)(_reproduction_command(name, title))
    return sub


def register(app: typer.Typer) -> None:
    """Add `steer`, `scan`, `caa` and `steer-repro` to the `avec` command line."""
    app.command("steer")(steer)
    app.command("scan")(scan)
    app.command("caa")(caa)
    app.add_typer(reproductions_app(), name="steer-repro")
