import numpy as np
import pytest
import torch

from avec.core import AddVector, Model
from avec.maze.env import ACTION_NAMES, five_way
from avec.maze.evaluate import decision_targets
from avec.maze.fields import FieldDiff, VectorField, field_obs, policy_probs, vector_field
from avec.maze.render import obs_tensor
from avec.maze.world import Maze

HOOK = "embedder.block2.res1.resadd_out"


@pytest.fixture(scope="module")
def maze():
    return Maze.from_seed(0, size=13)


def test_field_covers_open_cells_except_cheese(tiny_policy, maze):
    f = vector_field(tiny_policy, maze)
    assert len(f.cells) == maze.grid.sum() - 1
    assert not (f.cells == np.array(maze.cheese)).all(1).any()
    assert f.probs.shape == (len(f.cells), 5)
    assert np.allclose(f.probs.sum(1), 1.0)


def test_batched_field_equals_per_state_forwards(tiny_policy, maze):
    f = vector_field(tiny_policy, maze)
    for k in range(0, len(f.cells), 9):
        x = obs_tensor(maze.with_mouse(tuple(f.cells[k])))
        with torch.no_grad():
            p = five_way(torch.softmax(tiny_policy(x).logits.double(), 1))[0].numpy()
        assert np.allclose(p, f.probs[k], atol=1e-5)


def test_arrows_follow_probabilities(maze):
    cells = maze.open_cells()[:2]
    probs = np.array([[0, 0, 1.0, 0, 0], [0.5, 0, 0, 0.2, 0.3]])  # UP; LEFT-ish
    f = VectorField(maze, cells, probs)
    assert np.allclose(f.arrows, [[0, 1], [-0.3, 0]])
    df = f.to_frame()
    assert list(df.columns[:2]) == ["row", "col"] and np.allclose(df["dy"], [1, 0])


def test_zero_vector_changes_nothing(tiny_policy, maze):
    base = vector_field(tiny_policy, maze)
    steered = vector_field(tiny_policy, maze, steer=AddVector(HOOK, torch.zeros(32, 16, 16), coeff=5.0))
    assert np.array_equal(base.probs, steered.probs)


def test_steering_changes_downstream_only(tiny_policy, maze):
    m = Model(tiny_policy)
    _, obs = field_obs(maze)
    v = torch.randn(32, 16, 16)
    up = "embedder.block2.res1.conv2"  # upstream of the edit
    down = "embedder.block3.conv"
    r0 = m.run(obs, cache=[up, down])
    r1 = m.run(obs, cache=[up, down], interventions=[AddVector(HOOK, v)])
    assert torch.equal(r0.cache[up], r1.cache[up])
    assert not torch.allclose(r0.cache[down], r1.cache[down])
    f0, f1 = vector_field(tiny_policy, maze), vector_field(m, maze, steer=AddVector(HOOK, 50 * v))
    d = f1.diff(f0)
    assert isinstance(d, FieldDiff) and np.abs(d.probs).max() > 1e-4
    assert np.allclose(d.probs.sum(1), 0, atol=1e-9)


def test_decision_probabilities(tiny_policy):
    m = next(Maze.from_seed(s) for s in range(100) if Maze.from_seed(s).decision_square() is not None)
    f = vector_field(tiny_policy, m)
    dec = f.decision()
    d, ic, it = decision_targets(m)
    assert dec["decision_square"] == d and ic != it
    row = f.at(d)
    assert dec["p_cheese"] == pytest.approx(row[ACTION_NAMES[ic]])
    assert dec["p_cheese"] + dec["p_top_right"] + dec["p_other"] == pytest.approx(1.0)
    # the path directions are right: moving from d along ic leads closer to the cheese
    from avec.maze.world import MOVES
    dr, dc = MOVES[ACTION_NAMES[ic]]
    dist = m.distances(m.cheese)
    assert dist[d[0] + dr, d[1] + dc] == dist[d] - 1


def test_plots_and_html(tiny_policy, maze):
    from matplotlib.figure import Figure

    f = vector_field(tiny_policy, maze)
    g = vector_field(tiny_policy, maze.with_top_right_path().with_cheese(maze.cheese))
    assert isinstance(f.plot(), Figure)
    with pytest.raises(ValueError, match="different cells"):
        f.diff(g)
    fig = f.plot(compare_to=f)
    assert len(fig.axes) == 3
    assert "<img" in f._repr_html_() and "FieldDiff" in f.diff(f)._repr_html_()
    with pytest.raises(KeyError):
        f.at(maze.cheese)


def test_policy_probs_chunking_is_exact(tiny_policy, maze):
    _, obs = field_obs(maze)
    a = policy_probs(tiny_policy, obs, chunk=len(obs))
    b = policy_probs(tiny_policy, obs, chunk=7)
    assert torch.allclose(a, b, atol=1e-6)


def test_field_and_diff_to_dict(tiny_policy, maze):
    import json

    from avec.maze.experiments import cheese_vector

    base = vector_field(tiny_policy, maze)
    steered = vector_field(tiny_policy, maze, steer=-1 * cheese_vector(tiny_policy, maze), label="cheese x -1")
    d = json.loads(json.dumps(base.to_dict(), allow_nan=False))
    assert d["type"] == "VectorField" and d["label"] == "original" and d["actions"] == list(ACTION_NAMES)
    assert np.array_equal(np.array(d["cells"]), base.cells) and np.array_equal(np.array(d["probs"]), base.probs)
    assert np.allclose(np.array(d["arrows"]), base.to_frame()[["dx", "dy"]].to_numpy())
    m = d["maze"]
    assert np.array_equal(np.array(m["grid"]), maze.grid) and tuple(m["mouse"]) == maze.mouse
    assert tuple(m["cheese"]) == maze.cheese and m["size"] == maze.size and m["pad"] == maze.pad
    diff = json.loads(json.dumps(steered.diff(base).to_dict(), allow_nan=False))
    assert diff["type"] == "FieldDiff" and diff["a"]["label"] == "cheese x -1"
    assert np.allclose(np.array(diff["probs"]), steered.probs - base.probs)
    assert np.abs(np.array(diff["probs"])).max() > 0  # the vector moved something
