"""`avec maze ...` commands. ``register(app)`` adds the ``maze`` command group.

Every steering experiment is a command: ``stats`` (cheese, top_right, both, random, averaged,
transfer, all_layers over many test mazes), ``sweep`` (coefficient sweep), ``layers`` (layer
sweep), ``retarget`` (channel retargeting), ``field`` (one maze's vector field), ``behaviour``
(the original study's behavioural statistics). Each takes ``--backend procgen`` to run on the real
procgen maze (``avec.maze.backends``) with the policy trained on its pictures."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from ...io import FIGURE_SUFFIXES, atomic_savefig, check_out_option
from ...maze.world import WORLD

STATS = ("cheese", "top_right", "both", "random", "averaged", "transfer", "all_layers")
KINDS = ("cheese", "top_right")
POLICY_HELP = ("shipped name (region5, region15; procgen_region5, trained on procgen's pictures) or checkpoint path "
               "(.safetensors, or procgen-tools .pth); default: region5, or procgen_region5 with --backend procgen")
BACKENDS = ("avec", "procgen")  # = avec.maze.backends.BACKENDS (a literal: this module imports torch lazily; tested equal)
DEFAULT_POLICY = {"avec": "region5", "procgen": "procgen_region5"}  # = avec.maze.backends.DEFAULT_POLICY
BACKEND_HELP = ("avec: avec's pure-Python maze world; procgen: the real procgen 0.10.7 maze (its levels, pictures "
                "and dynamics; the optional extra, `make setup`)")
CROSS_HELP = ("allow a policy trained on the other backend's pictures (measures how it transfers; refused by "
              "default, since its numbers are then not the study's)")
HOOK_HELP = "hook point (a spatial layer, e.g. embedder.block2.res1.resadd_out)"

REGION_HELP = "test-maze region (default: the policy's, else 5)"
# the options every experiment command shares (typer reads the help from the annotation, the default from the signature)
PolicyOption = Annotated[Optional[str], typer.Option(help=POLICY_HELP)]
BackendOption = Annotated[str, typer.Option(help=BACKEND_HELP)]
CrossBackendOption = Annotated[bool, typer.Option(help=CROSS_HELP)]
HookOption = Annotated[str, typer.Option(help=HOOK_HELP)]
RegionOption = Annotated[Optional[int], typer.Option(help=REGION_HELP)]


def _choice(value: str, allowed, what: str) -> str:
    if value not in allowed:
        raise typer.BadParameter(f"unknown {what} {value!r}; choose from {list(allowed)}")
    return value


def _backend(backend: str) -> str:
    """--backend: one of BACKENDS, and procgen importable (checked before any work)."""
    _choice(backend, BACKENDS, "--backend")
    if backend == "procgen":
        from ...maze.procgen_backend import INSTALL_HINT, available

        if not available():
            raise typer.BadParameter(f"--backend procgen: {INSTALL_HINT}")
    return backend


def _load(policy: Optional[str], region: Optional[int], backend: str = "avec", cross_backend: bool = False):
    """(policy, region): the policy is --policy, else the shipped one trained on --backend's pictures; the
    region is --region, else the checkpoint's, else 5. A policy whose checkpoint says it was trained on the
    other backend's pictures is refused unless --cross-backend: the shipped ones do not transfer (region5 on
    procgen levels: median P(cheese) 0.001 and the cheese vector moves nothing), so a table of its numbers
    would read as the study's result while it only measures a policy that cannot see the mazes."""
    from ...maze.backends import policy_backend
    from ...maze.policy import load_policy

    if region is not None and not 1 <= region <= WORLD:
        raise typer.BadParameter(f"--region must be in 1..{WORLD}, got {region}")
    policy = policy or DEFAULT_POLICY[backend]
    try:
        p = load_policy(policy)
    except (FileNotFoundError, ValueError) as e:
        raise typer.BadParameter(f"cannot load policy {policy!r}: {e}") from None
    trained_on = policy_backend(p)
    if trained_on is not None and trained_on != backend and not cross_backend:
        raise typer.BadParameter(
            f"policy {policy!r} was trained on the {trained_on} backend's pictures, and --backend is {backend}: it "
            f"has never seen these pictures, so its numbers would measure transfer, not the study. Use --backend "
            f"{trained_on}, a policy trained on {backend} (the default: {DEFAULT_POLICY[backend]}), or add "
            "--cross-backend to measure the transfer on purpose")
    from ...maze.evaluate import resolve_region

    return p, resolve_region(p, region)


