"""Procgen-style maze world: generation, editing, shortest paths.

Coordinate convention (used everywhere in ``avec.maze``):

* A position is ``(row, col)`` in the 25 x 25 *world* grid.
* Row 0 is the **top** row of the rendered picture, column 0 the **left** column.
  So "up" is ``row - 1`` and "right" is ``col + 1``. (procgen-tools indexes from the
  bottom-left; we do not, and :func:`avec.maze.render` is tested against this convention.)
* ``Maze.grid[row, col]`` is ``True`` for an open (walkable) cell, ``False`` for a wall.

A maze of odd size n (3..25) sits centred in the world, from ``(pad, pad)`` to
``(pad + n - 1, pad + n - 1)`` with ``pad = (25 - n) // 2``; everything outside it is wall.
Inside, with maze-relative coordinates (i, j): both even -> open, both odd -> wall,
mixed parity -> a passage chosen by randomized Kruskal (a perfect maze: a spanning tree).

A ``Maze`` is immutable: every edit returns a new ``Maze``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

WORLD = 25
SIZES = tuple(range(3, WORLD + 1, 2))  # allowed maze sizes: 3, 5, ..., 25
# (d_row, d_col) for the four moves; "up" is towards row 0 = top of the picture.
MOVES = {"LEFT": (0, -1), "DOWN": (1, 0), "UP": (-1, 0), "RIGHT": (0, 1)}

Pos = tuple[int, int]
_P = WORLD + 2  # side of the wall-padded grid used by the BFS
_FLAT_STEPS = tuple(dr * _P + dc for dr, dc in MOVES.values())  # the moves as flat-index offsets


def _check_size(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"maze size must be an int, got {type(n).__name__}")
    n = int(n)
    if n % 2 == 0 or not 3 <= n <= WORLD:
        raise ValueError(f"maze size must be odd and in 3..{WORLD} (one of {list(SIZES)}), got {n}")
    return n


def _check_pos(pos, what: str = "position") -> Pos:
    try:
        r, c = (int(v) for v in pos)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a (row, col) pair of ints, got {pos!r}") from None
    if not (0 <= r < WORLD and 0 <= c < WORLD):
        raise ValueError(
            f"{what} {(r, c)} is outside the {WORLD}x{WORLD} world; rows and columns are 0..{WORLD - 1}"
        )
    return (r, c)


def kruskal_grid(n: int, rng: np.random.Generator) -> np.ndarray:
    """A perfect maze by randomized Kruskal. Returns bool ``[n, n]`` (True = open)."""
    n = _check_size(n)
    k = (n + 1) // 2  # nodes per side, at even maze coordinates
    grid = np.zeros((n, n), dtype=bool)
    grid[::2, ::2] = True
    parent = list(range(k * k))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    edges = [(i * k + j, i * k + j + 1) for i in range(k) for j in range(k - 1)]
    edges += [(i * k + j, (i + 1) * k + j) for i in range(k - 1) for j in range(k)]
    for e in rng.permutation(len(edges)):
        a, b = edges[e]
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[ra] = rb
            (ia, ja), (ib, jb) = divmod(a, k), divmod(b, k)
            grid[ia + ib, ja + jb] = True  # open the wall between the two nodes
    return grid


def top_right_region(n: int, region: int) -> tuple[slice, slice]:
    """World slices of the maze's top-right ``region x region`` square (clipped to the maze)."""
    n = _check_size(n)
    if isinstance(region, bool) or not isinstance(region, (int, np.integer)) or region < 1:
        raise ValueError(f"region must be a positive int (R of the top-right R x R square), got {region!r}")
    pad = (WORLD - n) // 2
    r = min(int(region), n)
    return slice(pad, pad + r), slice(pad + n - r, pad + n)


