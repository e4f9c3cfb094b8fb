"""Training on procgen's observations (avec.maze.train_procgen): labels match what procgen renders and does,
the loop checkpoints and resumes, and the shipped procgen policy loads and solves held-out levels.

Skipped (with the reason) when procgen is not importable; `make setup` installs it."""

import json

import numpy as np
import pytest
import torch

from avec.maze import procgen_backend as pb
from avec.maze.env import ACTION_NAMES, CANONICAL
from avec.maze.evaluate import EVAL_SEED_BASE
from avec.maze.policy import CHECKSUM_KEY, load_policy, read_checkpoint, tensors_digest
from avec.maze.world import top_right_region

needs_procgen = pytest.mark.skipif(
    not pb.available(), reason="procgen 0.10.7 is not importable: the optional procgen backend is not installed "
    "(`make setup` installs it; README: the procgen backend)")

POOL = dict(pool_size=12, level_refresh=4, level_refresh_every=1)


def _sampler(seed=0, **kw):
    from avec.maze.train_procgen import ProcgenSampler

    return ProcgenSampler(5, np.random.default_rng(seed), **POOL, **kw)


def _in_region(maze, region=5) -> bool:
    rows, cols = top_right_region(maze.size, region)
    return rows.start <= maze.cheese[0] < rows.stop and cols.start <= maze.cheese[1] < cols.stop


@needs_procgen
def test_labels_are_the_moves_that_bring_procgens_mouse_closer(tiny_policy):
    """The alignment test: for every training state (fresh and DAgger, either facing), the observation is
    what procgen shows for that state, and acting the label in procgen's own env moves its mouse one step
    closer to the cheese (reward when it arrives)."""
    from avec.maze.train_procgen import labelled

    s = _sampler(path_frac=0.25, pull_frac=0.5)
    s.add_rollouts(tiny_policy, 4, 6)
    assert len(s.buf) and set(np.unique(s.buf[:, 3])) <= {0, 1}
    mazes, idx, cells, refl = s.states(24, dagger_frac=0.5)
    assert refl.any() and not refl.all()
    obs, labels, dists = labelled(mazes, idx, cells, refl)
    assert (labels < 4).all() and (dists > 0).all()
    env = pb.make_env(1, 0)
    for j in range(len(idx)):
        m = mazes[idx[j]]
        assert m.seed >= 1_000_000 and m.seed < EVAL_SEED_BASE and _in_region(m)
        from avec.maze.train_procgen import state_bytes

        env.callmethod("set_state", [state_bytes(m, cells[j], refl[j])])
        st = pb.parse(env.callmethod("get_state")[0])
        assert st.mouse == tuple(cells[j]) and st.fields[f"entity{st.player}.is_reflected"] == refl[j]
        assert st.to_maze().cheese == m.cheese
        np.testing.assert_array_equal(env.observe()[1]["rgb"][0], (obs[j].permute(1, 2, 0) * 255).round().byte().numpy())
        env.act(np.array([CANONICAL[ACTION_NAMES[labels[j]]]], np.int32))
        rew, _, first = env.observe()
        if dists[j] == 1:
            assert rew[0] > 0 and first[0]  # got the cheese: procgen ends the episode
        else:
            after = pb.parse(env.callmethod("get_state")[0]).mouse
            assert m.distances(m.cheese)[after] == dists[j] - 1


@needs_procgen
def test_dagger_states_render_as_procgen_showed_them(tiny_policy):
    """rollout_record's (cell, facing) of each visited state re-renders the very picture the policy got."""
    from avec.maze.train_procgen import render, rollout_record

    seen = []
    noise = torch.Generator().manual_seed(0)

    class Spy(torch.nn.Module):
        """Random logits: every kind of action (diagonals, NOOPs, moves into walls), greedy ones too."""

        def forward(self, x):
            seen.append(x.clone())
            out = tiny_policy(x)
            return out._replace(logits=3 * torch.randn(out.logits.shape, generator=noise))

    # the mouse's cell and facing are tracked from the actions, not read back from procgen's state; greedy
    # and sampled slots share the pass
    sampler = _sampler(seed=3)
    mazes = [sampler.fresh_maze() for _ in range(6)]
    greedy = np.array([True, False, False, True, False, False])
    reached, steps, visited = rollout_record(Spy(), mazes, 20, greedy=greedy, rng=np.random.default_rng(1))
    assert len(visited) == steps.sum() and visited[:, 3].any()  # the mouse moved right at least once
    assert len(np.unique(visited[:, :3], axis=0)) > 2 * len(mazes)  # it went places
    shown = torch.cat(seen)
    # rollout_record lists each step's live slots in slot order, as the policy saw them
    torch.testing.assert_close(render(mazes, visited[:, 0], visited[:, 1:3], visited[:, 3] > 0), shown, rtol=0, atol=0)


