"""The maze half of avec: a procgen-style maze world, the Impala policy, vector fields and
the cheese / top-right steering experiments. Conventions: see :mod:`avec.maze.world`. The real procgen
maze (optional): :mod:`avec.maze.procgen_backend`.

    policy = avec.maze.load_policy("region5")
    maze = avec.maze.Maze.from_seed(0)
    cheese = avec.maze.cheese_vector(policy, maze)               # at embedder.block2.res1.resadd_out
    avec.maze.vector_field(policy, maze, steer=-1 * cheese).plot(compare_to=avec.maze.vector_field(policy, maze))
"""

from .behaviour import BehaviourStats, behaviour_statistics, decision_square_mazes
from .env import ACTION_NAMES, MazeEnv, expert_move, five_way, step
from .evaluate import evaluate, off_region_mazes, rollout, training_mazes
from .experiments import (
    DEFAULT_HOOK, MazeVector, averaged_vector, cheese_vector, cheese_vector_stats, coefficient_sweep,
    composition_stats, random_baseline_stats, random_like, top_right_stats, top_right_vector, transfer_stats,
)
from .fields import FieldDiff, VectorField, vector_field
from .policy import ImpalaPolicy, PolicyOutput, load_policy, load_procgen_tools, save_policy
from .procgen_backend import ProcgenMaze  # importing it needs no procgen; using it does (avec[procgen])
from .render import human_view, obs_tensor, render, to_tensor
from .world import WORLD, Maze

__all__ = [
    "ACTION_NAMES", "BehaviourStats", "DEFAULT_HOOK", "FieldDiff", "ImpalaPolicy", "Maze", "MazeEnv", "MazeVector", "PolicyOutput",
    "ProcgenMaze", "VectorField", "WORLD", "averaged_vector", "cheese_vector", "cheese_vector_stats", "coefficient_sweep",
    "behaviour_statistics", "composition_stats", "decision_square_mazes", "evaluate", "expert_move", "five_way", "human_view", "load_policy", "load_procgen_tools",
    "obs_tensor", "off_region_mazes", "random_baseline_stats", "random_like", "render", "rollout", "save_policy",
    "step", "to_tensor", "top_right_stats", "top_right_vector", "training_mazes", "transfer_stats", "vector_field",
]
