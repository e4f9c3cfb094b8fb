"""The procgen backend: procgen 0.10.7's own maze levels, state bytes, observations and dynamics.

Skipped (with the reason) only when procgen is not importable; `make setup` installs it. The last test
runs everywhere: without procgen the backend says how to install it."""

import dataclasses
import struct

import numpy as np
import pytest
import torch

from avec.maze import procgen_backend as pb
from avec.maze.procgen_state import parse
from avec.maze.env import CANONICAL, step
from avec.maze.render import cell_pixels
from avec.maze.world import WORLD, Maze

needs_procgen = pytest.mark.skipif(
    not pb.available(), reason="procgen 0.10.7 is not importable: the optional procgen backend is not installed "
    "(`make setup` installs it; README: the procgen backend)")

SEEDS = (0, 1, 4, 5, 7, 123456)  # levels 4 and 5 have a sand-coloured floor, close to the walls' colour


def _state(env) -> bytes:
    return env.callmethod("get_state")[0]


def _act(env, action: int):
    """One procgen step in a 1-slot env: (mouse cell, reward, episode restarted)."""
    env.act(np.array([action], np.int32))
    rew, _, first = env.observe()
    return pb.ProcgenMaze.from_state(_state(env)).mouse, float(rew[0]), bool(first[0])


def _env_at(maze: pb.ProcgenMaze):
    env = pb.make_env(1, maze.seed)
    env.callmethod("set_state", [maze.state_bytes(restart=True)])
    return env


