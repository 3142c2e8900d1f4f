"""Shared fixtures. Tests run torch on one thread: the 2-core CI machine also runs the sim pool."""

import os

import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "egl")
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def engine_skip(engine: str) -> list[pytest.MarkDecorator]:
    """A skip mark that says why ``engine`` cannot be built here; none when it can."""
    from sim.backend import unavailable_reason

    reason = unavailable_reason(engine)
    return [pytest.mark.skip(reason=reason)] if reason else []


def engine_params(*values_of: object, engines: tuple[str, ...] | None = None) -> list:
    """One ``pytest.param`` per engine of ``sim.backend.BACKENDS`` (or of ``engines``); an engine
    that cannot be built here is a skip that says why, not a case that silently disappears.

    ``values_of``: leading values of every param (e.g. a task name), then the engine's name.
    """
    from sim.backend import BACKENDS

    params = []
    for engine in engines or BACKENDS:
        values = (*values_of, engine)
        params.append(pytest.param(*values, id="-".join(map(str, values)), marks=engine_skip(engine)))
    return params