@needs_procgen
def test_rollout_record_names_a_greedy_mask_of_the_wrong_length(tiny_policy):
    from avec.maze.train_procgen import rollout_record

    mazes = [_sampler(seed=3).fresh_maze() for _ in range(2)]
    for bad in ([True, False, True], [1, 0]):
        with pytest.raises(ValueError, match=r"greedy must be one bool or a bool per maze \(2 mazes\)"):
            rollout_record(tiny_policy, mazes, 3, greedy=bad, rng=np.random.default_rng(0))


@needs_procgen
def test_training_loop_checkpoints_and_resumes(tmp_path, monkeypatch, kill_at_batch):
    import avec.maze.train_procgen as TP
    from avec.maze.train import train_policy

    out = tmp_path / "p.safetensors"
    kw = dict(warmup_steps=2, dagger_every=2, dagger_mazes=2, dagger_steps=3, checkpoint_every=0.0, final_eval=False,
              progress=False, batch_size=6, backend="procgen", backend_options=POOL)
    real = kill_at_batch(TP.ProcgenSampler)  # "killed" during step 4
    with pytest.raises(KeyboardInterrupt):
        train_policy(5, out, max_steps=6, **kw)
    state, extra, meta = read_checkpoint(out)
    assert meta["complete"] is False and meta["step"] == 3 and meta["config"]["backend"] == "procgen"
    assert meta["config"]["pool_size"] == 12 and any(k.endswith("exp_avg_sq") for k in extra)
    monkeypatch.setattr(TP.ProcgenSampler, "batch", real)
    rep = train_policy(5, out, max_steps=5, **kw)
    assert rep["steps"] == 5 and rep["resumed_at"] == [3] and "procgen" in rep["method"]
    after = read_checkpoint(out)
    assert after[2]["complete"] and after[2]["step"] == 5 and not after[1]  # finished: no optimiser state
    assert any(not torch.equal(state[k], after[0][k]) for k in state)  # the two resumed steps trained
    # the CLI spelling, resumable file and report
    q = tmp_path / "q.safetensors"
    assert TP.main(["--region", "5", "--out", str(q), "--max-steps", "2", "--batch-size", "4", "--no-eval",
                    "--pool-size", "8", "--level-refresh", "2", "--init-from", str(out)]) == 0
    rep = json.loads((tmp_path / "q.json").read_text())
    assert rep["command"].startswith("avec maze train --backend procgen") and rep["config"]["init_from"] == str(out)


@needs_procgen
def test_bad_procgen_training_options_are_clear_errors(tmp_path):
    from avec.maze.train import main, train_policy

    out = tmp_path / "p.safetensors"
    with pytest.raises(ValueError, match="backend must be one of avec, procgen"):
        train_policy(5, out, max_steps=1, backend="gym")
    with pytest.raises(ValueError, match="unknown procgen backend option"):
        train_policy(5, out, max_steps=1, backend="procgen", backend_options={"pool": 3})
    with pytest.raises(ValueError, match=r"pool_size \(--pool-size\) must be an int >= 1"):
        train_policy(5, out, max_steps=1, backend="procgen", backend_options={"pool_size": 0})
    with pytest.raises(ValueError, match="level_refresh .* at most pool_size"):
        train_policy(5, out, max_steps=1, backend="procgen", backend_options={"pool_size": 4, "level_refresh": 5})
    with pytest.raises(ValueError, match="for backend='procgen'"):
        train_policy(5, out, max_steps=1, backend_options={"pool_size": 4})
    with pytest.raises(ValueError, match="--pool-size is an option of --backend procgen"):
        main(["--region", "5", "--out", str(out), "--pool-size", "4"])
    with pytest.raises(ValueError, match=r"route_aux_steps \(--route-aux-steps\) must be an int >= 0, got -1"):
        train_policy(5, out, max_steps=1, backend="procgen", backend_options={"route_aux_steps": -1})
    with pytest.raises(ValueError, match="--route-aux-steps is an option of --backend procgen"):
        main(["--region", "5", "--out", str(out), "--route-aux-steps", "4"])
    assert not out.exists()


