"""`avec tour` sections for the maze world: the shipped policies, and the cheese / top-right vectors."""

from __future__ import annotations

import json
from pathlib import Path

CHECKPOINTS = Path(__file__).parent / "checkpoints"
SHIPPED = ("region5", "region15")


def policies_section(ctx, s) -> None:
    import pandas as pd

    from .evaluate import off_region_mazes
    from .experiments import cheese_vector
    from .fields import vector_field
    from .policy import load_policy

    rows = []
    for name in SHIPPED:
        report = json.loads((CHECKPOINTS / f"{name}.json").read_text())
        ev, ds = report["eval"], report["eval"]["decision_square"]
        rows.append({"policy": name, "method": report.get("method", ""), "train minutes": report["train_seconds"] / 60,
                     "reach (greedy)": ev["reach_rate_greedy"], "reach (sampled)": ev["reach_rate_sampled"],
                     "test reach (greedy)": ev["test_reach_rate_greedy"], "P(cheese)": ds["p_cheese"],
                     "P(top-right)": ds["p_top_right"], "top-right wins": ds["frac_top_right_wins"]})
    met = [r["policy"] for r in rows if r["reach (sampled)"] >= 0.9]
    s.text("Shipped Impala policies (width scale 1), each trained from scratch by one `avec maze train` command "
           "(behaviour cloning + DAgger on a BFS expert, the cheese in the maze's top-right R x R region, 1 CPU "
           "thread). Reach rates on 200 training-distribution mazes (500 steps; sampled = acting by sampling the "
           "policy, as procgen agents do); decision-square probabilities on 200 test mazes with the cheese outside "
           "the region. The >= 90% reach target (sampled) is met by: "
           f"{', '.join(met) if met else 'none'}. These numbers are measured, not tuned.")
    s.table(pd.DataFrame(rows))
    policy = load_policy("region5")
    maze = off_region_mazes(5, 1)[0]
    base = vector_field(policy, maze)
    steered = vector_field(policy, maze, steer=-1 * cheese_vector(policy, maze), label="cheese vector x -1")
    s.text(f"Vector field of region5 on test maze seed {maze.seed} (one batched forward over every open cell), "
           "and with the cheese vector subtracted at embedder.block2.res1.resadd_out on every forward pass:")
    s.figure(steered.plot(compare_to=base))


def vectors_section(ctx, s) -> None:
    import pandas as pd

    from .evaluate import off_region_mazes
    from .experiments import (
        cheese_vector_stats,
        coefficient_sweep,
        composition_stats,
        random_baseline_stats,
        top_right_stats,
    )
    from .policy import load_policy

    n = 30 if ctx.quick else 100
    policy = load_policy("region5")
    stats = [cheese_vector_stats(policy, 5, n), top_right_stats(policy, 5, n), composition_stats(policy, 5, n),
             random_baseline_stats(policy, 5, n)]
    s.text(f"region5 on {n} test mazes with a decision square: mean P(cheese) / P(top-right) of the first step at the "
           "decision square, before and after steering, and the fraction of mazes moving the intended way. Cheese "
           "vector = activations with cheese minus without (mouse at start, same maze), coefficient -1; top-right "
           "vector = path-modified maze minus original, +1; random = a random vector of the cheese vector's norm.")
    s.table(pd.DataFrame([st.summary() for st in stats]))
    s.figure(stats[0].plot())
    sweep = coefficient_sweep(policy, off_region_mazes(5, min(n, 50)))
    s.text("Cheese-vector coefficient sweep (all maze x coefficient pairs in one batch):")
    s.figure(sweep.plot())


SECTIONS = [
    ("Maze: the shipped policies and a vector field", policies_section),
    ("Maze: cheese and top-right vectors over many mazes", vectors_section),
]
