"""procgen's maze state bytes (``env.callmethod("get_state")``): read, edit, write. Pure Python.

The layout is procgen 0.10.7's serialisation, written here from its C++ ``serialize`` methods:
``Game`` (options, level seeds, two random generators as text, step data, timers), then
``BasicAbstractGame`` (the entities, rendering fields, a third generator, the object grid), then
``MazeGame`` (``maze_dim``, ``world_dim``), then the marker ``END_OF_BUFFER``. Every number is a
native (little-endian) int32 or float32; a string is its int32 length and its bytes; a vector is
its int32 count and its items.

What the maze keeps where:

* the grid: ``w * h`` int32 object ids, ``data[y * w + x]``, **y = 0 at the bottom**: 51 = wall,
  100 = open floor, 2 = cheese (the cheese is a grid object, not an entity);
* the mouse: the entity of type 0 (PLAYER), centre ``(x, y)`` in cell units (``col + 0.5``,
  ``y + 0.5``).

avec's :class:`~avec.maze.world.Maze` has row 0 at the *top*, so world ``(row, col)`` is procgen's
``(x = col, y = 24 - row)``. Only the grid and the mouse's position are ever rewritten, in place at
their byte offsets: every other byte (background, textures, generators, timers) stays as procgen
wrote it, so a written state renders the same level with the edit and nothing else.

procgen ``exit()``s the whole process on a state it cannot read, so :func:`parse` checks
everything procgen's reader asserts before any bytes go back to it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from .world import SIZES, WORLD, Maze

WALL, SPACE, CHEESE = 51, 100, 2  # procgen object ids (object-ids.h; maze.cpp's GOAL = 2)
PLAYER = 0  # entity type of the mouse
END_OF_BUFFER = struct.unpack("<i", bytes.fromhex("fecafeca"))[0]  # 0xcafecafe as procgen writes it
SERIALIZE_VERSION = 0

# Field layout, in write order: "i" int32, "f" float32, "s" string. The entity block and the grid
# vector are counted sections, handled by the reader between these runs.
_GAME = (
    "i:serialize_version s:game_name "
    "i:paint_vel_info i:use_generated_assets i:use_monochrome_assets i:restrict_themes i:use_backgrounds "
    "i:center_agent i:debug_mode i:distribution_mode i:use_sequential_levels i:use_easy_jump i:plain_assets "
    "i:physics_mode i:grid_step i:level_seed_low i:level_seed_high i:game_type i:game_n "
    "i:level_seed_rand_gen.is_seeded s:level_seed_rand_gen.state i:rand_gen.is_seeded s:rand_gen.state "
    "f:reward i:done i:level_complete i:action i:timeout i:current_level_seed i:prev_level_seed "
    "i:episodes_remaining i:episode_done i:last_reward_timer f:last_reward i:default_action "
    "i:fixed_asset_seed i:cur_time i:is_waiting_for_step i:grid_size"
)
_ENTITY = (
    "f:x f:y f:vx f:vy f:rx f:ry i:type i:image_type i:image_theme i:render_z i:will_erase "
    "i:collides_with_entities f:collision_margin f:rotation f:vrot i:is_reflected i:fire_time i:spawn_time "
    "i:life_time i:expire_time i:use_abs_coords f:friction i:smart_step i:avoids_collisions i:auto_erase "
    "f:alpha f:health f:theta f:grow_rate f:alpha_decay f:climber_spawn_x"
)
_RENDER = (
    "i:use_procgen_background i:background_index f:bg_tile_ratio f:bg_pct_x f:char_dim i:last_move_action "
    "i:move_action i:special_action f:mixrate f:maxspeed f:max_jump f:action_vx f:action_vy f:action_vrot "
    "f:center_x f:center_y i:random_agent_start i:has_useful_vel_info i:step_rand_int "
    "i:asset_rand_gen.is_seeded s:asset_rand_gen.state i:main_width i:main_height i:out_of_bounds_object "
    "f:unit f:view_dim f:x_off f:y_off f:visibility f:min_visibility i:grid.w i:grid.h"
)
_MAZE = "i:maze_dim i:world_dim i:end_of_buffer"


def _layout(spec: str) -> list[tuple[str, str]]:
    return [tuple(item.split(":", 1)) for item in spec.split()]


_LAYOUTS = {name: _layout(spec) for name, spec in
            (("game", _GAME), ("entity", _ENTITY), ("render", _RENDER), ("maze", _MAZE))}


class StateError(ValueError):
    """Bytes that are not a procgen 0.10.7 maze state (or one avec's Maze cannot represent)."""


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, kind: str, name: str):
        if kind == "s":
            n = self.take("i", name + " length")
            if n < 0 or self.pos + n > len(self.data):
                raise StateError(f"procgen state is truncated or corrupt: string {name!r} of length {n} "
                                 f"at byte {self.pos} runs past the end ({len(self.data)} bytes)")
            raw = self.data[self.pos:self.pos + n]
            self.pos += n
            return raw.decode("latin-1")
        if self.pos + 4 > len(self.data):
            raise StateError(f"procgen state is truncated: it ends at byte {len(self.data)} while reading {name!r}")
        (value,) = struct.unpack_from("<i" if kind == "i" else "<f", self.data, self.pos)
        self.pos += 4
        return value

    def fields(self, layout: str, out: dict, offsets: dict, prefix: str = "") -> None:
        for kind, name in _LAYOUTS[layout]:
            offsets[prefix + name] = self.pos
            out[prefix + name] = self.take(kind, prefix + name)


