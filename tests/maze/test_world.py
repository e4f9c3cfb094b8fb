import numpy as np
import pytest

from avec.maze.world import SIZES, WORLD, Maze, kruskal_grid, top_right_region


def _check_invariants(m: Maze):
    g, n, p = m.grid, m.size, m.pad
    inner = g[p:p + n, p:p + n]
    # everything outside the maze is wall
    outside = g.copy()
    outside[p:p + n, p:p + n] = False
    assert not outside.any()
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    assert inner[(i % 2 == 0) & (j % 2 == 0)].all()  # both even: open
    assert not inner[(i % 2 == 1) & (j % 2 == 1)].any()  # both odd: wall
    # perfect maze: connected and a tree (open cells = nodes + nodes - 1 edges)
    k = (n + 1) // 2
    assert inner.sum() == k * k + (k * k - 1)
    d = m.distances(m.start)
    assert (d[g] >= 0).all()
    assert m.mouse == m.start == (p + n - 1, p)


@pytest.mark.parametrize("seed", range(150))
def test_generated_mazes_satisfy_invariants(seed):
    m = Maze.from_seed(seed)
    _check_invariants(m)
    assert m.cheese != m.start and m.grid[m.cheese] and m.in_maze(m.cheese)


def test_all_sizes_and_regions():
    for n in SIZES:
        for region in (None, 1, 5, 15):
            m = Maze.from_seed(n * 7, size=n, region=region)
            _check_invariants(m)
            if region is not None:
                rows, cols = top_right_region(n, region)
                assert rows.start <= m.cheese[0] < rows.stop and cols.start <= m.cheese[1] < cols.stop


def test_sizes_are_uniform_over_odd_3_to_25():
    sizes = {Maze.from_seed(s).size for s in range(400)}
    assert sizes == set(SIZES)


def test_region_one_puts_cheese_at_top_right():
    m = Maze.from_seed(3, size=9, region=1)
    assert m.cheese == m.top_right


def test_deterministic_from_seed():
    a, b = Maze.from_seed(42), Maze.from_seed(42)
    assert np.array_equal(a.grid, b.grid) and a.cheese == b.cheese and a.size == b.size
    c = Maze.from_seed(43)
    assert not (np.array_equal(a.grid, c.grid) and a.cheese == c.cheese)


@pytest.mark.parametrize("bad", [2, 4, 26, 1, 27, 0, -3])
def test_bad_sizes_raise(bad):
    with pytest.raises(ValueError, match="odd and in 3..25"):
        Maze.from_seed(0, size=bad)
    with pytest.raises(ValueError):
        kruskal_grid(bad, np.random.default_rng(0))


def test_bad_seed_and_region():
    with pytest.raises(ValueError):
        Maze.from_seed(-1)
    with pytest.raises(ValueError, match="region"):
        Maze.from_seed(0, region=0)


