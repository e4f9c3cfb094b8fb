import numpy as np
import pytest
import torch

from avec.maze.env import (
    ACTION_GROUPS,
    ACTION_NAMES,
    CANONICAL,
    MAX_STEPS,
    MazeEnv,
    action_name,
    expert_move,
    five_way,
    move,
    step,
)
from avec.maze.render import (
    CHEESE,
    FLOOR,
    WALL,
    cell_pixels,
    human_view,
    obs_tensor,
    render,
    renderer,
    to_tensor,
)
from avec.maze.world import WORLD, Maze


def _mean(img, pos, size=64):
    rs, cs = cell_pixels(pos, size)
    return img[rs, cs].reshape(-1, 3).mean(0)


def test_observation_shape_and_dtype():
    obs = render(Maze.from_seed(0))
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    x = obs_tensor([Maze.from_seed(0), Maze.from_seed(1)])
    assert x.shape == (2, 3, 64, 64) and x.dtype == torch.float32
    assert torch.allclose(x[0], torch.from_numpy(obs).permute(2, 0, 1).float() / 255)


def test_render_orientation_row0_is_top():
    # a 25x25 maze: its outer ring is open; the world border row 0 is the maze's top row
    m = Maze.from_seed(0, size=25)
    img = render(m, 250)  # 10 px per cell: every cell has pure pixels
    for pos in [(0, 0), (0, 24), (24, 0), (24, 24), (1, 1), (3, 3)]:
        expect = FLOOR if m.grid[pos] else WALL
        if pos in (m.mouse, m.cheese):
            continue
        assert np.abs(_mean(img, pos, 250) - expect).max() < 1.0, pos
    # the mouse starts bottom-left: its pixels are in the bottom-left of the picture
    r, c = m.mouse
    assert (r, c) == (24, 0)
    bl = img[-10:, :10].astype(float)
    assert np.abs(bl - FLOOR).sum(-1).max() > 60  # sprite present
    # moving the cheese to the top-right cell changes only top-right pixels
    a = render(m.without_cheese(), 250).astype(int)
    b = render(m.with_cheese((0, 24)), 250).astype(int)
    ys, xs = np.nonzero(np.abs(a - b).sum(-1))
    assert ys.max() < 10 and xs.min() >= 240
    assert np.abs(b[ys, xs] - CHEESE).sum(-1).min() < 30


def test_small_maze_is_centred_and_walled():
    m = Maze.from_seed(4, size=3)
    img = render(m, 250)
    assert np.abs(_mean(img, (0, 0), 250) - WALL).max() < 1
    assert np.abs(_mean(img, (11, 13), 250) - FLOOR).max() < 1  # maze top-right cell


def test_backgrounds_are_area_averaged_cell_colours():
    # the definition: each pixel averages the flat colours of the cells it overlaps (W @ colours @ W.T)
    r = renderer()
    mazes = [Maze.from_seed(s, size=n) for s, n in ((1, 25), (2, 3), (3, 11))]
    pics = r.backgrounds(np.stack([m.grid for m in mazes]))
    for m, pic in zip(mazes, pics):
        colours = np.where(m.grid[..., None], FLOOR, WALL)
        ref = np.einsum("yr,xc,rck->yxk", r.W, r.W, colours)
        assert np.abs(pic - ref).max() < 1e-9
        assert np.array_equal(r.background(m.grid), pic)


def test_batched_mouse_render_equals_single_renders():
    m = Maze.from_seed(9)
    cells = m.open_cells()
    batch = renderer().render_mice(m, cells)
    for k in range(0, len(cells), 7):
        assert np.array_equal(batch[k], render(m.with_mouse(tuple(cells[k]))))


def test_distinct_entities_and_human_view():
    m = Maze.from_seed(3)
    big = human_view(m)
    assert big.shape == (512, 512, 3)
    no_mouse = renderer(512, 2).render(m, mouse=False)
    assert (big != no_mouse).any()
    assert not np.array_equal(render(m), render(m.without_cheese()))


def test_to_tensor_rejects_bad_shape():
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        to_tensor(np.zeros((2, 3, 64, 64), np.uint8))