SHIPPED = "procgen_region5"


def _shipped():
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "avec" / "maze" / "checkpoints" / f"{SHIPPED}.safetensors"
    if not path.exists():
        pytest.skip(f"{SHIPPED} not trained yet")
    return path


def test_shipped_procgen_policy_loads_with_its_checksum():
    from safetensors import safe_open

    path = _shipped()
    p = load_policy(SHIPPED)
    assert p.metadata["complete"] and p.metadata["region"] == 5 and p.metadata["config"]["backend"] == "procgen"
    with safe_open(str(path), framework="pt") as f:
        stored = f.metadata()[CHECKSUM_KEY]
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert stored == tensors_digest(tensors) and not any(k.startswith("extra.") for k in tensors)
    report = json.loads(path.with_suffix(".json").read_text())
    assert report["command"].startswith("avec maze train --backend procgen") and report["steps"] == p.metadata["step"]


@needs_procgen
def test_shipped_procgen_policy_gets_the_cheese_on_held_out_levels():
    """Greedy, on 16 held-out small levels (3 x 3 to 7 x 7) of its training distribution (cheese in the top-right
    5 x 5): it gets the cheese in at least 10 (the policy is weak in big mazes, see README.json: greedy reach
    0.94 over these sizes on the held-out evaluation levels, 0.10 in 23 x 23, 0.02 in 25 x 25), where a policy that does
    not look at the picture (the same network with its weights shuffled) rarely does."""
    from avec.maze.train_procgen import training_levels

    _shipped()
    p = load_policy(SHIPPED)
    levels = [m for m in training_levels(5, 96, seed_base=1_900_000_000) if m.size <= 7][:16]
    assert len(levels) == 16
    reached, steps, _ = pb.rollout(p, levels, max_steps=200, greedy=True)
    assert reached.sum() >= 10, (reached.sum(), steps)
    g = torch.Generator().manual_seed(0)
    blind = load_policy(SHIPPED)
    with torch.no_grad():
        for w in blind.parameters():
            w.copy_(w.flatten()[torch.randperm(w.numel(), generator=g)].reshape(w.shape))
    blind_reached, _, _ = pb.rollout(blind, levels, max_steps=200, greedy=True)
    assert blind_reached.sum() <= reached.sum() - 5, (blind_reached.sum(), reached.sum())


@needs_procgen
def test_behaviour_statistics_on_procgen_levels(tiny_policy):
    """behaviour_statistics(mazes=...) measures on the levels given (procgen's, rolled out in procgen's env)."""
    from avec.maze.behaviour import behaviour_statistics

    levels = pb.random_levels(4, seed_base=40, keep=lambda m: m.decision_square() is not None)
    bs = behaviour_statistics(tiny_policy, mazes=levels, max_steps=5, folds=2)
    assert bs.frame["seed"].tolist() == [m.seed for m in levels]
    want, _, _ = pb.rollout(tiny_policy, levels, 5, greedy=False, rng=np.random.default_rng(0))
    assert bs.frame["got_cheese"].tolist() == want.tolist()
    with pytest.raises(ValueError, match="decision square"):
        behaviour_statistics(tiny_policy, mazes=[levels[0].with_cheese(levels[0].top_right)])
    with pytest.raises(ValueError, match="decision square"):
        behaviour_statistics(tiny_policy, mazes=[])


@needs_procgen
def test_mouse_finding_targets_are_where_procgen_draws_the_mouse():
    """mouse_targets puts each cell in the 32 x 32 map square (of block1's output) of the mouse's pixels, give
    or take the one square a 2.56-pixel cell can straddle."""
    from avec.maze.train_procgen import mouse_targets, render

    m = _sampler().fresh_maze()
    cells = m.open_cells()
    away = cells[-1]  # the mouse parked elsewhere: the pixels that change show where it is drawn
    errors = []
    for cell in cells[:-1:2]:
        a, b = render([m], [0, 0], [cell, away], [False, False])
        ys, xs = np.nonzero((a != b).any(0).numpy())
        near = (np.abs(ys - (cell[0] + 0.5) * 64 / 25) < 4) & (np.abs(xs - (cell[1] + 0.5) * 64 / 25) < 4)
        seen = np.array([ys[near].mean(), xs[near].mean()]) / 2  # the mouse's own pixels, in map squares
        errors.append(np.abs(np.array(divmod(mouse_targets([cell], 32)[0], 32)) + 0.5 - seen))
    errors = np.array(errors)
    assert errors.max() <= 1.0 and errors.mean() < 0.5, errors