def test_grid_is_read_only_and_edits_return_new_mazes():
    m = Maze.from_seed(5)
    with pytest.raises(ValueError):
        m.grid[0, 0] = True
    cells = m.open_cells()
    target = tuple(cells[len(cells) // 2])
    m2 = m.with_cheese(target)
    assert m2.cheese == target and m.cheese == Maze.from_seed(5).cheese
    assert m.without_cheese().cheese is None and m.cheese is not None
    m3 = m.with_mouse(target)
    assert m3.mouse == target and m.mouse == m.start


def test_editing_errors_are_clear():
    m = Maze.from_seed(5, size=11)
    wall = tuple(np.argwhere(~m.grid)[0])
    with pytest.raises(ValueError, match="wall"):
        m.with_cheese(wall)
    with pytest.raises(ValueError, match="wall"):
        m.with_mouse(wall)
    with pytest.raises(ValueError, match="outside the 25x25 world"):
        m.with_cheese((25, 3))
    with pytest.raises(ValueError, match="outside the 25x25 world"):
        m.open_cell((-1, 0))
    with pytest.raises(TypeError):
        m.with_mouse("a")
    with pytest.raises(ValueError, match="mouse is there"):
        m.close_cell(m.mouse)
    with pytest.raises(ValueError, match="cheese is there"):
        m.close_cell(m.cheese)


def test_open_close_cell():
    m = Maze.from_seed(8, size=9)
    wall = (m.pad + 1, m.pad + 1)  # both odd: always wall
    assert not m.is_open(wall)
    m2 = m.open_cell(wall)
    assert m2.is_open(wall) and not m.is_open(wall)
    assert not m2.close_cell(wall).is_open(wall)
    assert (m2.grid != m.grid).sum() == 1


@pytest.mark.parametrize("seed", range(20))
def test_top_right_path(seed):
    m = Maze.from_seed(seed)
    mod = m.with_top_right_path()
    r0, c0 = m.top_right
    changed = np.argwhere(mod.grid != m.grid)
    # only opens cells; the corridor goes up column c0 to row 0, then right along row 0
    assert (mod.grid >= m.grid).all()
    for r, c in changed:
        assert (c == c0 and r <= r0) or (r == 0 and c >= c0)
    assert mod.grid[0, WORLD - 1] and mod.grid[0, c0]
    assert mod.distances(m.top_right)[0, WORLD - 1] == r0 + (WORLD - 1 - c0)
    if m.size == WORLD:
        assert len(changed) == 0
    else:
        assert len(changed) == r0 + (WORLD - 1 - c0)


@pytest.mark.parametrize("size, source", [(13, "start"), (25, "top_right"), (25, "cheese")])
def test_bfs_against_brute_force(size, source):
    # Bellman-Ford style relaxation as an independent reference; a 25 x 25 maze reaches the
    # world's edges, where the BFS's wall padding must stop it
    m = Maze.from_seed(11, size=size).open_cell((7, 7)).open_cell((9, 9))  # add loops
    src = getattr(m, source)
    ref = np.full((WORLD, WORLD), 10**9)
    ref[src] = 0
    for _ in range(WORLD * WORLD):
        new = ref.copy()
        for r, c in m.open_cells():
            for q in m.neighbours((r, c)):
                new[r, c] = min(new[r, c], ref[q] + 1)
        if np.array_equal(new, ref):
            break
        ref = new
    d = m.distances(src)
    assert np.array_equal(np.where(m.grid & (ref < 10**9), ref, -1), d)
    path = m.shortest_path(src, m.cheese)
    assert len(path) == d[m.cheese] + 1 and path[0] == src and path[-1] == m.cheese
    for a, b in zip(path, path[1:]):
        assert abs(a[0] - b[0]) + abs(a[1] - b[1]) == 1 and m.grid[b]


def test_decision_square():
    found = 0
    for seed in range(60):
        m = Maze.from_seed(seed)
        d = m.decision_square()
        a = m.shortest_path(m.start, m.cheese)
        b = m.shortest_path(m.start, m.top_right)
        if d is None:
            assert set(a) <= set(b) or set(b) <= set(a)
            continue
        found += 1
        k = a.index(d)
        assert a[:k + 1] == b[:k + 1] and a[k + 1] != b[k + 1]
    assert found > 20
    assert Maze.from_seed(0).without_cheese().decision_square() is None


def test_text_picture_orientation():
    m = Maze.from_seed(2, size=5)
    rows = m.to_text().splitlines()
    assert rows[m.mouse[0]][m.mouse[1]] == "M"
    assert rows[0] == "#" * WORLD


def test_maze_value_equality_and_hash():
    a, b = Maze.from_seed(5), Maze.from_seed(5)
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != a.with_mouse(a.cheese) and a != Maze.from_seed(6) and a != "maze"


@pytest.mark.parametrize("seed", [0, 5, 77])
def test_a_mirrored_maze_mirrors_walls_mouse_cheese_and_the_expert(seed):
    from avec.maze.env import expert_move

    m = Maze.from_seed(seed, region=5)
    swap = {"left_right": {"LEFT": "RIGHT", "RIGHT": "LEFT"}, "up_down": {"UP": "DOWN", "DOWN": "UP"}}
    for lr, ud in ((True, False), (False, True), (True, True)):
        mm = m.mirrored(left_right=lr, up_down=ud)

        def at(pos):
            return (WORLD - 1 - pos[0] if ud else pos[0], WORLD - 1 - pos[1] if lr else pos[1])

        assert mm.size == m.size and mm.mouse == at(m.mouse) and mm.cheese == at(m.cheese)
        assert all(mm.grid[at((r, c))] == m.grid[r, c] for r in range(WORLD) for c in range(WORLD))
        assert mm.mirrored(left_right=lr, up_down=ud) == m
        for r, c in m.open_cells()[:40]:
            if (r, c) == m.cheese:
                continue
            want = expert_move(m, (r, c))
            for flag, table in ((lr, swap["left_right"]), (ud, swap["up_down"])):
                want = table.get(want, want) if flag else want
            assert expert_move(mm, at((r, c))) == want
            assert mm.distances(mm.cheese)[at((r, c))] == m.distances(m.cheese)[r, c]
    assert m.without_cheese().mirrored().cheese is None