@dataclass(frozen=True, eq=False)
class ProcgenState:
    """One parsed maze state. ``raw``: the bytes; ``fields``: every scalar field by name (entity
    fields as ``entity{i}.x`` ...); ``grid``: int32 ``[h, w]`` object ids **as procgen stores them**
    (row 0 = bottom); ``offsets``: byte offset of each field, and of the grid data (``"grid"``)."""

    raw: bytes
    fields: dict
    grid: np.ndarray
    offsets: dict
    n_entities: int
    player: int  # index of the mouse entity

    # -------------------------------------------------------------- reading
    @property
    def world_dim(self) -> int:
        return int(self.fields["world_dim"])

    @property
    def maze_dim(self) -> int:
        return int(self.fields["maze_dim"])

    @property
    def level_seed(self) -> int:
        return int(self.fields["current_level_seed"])

    @property
    def mouse(self) -> tuple[int, int]:
        """The mouse's world ``(row, col)`` (row 0 at the top)."""
        x, y = self.fields[f"entity{self.player}.x"], self.fields[f"entity{self.player}.y"]
        return (self.world_dim - 1 - int(np.floor(y)), int(np.floor(x)))

    def world_grid(self) -> np.ndarray:
        """Object ids with avec's orientation (row 0 at the top), int32 ``[25, 25]``."""
        return self.grid[::-1].copy()

    def to_maze(self, cls=Maze, **extra) -> Maze:
        """The avec :class:`Maze` this state shows: walls, cheese, mouse, maze size.

        ``cls``/``extra``: build a subclass (``ProcgenMaze`` passes its level state here)."""
        if self.world_dim != WORLD:
            raise StateError(f"avec's Maze is {WORLD}x{WORLD} (procgen's 'hard' distribution mode); this state has "
                             f"world_dim {self.world_dim} (make the env with distribution_mode='hard')")
        ids = self.world_grid()
        unknown = sorted(set(np.unique(ids).tolist()) - {WALL, SPACE, CHEESE})
        if unknown:
            raise StateError(f"the maze grid holds object ids {unknown}; a maze has only walls ({WALL}), "
                             f"floor ({SPACE}) and the cheese ({CHEESE})")
        cheese = np.argwhere(ids == CHEESE)
        if len(cheese) > 1:
            raise StateError(f"the state has {len(cheese)} cheeses; avec's Maze holds at most one")
        if self.maze_dim not in SIZES:
            raise StateError(f"maze_dim {self.maze_dim} is not an odd size in 3..{WORLD}")
        return cls(ids != WALL, self.maze_dim, self.mouse,
                   tuple(int(v) for v in cheese[0]) if len(cheese) else None, seed=self.level_seed, **extra)

    # -------------------------------------------------------------- writing
    def to_bytes(self) -> bytes:
        """The bytes of this state: :func:`parse` then ``to_bytes`` is the identity."""
        return self.raw

    def with_maze(self, maze: Maze, restart: bool = False, mouse=None) -> bytes:
        """This state's bytes with ``maze``'s walls, cheese and mouse written in; nothing else changes
        (the same level background, textures, generators). ``mouse``: put the mouse on this open cell
        instead of ``maze.mouse``; ``restart``: also zero the episode clock (``cur_time``), so a
        rollout from the written state gets procgen's full 500 steps."""
        if self.world_dim != WORLD:
            raise StateError(f"cannot write a {WORLD}x{WORLD} Maze into a state with world_dim {self.world_dim}")
        ids = np.where(maze.grid, SPACE, WALL).astype("<i4")
        if maze.cheese is not None:
            ids[maze.cheese] = CHEESE
        out = bytearray(self.raw)
        g = self.offsets["grid"]
        out[g:g + ids.nbytes] = ids[::-1].tobytes()
        r, c = maze.mouse if mouse is None else maze._check_open(mouse, "mouse")
        struct.pack_into("<f", out, self.offsets[f"entity{self.player}.x"], c + 0.5)
        struct.pack_into("<f", out, self.offsets[f"entity{self.player}.y"], WORLD - 1 - r + 0.5)
        struct.pack_into("<i", out, self.offsets["maze_dim"], maze.size)
        if restart:
            struct.pack_into("<i", out, self.offsets["cur_time"], 0)
        return bytes(out)