def test_scene_map_squares_sit_on_their_cells():
    """cell_of_square gives, for each square of block1's 32 x 32 map (2 x 2 pixels), the cell under its centre;
    with it the open-floor target of a maze is its grid sampled there."""
    from avec.maze.train_procgen import cell_of_square

    at = cell_of_square(32)
    for k, cell in enumerate(at):
        lo, hi = cell * 64 / 25, (cell + 1) * 64 / 25  # the cell's pixel span
        assert lo <= 2 * k + 1 <= hi  # the square's centre (pixels 2k and 2k + 1) lies in it
    assert np.all(np.diff(at) >= 0) and set(at.tolist()) == set(range(25))  # a cell spans > 2 pixels: none is missed


@needs_procgen
def test_route_targets_are_the_expert_moves_from_each_square():
    """route_targets: at each square of block3's 8 x 8 map, the move from the cell under its centre that
    brings the mouse one step closer to the cheese (by the maze's own distances); walls and the cheese ignored."""
    from avec.maze.env import ACTION_NAMES
    from avec.maze.train_procgen import ROUTE_SIDE, cell_of_square, route_targets
    from avec.maze.world import MOVES

    s = _sampler()
    mazes = [s.fresh_maze() for _ in range(6)]
    assert max(m.size for m in mazes) >= 9
    at = cell_of_square(ROUTE_SIDE)
    labelled = 0
    for m in mazes:
        t = route_targets(m)
        dist = m.distances(m.cheese)
        assert t.shape == (ROUTE_SIDE, ROUTE_SIDE)
        for r in range(ROUTE_SIDE):
            for c in range(ROUTE_SIDE):
                cell = (int(at[r]), int(at[c]))
                if not m.grid[cell] or cell == m.cheese:
                    assert t[r, c] == -100
                    continue
                dr, dc = MOVES[ACTION_NAMES[t[r, c]]]
                assert dist[cell[0] + dr, cell[1] + dc] == dist[cell] - 1
                labelled += 1
    assert labelled >= 20


@needs_procgen
def test_route_loss_trains_the_trunk_through_block3_and_learns(tiny_policy):
    """The route loss's gradient reaches the convolutions (it shapes block3's map) but not the policy's fully
    connected layers, and a few steps on one batch lower it: the head reads block3's map of that batch."""
    import copy

    s = _sampler(route_aux_steps=100, pull_frac=0.5)
    obs, labels, dists = s.batch(16, 0.0)
    assert s._routes.shape == (16, 8, 8) and (s._routes != -100).any()
    policy = copy.deepcopy(tiny_policy).train()
    e = policy.embedder
    h3 = e.relu3(e.block3(e.block2(e.block1(obs))))
    first = s.route_loss(h3)
    first.backward()
    grads = {n: p.grad for n, p in policy.named_parameters()}
    assert grads["embedder.block3.conv.weight"].abs().sum() > 0 and grads["embedder.block1.conv.weight"].abs().sum() > 0
    assert all(grads[n] is None for n in grads if n.startswith(("fc_policy", "fc_value", "embedder.fc")))
    opt = torch.optim.Adam(list(policy.parameters()) + s.aux_parameters(), lr=3e-3)
    for _ in range(15):
        opt.zero_grad()
        loss = s.route_loss(e.relu3(e.block3(e.block2(e.block1(obs)))))
        loss.backward()
        opt.step()
    assert loss.item() < 0.8 * first.item()
    # in the training loss with weight 1 - step / route_aux_steps, and off from route_aux_steps on
    from avec.maze.train import loss_fn

    with torch.no_grad():
        plain = loss_fn(policy, obs, labels, dists)[0]
        route = s.route_loss(e.relu3(e.block3(e.block2(e.block1(obs)))))
        torch.testing.assert_close(s.loss(policy, obs, labels, dists, step=0)[0], plain + route)
        torch.testing.assert_close(s.loss(policy, obs, labels, dists, step=50)[0], plain + 0.5 * route)
        torch.testing.assert_close(s.loss(policy, obs, labels, dists, step=100)[0], plain)
    assert "route_right" in s.curve_stats()