def _mazes(backend: str, region: int, n: int, seed_base: int) -> list:
    """The test mazes: the first n off-region decision-square mazes (procgen levels with --backend procgen)."""
    from ...maze.backends import off_region

    return off_region(backend, region, n, seed_base)


def spatial_hooks(policy) -> list[str]:
    """Hook points the maze vectors can live at: every ``embedder.block*`` output."""
    from ...maze.fields import as_model

    return [h for h in as_model(policy).hook_points if h.startswith("embedder.block")]


def _hook(policy, hook: str) -> str:
    allowed = spatial_hooks(policy)
    if hook not in allowed and hook.removesuffix("_out") not in allowed:
        raise typer.BadParameter(f"unknown hook point {hook!r}; choose from {allowed} "
                                 "(a trailing '_out' is accepted, procgen-tools style)")
    return hook


EVAL_SEED_BASE = 1_000_000_000  # = evaluate.EVAL_SEED_BASE (a literal: this module imports torch lazily; tested equal)
SEED_BASE_HELP = ("first maze seed: the test mazes are the first --n qualifying seeds from here (default 1e9, "
                  "the evaluation seeds; another base gives held-out mazes)")
SeedBaseOption = Annotated[int, typer.Option(help=SEED_BASE_HELP)]


def _seed_base(seed_base: int) -> int:
    if seed_base < 0:
        raise typer.BadParameter(f"--seed-base must be a non-negative maze seed, got {seed_base}")
    return seed_base


def _n(n: int) -> int:
    if n < 2:
        raise typer.BadParameter(f"--n must be at least 2, got {n}")
    return n


def _out(out: str) -> str:
    """--out must be writable with a figure suffix: checked before any work."""
    check_out_option(out, FIGURE_SUFFIXES)
    return out


def _finite(value: Optional[float], option: str) -> Optional[float]:
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{option} must be a finite number, got {value}")
    return value


def _table(frame) -> str:
    return frame.to_string(index=False, float_format=lambda x: f"{x:.3f}")