def _changed_cells(a: np.ndarray, b: np.ndarray) -> set:
    """Cells holding the centre of a pixel that differs between two observations: the cells an
    edit touched, read off the pictures alone."""
    p = 64 / WORLD
    return {(int((y + 0.5) // p), int((x + 0.5) // p)) for y, x in np.argwhere((a != b).any(-1))}


def _seen_open(obs: np.ndarray, maze: pb.ProcgenMaze) -> np.ndarray:
    """Which cells look like floor in ``obs``: each cell's inner pixels against the same level drawn
    all floor and all wall (procgen's textures differ per level, so no fixed colour would do)."""
    floor = pb.observe(dataclasses.replace(maze, grid=np.ones((WORLD, WORLD), bool), cheese=None))
    walls = np.zeros((WORLD, WORLD), bool)
    walls[maze.mouse] = True
    wall = pb.observe(dataclasses.replace(maze, grid=walls, cheese=None))
    seen = np.zeros((WORLD, WORLD), bool)
    for r in range(WORLD):
        for c in range(WORLD):
            ys, xs = cell_pixels((r, c))
            px = obs[ys, xs].astype(int)
            seen[r, c] = np.abs(px - floor[ys, xs]).sum() < np.abs(px - wall[ys, xs]).sum()
    return seen


# ------------------------------------------------------------------------------ levels and state bytes
@needs_procgen
def test_a_level_is_what_a_fresh_env_starts_on():
    """levels() draws many levels in one pooled env; each must be the level procgen starts on with
    start_level=seed, num_levels=1: the same state (bar the level sampler) and the same pixels, whatever
    levels the pool held before."""
    pb.levels([1_500_000_000] * 3)  # the pooled slots held other levels first (as after any other test)
    mazes = pb.levels(SEEDS)
    for seed, m in zip(SEEDS, mazes):
        env = pb.make_env(1, seed)
        fresh = parse(_state(env))
        ours = m.state
        differ = [k for k in fresh.fields if fresh.fields[k] != ours.fields[k]]
        assert differ == ["level_seed_rand_gen.state"], (seed, differ)
        assert np.array_equal(fresh.grid, ours.grid)
        assert np.array_equal(pb.observe(m), env.observe()[1]["rgb"][0])
        assert m.seed == seed and m == pb.ProcgenMaze.from_state(_state(env))


@needs_procgen
def test_state_to_grid_to_state_is_the_identity():
    states = [m.level_state for m in pb.levels(SEEDS[:3])]
    env = pb.make_env(1, 11)  # and states in the middle of an episode
    rng = np.random.default_rng(0)
    for _ in range(3):
        for a in rng.integers(0, 15, 7):
            env.act(np.array([a], np.int32))
        states.append(_state(env))
    for b in states:
        st = parse(b)
        assert st.to_bytes() == b
        m = pb.ProcgenMaze.from_state(b)
        assert m.state_bytes() == b
        # and an edit undone is the original bytes again
        other = next(tuple(c) for c in m.open_cells() if tuple(c) not in (m.mouse, m.cheese))
        assert m.with_mouse(other).with_mouse(m.mouse).state_bytes() == b


@needs_procgen
def test_procgen_mazes_follow_avec_world_conventions():
    """Orientation and geometry read from the state agree with avec's world: the mouse starts at the
    maze's bottom-left cell, the maze is centred, open at even/even and closed at odd/odd maze
    coordinates, and is a perfect maze (a tree); so decision squares mean the same on both backends."""
    for m in pb.random_levels(40, seed_base=500):
        p, n = m.pad, m.size
        assert m.mouse == m.start and m.cheese != m.start and m.in_maze(m.cheese)
        inner = m.grid[p:p + n, p:p + n]
        assert inner[::2, ::2].all() and not inner[1::2, 1::2].any()
        assert m.grid.sum() == inner.sum()  # nothing open outside the maze
        dist = m.distances(m.start)
        assert (dist[m.grid] >= 0).all()  # connected ...
        edges = inner[:, :-1] & inner[:, 1:]
        assert edges.sum() + (inner[:-1] & inner[1:]).sum() == inner.sum() - 1  # ... with no loop
    sizes = {m.size for m in pb.random_levels(200, seed_base=0)}
    assert sizes == set(range(3, 26, 2))


@needs_procgen
def test_the_grid_from_the_state_is_the_grid_in_the_observation():
    for m in pb.levels(SEEDS):
        seen = _seen_open(pb.observe(m), m)
        mask = np.ones((WORLD, WORLD), bool)
        mask[m.mouse] = mask[m.cheese] = False  # their sprites cover the floor
        assert np.array_equal(seen[mask], m.grid[mask]), m


@needs_procgen
def test_a_mirrored_level_renders_its_mirrored_grid():
    """The DAgger sampler's mirrored levels (``mirror_frac``): procgen draws the walls, cheese and mouse where
    the mirrored maze has them."""
    for m in pb.levels(SEEDS[:3]):
        for lr, ud in ((True, False), (False, True), (True, True)):
            mm = m.mirrored(left_right=lr, up_down=ud)
            assert isinstance(mm, pb.ProcgenMaze)
            obs = pb.observe(mm)
            mask = np.ones((WORLD, WORLD), bool)
            mask[mm.mouse] = mask[mm.cheese] = False
            assert np.array_equal(_seen_open(obs, mm)[mask], mm.grid[mask]), (m, lr, ud)
            assert _changed_cells(obs, pb.observe(mm.without_cheese())) == {mm.cheese}


@needs_procgen
def test_mouse_and_cheese_are_where_the_state_says():
    """Removing the cheese, or moving the mouse, changes pixels in those cells and nowhere else."""
    for m in pb.levels(SEEDS):
        obs = pb.observe(m)
        assert _changed_cells(obs, pb.observe(m.without_cheese())) == {m.cheese}
        assert m.mouse in _changed_cells(obs, pb.observe(m.with_mouse(m.cheese)))


# --------------------------------------------------------------------------------------- edits
@needs_procgen
def test_edits_render_what_they_say():
    m = pb.ProcgenMaze.from_seed(0)
    obs = pb.observe(m)
    new_cheese = m.top_right
    assert _changed_cells(obs, pb.observe(m.with_cheese(new_cheese))) == {m.cheese, new_cheese}
    target = (m.mouse[0] - 2, m.mouse[1])
    assert _changed_cells(obs, pb.observe(m.with_mouse(target))) == {m.mouse, target}
    wall = next((r, c) for r, c in np.argwhere(~m.grid) if m.in_maze((r, c)))
    opened = m.open_cell(tuple(wall))
    after = pb.observe(opened)
    assert _changed_cells(obs, after) == {tuple(wall)}
    assert _seen_open(after, opened)[tuple(wall)] and not _seen_open(obs, m)[tuple(wall)]
    path = m.with_top_right_path()  # cells outside the maze too
    seen = _seen_open(pb.observe(path), path)
    assert seen[0, m.top_right[1]] and seen[0, WORLD - 1] and not _seen_open(obs, m)[0, WORLD - 1]


@needs_procgen
def test_edits_change_what_procgen_does():
    m = pb.ProcgenMaze.from_seed(0)
    r, c = m.mouse
    # the cheese moved next to the mouse: one step right gets it (reward 10, the episode ends)
    above = (r - 1, c) if m.is_open((r - 1, c)) else (r, c + 1)
    move = "UP" if above[0] == r - 1 else "RIGHT"
    env = _env_at(m.with_cheese(above))
    assert _act(env, CANONICAL[move])[1:] == (10.0, True)
    env = _env_at(m)
    assert _act(env, CANONICAL[move]) == (above, 0.0, False)  # unedited: the cheese is elsewhere
    # a wall removed below the start: procgen walks through it; with the wall it stays put
    below = (r + 1, c)
    assert not m.is_open(below)
    assert _act(_env_at(m), CANONICAL["DOWN"])[0] == m.mouse
    assert _act(_env_at(m.open_cell(below)), CANONICAL["DOWN"])[0] == below
    # the mouse moved: procgen continues from there
    far = m.top_right
    env = _env_at(m.with_mouse(far))
    assert pb.ProcgenMaze.from_state(_state(env)).mouse == far
    assert _act(env, CANONICAL["UP"])[0] == far  # the maze's top row: a wall above


@needs_procgen
def test_procgen_dynamics_match_avec_step():
    """The same actions from the same maze move the mouse the same way in procgen and in
    ``avec.maze.env.step`` (all 15 actions, walls, the edge of the maze, the cheese)."""
    rng = np.random.default_rng(1)
    for m in pb.levels([2, 3, 9, 10]):
        env = _env_at(m)
        ours = m
        for a in rng.integers(0, 15, 150):
            ours, reward, done = step(ours, int(a))
            mouse, rew, first = _act(env, int(a))
            assert rew == reward and first == done
            if done:
                break
            assert mouse == ours.mouse


# ------------------------------------------------------------------------------------- rollouts
class _Scripted:
    """A stand-in policy playing a fixed move sequence (greedy picks it)."""

    def __init__(self, moves):
        self.moves, self.t = list(moves), 0

    def __call__(self, obs):
        logits = torch.zeros(len(obs), 15)
        logits[:, CANONICAL[self.moves[min(self.t, len(self.moves) - 1)]]] = 10.0
        self.t += 1
        return type("Out", (), {"logits": logits})()


@needs_procgen
def test_rollout_in_procgen_follows_the_policy():
    from avec.maze.evaluate import direction_index

    m = pb.ProcgenMaze.from_seed(5)
    path = m.shortest_path(m.start, m.cheese)
    names = ("LEFT", "DOWN", "UP", "RIGHT")
    moves = [names[direction_index(a, b)] for a, b in zip(path, path[1:])]
    reached, steps, visited = pb.rollout(_Scripted(moves), [m], greedy=True, record=True)
    assert reached.tolist() == [True] and steps.tolist() == [len(moves)]
    assert [(r, c) for _, r, c in visited] == path[:-1]
    # stopping one move short does not reach it
    reached, steps, _ = pb.rollout(_Scripted(moves), [m], max_steps=len(moves) - 1, greedy=True)
    assert reached.tolist() == [False] and steps.tolist() == [len(moves) - 1]


@needs_procgen
def test_sampled_rollouts_are_legal_walks(tiny_policy):
    mazes = pb.random_levels(6, seed_base=40)
    mazes[0] = mazes[0].with_cheese(mazes[0].neighbours(mazes[0].mouse)[0])  # one easy to reach by chance
    reached, steps, visited = pb.rollout(tiny_policy, mazes, max_steps=30, rng=np.random.default_rng(0),
                                         record=True, num_envs=4)  # two chunks
    for i, m in enumerate(mazes):
        walk = [(r, c) for j, r, c in visited if j == i]
        assert len(walk) == steps[i] and walk[0] == m.mouse
        for a, b in zip(walk, walk[1:]):
            assert a == b or b in m.neighbours(a)
        assert reached[i] == (m.cheese in m.neighbours(walk[-1])) or not reached[i]
        assert reached[i] or steps[i] == 30


@needs_procgen
def test_procgen_tools_checkpoint_runs_on_procgen_observations(tmp_path):
    """A checkpoint in Langosco et al.'s / procgen-tools' format: their parameter names (written out
    here, not taken from ImpalaPolicy), randomly initialised at the original agents' width (scale 4),
    saved as ``torch.save({"model_state_dict": ..., "optimizer_state_dict": ...})``. Loaded by
    ``load_policy`` and run on procgen's observations: its logits equal a functional forward pass
    written from their architecture, and it acts in procgen's env."""
    import torch.nn.functional as F

    from avec.maze.policy import load_policy

    g = torch.Generator().manual_seed(0)
    s = 4
    shapes = {}
    for b, (cin, cout) in enumerate(((3, 16 * s), (16 * s, 32 * s), (32 * s, 32 * s)), 1):
        shapes[f"embedder.block{b}.conv"] = (cout, cin, 3, 3)
        for r in (1, 2):
            for k in (1, 2):
                shapes[f"embedder.block{b}.res{r}.conv{k}"] = (cout, cout, 3, 3)
    shapes.update({"embedder.fc": (256, 32 * s * 8 * 8), "fc_policy": (15, 256), "fc_value": (1, 256)})
    state = {}
    for name, shape in shapes.items():
        fan_in = int(np.prod(shape[1:]))
        state[name + ".weight"] = torch.randn(shape, generator=g) / fan_in ** 0.5
        state[name + ".bias"] = torch.randn(shape[0], generator=g) * 0.1
    adam = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2)}},
            "param_groups": [{"lr": 5e-4, "betas": (0.9, 0.999), "eps": 1e-5, "params": [0]}]}
    path = tmp_path / "model_rand_region_5.pth"
    torch.save({"model_state_dict": state, "optimizer_state_dict": adam}, path)

    def reference(x):
        for b in (1, 2, 3):
            p = f"embedder.block{b}."
            x = F.max_pool2d(F.conv2d(x, state[p + "conv.weight"], state[p + "conv.bias"], padding=1), 3, 2, 1)
            for r in (1, 2):
                q = f"{p}res{r}."
                h = F.conv2d(F.relu(x), state[q + "conv1.weight"], state[q + "conv1.bias"], padding=1)
                x = x + F.conv2d(F.relu(h), state[q + "conv2.weight"], state[q + "conv2.bias"], padding=1)
        h = F.relu(F.linear(torch.flatten(F.relu(x), 1), state["embedder.fc.weight"], state["embedder.fc.bias"]))
        return F.linear(h, state["fc_policy.weight"], state["fc_policy.bias"])

    policy = load_policy(path)
    assert policy.scale == 4
    mazes = pb.levels([0, 1, 2])
    x = pb.obs_tensor(mazes)
    assert x.shape == (3, 3, 64, 64) and 0 <= x.min() and x.max() <= 1
    with torch.no_grad():
        torch.testing.assert_close(policy(x).logits, reference(x), rtol=1e-4, atol=1e-4)
    reached, steps, visited = pb.rollout(policy, mazes, max_steps=5, rng=np.random.default_rng(0), record=True)
    assert steps.tolist() == [5, 5, 5] or reached.any()
    assert len(visited) == steps.sum()