@needs_procgen
def test_step_accuracy_counts_the_expert_moves_a_policy_makes():
    """step_accuracy on a policy that always moves LEFT equals the share of LEFT among the expert's moves on the
    same held-out states, overall, per size and per distance band; the states are a fixed set."""
    from avec.maze.env import CANONICAL, N_ACTIONS
    from avec.maze.policy import PolicyOutput
    from avec.maze.train_procgen import held_out_states, labelled_only, step_accuracy

    class AlwaysLeft(torch.nn.Module):
        def forward(self, x):
            logits = torch.full((len(x), N_ACTIONS), -20.0)
            logits[:, CANONICAL["LEFT"]] = 20.0
            return PolicyOutput(logits, torch.zeros(len(x)))

    kw = dict(n_levels=12, per_level=3, seed_base=EVAL_SEED_BASE + 77)
    mazes, idx, cells, refl = held_out_states(5, **kw)
    again = held_out_states(5, **kw)
    assert np.array_equal(idx, again[1]) and np.array_equal(cells, again[2]) and np.array_equal(refl, again[3])
    assert all(m.seed >= EVAL_SEED_BASE for m in mazes)
    labels, dists = labelled_only(mazes, idx, cells)
    left = labels == ACTION_NAMES.index("LEFT")
    out = step_accuracy(AlwaysLeft(), 5, chunk=16, **kw)
    assert out["states"] == len(idx) and out["accuracy"] == round(float(left.mean()), 4)
    sizes = np.array([mazes[i].size for i in idx])
    for n, row in out["by_size"].items():
        assert row["accuracy"] == round(float(left[sizes == int(n)].mean()), 4)
    near = (dists >= 1) & (dists < 8)
    assert out["by_distance"]["1-7"] == round(float(left[near].mean()), 4)


def test_mix_reach_weighs_each_sizes_reach_by_the_training_mix():
    """Post-stratified: sizes 3 (reach 1/2) and 25 (reach 0) with P(n) ~ n: (3 * 1/2 + 25 * 0) / 28, whatever
    the counts of each size; size_power 0 is the plain mean over sizes. Mismatched or empty input: ValueError."""
    from avec.maze.train_procgen import mix_reach

    sizes = np.array([3, 3, 25, 25, 25, 25])
    reached = np.array([True, False, False, False, False, False])
    assert mix_reach(sizes, reached, 1.0) == pytest.approx(1.5 / 28)
    assert mix_reach(sizes, reached, 0.0) == pytest.approx(0.25)
    assert mix_reach(sizes, reached, 2.0) < mix_reach(sizes, reached, 1.0) < mix_reach(sizes, reached, 0.0)
    with pytest.raises(ValueError, match="one size per level"):
        mix_reach(sizes, reached[:3], 1.0)
    with pytest.raises(ValueError, match="one size per level"):
        mix_reach([], [], 1.0)


@needs_procgen
def test_evaluate_procgen_reports_reach_on_the_training_size_mix(monkeypatch):
    """evaluate_procgen gives reach on the training size mix beside procgen's uniform sizes, with the policy's own
    size_power: a policy that reaches the cheese exactly in mazes up to 9 x 9 (rollouts faked by size) scores its
    share of those sizes under P(n) ~ n**2, less than on uniform sizes."""
    from avec.maze import train_procgen as tp

    def by_size(policy, mazes, *a, **k):
        sizes = np.array([m.size for m in mazes])
        return sizes <= 9, np.full(len(mazes), 7), []

    monkeypatch.setattr(tp.pb, "rollout", by_size)
    monkeypatch.setattr(tp, "step_accuracy", lambda *a, **k: {})
    policy = torch.nn.Module()
    policy.metadata = {"region": 5, "config": {"region": 5, "size_power": 2.0}}
    from avec.maze.evaluate import Motivation

    monkeypatch.setattr(tp, "decision_probs", lambda p, ms: Motivation(np.full(len(ms), 0.5), np.full(len(ms), 0.3),
                                                                         np.array([m.size for m in ms])))
    out = tp.evaluate_procgen(policy, n_train=48, n_test=2, seed_base=EVAL_SEED_BASE + 5)
    sizes = np.array([m.size for m in tp.training_levels(5, 48, EVAL_SEED_BASE + 5)])
    present = np.unique(sizes)
    want = (present[present <= 9] ** 2.0).sum() / (present ** 2.0).sum()
    assert out["training_mix_size_power"] == 2.0
    assert out["reach_rate_greedy_training_mix"] == pytest.approx(want)
    assert out["reach_rate_sampled_training_mix"] == pytest.approx(want)
    assert out["reach_rate_greedy"] == pytest.approx((sizes <= 9).mean()) and out["reach_rate_greedy"] > want
