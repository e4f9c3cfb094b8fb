"""`avec tour` sections for the maze world: the shipped policies, and the cheese / top-right vectors."""

from __future__ import annotations

import json
from pathlib import Path

CHECKPOINTS = Path(__file__).resolve().parents[2] / "maze" / "checkpoints"
SHIPPED = ("region5", "region15")


def policies_section(ctx, s) -> None:
    import pandas as pd

    from ...maze.evaluate import off_region_mazes
    from ...maze.experiments import cheese_vector
    from ...maze.fields import vector_field
    from ...maze.policy import load_policy

    rows = []
    for name in SHIPPED:
        report = json.loads((CHECKPOINTS / f"{name}.json").read_text())
        ev, ds = report["eval"], report["eval"]["decision_square"]
        rows.append({"policy": name, "method": report.get("method", ""), "train minutes": report["train_seconds"] / 60,
                     "reach (greedy)": ev["reach_rate_greedy"], "reach (sampled)": ev["reach_rate_sampled"],
                     "test reach (greedy)": ev["test_reach_rate_greedy"], "P(cheese)": ds["p_cheese"],
                     "P(top-right)": ds["p_top_right"], "top-right wins": ds["frac_top_right_wins"],
                     # a killed-and-resumed run lists its resume steps; [] means one uninterrupted run
                     "resumed at": report.get("resumed_at", [])})
    met = [r["policy"] for r in rows if r["reach (sampled)"] >= 0.9]
    s.text("Shipped Impala policies (width scale 1), each trained from scratch by one `avec maze train` command "
           "(behaviour cloning + DAgger on a BFS expert, the cheese in the maze's top-right R x R region, half the "
           "non-path training states drawn where the moves toward the cheese and toward the top-right differ; the "
           "commands, with their thread counts, are in avec/maze/checkpoints/README.json). Reach rates on 200 "
           "training-distribution mazes (500 steps; sampled = acting by sampling the policy, as procgen agents do); "
           "decision-square probabilities on 200 test mazes with the cheese outside "
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

    from ...maze.evaluate import off_region_mazes
    from ...maze.experiments import (
        DEFAULT_HOOK,
        all_layers_stats,
        averaged_cheese_stats,
        cheese_vector_stats,
        coefficient_sweep,
        compare_plot,
        composition_stats,
        layer_sweep,
        random_baseline_stats,
        top_right_stats,
        transfer_stats,
    )
    from ...maze.policy import load_policy

    n = 30 if ctx.quick else 100
    policy = load_policy("region5")
    mazes = off_region_mazes(5, n)
    stats = [cheese_vector_stats(policy, mazes=mazes), top_right_stats(policy, mazes=mazes),
             composition_stats(policy, mazes=mazes), random_baseline_stats(policy, mazes=mazes),
             averaged_cheese_stats(policy, mazes=mazes, n_average=20 if ctx.quick else 50),
             transfer_stats(policy, mazes=mazes), all_layers_stats(policy, mazes=mazes)]
    s.text(f"region5 on {n} test mazes with a decision square: mean P(cheese) / P(top-right) of the first step at the "
           "decision square, before and after steering, and the fraction of mazes moving the intended way. Cheese "
           f"vector = activations with cheese minus without (mouse at start, same maze) at {DEFAULT_HOOK}, "
           "coefficient -1; top-right vector = path-modified maze minus original, +1; random = a random vector of "
           "the cheese vector's norm; averaged = one cheese vector averaged over other mazes (seeds from 2e9), "
           "applied to every test maze; transferred = the cheese vector of the next test maze (seed A applied to "
           "seed B); all layers = each maze's cheese vector at all six residual-block outputs at once.")
    s.table(pd.DataFrame([st.summary() for st in stats]))
    s.figure(stats[0].plot())
    s.figure(compare_plot(stats))
    layers = layer_sweep(policy, mazes)
    s.text("Layer sweep: the cheese vector taken and subtracted (coefficient -1) at one residual-block output at "
           "a time, same mazes:")
    s.table(layers[["hook"] + [c for c in layers.columns if c not in ("hook", "experiment", "mazes")]])
    sweep = coefficient_sweep(policy, mazes[:min(n, 50)])
    s.text("Cheese-vector coefficient sweep (all maze x coefficient pairs in one batch):")
    s.figure(sweep.plot())


def retarget_section(ctx, s) -> None:
    import pandas as pd

    from ...maze.evaluate import off_region_mazes
    from ...maze.experiments import DEFAULT_HOOK
    from ...maze.policy import load_policy
    from ...maze.retarget import retarget_experiment

    n, n_cal = (12, 12) if ctx.quick else (50, 40)
    s.text(f"Channel retargeting at {DEFAULT_HOOK}. On {n_cal} calibration mazes (seeds from 2e9) we find the 8 "
           "channels whose mean cheese vector (with minus without cheese) peaks highest, in units of the channel's "
           "own activation std, near the cheese, and where each one peaks relative to the cheese cell. On "
           f"{n} held-out test mazes (cheese removed), for a random target cell we add scale x each channel's mean "
           "cheese signal at the target's position (+ the channel's offset) and compare the policy's path "
           "probability toward the target (geometric mean of the on-path move probabilities). The scale is chosen "
           "on the calibration mazes (best lower confidence bound of the log gain). For reference: the real "
           "cheese moved to the target; and the naive rule (a fixed 5.0 written at the geometric position, cheese "
           "kept, as in the original 128-channel agent), far beyond these channels' activation scale (std below).")
    rows, figs = [], []
    for name in SHIPPED:
        policy = load_policy(name)
        region = int(policy.metadata.get("region", 5))
        mazes = off_region_mazes(region, n)
        res = retarget_experiment(policy, mazes, calibration=n_cal)
        naive = retarget_experiment(policy, mazes, channels=res.channels, value=5.0, use_offsets=False,
                                    remove_cheese=False, reference=False)
        for r in (res, naive):
            sm = r.summary()
            rows.append({"policy": name, "rule": sm["rule"], "cheese": "removed" if r.remove_cheese else "kept",
                         "path prob before": sm["path_prob_before"], "after": sm["path_prob_after"],
                         "geo-mean ratio": sm["geo_mean_ratio"], "frac increased": sm["frac_increased"],
                         "real cheese at target": sm.get("path_prob_cheese_at_target", float("nan")),
                         "frac of cheese effect": sm.get("frac_of_cheese_effect", float("nan"))})
        figs.append((name, res))
    s.table(pd.DataFrame(rows))
    for name, res in figs:
        s.text(f"{name}: the cheese channels (offset = where the channel's cheese signal peaks, in activation "
               "positions from the cheese cell's; signal = its mean cheese-vector value there; std = the channel's "
               "activation std), then the path probabilities by target distance from the start:")
        s.table(res.channels.to_frame())
        s.table(res.by_distance())
        s.figure(res.plot())


def behaviour_section(ctx, s) -> None:
    import pandas as pd

    from ...maze.behaviour import ORIGINAL_AGENT, behaviour_statistics
    from ...maze.policy import load_policy

    n = 40 if ctx.quick else 200
    s.text(f"Behavioural statistics by the protocol Grietzer & Turner used on the original agent: {n} standard test "
           "mazes (cheese anywhere) with a decision square, one sampled 500-step rollout each; does it get the "
           "cheese? Then a logistic regression of that on the Euclidean cheese-to-top-right distance, the legal "
           "steps and the Euclidean distance from the decision square to the cheese (5-fold cross-validated "
           f"accuracy). The original rand-region-5 agent got the cheese in {ORIGINAL_AGENT['got_cheese']:.1%} of "
           f"{ORIGINAL_AGENT['mazes']} such mazes and the three distances predicted it with "
           f"{ORIGINAL_AGENT['accuracy']:.1%} accuracy, every coefficient negative (closer: more cheese).")
    rows, stats = [], []
    for name in SHIPPED:
        st = behaviour_statistics(load_policy(name), n)
        rows.append({"policy": name, **st.summary()})
        stats.append((name, st))
    s.table(pd.DataFrame(rows))
    for name, st in stats:
        s.text(f"{name}: how often it gets the cheese against each distance (binned; dashed: overall)")
        s.figure(st.plot())


SECTIONS = [
    ("Maze: the shipped policies and a vector field", policies_section),
    ("Maze: behavioural statistics (the original study's protocol)", behaviour_section),
    ("Maze: cheese and top-right vectors over many mazes", vectors_section),
    ("Maze: channel retargeting", retarget_section),
]
