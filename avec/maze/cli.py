"""`avec maze ...` commands. ``register(app)`` adds the ``maze`` command group."""

from __future__ import annotations

from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    maze = typer.Typer(help="maze world: train policies, vector fields, cheese / top-right vector experiments",
                       no_args_is_help=True)

    @maze.command("train", add_help_option=False,
                  context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def train(ctx: typer.Context) -> None:
        """Train a maze policy (BC + DAgger); all options as `python -m avec.maze.train --help`."""
        from .train import main

        main(list(ctx.args))

    @maze.command("field")
    def field(seed: int = typer.Option(0, help="maze seed"),
              policy: str = typer.Option("region5", help="shipped name or checkpoint path"),
              coeff: float = typer.Option(-1.0, help="cheese-vector coefficient (0: no steering)"),
              out: str = typer.Option("maze-field.png", help="where to write the picture")) -> None:
        """Vector field of a policy on one maze, unsteered vs cheese-vector steered (procgen-tools style)."""
        from .experiments import cheese_vector
        from .fields import vector_field
        from .policy import load_policy
        from .world import Maze

        p, m = load_policy(policy), Maze.from_seed(seed)
        base = vector_field(p, m)
        steered = vector_field(p, m, steer=coeff * cheese_vector(p, m), label=f"cheese vector x {coeff:g}")
        steered.plot(compare_to=base).savefig(out, dpi=90, bbox_inches="tight")
        typer.echo(f"wrote {out}")

    @maze.command("stats")
    def stats(policy: str = typer.Option("region5", help="shipped name or checkpoint path"),
              n: int = typer.Option(100, help="number of test mazes with a decision square"),
              experiment: Optional[List[str]] = typer.Option(None, help="cheese | top_right | both | random")) -> None:
        """Decision-square statistics of the steering experiments over many test mazes."""
        import pandas as pd

        from .experiments import cheese_vector_stats, composition_stats, random_baseline_stats, top_right_stats
        from .policy import load_policy

        p = load_policy(policy)
        region = int(p.metadata.get("region", 5))
        runs = {"cheese": cheese_vector_stats, "top_right": top_right_stats, "both": composition_stats,
                "random": random_baseline_stats}
        chosen = experiment or list(runs)
        unknown = [e for e in chosen if e not in runs]
        if unknown:
            raise typer.BadParameter(f"unknown experiment(s) {unknown}; choose from {list(runs)}")
        frame = pd.DataFrame([runs[e](p, region, n).summary() for e in chosen])
        typer.echo(frame.to_string(index=False, float_format=lambda x: f"{x:.3f}"))

    app.add_typer(maze, name="maze")