@dataclass(frozen=True, eq=False)
class Maze:
    """An immutable maze world state.

    grid:   bool ``[25, 25]``, True = open. Read-only.
    size:   the maze's side n (odd, 3..25).
    mouse:  ``(row, col)`` of the mouse.
    cheese: ``(row, col)`` of the cheese, or None when removed.
    seed, region: how it was generated (informational; None for hand-edited or uniform).
    """

    grid: np.ndarray
    size: int
    mouse: Pos
    cheese: Pos | None
    seed: int | None = None
    region: int | None = None
    _dist_cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        g = np.array(self.grid, dtype=bool, copy=True)
        if g.shape != (WORLD, WORLD):
            raise ValueError(f"grid must have shape ({WORLD}, {WORLD}), got {g.shape}")
        g.setflags(write=False)
        object.__setattr__(self, "grid", g)
        object.__setattr__(self, "size", _check_size(self.size))
        object.__setattr__(self, "mouse", self._check_open(self.mouse, "mouse"))
        if self.cheese is not None:
            object.__setattr__(self, "cheese", self._check_open(self.cheese, "cheese"))

    def __eq__(self, other) -> bool:
        """Equal world states: same grid, size, mouse and cheese (seed/region are informational)."""
        if not isinstance(other, Maze):
            return NotImplemented
        return (self.size, self.mouse, self.cheese) == (other.size, other.mouse, other.cheese) and bool(
            np.array_equal(self.grid, other.grid))

    def __hash__(self) -> int:
        return hash((self.grid.tobytes(), self.size, self.mouse, self.cheese))

    def _check_open(self, pos, what: str) -> Pos:
        pos = _check_pos(pos, what)
        if not self.grid[pos]:
            raise ValueError(f"{what} cannot be placed at {pos}: that cell is a wall (place it on an open cell)")
        return pos

    # ---------------------------------------------------------------- generation
    @classmethod
    def from_seed(cls, seed: int, size: int | None = None, region: int | None = None) -> Maze:
        """Generate a maze deterministically from an integer seed.

        size: odd maze side in 3..25; None draws it uniformly from {3, 5, ..., 25}.
        region: None puts the cheese uniformly on an open cell other than the start;
            R puts it uniformly on the open cells of the maze's top-right R x R square
            (the training variant; the start is excluded when the square covers it).
        """
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        rng = np.random.default_rng(int(seed))
        n = int(rng.choice(SIZES)) if size is None else _check_size(size)
        pad = (WORLD - n) // 2
        grid = np.zeros((WORLD, WORLD), dtype=bool)
        grid[pad : pad + n, pad : pad + n] = kruskal_grid(n, rng)
        start = (pad + n - 1, pad)
        allowed = np.zeros_like(grid)
        if region is None:
            allowed[pad : pad + n, pad : pad + n] = True
        else:
            rows, cols = top_right_region(n, region)
            allowed[rows, cols] = True
        allowed &= grid
        allowed[start] = False
        cells = np.argwhere(allowed)
        cheese = tuple(int(v) for v in cells[rng.integers(len(cells))])
        return cls(grid, n, start, cheese, seed=int(seed), region=region)

    # ---------------------------------------------------------------- geometry
    @property
    def pad(self) -> int:
        """Offset of the maze's top-left cell in the world."""
        return (WORLD - self.size) // 2

    @property
    def start(self) -> Pos:
        """The maze's bottom-left cell (where the mouse starts)."""
        return (self.pad + self.size - 1, self.pad)

    @property
    def top_right(self) -> Pos:
        """The maze's top-right cell."""
        return (self.pad, self.pad + self.size - 1)

    def in_maze(self, pos) -> bool:
        r, c = _check_pos(pos)
        p, n = self.pad, self.size
        return p <= r < p + n and p <= c < p + n

    def is_open(self, pos) -> bool:
        return bool(self.grid[_check_pos(pos)])

    def open_cells(self) -> np.ndarray:
        """All open cells, int ``[k, 2]`` of (row, col), row-major order."""
        return np.argwhere(self.grid)

    def neighbours(self, pos) -> list[Pos]:
        r, c = _check_pos(pos)
        out = []
        for dr, dc in MOVES.values():
            q = (r + dr, c + dc)
            if 0 <= q[0] < WORLD and 0 <= q[1] < WORLD and self.grid[q]:
                out.append(q)
        return out

    # ---------------------------------------------------------------- editing
    def with_cheese(self, pos) -> Maze:
        """Move the cheese to an open cell."""
        return replace(self, cheese=self._check_open(pos, "cheese"), _dist_cache={})

    def without_cheese(self) -> Maze:
        return replace(self, cheese=None, _dist_cache={})

    def with_mouse(self, pos) -> Maze:
        """Move the mouse to an open cell."""
        return replace(self, mouse=self._check_open(pos, "mouse"), _dist_cache={})

    def with_cell(self, pos, open: bool) -> Maze:
        """Open or close one world cell. Closing the mouse's or the cheese's cell is an error."""
        pos = _check_pos(pos, "cell")
        if not open and pos in (self.mouse, self.cheese):
            what = "mouse" if pos == self.mouse else "cheese"
            raise ValueError(f"cannot close cell {pos}: the {what} is there (move it first)")
        g = self.grid.copy()
        g[pos] = bool(open)
        return replace(self, grid=g, _dist_cache={})

    def open_cell(self, pos) -> Maze:
        return self.with_cell(pos, True)

    def close_cell(self, pos) -> Maze:
        return self.with_cell(pos, False)

    def with_top_right_path(self) -> Maze:
        """The top-right path modification: open an L-shaped corridor from the maze's top-right
        cell up to the world's top row, then right to the world's top-right cell (0, 24).
        A 25 x 25 maze is returned unchanged (its top-right cell already is (0, 24))."""
        r0, c0 = self.top_right
        g = self.grid.copy()
        g[0 : r0 + 1, c0] = True
        g[0, c0:] = True
        return replace(self, grid=g, _dist_cache={})

    def mirrored(self, left_right: bool = True, up_down: bool = False) -> Maze:
        """The world mirrored left-right and/or up-down: walls, mouse and cheese (a maze stays centred, so
        its corners swap: mirrored left-right, a top-right cheese is in the top-left). ``seed`` and
        ``region`` still say how the unmirrored maze was made."""
        g = self.grid[slice(None, None, -1 if up_down else 1), slice(None, None, -1 if left_right else 1)]

        def flip(pos):
            return None if pos is None else (WORLD - 1 - pos[0] if up_down else pos[0],
                                             WORLD - 1 - pos[1] if left_right else pos[1])

        return replace(self, grid=g, mouse=flip(self.mouse), cheese=flip(self.cheese), _dist_cache={})

    # ---------------------------------------------------------------- paths
    def distances(self, source) -> np.ndarray:
        """BFS distances (in moves) from ``source`` to every cell, int ``[25, 25]``; -1 = unreachable."""
        source = self._check_open(source, "source")
        if source in self._dist_cache:
            return self._dist_cache[source]
        # level-by-level BFS over Python lists on a wall-padded grid: no bounds checks and no numpy
        # scalar indexing in the inner loop (3-4x faster; the trainer calls this for every fresh maze)
        free = np.pad(self.grid, 1).ravel().tolist()
        dist_flat = [-1] * (_P * _P)
        start = (source[0] + 1) * _P + source[1] + 1
        dist_flat[start] = 0
        frontier, d = [start], 0
        while frontier:
            d += 1
            nxt = []
            for i in frontier:
                for step in _FLAT_STEPS:
                    j = i + step
                    if free[j] and dist_flat[j] < 0:
                        dist_flat[j] = d
                        nxt.append(j)
            frontier = nxt
        dist = np.array(dist_flat, dtype=np.int32).reshape(_P, _P)[1:-1, 1:-1].copy()
        dist.setflags(write=False)
        self._dist_cache[source] = dist
        return dist

    def shortest_path(self, a, b) -> list[Pos]:
        """Shortest path from a to b inclusive (unique in a perfect maze). Error if unreachable."""
        a = self._check_open(a, "path start")
        b = self._check_open(b, "path end")
        dist = self.distances(b)
        if dist[a] < 0:
            raise ValueError(f"no path from {a} to {b}")
        path = [a]
        while path[-1] != b:
            r, c = path[-1]
            # step to the neighbour one move closer to b; fixed LEFT/DOWN/UP/RIGHT tie-break
            for q in self.neighbours((r, c)):
                if dist[q] == dist[r, c] - 1:
                    path.append(q)
                    break
        return path

    def decision_square(self) -> Pos | None:
        """Last common cell of the shortest paths from the start to the cheese and from the start
        to the maze's top-right cell; None when there is no cheese or no real choice (one path
        contains the other's target)."""
        if self.cheese is None:
            return None
        to_cheese = self.shortest_path(self.start, self.cheese)
        to_corner = self.shortest_path(self.start, self.top_right)
        k = 0
        while k < min(len(to_cheese), len(to_corner)) and to_cheese[k] == to_corner[k]:
            k += 1
        if k == len(to_cheese) or k == len(to_corner):
            return None
        return to_cheese[k - 1]

    def __repr__(self) -> str:
        return (
            f"Maze(size={self.size}, mouse={self.mouse}, cheese={self.cheese}, "
            f"seed={self.seed}, region={self.region})"
        )

    def to_dict(self) -> dict:
        """JSON data: ``grid`` ``[25][25]`` of bools (True = open), size, pad, mouse, cheese, seed, region."""
        return {"type": "Maze", "grid": self.grid.tolist(), "size": self.size, "pad": self.pad,
                "mouse": list(self.mouse), "cheese": None if self.cheese is None else list(self.cheese),
                "seed": self.seed, "region": self.region}

    @classmethod
    def from_dict(cls, d: dict) -> "Maze":
        """The maze back from ``to_dict()`` (its JSON form)."""
        return cls(np.array(d["grid"], dtype=bool), int(d["size"]), tuple(d["mouse"]),
                   None if d.get("cheese") is None else tuple(d["cheese"]), d.get("seed"), d.get("region"))

    def to_text(self) -> str:
        """ASCII picture, row 0 on top: '#' wall, '.' open, 'M' mouse, 'C' cheese."""
        rows = []
        for r in range(WORLD):
            line = []
            for c in range(WORLD):
                ch = "." if self.grid[r, c] else "#"
                if (r, c) == self.cheese:
                    ch = "C"
                if (r, c) == self.mouse:
                    ch = "M"
                line.append(ch)
            rows.append("".join(line))
        return "\n".join(rows)
