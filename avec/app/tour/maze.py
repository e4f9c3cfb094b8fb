"""`avec tour` sections for the maze world: the shipped policies, and the cheese / top-right vectors."""

from __future__ import annotations

import json
from pathlib import Path

from ..render import view

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
    s.figure(view(steered.diff(base)).plot())


def _avec_vectors(ctx) -> tuple[list, list]:
    """(the first n off-region test mazes, [cheese, top-right, composition, random, averaged, transfer, all-layers
    statistics] of region5 on them): computed once a tour (the procgen section shows them again)."""

    def make():
        from ...maze.evaluate import off_region_mazes
        from ...maze.experiments import (all_layers_stats, averaged_cheese_stats, cheese_vector_stats,
                                         composition_stats, random_baseline_stats, top_right_stats, transfer_stats)
        from ...maze.policy import load_policy

        n = 30 if ctx.quick else 100
        policy = load_policy("region5")
        mazes = off_region_mazes(5, n)
        return mazes, [cheese_vector_stats(policy, mazes=mazes), top_right_stats(policy, mazes=mazes),
                   composition_stats(policy, mazes=mazes), random_baseline_stats(policy, mazes=mazes),
                   averaged_cheese_stats(policy, mazes=mazes, n_average=20 if ctx.quick else 50),
                   transfer_stats(policy, mazes=mazes), all_layers_stats(policy, mazes=mazes)]

    return ctx.memo(f"maze.avec.vectors.quick={ctx.quick}", make)


def _avec_behaviour(ctx, name: str):
    """The behavioural statistics of shipped policy ``name`` on avec's world, once a tour."""

    def make():
        from ...maze.behaviour import behaviour_statistics
        from ...maze.policy import load_policy

        return behaviour_statistics(load_policy(name), 40 if ctx.quick else 200)

    return ctx.memo(f"maze.avec.behaviour.{name}.quick={ctx.quick}", make)


def vectors_section(ctx, s) -> None:
    import pandas as pd

    from ...maze.experiments import DEFAULT_HOOK, coefficient_sweep, compare_plot, layer_sweep
    from ...maze.policy import load_policy

    mazes, stats = _avec_vectors(ctx)
    n = len(mazes)
    policy = load_policy("region5")
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

    from ...maze.behaviour import ORIGINAL_AGENT

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
        st = _avec_behaviour(ctx, name)
        rows.append({"policy": name, **st.summary()})
        stats.append((name, st))
    s.table(pd.DataFrame(rows))
    for name, st in stats:
        s.text(f"{name}: how often it gets the cheese against each distance (binned; dashed: overall)")
        s.figure(st.plot())


# ------------------------------------------------------------------------------ the procgen backend
PROCGEN_POLICY = "procgen_region5"
PROCGEN_SEED_BASE = 1_500_000_000  # held out (procgen_region5 trained on levels in [1e6, 1e9)); README.json's 500 start here
STEERING = ("cheese vector x -1", "top-right vector x +1", "cheese x -1 + top-right x +1", "random vector x -1")


def procgen_counts(quick: bool) -> int:
    """Procgen levels per measurement (off-region steering levels; decision-square behaviour levels): the
    behaviour's 500-step sampled rollouts are the section's cost (64 levels: about 30 s on one busy core)."""
    return 16 if quick else 64


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return ""
    if isinstance(v, bool) or isinstance(v, str):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:.3f}"


def _signs(summary: dict) -> str | None:
    from ...maze.behaviour import FEATURES

    coefs = [summary.get(f"coef_{k}") for k in FEATURES]
    if any(c is None or c != c for c in coefs):
        return None
    return ", ".join("-" if c < 0 else "+" for c in coefs)


def _behaviour_column(summary: dict | None) -> dict:
    if not summary:
        return {}
    return {"b_mazes": summary.get("mazes"), "got": summary.get("got_cheese"), "b_pc": summary.get("p_cheese"),
            "b_pt": summary.get("p_top_right"), "acc": summary.get("regression_accuracy"),
            "acc1": summary.get("accuracy_d_euclid_cheese_top_right"), "base": summary.get("baseline_accuracy"),
            "signs": _signs(summary)}


def _steering_column(summaries: list) -> dict:
    """From the cheese, top-right, composition and random summaries (in STEERING order; None where not
    measured)."""
    out = {}
    first = next((x for x in summaries if x), None)
    if first:
        out.update(s_mazes=first["mazes"], s_pc=first["p_cheese"], s_pt=first["p_top_right"])
    for name, sm in zip(STEERING, summaries):
        if sm:
            out[f"{name}|pc"], out[f"{name}|pt"] = sm["p_cheese_steered"], sm["p_top_right_steered"]
            # the intended way: P(top-right) up for the top-right vector, P(cheese) down for the others (the
            # random vector is applied as the cheese vector is, with its norm)
            out[f"{name}|way"] = sm["frac_p_top_right_increased" if name.startswith("top-right") else
                                    "frac_p_cheese_decreased"]
    return out