# ------------------------------------------------------------------------------------ bad input
@needs_procgen
def test_bad_procgen_input_is_a_clear_error():
    m = pb.ProcgenMaze.from_seed(0)
    for bad in (-1, 2**31, "3", 1.5, True):
        with pytest.raises(ValueError, match="level seed must be an int in 0.."):
            pb.ProcgenMaze.from_seed(bad)
    with pytest.raises(ValueError, match="size= and region= are for the pure-Python"):
        pb.ProcgenMaze.from_seed(0, size=5)
    with pytest.raises(TypeError, match="needs ProcgenMazes"):
        pb.observe(Maze.from_seed(0))
    with pytest.raises(ValueError, match="needs its level's procgen state bytes"):
        pb.ProcgenMaze(m.grid, m.size, m.mouse, m.cheese)
    with pytest.raises(ValueError, match="max_steps must be a positive int"):
        pb.rollout(_Scripted(["UP"]), [m], max_steps=0)
    for bad in ([True, False], 1, "yes"):  # a mask for two mazes given one; not a bool
        with pytest.raises(ValueError, match=r"greedy must be one bool or a bool per maze \(1 mazes\)"):
            pb.rollout(_Scripted(["UP"]), [m], greedy=bad)
    with pytest.raises(ValueError, match="is a wall"):
        m.state_bytes(mouse=(0, 0))