def parse(data: bytes) -> ProcgenState:
    """Read one maze state, checking what procgen's own reader asserts (version, game name, a mouse
    entity, the end marker) plus the grid's shape, so that bytes from here never crash procgen."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"a procgen state is bytes (from env.callmethod('get_state')), got {type(data).__name__}")
    data = bytes(data)
    rd, fields, offsets = _Reader(data), {}, {}
    rd.fields("game", fields, offsets)
    if fields["serialize_version"] != SERIALIZE_VERSION or fields["game_name"] != "maze":
        raise StateError(f"not a procgen 0.10.7 maze state: serialize version {fields['serialize_version']} "
                         f"(expected {SERIALIZE_VERSION}), game {fields['game_name']!r} (expected 'maze')")
    n_ent = rd.take("i", "entity count")
    if not 0 < n_ent < 10_000:
        raise StateError(f"procgen state is corrupt: {n_ent} entities")
    for i in range(n_ent):
        rd.fields("entity", fields, offsets, prefix=f"entity{i}.")
    players = [i for i in range(n_ent) if fields[f"entity{i}.type"] == PLAYER]
    if not players:
        raise StateError("procgen state has no mouse (no entity of type PLAYER = 0)")
    rd.fields("render", fields, offsets)
    w, h = fields["grid.w"], fields["grid.h"]
    count = rd.take("i", "grid size")
    if not (0 < w <= 64 and 0 < h <= 64 and count == w * h == fields["grid_size"]):
        raise StateError(f"procgen state is corrupt: grid {w}x{h} with {count} cells (grid_size {fields['grid_size']})")
    offsets["grid"] = rd.pos
    if rd.pos + 4 * count > len(data):
        raise StateError(f"procgen state is truncated inside the grid ({len(data)} bytes)")
    grid = np.frombuffer(data, "<i4", count, rd.pos).reshape(h, w).astype(np.int32)
    rd.pos += 4 * count
    rd.fields("maze", fields, offsets)
    if fields["end_of_buffer"] != END_OF_BUFFER or rd.pos != len(data):
        raise StateError(f"procgen state is corrupt: no end marker where expected (byte {rd.pos} of {len(data)})")
    if fields["world_dim"] != w or w != h:
        raise StateError(f"procgen state is corrupt: world_dim {fields['world_dim']} but the grid is {w}x{h}")
    grid.setflags(write=False)
    return ProcgenState(data, fields, grid, offsets, n_ent, players[0])