SIDE_BY_SIDE_ROWS = [
    ("decision-square mazes (cheese anywhere)", "b_mazes"),
    ("got the cheese (sampled rollouts, 500 steps)", "got"),
    ("P(cheese) at the decision square", "b_pc"),
    ("P(top-right) at the decision square", "b_pt"),
    ("regression accuracy (3 distances, 5-fold CV)", "acc"),
    ("accuracy, cheese-top-right distance alone", "acc1"),
    ("majority-class accuracy", "base"),
    ("coefficient signs (cheese-top-right, steps, euclid)", "signs"),
    ("off-region mazes (steering, mouse at the decision square)", "s_mazes"),
    ("unsteered P(cheese)", "s_pc"),
    ("unsteered P(top-right)", "s_pt"),
] + [row for name in STEERING for row in ((f"{name}: P(cheese)", f"{name}|pc"),
                                          (f"{name}: P(top-right)", f"{name}|pt"),
                                          (f"{name}: share of mazes moved the intended way", f"{name}|way"))]


def side_by_side(columns: dict) -> "pd.DataFrame":
    """One row per number of SIDE_BY_SIDE_ROWS, one column per source (name -> cells from _behaviour_column /
    _steering_column); a number a source does not have is an empty cell."""
    import pandas as pd

    return pd.DataFrame({name: [_fmt(cells.get(key)) for _, key in SIDE_BY_SIDE_ROWS] for name, cells in columns.items()},
                        index=[label for label, _ in SIDE_BY_SIDE_ROWS])


def _reach_by_size(stored: dict) -> str:
    """": sampled reach <r> in 3 x 3 mazes ... <r> in 25 x 25" from the benchmark's recorded per-size reach
    (checkpoints/README.json), so the sentence follows the shipped policy; "" where none is recorded."""
    by_size = (stored.get("training_distribution") or {}).get("by_size") or {}
    if not by_size:
        return ""
    lo, hi = min(by_size, key=int), max(by_size, key=int)
    return (f": sampled reach {by_size[lo]['reach_sampled']:.2f} in {lo} x {lo} mazes, "
            f"{by_size[hi]['reach_sampled']:.2f} in {hi} x {hi}")