@needs_procgen
def test_bad_state_bytes_are_refused_before_procgen_sees_them():
    """procgen exit()s the process on a state it cannot read; parse() refuses such bytes first."""
    from avec.maze.procgen_state import StateError

    good = pb.ProcgenMaze.from_seed(0).level_state
    with pytest.raises(TypeError, match="a procgen state is bytes"):
        parse("maze")
    with pytest.raises(StateError, match="truncated"):
        parse(good[:-9])
    with pytest.raises(StateError, match="truncated"):
        parse(good[:100])
    with pytest.raises(StateError, match="no end marker"):
        parse(good + b"\0\0\0\0")
    renamed = bytearray(good)
    renamed[8:12] = b"maxe"  # the game name after its length
    with pytest.raises(StateError, match="expected 'maze'"):
        parse(bytes(renamed))
    with pytest.raises(StateError, match="no end marker|corrupt"):
        pb.render_states([good[:-4] + struct.pack("<i", 7)])
    st = parse(good)
    two = bytearray(good)
    struct.pack_into("<i", two, st.offsets["grid"] + 4 * (st.grid.shape[1] * 6 + 8), 2)  # a second cheese
    with pytest.raises(StateError, match="2 cheeses"):
        pb.ProcgenMaze.from_state(bytes(two))
    key = bytearray(good)
    struct.pack_into("<i", key, st.offsets["grid"] + 4 * (st.grid.shape[1] * 6 + 6), 300)  # a heist key
    with pytest.raises(StateError, match="object ids \\[300\\]"):
        pb.ProcgenMaze.from_state(bytes(key))


