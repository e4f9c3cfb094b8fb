"""CLI commands of patching: ``avec patch``. ``register(app)`` adds them."""

from __future__ import annotations

from typing import Optional

import typer

from ...io import FIGURE_SUFFIXES, atomic_savefig, check_out_option


def register(app: typer.Typer) -> None:
    @app.command("patch")
    def patch_cmd(clean: str = typer.Argument(..., help="clean prompt"),
                  corrupted: str = typer.Argument(..., help="corrupted prompt of the same token length"),
                  answer: str = typer.Option(..., help="the clean answer token, e.g. ' Paris'"),
                  wrong: str = typer.Option(..., help="the corrupted answer token, e.g. ' Berlin'"),
                  point: str = typer.Option("resid_pre", help="resid_pre|resid_mid|resid_post|attn_out|mlp_out|attn.z|attn.q|attn.k|attn.v"),
                  by: Optional[str] = typer.Option(None, help="position | layer | head | head_position"),
                  attribution: bool = typer.Option(False, help="estimate by attribution patching instead"),
                  direction: str = typer.Option("denoise", help="denoise (clean into corrupted) or noise"),
                  model: str = typer.Option("smollm2"),
                  chunk_size: int = typer.Option(32, help="patches per forward pass"),
                  out: Optional[str] = typer.Option(None, help="save the heatmap here (.png)")) -> None:
        """Activation patching sweep (batched): normalised logit difference, 1 = clean, 0 = corrupted."""
        from ...models import load
        from ...patching.activation import activation_patching
        from ...patching.attribution import attribution_patching

        check_out_option(out, FIGURE_SUFFIXES)
        if chunk_size < 1:
            raise typer.BadParameter(f"--chunk-size must be >= 1, got {chunk_size}")
        lm = load(model)
        kw = dict(answer=answer, wrong=wrong, direction=direction)
        if attribution:
            res = attribution_patching(lm, clean, corrupted, point, by, **kw)
        else:
            res = activation_patching(lm, clean, corrupted, point, by, chunk_size=chunk_size, progress=True, **kw)
        typer.echo(f"metric: clean {res.clean_metric:.4f}, corrupted {res.corrupted_metric:.4f}; "
                   f"{res.values.numel()} cells in {res.seconds:.1f} s")
        frame = res.to_frame()
        top = frame.reindex(frame["score"].abs().sort_values(ascending=False).index).head(15)
        typer.echo(top.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
        if out:
            atomic_savefig(res.plot(), out, dpi=120, bbox_inches="tight")
            typer.echo(f"wrote {out}")