def procgen_section(ctx, s) -> None:
    import time

    from ...maze import procgen_backend as pb

    if not pb.available():
        s.text("This section runs the study on the real procgen maze, the optional backend, which is not installed "
               f"here: {pb.INSTALL_HINT}. The avec-world sections above do not need it.")
        return
    from ...maze.behaviour import ORIGINAL_AGENT, behaviour_statistics
    from ...maze.experiments import (all_layers_stats, averaged_cheese_stats, cheese_vector, cheese_vector_stats,
                                     coefficient_sweep, compare_plot, composition_stats, layer_sweep,
                                     random_baseline_stats, top_right_stats, transfer_stats)
    from ...maze.fields import vector_field
    from ...maze.policy import load_policy
    from ...maze.retarget import retarget_experiment
    from ..render import view

    t = time.time()
    n = procgen_counts(ctx.quick)
    policy = load_policy(PROCGEN_POLICY)
    levels = pb.off_region_levels(5, n, PROCGEN_SEED_BASE)
    ours = [view(cheese_vector_stats(policy, mazes=levels)), view(top_right_stats(policy, mazes=levels)),
            view(composition_stats(policy, mazes=levels)), view(random_baseline_stats(policy, mazes=levels))]
    behaviour = view(behaviour_statistics(policy, n, seed_base=PROCGEN_SEED_BASE, backend="procgen"))
    seconds = time.time() - t
    # the rest of the study on the same levels: not in the side-by-side table (the repo holds no original
    # numbers for them), shown below it
    more = [view(averaged_cheese_stats(policy, mazes=levels, n_average=20 if ctx.quick else 50)),
            view(transfer_stats(policy, mazes=levels)), view(all_layers_stats(policy, mazes=levels))]

    _, avec_stats = _avec_vectors(ctx)
    avec_behaviour = _avec_behaviour(ctx, "region5")
    entry = json.loads((CHECKPOINTS / "README.json").read_text()).get(PROCGEN_POLICY, {})
    stored = entry.get("procgen_held_out") or {}
    original = stored.get("original_agent") or {}
    columns = {
        # the original study's numbers as the repo holds them (avec.maze.behaviour.ORIGINAL_AGENT, and the
        # decision-square probabilities recorded beside the procgen policy's): nothing else is filled in
        "original study (rand_region_5)": {
            "b_mazes": ORIGINAL_AGENT["mazes"], "got": ORIGINAL_AGENT["got_cheese"], "acc": ORIGINAL_AGENT["accuracy"],
            "acc1": ORIGINAL_AGENT["accuracy_d_euclid_cheese_top_right"], "signs": "-, -, -",
            "b_pc": original.get("p_cheese_decision_square"), "b_pt": original.get("p_top_right_decision_square")},
        "avec world, region5 (this tour)": {**_behaviour_column(avec_behaviour.summary()),
                                            **_steering_column([st.summary() for st in avec_stats[:4]])},
        f"procgen, {PROCGEN_POLICY} (this tour)": {**_behaviour_column(behaviour.summary()),
                                                   **_steering_column([st.summary() for st in ours])},
        f"procgen, {PROCGEN_POLICY} (checkpoints/README.json)": {
            **_behaviour_column(stored.get("behaviour")),
            **_steering_column([stored.get("off_region"), None, None, None])},
    }
    s.text(f"The same study on the real procgen maze (procgen 0.10.7: its levels, its textured pictures, its "
           f"dynamics), with {PROCGEN_POLICY}, the shipped policy trained on procgen's pictures (BC + DAgger, "
           f"cheese in the top-right 5 x 5 square, a quarter of the training mazes mirrored so that their cheese lies "
           f"elsewhere; it is weak in big mazes{_reach_by_size(stored)}, see "
           "checkpoints/README.json). Measured here on held-out procgen "
           f"levels (seeds from 1.5e9; it trained on levels below 1e9): the first {n} with a "
           "decision square and the cheese outside the top-right 5 x 5 square for the steering (vectors computed "
           "with the mouse at the start, at embedder.block2.res1.resadd_out, each level its own), the first "
           f"{n} with a decision square (cheese anywhere) for the behavioural statistics; {seconds:.0f} s. Beside "
           "them: the avec-world numbers of the sections above (region5), the same measurement on the first 500 "
           "such procgen levels (benchmarks/procgen_policies.py, recorded in avec/maze/checkpoints/README.json), "
           "and the original study's numbers where the repo holds them (empty cells: not recorded here, not "
           f"guessed). Moved the intended way: P(cheese) lowered (P(top-right) raised for the top-right vector). "
           f"With only {n} levels the regression's accuracy is noisy.")
    s.table(side_by_side(columns))
    s.text(f"{PROCGEN_POLICY} on the {n} procgen steering levels, each experiment's summary (the four above, then "
           "the averaged cheese vector from procgen donor levels with seeds from 2e9, the cheese vector of the next "
           "level (transfer), and each level's cheese vector at all six residual outputs at once):")
    import pandas as pd

    s.table(pd.DataFrame([st.summary() for st in ours + more]))
    s.figure(compare_plot(ours + more))
    layers = layer_sweep(policy, levels)
    s.text("Layer sweep on the same procgen levels: the cheese vector taken and subtracted (coefficient -1) at one "
           "residual-block output at a time:")
    s.table(layers[["hook"] + [c for c in layers.columns if c not in ("hook", "experiment", "mazes")]])
    s.text("Cheese-vector coefficient sweep on the same procgen levels (all level x coefficient pairs in one batch):")
    s.figure(view(coefficient_sweep(policy, levels)).plot())
    n_cal = 12 if ctx.quick else 40
    res = view(retarget_experiment(policy, levels, calibration=n_cal))
    s.text(f"Channel retargeting on the same procgen levels (cheese removed), channels and scale chosen on {n_cal} "
           "procgen calibration levels (seeds from 2e9), as in the avec-world section above:")
    s.table(pd.DataFrame([{k: v for k, v in res.summary().items() if k != "scale_search_lower_bound"}]))
    s.table(res.by_distance())
    s.text(f"Behavioural statistics on the {n} procgen decision-square levels: how often it gets the cheese "
           "against each distance (binned; dashed: overall)")
    s.figure(behaviour.plot())
    maze = min(levels, key=lambda m: m.size)  # the smallest test level: its arrows stay legible
    base = vector_field(policy, maze)
    steered = vector_field(policy, maze, steer=-1 * cheese_vector(policy, maze), label="cheese vector x -1")
    s.text(f"Vector field of {PROCGEN_POLICY} on procgen level {maze.seed} ({maze.size} x {maze.size}, the smallest "
           "of the steering levels), drawn on procgen's own picture of the level, and with the cheese vector "
           "subtracted on every forward pass (each position observed as procgen renders it):")
    s.figure(view(steered.diff(base)).plot())


SECTIONS = [
    ("Maze: the shipped policies and a vector field", policies_section),
    ("Maze: behavioural statistics (the original study's protocol)", behaviour_section),
    ("Maze: cheese and top-right vectors over many mazes", vectors_section),
    ("Maze: channel retargeting", retarget_section),
    ("Maze: the real procgen maze, side by side with avec's world and the original study", procgen_section),
]
