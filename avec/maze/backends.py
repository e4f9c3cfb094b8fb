"""Which world the maze experiments run in: avec's pure-Python maze ("avec") or procgen 0.10.7 ("procgen").

The experiments take the kind of maze they are given (a ProcgenMaze is rendered and stepped by procgen);
this module draws the standard test mazes of either backend and knows which pictures a policy was trained on.

    mazes = off_region("procgen", region=5, count=100, seed_base=1_000_000_000)   # off-region decision-square procgen levels
    policy_backend(load_policy("procgen_region5"))       # "procgen" (its checkpoint's config says so)
"""

from __future__ import annotations

BACKENDS = ("avec", "procgen")  # whose mazes and pictures (= train.BACKENDS, which the trainer takes)
DEFAULT_POLICY = {"avec": "region5", "procgen": "procgen_region5"}  # the shipped policy trained on each


def check_backend(backend) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "procgen":
        from .procgen_backend import _procgen

        _procgen()  # ImportError naming the install command, before any work
    return backend


def backend_of(mazes) -> str:
    """"procgen" for ProcgenMazes, "avec" for pure-Python ones (a mix is a TypeError)."""
    from .evaluate import _is_procgen

    return "procgen" if _is_procgen(list(mazes)) else "avec"


def policy_backend(policy) -> str | None:
    """The backend whose pictures ``policy`` was trained on, from its checkpoint: "procgen" when its config
    says so, "avec" for any other avec training config, None when nothing is recorded (a procgen-tools
    ``.pth``, a fresh network)."""
    meta = getattr(getattr(policy, "module", policy), "metadata", None) or {}
    config = meta.get("config")
    if not isinstance(config, dict):
        return None
    return str(config.get("backend", "avec"))


def off_region(backend: str, region: int, count: int, seed_base: int, max_tries: int = 1_000_000) -> list:
    """The first ``count`` mazes (seeds from ``seed_base``) with a decision square and the cheese outside the
    top-right ``region`` square: pure-Python mazes or procgen levels."""
    from .evaluate import check_seed_base, off_region_mazes

    seed_base = check_seed_base(seed_base)
    if check_backend(backend) == "procgen":
        from .procgen_backend import off_region_levels

        return off_region_levels(region, count, seed_base, max_tries)
    return off_region_mazes(region, count, seed_base, max_tries)


def decision_square_mazes(backend: str, count: int, seed_base: int, max_tries: int = 1_000_000) -> list:
    """The first ``count`` standard mazes (cheese anywhere, seeds from ``seed_base``) with a decision square:
    the behavioural statistics' mazes, pure-Python or procgen levels."""
    if check_backend(backend) == "procgen":
        from .evaluate import check_seed_base
        from .procgen_backend import random_levels

        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        out = random_levels(count, check_seed_base(seed_base), keep=lambda m: m.decision_square() is not None,
                            max_tries=max_tries)
        if len(out) < count:
            raise RuntimeError(f"only {len(out)} decision-square procgen levels in {max_tries} seeds")
        return out
    from .behaviour import decision_square_mazes as pure

    return pure(count, seed_base, max_tries)


def any_mazes(backend: str, count: int, seed_base: int) -> list:
    """``count`` mazes with seeds ``seed_base, seed_base + 1, ...`` (cheese anywhere): calibration mazes."""
    if check_backend(backend) == "procgen":
        from .procgen_backend import levels

        return levels(range(seed_base, seed_base + count))
    from .world import Maze

    return [Maze.from_seed(seed_base + i) for i in range(count)]
