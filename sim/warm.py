"""Fill an engine's kernel cache ahead of time: ``python -m sim.warm ENGINE MODEL [MODEL ...]``.

MuJoCo Warp and Genesis compile kernels the first time a model is built and stepped (minutes on a
CPU) and keep them in their caches (``sim.cache_dir``); ``make test`` runs this once for every task
model so that no test pays for a compile. Each model is built with two envs, stepped, randomized and
reset, so the kernels of every path the tasks use are compiled.
"""

from __future__ import annotations

import sys
import time

import torch

from sim.backend import BACKENDS, SimConfigError, make_backend
from sim.randomize import PhysicsParams


def warm(engine: str, models: list[str], num_envs: int = 2) -> dict[str, float]:
    """Build and step each model on ``engine``; seconds per model (a model it cannot load is skipped)."""
    took = {}
    for path in models:
        t0 = time.perf_counter()
        try:
            b = make_backend(engine, path, num_envs)
        except SimConfigError as e:  # a model the engine cannot load has no kernels to warm
            print(f"{engine} skips {path}: {e}")
            continue
        every = torch.ones(num_envs, dtype=torch.bool)
        b.step(torch.zeros(num_envs, b.info.nu))
        if hasattr(b, "set_physics"):
            b.set_physics(every, PhysicsParams.nominal(num_envs, b.info.nbody))
        b.reset(every, b.state().qpos, b.state().qvel)
        b.step(torch.zeros(num_envs, b.info.nu))
        b.close()
        took[path] = time.perf_counter() - t0
    return took


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in BACKENDS:
        print(f"usage: python -m sim.warm {{{'|'.join(BACKENDS)}}} MODEL [MODEL ...]", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    for path, seconds in warm(argv[0], argv[1:]).items():
        print(f"{argv[0]} kernels for {path}: {seconds:.1f} s")
    print(f"{argv[0]} kernel cache ready in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
