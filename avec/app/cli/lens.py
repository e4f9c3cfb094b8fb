"""CLI commands of the lenses: ``avec lens``, ``avec dla``, ``avec norms``. ``register(app)`` adds them."""

from __future__ import annotations

from typing import List, Optional

import typer

from ...io import FIGURE_SUFFIXES, atomic_savefig, check_out_option


def _save(fig, out: Optional[str]) -> None:
    if out:
        atomic_savefig(fig, out, dpi=120, bbox_inches="tight")
        typer.echo(f"wrote {out}")


def register(app: typer.Typer) -> None:
    @app.command("lens")
    def lens_cmd(prompt: str = typer.Argument(..., help="the prompt to read"),
                 token: Optional[List[str]] = typer.Option(None, "--token", "-t", help="token(s) to track, e.g. ' Paris'"),
                 model: str = typer.Option("smollm2", help="bundled name, HF id, local dir or .gguf"),
                 points: str = typer.Option("resid_pre", help="resid_pre | resid_mid | resid_post | all"),
                 out: Optional[str] = typer.Option(None, help="save the heatmap here (.png)")) -> None:
        """Logit lens: what each layer's residual predicts at the last token (and a heatmap of all tokens)."""
        from ...models import load
        from ...lens.logit_lens import logit_lens

        check_out_option(out, FIGURE_SUFFIXES)
        lm = load(model)
        ll = logit_lens(lm, prompt, tokens=token or None, points=points)
        frame = ll.to_frame()
        last = frame[frame["position"] == frame["position"].max()].drop(columns=["prompt", "position", "input"])
        typer.echo(last.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
        typer.echo(ll.summary().to_string(index=False))
        _save(ll.plot(), out)

    @app.command("dla")
    def dla_cmd(prompt: str = typer.Argument(...),
                target: str = typer.Option(..., help="the token whose logit to explain, e.g. ' Paris'"),
                against: Optional[str] = typer.Option(None, help="explain logit(target) - logit(against)"),
                model: str = typer.Option("smollm2"),
                heads: bool = typer.Option(True, help="also split attention by head"),
                top: int = typer.Option(10, help="rows of the head table"),
                out: Optional[str] = typer.Option(None, help="save the plot here (.png)")) -> None:
        """Direct logit attribution at the prompt's last token, per layer component and per head."""
        from ...models import load
        from ...lens.dla import dla

        check_out_option(out, FIGURE_SUFFIXES)
        lm = load(model)
        res = dla(lm, prompt, target=target, against=against, heads=heads)
        typer.echo(f"{res.label} = {res.logit.item():.4f}; contributions sum to {res.total.item():.4f}")
        typer.echo(res.to_frame().to_string(index=False, float_format=lambda x: f"{x:.4f}"))
        if heads:
            typer.echo(res.top_heads(top).to_string(index=False, float_format=lambda x: f"{x:.4f}"))
        _save(res.plot(), out)

    @app.command("tuned-lens")
    def tuned_lens_cmd(out_dir: str = typer.Argument(..., help="directory for tuned_lens.safetensors + .json"),
                       text: Optional[List[str]] = typer.Option(None, "--text", help="training text file(s), one "
                                                                "paragraph per blank-line block (default: the bundled corpus)"),
                       model: str = typer.Option("smollm2"),
                       steps: int = typer.Option(50, help="Adam steps on the KL after the ridge start"),
                       lr: float = typer.Option(1e-4),
                       batch_tokens: int = typer.Option(32),
                       score_tokens: int = typer.Option(256, help="held-out token positions to score"),
                       out: Optional[str] = typer.Option(None, help="save the KL-by-layer plot here (.png)")) -> None:
        """Train a tuned lens, save it, and compare it with the logit lens on held-out text."""
        from pathlib import Path

        from ...data import reference_texts
        from ...models import load
        from ...lens.tuned_lens import compare_lenses, train_tuned_lens

        check_out_option(out_dir, what="OUT_DIR", folder=True)
        check_out_option(out, FIGURE_SUFFIXES)
        for name, value, lo in (("--steps", steps, 0), ("--batch-tokens", batch_tokens, 1),
                                ("--score-tokens", score_tokens, 1)):
            if value < lo:
                raise typer.BadParameter(f"{name} must be >= {lo}, got {value}")
        if text:
            paras = [p.strip() for f in text for p in Path(f).read_text().split("\n\n") if p.strip()]
            if len(paras) < 2:
                raise typer.BadParameter("need at least two paragraphs (one is held out for scoring)")
            cut = max(1, len(paras) * 3 // 4)
            train, held_out = paras[:cut], paras[cut:]
        else:
            train, held_out = reference_texts("train"), reference_texts("test")
        lm = load(model)
        lens = train_tuned_lens(lm, train, steps=steps, lr=lr, batch_tokens=batch_tokens)
        typer.echo(f"wrote {lens.save(out_dir)}")
        cmp = compare_lenses(lm, lens, held_out, max_tokens=score_tokens)
        typer.echo(cmp.to_frame().to_string(index=False, float_format=lambda x: f"{x:.4f}"))
        _save(cmp.plot(), out)

    @app.command("norms")
    def norms_cmd(prompt: Optional[List[str]] = typer.Argument(None, help="prompts (default: a few bundled ones)"),
                  model: str = typer.Option("smollm2"),
                  out: Optional[str] = typer.Option(None, help="save the weight-norm plot here (.png)")) -> None:
        """Norm growth: residual norm by layer and Frobenius norms of W_OV and W_out."""
        from ...models import load
        from ...lens.norms import growth_rate, residual_norms, weight_norms

        check_out_option(out, FIGURE_SUFFIXES)
        lm = load(model)
        prompts = prompt or ["The Eiffel Tower is in the city of Paris.", "I hate you because you never listen."]
        norms = residual_norms(lm, prompts)
        typer.echo(norms.to_frame().to_string(index=False, float_format=lambda x: f"{x:.4g}"))
        typer.echo(f"mean growth factor per layer: {growth_rate(norms):.4f}")
        wn = weight_norms(lm)
        typer.echo(wn.to_frame().to_string(index=False, float_format=lambda x: f"{x:.4g}"))
        _save(wn.plot(), out)
