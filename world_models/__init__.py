"""Learned dynamics: a probabilistic ensemble, its data, multi-future imagination, planning, filtering.

Imports torch and ``policies`` at most (DESIGN.md's rule of direction); ``embodied`` ties it to runs.
"""

from world_models.buffer import TransitionBuffer, Transitions
from world_models.ensemble import Ensemble, Prediction
from world_models.errors import WorldModelError
from world_models.imagine import Futures, imagine
from world_models.layout import StateLayout
from world_models.model import WorldModel, load_world_model, save_world_model

__all__ = [
    "Ensemble",
    "Futures",
    "Prediction",
    "StateLayout",
    "TransitionBuffer",
    "Transitions",
    "WorldModel",
    "WorldModelError",
    "imagine",
    "load_world_model",
    "save_world_model",
]