def register(app: typer.Typer) -> None:
    maze = typer.Typer(help="maze world: train policies, vector fields, cheese / top-right vector experiments",
                       no_args_is_help=True)

    @maze.command("train", add_help_option=False,
                  context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def train(ctx: typer.Context) -> None:
        """Train a maze policy (BC + DAgger); all options as `python -m avec.maze.train --help`."""
        from ...maze.train import main

        main(list(ctx.args))

    @maze.command("field")
    def field(seed: int = typer.Option(0, help="maze seed (a procgen level seed with --backend procgen)"),
              policy: PolicyOption = None,
              backend: BackendOption = "avec",
              cross_backend: CrossBackendOption = False,
              coeff: float = typer.Option(-1.0, help="cheese-vector coefficient (0: no steering)"),
              hook: HookOption = "embedder.block2.res1.resadd_out",
              out: str = typer.Option("maze-field.png", help="where to write the picture")) -> None:
        """Vector field of a policy on one maze, unsteered vs cheese-vector steered (procgen-tools style)."""
        from ...maze.experiments import cheese_vector
        from ...maze.fields import vector_field
        from ...maze.world import Maze

        out, coeff, backend = _out(out), _finite(coeff, "--coeff"), _backend(backend)
        p, _ = _load(policy, None, backend, cross_backend)
        hook = _hook(p, hook)
        if backend == "procgen":
            from ...maze.procgen_backend import ProcgenMaze

            try:
                m = ProcgenMaze.from_seed(seed)
            except ValueError as e:
                raise typer.BadParameter(f"--seed: {e}") from None
        else:
            m = Maze.from_seed(seed)
        base = vector_field(p, m)
        steered = vector_field(p, m, steer=coeff * cheese_vector(p, m, hook), label=f"cheese vector x {coeff:g}")
        from ..render import view

        atomic_savefig(view(steered.diff(base)).plot(), out, dpi=90, bbox_inches="tight")  # drawn from its dict
        typer.echo(f"wrote {out}")

    @maze.command("stats")
    def stats(policy: PolicyOption = None,
              backend: BackendOption = "avec",
              cross_backend: CrossBackendOption = False,
              n: int = typer.Option(100, help="number of test mazes with a decision square"),
              seed_base: SeedBaseOption = EVAL_SEED_BASE,
              experiment: Optional[List[str]] = typer.Option(None, help=" | ".join(STATS) + " (repeatable; default all)"),
              hook: str = typer.Option("embedder.block2.res1.resadd_out",
                                       help=HOOK_HELP + "; all_layers uses every residual output"),
              region: Optional[int] = typer.Option(None, help="test mazes have the cheese outside the top-right "
                                                   "R x R square (default: the policy's training region, else 5)"),
              plot_dir: Optional[Path] = typer.Option(None, help="write each experiment's box/scatter plot here")) -> None:
        """Decision-square statistics of the steering experiments over many test mazes:
        P(cheese) / P(top-right) before and after, and how often they move the intended way."""
        import pandas as pd

        from ...maze import experiments as ex

        chosen = [_choice(e, STATS, "experiment") for e in (experiment or STATS)]
        n, seed_base = _n(n), _seed_base(seed_base)
        check_out_option(plot_dir, what="--plot-dir", folder=True)
        p, region = _load(policy, region, _backend(backend), cross_backend)
        hook = _hook(p, hook)
        mazes = _mazes(backend, region, n, seed_base)
        runs = {"cheese": lambda: ex.cheese_vector_stats(p, mazes=mazes, at=hook),
                "top_right": lambda: ex.top_right_stats(p, mazes=mazes, at=hook),
                "both": lambda: ex.composition_stats(p, mazes=mazes, at=hook),
                "random": lambda: ex.random_baseline_stats(p, mazes=mazes, at=hook),
                "averaged": lambda: ex.averaged_cheese_stats(p, region, mazes=mazes, at=hook),
                "transfer": lambda: ex.transfer_stats(p, mazes=mazes, at=hook),
                "all_layers": lambda: ex.all_layers_stats(p, mazes=mazes)}
        from ..render import view

        rows = []
        for e in chosen:
            st = view(runs[e]())  # rebuilt from its dict: what the report and the server show
            rows.append(st.summary())
            if plot_dir is not None:
                atomic_savefig(st.plot(), plot_dir / f"maze-stats-{e}.png", dpi=90, bbox_inches="tight")
        typer.echo(_table(pd.DataFrame(rows)))
        if plot_dir is not None:
            typer.echo(f"wrote {len(chosen)} plot(s) to {plot_dir}")

    @maze.command("sweep")
    def sweep(policy: PolicyOption = None,
              backend: BackendOption = "avec",
              cross_backend: CrossBackendOption = False,
              kind: str = typer.Option("cheese", help=" | ".join(KINDS)),
              n: int = typer.Option(50, help="number of test mazes with a decision square"),
              seed_base: SeedBaseOption = EVAL_SEED_BASE,
              lo: float = typer.Option(-3.0, "--min", help="smallest coefficient"),
              hi: float = typer.Option(3.0, "--max", help="largest coefficient"),
              steps: int = typer.Option(13, help="number of coefficients"),
              hook: HookOption = "embedder.block2.res1.resadd_out",
              region: RegionOption = None,
              out: str = typer.Option("maze-sweep.png", help="where to write the plot")) -> None:
        """Coefficient sweep of each maze's own cheese or top-right vector: mean P(cheese) and
        P(top-right) at the decision square per coefficient (all pairs in one batch)."""
        import numpy as np

        from ...maze.experiments import coefficient_sweep

        kind, out, n, seed_base = _choice(kind, KINDS, "kind"), _out(out), _n(n), _seed_base(seed_base)
        _finite(lo, "--min"), _finite(hi, "--max")
        if steps < 2 or not hi > lo:
            raise typer.BadParameter(f"need --steps >= 2 and --max > --min, got {steps}, [{lo}, {hi}]")
        p, region = _load(policy, region, _backend(backend), cross_backend)
        hook = _hook(p, hook)
        from ..render import view

        res = view(coefficient_sweep(p, _mazes(backend, region, n, seed_base), kind, np.linspace(lo, hi, steps), at=hook))
        typer.echo(_table(res.to_frame()))
        atomic_savefig(res.plot(), out, dpi=90, bbox_inches="tight")
        typer.echo(f"wrote {out}")

    @maze.command("layers")
    def layers(policy: PolicyOption = None,
               backend: BackendOption = "avec",
               cross_backend: CrossBackendOption = False,
               n: int = typer.Option(50, help="number of test mazes with a decision square"),
               seed_base: SeedBaseOption = EVAL_SEED_BASE,
               coeff: float = typer.Option(-1.0, help="cheese-vector coefficient"),
               hook: Optional[List[str]] = typer.Option(None, help="hook points (repeatable; default every "
                                                        "residual-block output)"),
               region: RegionOption = None) -> None:
        """Layer sweep: the cheese-vector statistic with the vector taken and applied at each hook point."""
        from ...maze.experiments import layer_sweep

        n, coeff, seed_base = _n(n), _finite(coeff, "--coeff"), _seed_base(seed_base)
        p, region = _load(policy, region, _backend(backend), cross_backend)
        hooks = [_hook(p, h) for h in hook] if hook else None
        frame = layer_sweep(p, _mazes(backend, region, n, seed_base), hooks, coeff)
        cols = ["hook"] + [c for c in frame.columns if c not in ("hook", "experiment")]
        typer.echo(_table(frame[cols]))

    @maze.command("retarget")
    def retarget(policy: PolicyOption = None,
                 backend: BackendOption = "avec",
                 cross_backend: CrossBackendOption = False,
                 n: int = typer.Option(100, help="number of held-out test mazes"),
                 seed_base: SeedBaseOption = EVAL_SEED_BASE,
                 calibration: int = typer.Option(60, help="calibration mazes (seeds from 2e9, of --backend) for "
                                                 "choosing channels and scale"),
                 k: int = typer.Option(8, help="number of cheese channels"),
                 scale: str = typer.Option("auto", help="multiple of each channel's mean cheese signal to add, "
                                           "or 'auto' (chosen on the calibration mazes)"),
                 value: Optional[float] = typer.Option(None, help="instead set the channels to this fixed value"),
                 remove_cheese: bool = typer.Option(True, help="measure with the cheese removed from each maze"),
                 offsets: bool = typer.Option(True, help="write at each channel's calibrated offset (else at "
                                              "the cell's geometric activation position)"),
                 hook: HookOption = "embedder.block2.res1.resadd_out",
                 region: RegionOption = None,
                 out: str = typer.Option("maze-retarget.png", help="where to write the scatter plot")) -> None:
        """Channel retargeting: write cheese signal into the cheese-tracking channels at a random
        target cell and compare the path probability toward it (geometric mean of on-path moves)."""
        import json

        from ...maze.retarget import retarget_experiment

        out, n, value, seed_base = _out(out), _n(n), _finite(value, "--value"), _seed_base(seed_base)
        if scale != "auto":
            try:
                scale = float(scale)
            except ValueError:
                raise typer.BadParameter(f"--scale must be a number or 'auto', got {scale!r}") from None
            _finite(scale, "--scale")
        if k < 1 or calibration < 2:
            raise typer.BadParameter(f"need --k >= 1 and --calibration >= 2, got {k}, {calibration}")
        p, region = _load(policy, region, _backend(backend), cross_backend)
        hook = _hook(p, hook)
        from ..render import view

        res = view(retarget_experiment(p, _mazes(backend, region, n, seed_base), scale=scale, value=value, k=k,
                                       calibration=calibration, remove_cheese=remove_cheese, use_offsets=offsets, at=hook))
        typer.echo(json.dumps(res.summary(), indent=1))
        typer.echo(_table(res.by_distance()))
        atomic_savefig(res.plot(), out, dpi=90, bbox_inches="tight")
        typer.echo(f"wrote {out}")

    @maze.command("behaviour")
    def behaviour(policy: PolicyOption = None,
                  backend: BackendOption = "avec",
                  cross_backend: CrossBackendOption = False,
                  n: int = typer.Option(1000, help="number of test mazes with a decision square"),
                  seed_base: SeedBaseOption = EVAL_SEED_BASE,
                  max_steps: int = typer.Option(500, help="episode step limit (procgen's is 500)"),
                  seed: int = typer.Option(0, help="seed of the sampled actions"),
                  out: str = typer.Option("maze-behaviour.png", help="where to write the plot")) -> None:
        """Behavioural statistics as Grietzer & Turner measured the original agent: how often sampled
        rollouts get the cheese on decision-square mazes, and a logistic regression of that on the
        cheese-top-right and decision-square-cheese distances (the original: 71.4 % / 82.4 %)."""
        import json

        from ...maze.behaviour import ORIGINAL_AGENT, behaviour_statistics

        if max_steps < 1:
            raise typer.BadParameter(f"--max-steps must be >= 1, got {max_steps}")
        out, n, seed_base = _out(out), _n(n), _seed_base(seed_base)
        p, _ = _load(policy, None, _backend(backend), cross_backend)
        from ..render import view

        res = view(behaviour_statistics(p, n, seed_base=seed_base, max_steps=max_steps, seed=seed, backend=backend))
        typer.echo(json.dumps({**res.summary(), "original_agent": ORIGINAL_AGENT}, indent=1))
        typer.echo(_table(res.by_bins("d_euclid_cheese_top_right").reset_index().astype({"bin": str})))
        atomic_savefig(res.plot(), out, dpi=90, bbox_inches="tight")
        typer.echo(f"wrote {out}")

    app.add_typer(maze, name="maze")