def test_missing_procgen_is_an_import_error_with_the_install_command(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "procgen", None)  # import procgen now fails, as when not installed
    monkeypatch.setattr(pb, "_envs", {})
    assert not pb.available()
    with pytest.raises(ImportError, match="make setup.*--no-deps procgen2==0.10.7"):
        pb.ProcgenMaze.from_seed(0)
    # the pure-Python world needs nothing of it
    from avec.maze.render import render

    assert render(Maze.from_seed(0)).shape == (64, 64, 3)


# ------------------------------------------------------------------------------- experiments on procgen
@needs_procgen
def test_experiments_run_on_procgen_observations(tiny_policy):
    """The cheese vector, vector fields, decision-square statistics and rollouts take ProcgenMazes and
    then see procgen's pictures (checked against observations rendered directly by procgen)."""
    from avec.maze import experiments as ex
    from avec.maze.evaluate import rollout
    from avec.maze.fields import as_model, policy_probs, vector_field

    mazes = pb.random_levels(3, seed_base=0, keep=lambda m: m.decision_square() is not None)
    m = mazes[0]
    hook = ex.DEFAULT_HOOK
    model = as_model(tiny_policy)
    start = m.with_mouse(m.start)
    with torch.no_grad():
        acts = model.run(pb.obs_tensor([start, start.without_cheese()]), cache=[hook]).cache[hook]
    v = ex.cheese_vector(tiny_policy, m)
    torch.testing.assert_close(v.tensor, acts[0] - acts[1])
    plain = Maze(m.grid, m.size, m.mouse, m.cheese)  # the same world drawn by avec's renderer
    assert not torch.allclose(ex.cheese_vector(tiny_policy, plain).tensor, v.tensor, atol=1e-4)

    field = vector_field(tiny_policy, m, steer=-1 * v)
    for cell in (tuple(field.cells[0]), tuple(field.cells[len(field.cells) // 2])):
        want = policy_probs(tiny_policy, pb.obs_tensor(m.with_mouse(cell)), steer=-1 * v)[0].numpy()
        np.testing.assert_allclose(list(field.at(cell).values()), want, atol=1e-6)
    steered = ex.decision_probs(tiny_policy, [m], -1 * v)
    assert steered.p_cheese[0] == pytest.approx(field.decision()["p_cheese"], abs=1e-6)

    st = ex.cheese_vector_stats(tiny_policy, mazes=mazes)
    assert list(st.seeds) == [x.seed for x in mazes] and st.summary()["mazes"] == 3
    reached, steps, _ = rollout(tiny_policy, mazes, max_steps=6, rng=np.random.default_rng(2))
    want = pb.rollout(tiny_policy, mazes, max_steps=6, rng=np.random.default_rng(2))
    assert reached.tolist() == want[0].tolist() and steps.tolist() == want[1].tolist()
    with pytest.raises(TypeError, match="mix ProcgenMazes and pure-Python Mazes"):
        ex.cheese_vector(tiny_policy, [m, plain])


@needs_procgen
def test_off_region_levels_are_the_first_qualifying_seeds():
    from avec.maze.evaluate import is_off_region

    got = pb.off_region_levels(5, 6, seed_base=300)
    every = pb.levels(range(300, got[-1].seed + 1))
    assert [m.seed for m in got] == [m.seed for m in every if is_off_region(m, 5)]
    assert all(m.decision_square() is not None for m in got)
