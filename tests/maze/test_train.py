import json

import numpy as np
import pytest
import torch

from avec.maze.env import ACTION_NAMES, expert_move
from avec.maze.evaluate import off_region_mazes, rollout, training_mazes
from avec.maze.policy import load_policy, read_checkpoint
from avec.maze.env import GROUP_MATRIX
from avec.maze.policy import ImpalaPolicy
from avec.maze.train import (
    Sampler, cheese_vs_corner_cells, expert_labels, first_moves, loss_fn, main, train_policy,
)
from avec.maze.world import Maze, top_right_region


def test_expert_labels_match_expert_move():
    m = Maze.from_seed(12)
    cells = m.open_cells()
    cells = cells[(cells != np.array(m.cheese)).any(1)]
    labels, dists = expert_labels(m, cells)
    for (r, c), lab, d in zip(cells, labels, dists):
        assert ACTION_NAMES[lab] == expert_move(m, (r, c))
        assert d == m.distances(m.cheese)[r, c] > 0


def test_sampler_batch_shapes_and_region():
    s = Sampler(5, np.random.default_rng(0))
    obs, labels, dists = s.batch(16, 0.0)
    assert obs.shape == (16, 3, 64, 64) and labels.shape == (16,) and (labels < 4).all()
    m = s.fresh_maze()
    rows, cols = top_right_region(m.size, 5)
    assert rows.start <= m.cheese[0] < rows.stop and cols.start <= m.cheese[1] < cols.stop


def test_eval_and_train_seeds_disjoint_and_test_mazes_outside_region():
    for m in off_region_mazes(5, 20):
        rows, cols = top_right_region(m.size, 5)
        assert not (rows.start <= m.cheese[0] < rows.stop and cols.start <= m.cheese[1] < cols.stop)
        assert m.decision_square() is not None
    assert all(m.seed >= 1_000_000_000 for m in training_mazes(5, 3))


class _Expert(torch.nn.Module):
    """Cheats: reads the expert move from a side table keyed by observation bytes."""

    def __init__(self, table):
        super().__init__()
        self.table = table

    def forward(self, obs):
        from avec.maze.env import CANONICAL
        logits = torch.full((len(obs), 15), -20.0)
        for i, x in enumerate(obs):
            logits[i, CANONICAL[self.table[x.numpy().tobytes()]]] = 20.0
        return type("O", (), {"logits": logits})()


def test_rollout_with_perfect_policy_reaches_cheese():
    from avec.maze.render import obs_tensor
    mazes = training_mazes(5, 4)
    table = {}
    for m in mazes:
        for c in m.open_cells():
            mm = m.with_mouse(tuple(c))
            if mm.mouse != m.cheese:
                table[obs_tensor(mm)[0].numpy().tobytes()] = expert_move(mm)
    reached, steps, visited = rollout(_Expert(table), mazes, greedy=True, record=True)
    assert reached.all()
    assert list(steps) == [m.distances(m.cheese)[m.start] for m in mazes]
    assert len(visited) == steps.sum()


def test_a_greedy_mask_runs_greedy_and_sampled_mazes_as_their_own_rollouts_would(tiny_policy):
    """One batch with a bool per maze: the greedy mazes walk as a greedy rollout of them alone, the sampled
    ones as a sampled rollout of them alone with the same generator (it is drawn only for sampled mazes)."""
    mazes = training_mazes(5, 6, seed_base=1_234_567_890)
    mask = np.array([True, False, True, False, False, True])
    with torch.no_grad():
        got, got_steps, got_visits = rollout(tiny_policy, mazes, 40, greedy=mask, rng=np.random.default_rng(7),
                                             record=True)
        g, g_steps, g_visits = rollout(tiny_policy, [m for m, k in zip(mazes, mask) if k], 40, greedy=True,
                                       record=True)
        s, s_steps, s_visits = rollout(tiny_policy, [m for m, k in zip(mazes, mask) if not k], 40, greedy=False,
                                       rng=np.random.default_rng(7), record=True)
    assert (got[mask] == g).all() and (got_steps[mask] == g_steps).all()
    assert (got[~mask] == s).all() and (got_steps[~mask] == s_steps).all()
    # the visited cells, per maze, are the separate runs' (the untrained policy wanders, so the walks differ)
    where = np.flatnonzero(mask), np.flatnonzero(~mask)
    for part, visits in ((where[0], g_visits), (where[1], s_visits)):
        for j, i in enumerate(part):
            assert [v[1:] for v in got_visits if v[0] == i] == [v[1:] for v in visits if v[0] == j]
    assert len({tuple(v[1:]) for v in s_visits}) > len(s)  # the sampled mazes did move
    for bad in (np.array([True, False]), 1, "yes"):
        with pytest.raises(ValueError, match=r"greedy must be one bool or a bool per maze \(6 mazes\)"):
            rollout(tiny_policy, mazes, 5, greedy=bad)