def test_action_mapping_matches_procgen_tools():
    assert ACTION_GROUPS == {"LEFT": (0, 1, 2), "DOWN": (3,), "UP": (5,), "RIGHT": (6, 7, 8),
                             "NOOP": (4, 9, 10, 11, 12, 13, 14)}
    assert [action_name(a) for a in range(15)] == ["LEFT"] * 3 + ["DOWN", "NOOP", "UP"] + ["RIGHT"] * 3 + ["NOOP"] * 6
    p = torch.softmax(torch.randn(4, 15), 1)
    p5 = five_way(p)
    assert torch.allclose(p5.sum(1), torch.ones(4))
    assert torch.allclose(p5[:, 0], p[:, :3].sum(1)) and torch.allclose(p5[:, 3], p[:, 6:9].sum(1))
    with pytest.raises(ValueError):
        action_name(15)


def test_moves_and_walls():
    m = Maze.from_seed(0, size=25)  # start (24, 0); (23, 0) and (24, 1) exist
    s = m.start
    for name, a in CANONICAL.items():
        q = move(m, s, a)
        dr, dc = {"LEFT": (0, -1), "DOWN": (1, 0), "UP": (-1, 0), "RIGHT": (0, 1), "NOOP": (0, 0)}[name]
        t = (s[0] + dr, s[1] + dc)
        inside = 0 <= t[0] < WORLD and 0 <= t[1] < WORLD
        assert q == (t if inside and m.grid[t] else s)
    # UP really decreases the row = moves up in the picture
    open_up = next(tuple(c) for c in m.open_cells() if c[0] > 0 and m.grid[c[0] - 1, c[1]])
    assert move(m, open_up, 5) == (open_up[0] - 1, open_up[1])
    assert move(m, open_up, 8) == move(m, open_up, 7)  # RIGHT-UP acts as RIGHT


def test_expert_reaches_cheese_and_reward():
    for seed in range(10):
        m = Maze.from_seed(seed)
        total, t = 0.0, 0
        while True:
            m, r, done = step(m, CANONICAL[expert_move(m)])
            total += r
            t += 1
            if done:
                break
        assert total == 10.0 and t == Maze.from_seed(seed).distances(m.cheese)[Maze.from_seed(seed).start]


def test_env_api_and_timeout():
    env = MazeEnv(size=7, region=5)
    obs, info = env.reset(seed=3)
    assert obs.shape == (64, 64, 3) and info["maze"].size == 7
    obs2, _ = MazeEnv(size=7, region=5).reset(seed=3)
    assert np.array_equal(obs, obs2)
    for t in range(MAX_STEPS):
        obs, r, term, trunc, info = env.step(4)  # NOOP forever
        assert r == 0 and not term
        assert trunc == (t == MAX_STEPS - 1)
    m = info["maze"]
    obs, info = env.reset(options={"maze": m.with_mouse(m.neighbours(m.cheese)[0])})
    mv = [a for a in ACTION_NAMES[:4] if expert_move(info["maze"]) == a][0]
    _, r, term, trunc, _ = env.step(CANONICAL[mv])
    assert r == 10.0 and term and not trunc
    with pytest.raises(RuntimeError):
        MazeEnv().step(0)


def test_batch_obs_equals_single_renders():
    """The vectorised training/rollout renderer draws exactly what render() draws."""
    from avec.maze.evaluate import Batch

    mazes = [Maze.from_seed(s) for s in range(6)]
    rng = np.random.default_rng(0)
    idx, pos = [], []
    for _ in range(40):
        i = int(rng.integers(len(mazes)))
        cells = mazes[i].open_cells()
        cells = cells[(cells != np.array(mazes[i].cheese)).any(1)]
        idx.append(i)
        pos.append(tuple(cells[rng.integers(len(cells))]))
    # every corner of the world too (patch clipping at the image edge)
    for corner in ((0, 0), (0, WORLD - 1), (WORLD - 1, 0), (WORLD - 1, WORLD - 1)):
        mazes.append(Maze.from_seed(7, size=25).open_cell(corner).with_cheese((12, 12)))
        idx.append(len(mazes) - 1)
        pos.append(corner)
    got = Batch(mazes).obs(idx, pos)
    want = obs_tensor([mazes[i].with_mouse(p) for i, p in zip(idx, pos)])
    assert got.shape == want.shape and torch.equal(got, want)


def test_gymnasium_env_checker():
    gym = pytest.importorskip("gymnasium")
    from gymnasium.utils.env_checker import check_env

    env = MazeEnv(region=5)
    assert isinstance(env, gym.Env)
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=3)
    assert env.observation_space.contains(obs)
    obs2, *_ = env.step(env.action_space.sample())
    assert env.observation_space.contains(obs2)
