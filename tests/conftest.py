"""Shared fixtures. Tests run torch on one thread: the 2-core CI machine also runs the sim pool."""

import os

import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "egl")
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