def test_mirrored_training_mazes_put_the_cheese_in_other_corners_and_are_recorded(tmp_path):
    plain = Sampler(5, np.random.default_rng(3))
    none = Sampler(5, np.random.default_rng(3), mirror_frac=0.0)
    assert [plain.fresh_maze() for _ in range(5)] == [none.fresh_maze() for _ in range(5)]  # 0 draws nothing
    s = Sampler(5, np.random.default_rng(3), mirror_frac=1.0)
    kinds = set()
    for _ in range(60):
        m = s.fresh_maze()
        assert m.mouse == m.start and m.cheese != m.start
        # exactly one way back gives a maze of the training family: the cheese in the top-right region
        back = [(lr, ud) for lr, ud in ((True, False), (False, True), (True, True))
                if _in_region(m.mirrored(left_right=lr, up_down=ud), 5)]
        assert back, m
        kinds.update(back if m.size > 9 else [])  # small mazes' corner regions overlap
    assert kinds == {(True, False), (False, True), (True, True)}
    # a cheese in the top-right corner never lands on the start, and the states' labels are drawn as usual
    corner = Sampler(5, np.random.default_rng(5), mirror_frac=1.0)
    corner.fresh_maze = lambda: corner.maybe_mirrored(Maze.from_seed(11, size=3, region=5).with_cheese((11, 13)))
    for _ in range(30):
        m = corner.fresh_maze()
        assert m.cheese != m.start and m.mouse == m.start
    obs, labels, dists = Sampler(5, np.random.default_rng(6), mirror_frac=1.0, path_frac=0.5).batch(64, 0.0)
    assert obs.shape == (64, 3, 64, 64) and (labels < 4).all() and (dists > 0).all()
    half = Sampler(5, np.random.default_rng(4), mirror_frac=0.5)
    share = np.mean([not _in_region(half.fresh_maze(), 5) for _ in range(400) ])
    assert 0.3 < share < 0.55  # half mirrored, a few of those (small mazes) still top-right
    rep = train_policy(5, tmp_path / "m.safetensors", max_steps=2, mirror_frac=0.25, batch_size=4, warmup_steps=1,
                       dagger_every=1, dagger_mazes=2, dagger_steps=3, final_eval=False, progress=False)
    assert rep["config"]["mirror_frac"] == 0.25
    rep = train_policy(5, tmp_path / "n.safetensors", max_steps=1, batch_size=4, warmup_steps=1, final_eval=False,
                       progress=False, mirror_frac=np.float32(0.5), pull_frac=np.float64(0.25))
    assert rep["config"]["mirror_frac"] == 0.5 and type(rep["config"]["pull_frac"]) is float  # numpy numbers pass
    assert "mirror_frac" not in train_policy(5, tmp_path / "p.safetensors", max_steps=1, batch_size=4, warmup_steps=1,
                                             final_eval=False, progress=False)["config"]
    for bad in (-0.1, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match="mirror_frac must be a fraction in"):
            train_policy(5, tmp_path / "x.safetensors", max_steps=1, mirror_frac=bad)
    with pytest.raises(ValueError, match="pull_frac must be a fraction in"):
        train_policy(5, tmp_path / "x.safetensors", max_steps=1, pull_frac=True)


def _in_region(m, region):
    rows, cols = top_right_region(m.size, region)
    return rows.start <= m.cheese[0] < rows.stop and cols.start <= m.cheese[1] < cols.stop


def test_train_smoke_and_resume(tmp_path):
    out = tmp_path / "p.safetensors"
    kw = dict(warmup_steps=2, dagger_every=3, dagger_mazes=4, dagger_steps=5, checkpoint_every=0.0,
              final_eval=False, progress=False, batch_size=8)
    # run 4 steps, then "crash": the checkpoint is unfinished and resumable
    train_policy(5, out, max_steps=4, **kw)
    state, extra, meta = read_checkpoint(out)
    assert meta["complete"] is True and meta["step"] == 4
    out2 = tmp_path / "q.safetensors"
    from avec.maze.policy import ImpalaPolicy, save_policy
    p = ImpalaPolicy(1)
    save_policy(p, out2, {"step": 3, "elapsed_s": 1.0, "complete": False})
    rep = train_policy(5, out2, max_steps=5, **kw)
    assert rep["steps"] == 5 and rep["resumed_at"] == [3]
    assert read_checkpoint(out)[2]["resumed_at"] == []  # an uninterrupted run
    assert load_policy(out2).metadata["step"] == 5
    assert json.loads((tmp_path / "q.json").read_text())["steps"] == 5
    import pytest
    with pytest.raises(FileExistsError):
        train_policy(5, out2, max_steps=6, **kw)
    assert main(["--region", "3", "--out", str(tmp_path / "m.safetensors"), "--max-steps", "2",
                 "--batch-size", "4", "--no-eval"]) == 0


