"""Camera observations: the cost of obs["rgb"] per env-step batch on go2_velocity, with the old
one-env-at-a-time renderer measured in the same run for comparison.

    python benchmarks/render_throughput.py [--num-envs 16] [--size 84 84] [--out rgb.json] [--quick]

"per batch" is the render time spent inside one ``env.step`` of N envs (the step's rgb frames,
plus the frames of envs that auto-reset in it), timed around ``backend.render``. An env with rgb
off steps in turn with the same actions, so "with - without" is the whole cost at the same load.
Exits 1 when the mean render time per batch is above its threshold.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # headless offscreen rendering; must precede mujoco

import argparse
import sys
import time
from typing import Any

import mujoco
import numpy as np
import torch
from env_throughput import command_line, machine_info, markdown_table, thread_info, write_json

from embodied.registry import make_env

MAX_MS = 10.0  # mean render ms per env-step batch of 16 envs at 84x84


class OldRenderer:
    """The renderer this project had before: one mujoco.Renderer frame per env, mj_forward each."""

    def __init__(self, backend: Any, width: int, height: int) -> None:
        self.backend = backend
        self.renderer = mujoco.Renderer(backend.model, height=height, width=width)
        self.renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        self.renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        self.data = mujoco.MjData(backend.model)

    def render(self, env_ids: list[int], camera: str | int) -> torch.Tensor:
        m, full = self.backend.model, int(mujoco.mjtState.mjSTATE_FULLPHYSICS)
        frames = []
        for i in env_ids:
            mujoco.mj_setState(m, self.data, self.backend._state_np[i], full)
            mujoco.mj_forward(m, self.data)
            self.renderer.update_scene(self.data, camera=camera)
            frames.append(torch.from_numpy(self.renderer.render().copy()))
        return torch.stack(frames).permute(0, 3, 1, 2).contiguous()

    def close(self) -> None:
        self.renderer.close()


def stats_ms(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {
        "mean": float(ms.mean()),
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
    }


def measure(num_envs: int, width: int, height: int, batches: int, warmup: int, old_every: int, seed: int):
    """Steps go2_velocity with obs["rgb"] on and, in turn, off under the same random actions.

    Times every render inside the rgb env's steps; every ``old_every``-th step the same states
    also go through the old renderer and through the new one a single env per call.
    """
    rgb = {"rgb": {"enabled": True, "width": width, "height": height}}
    env = make_env("go2_velocity", num_envs=num_envs, seed=seed, overrides=rgb)
    plain = make_env("go2_velocity", num_envs=num_envs, seed=seed)  # rgb off: nothing rendered
    backend, camera = env.backend, env.rgb_camera
    render, spent = backend.render, [0.0]

    def timed_render(*args: Any, **kwargs: Any) -> torch.Tensor:
        t0 = time.perf_counter()
        frames = render(*args, **kwargs)
        spent[0] += time.perf_counter() - t0
        return frames

    backend.render = timed_render  # instance attribute: only this env's calls are timed
    old = OldRenderer(backend, width, height)
    ids = list(range(num_envs))
    gen = torch.Generator().manual_seed(seed)
    env.reset(seed=seed)
    plain.reset(seed=seed)
    per_step, with_rgb, no_rgb, old_batch, single_calls, resets = [], [], [], [], [], 0
    for k in range(warmup + batches):
        action = torch.rand(num_envs, env.action_dim, generator=gen) * 2 - 1
        spent[0] = 0.0
        t0 = time.perf_counter()
        out = env.step(action)
        t1 = time.perf_counter()
        plain.step(action)
        t2 = time.perf_counter()
        if k < warmup:
            continue
        per_step.append(spent[0])
        with_rgb.append(t1 - t0)
        no_rgb.append(t2 - t1)
        resets += int((out.terminated | out.truncated).sum())
        if k % old_every == 0:
            t0 = time.perf_counter()
            old.render(ids, camera)
            old_batch.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for i in ids:
                render([i], width, height, camera)
            single_calls.append(time.perf_counter() - t0)
    old.close()
    env.close()
    plain.close()
    return {
        "rgb_per_batch_ms": stats_ms(per_step),
        "step_with_rgb_ms": stats_ms(with_rgb),
        "step_without_rgb_ms": stats_ms(no_rgb),
        "old_one_at_a_time_ms": stats_ms(old_batch),
        "new_one_env_per_call_ms": stats_ms(single_calls),
        "old_batches": len(old_batch),
        "env_resets": resets,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-envs", type=int, default=16)
    p.add_argument("--size", type=int, nargs=2, default=(84, 84), metavar=("W", "H"))
    p.add_argument("--batches", type=int, default=None, help="timed env steps (default 300)")
    p.add_argument("--warmup", type=int, default=None, help="untimed env steps first (default 20)")
    p.add_argument("--old-every", type=int, default=10, help="time the old path every k-th step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    p.add_argument("--quick", action="store_true", help="a few batches: a smoke test")
    a = p.parse_args(argv)
    batches = a.batches or (20 if a.quick else 300)
    warmup = a.warmup if a.warmup is not None else (3 if a.quick else 20)
    width, height = a.size

    torch.set_num_threads(1)  # the renderer and the sim are single-threaded here; keep torch out
    header = {
        "command": command_line(__file__, argv),
        "machine": machine_info(),
        "threads": thread_info(
            sim_nthread=1,
            MUJOCO_GL=os.environ.get("MUJOCO_GL"),
            LP_NUM_THREADS=os.environ.get("LP_NUM_THREADS"),
        ),
        "settings": {"task": "go2_velocity", "num_envs": a.num_envs, "size": f"{width}x{height}"},
        "quick": a.quick,
    }
    r = measure(a.num_envs, width, height, batches, warmup, a.old_every, a.seed)
    new, old, single = r["rgb_per_batch_ms"], r["old_one_at_a_time_ms"], r["new_one_env_per_call_ms"]
    step_cost = r["step_with_rgb_ms"]["mean"] - r["step_without_rgb_ms"]["mean"]
    rows = [
        ["obs['rgb'] inside env.step (tiled batch)", batches, new["mean"], new["p50"], new["p99"], "1.0"],
        [
            "new renderer, one env per call",
            r["old_batches"],
            single["mean"],
            single["p50"],
            single["p99"],
            f"{single['mean'] / new['mean']:.1f}",
        ],
        [
            "old path: mujoco.Renderer, one env at a time",
            r["old_batches"],
            old["mean"],
            old["p50"],
            old["p99"],
            f"{old['mean'] / new['mean']:.1f}",
        ],
        ["env.step with rgb", batches, *(r["step_with_rgb_ms"][k] for k in ("mean", "p50", "p99")), ""],
        ["env.step without rgb", batches, *(r["step_without_rgb_ms"][k] for k in ("mean", "p50", "p99")), ""],
        ["env.step with - without (means)", "", step_cost, "", "", ""],
    ]
    fmt = [
        [c if isinstance(c, str) else (f"{c:.2f}" if isinstance(c, float) else c) for c in row]
        for row in rows
    ]
    table = markdown_table(["measurement", "batches", "mean ms", "p50 ms", "p99 ms", "x tiled"], fmt)
    ok = new["mean"] <= MAX_MS
    print(f"# Camera observations ({a.num_envs} envs, {width}x{height})\n\ncommand: `{header['command']}`")
    for key in ("machine", "threads", "settings"):
        print(f"{key}: " + ", ".join(f"{k}={v}" for k, v in header[key].items()))
    if a.quick:
        print("quick mode: smoke test only, the figures are not meaningful")
    print(f"\n{table}\n\nenv resets during the timed steps: {r['env_resets']}\n")
    mark = "PASS" if ok else "FAIL"
    print(f"{mark}  mean obs['rgb'] ms per env-step batch: {new['mean']:.2f} (need <= {MAX_MS})")
    criteria = [{"criterion": "mean rgb ms per batch", "value": new["mean"], "threshold": MAX_MS, "pass": ok}]
    write_json(a.out, {**header, "args": vars(a), "results": r, "criteria": criteria})
    return 0 if ok or a.quick else 1


if __name__ == "__main__":
    sys.exit(main())
