"""Physics backends behind one batched contract. Knows nothing about tasks or RL."""

import os

# Headless offscreen rendering by default; must be set before mujoco is first imported.
os.environ.setdefault("MUJOCO_GL", "egl")


from sim.backend import SimBackend, SimConfigError, make_backend
from sim.state import SimState

__all__ = ["SimBackend", "SimConfigError", "SimState", "make_backend"]