def test_crash_then_resume_restores_adam(tmp_path, monkeypatch, kill_at_batch):
    import pytest

    import avec.maze.train as T

    out = tmp_path / "c.safetensors"
    kw = dict(warmup_steps=100, checkpoint_every=0.0, final_eval=False, progress=False, batch_size=4)
    real = kill_at_batch(T.Sampler)  # "killed" during step 4
    with pytest.raises(KeyboardInterrupt):
        train_policy(5, out, max_steps=10, **kw)
    state, extra, meta = read_checkpoint(out)
    assert meta["complete"] is False and meta["step"] == 3
    assert any(k.endswith("exp_avg_sq") for k in extra)
    monkeypatch.setattr(T.Sampler, "batch", real)
    seen = {}
    orig_restore = T._restore_adam

    def spy(opt, policy, extra):
        orig_restore(opt, policy, extra)
        seen["steps"] = {float(s["step"]) for s in opt.state.values()}

    monkeypatch.setattr(T, "_restore_adam", spy)
    rep = train_policy(5, out, max_steps=5, **kw)
    assert seen["steps"] == {3.0} and rep["steps"] == 5
    assert rep["resumed_at"] == [3]  # the report says the run was not uninterrupted


def test_init_from_fine_tunes(tmp_path):
    kw = dict(warmup_steps=100, checkpoint_every=1e9, final_eval=False, progress=False, batch_size=4)
    a = tmp_path / "a.safetensors"
    train_policy(5, a, max_steps=1, **kw)
    b = tmp_path / "b.safetensors"
    rep = train_policy(5, b, max_steps=0, init_from=a, **kw)
    assert rep["config"]["init_from"] == str(a)
    pa, pb = load_policy(a), load_policy(b)
    assert all(torch.equal(x, y) for x, y in zip(pa.state_dict().values(), pb.state_dict().values()))


def test_sampler_size_weighting_and_path_states():
    uniform = Sampler(5, np.random.default_rng(0), size_power=0.0)
    big = Sampler(5, np.random.default_rng(0), size_power=2.0)
    assert np.allclose(uniform.size_p, 1 / len(uniform.size_p))
    assert np.all(np.diff(big.size_p) > 0)  # larger mazes more likely
    sizes_u = [uniform.fresh_maze().size for _ in range(200)]
    sizes_b = [big.fresh_maze().size for _ in range(200)]
    assert np.mean(sizes_b) > np.mean(sizes_u)
    # path_frac=1: every fresh state lies on the start-to-cheese shortest path
    s = Sampler(5, np.random.default_rng(1), path_frac=1.0)
    mazes, idx, cells = s.random_states(12)
    for i, cell in zip(idx, cells):
        assert tuple(cell) in mazes[i].shortest_path(mazes[i].start, mazes[i].cheese)[:-1]


def test_dagger_buffer_keeps_the_newest_states_and_only_their_mazes():
    s = Sampler(5, np.random.default_rng(0), buffer_cap=5)
    s.mazes = [f"maze{i}" for i in range(4)]  # stand-ins: trimming only reindexes them
    s.buf = np.array([[0, 1, 1], [1, 2, 2], [0, 3, 3], [2, 4, 4], [3, 5, 5], [2, 6, 6], [3, 7, 7]])
    want = [(s.mazes[i], r, c) for i, r, c in s.buf[-5:]]
    s.trim_buffer()
    assert len(s.buf) == 5 and s.mazes == ["maze0", "maze2", "maze3"]  # maze1's only state was dropped
    assert [(s.mazes[i], r, c) for i, r, c in s.buf] == want
    s.trim_buffer()  # at the cap: unchanged
    assert [(s.mazes[i], r, c) for i, r, c in s.buf] == want


def test_value_loss_trains_only_the_value_head():
    """The value head reads detached features: every other parameter's gradient is that of the
    policy loss alone, and the value head still learns."""
    torch.manual_seed(0)
    policy = ImpalaPolicy(1)
    obs, labels, dists = Sampler(5, np.random.default_rng(0)).batch(16, 0.0)

    def grads(loss):
        policy.zero_grad()
        loss.backward()
        return {n: None if p.grad is None else p.grad.clone() for n, p in policy.named_parameters()}

    full = grads(loss_fn(policy, obs, labels, dists)[0])
    logp15 = torch.log_softmax(policy(obs).logits, 1)
    logp5 = torch.logsumexp(logp15[:, :, None] + torch.log(GROUP_MATRIX)[None], dim=1)
    policy_only = grads(torch.nn.functional.nll_loss(logp5, labels))
    for name, g in full.items():
        if name.startswith("fc_value"):
            assert g is not None and g.abs().sum() > 0 and policy_only[name] is None
        else:
            torch.testing.assert_close(g, policy_only[name], rtol=1e-5, atol=1e-8)


def test_first_moves_match_the_expert_everywhere():
    for seed in range(4):
        m = Maze.from_seed(seed)
        for target in (m.cheese, m.top_right):
            moves = first_moves(m, target)
            at = m.with_cheese(target) if target != m.cheese else m
            for r, c in m.open_cells():
                assert ACTION_NAMES[moves[r, c]] == expert_move(at, (r, c))
            assert (moves[~m.grid] == 4).all()  # walls: NOOP


def test_cheese_vs_corner_cells_are_exactly_where_the_two_moves_differ():
    m = Maze.from_seed(5, size=15, region=5)
    corner = m.with_cheese(m.top_right)
    got = {tuple(x) for x in cheese_vs_corner_cells(m)}
    assert got  # the cheese is off the corner here
    for r, c in m.open_cells():
        cell = (int(r), int(c))
        if cell in (m.cheese, m.top_right):
            assert cell not in got
        else:
            assert (cell in got) == (expert_move(m, cell) != expert_move(corner, cell))
    # pull_frac=1 draws every non-path fresh state from those cells
    s = Sampler(5, np.random.default_rng(0), size_power=1.0, pull_frac=1.0)
    mazes, idx, cells = s.random_states(60)
    for i, cell in zip(idx, cells):
        pull = cheese_vs_corner_cells(mazes[i])
        assert not len(pull) or (pull == cell).all(1).any()


def test_first_moves_in_a_maze_with_a_loop_prefer_action_order_like_the_expert():
    m = Maze.from_seed(9, size=9)
    walls = [tuple(int(v) for v in x) for x in np.argwhere(~m.grid) if m.in_maze(tuple(x))
             and (x[0] - m.pad) % 2 != (x[1] - m.pad) % 2]  # openable walls between two cells
    loopy = m
    for w in walls:  # every wall between two cells opened: an open lattice, ties everywhere
        loopy = loopy.with_cell(w, True)
    dist = loopy.distances(loopy.cheese)
    ties = sum(sum(0 <= r + dr < 25 and 0 <= c + dc < 25 and dist[r + dr, c + dc] == dist[r, c] - 1 >= 0
                   for dr, dc in ((0, -1), (1, 0), (-1, 0), (0, 1))) > 1 for r, c in loopy.open_cells())
    assert ties > 5
    moves = first_moves(loopy, loopy.cheese)
    for r, c in loopy.open_cells():
        assert ACTION_NAMES[moves[r, c]] == expert_move(loopy, (r, c))


def test_fractions_out_of_range_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"pull_frac must be a fraction in \[0, 1\], got 1.5"):
        train_policy(5, tmp_path / "p.safetensors", max_steps=1, pull_frac=1.5, progress=False)


def test_final_evaluation_weighs_reach_by_the_runs_own_size_mix(tmp_path, monkeypatch):
    """The report's training-mix reach uses the run's ``size_power``, not the trainer's default: the policy
    evaluated at the end carries the header its checkpoint gets (a run with size_power 2 was once reported
    with the default 1's mix)."""
    import avec.maze.train as train_mod
    from avec.maze.evaluate import training_size_power

    seen = {}

    def spy(policy, region):
        seen.update(power=training_size_power(policy), region=region, step=policy.metadata["step"])
        return {"training_mix_size_power": seen["power"]}

    monkeypatch.setattr(train_mod, "evaluate", spy)
    rep = train_policy(5, tmp_path / "p.safetensors", max_steps=2, batch_size=4, warmup_steps=1, size_power=2.0,
                       progress=False)
    assert seen == {"power": 2.0, "region": 5, "step": 2} and rep["eval"]["training_mix_size_power"] == 2.0
    assert load_policy(tmp_path / "p.safetensors").metadata["config"]["size_power"] == 2.0
