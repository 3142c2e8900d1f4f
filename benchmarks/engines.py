"""Physics engines side by side on the go2_velocity task: env-steps/s at several N, build time,
kernel compile time (cold and cached) and peak memory.

    python benchmarks/engines.py [--engines mujoco mjwarp genesis] [--num-envs 1 16 128 1024]
                                 [--mode env|backend] [--seconds 5] [--cold] [--gpu]

``--mode env`` (default) steps the task env with uniform random actions in [-1, 1] (terms,
observations and auto-resets included); ``--mode backend`` steps the raw backend with the home
pose as PD targets. Env-steps/s counts every env's control step (4 physics steps of 5 ms each);
env-steps / CPU-s divides by the process's CPU time (all its threads) instead of wall time, which
stays meaningful on a machine shared with other jobs. Each (engine, N) runs in a fresh process,
so "build" is that process's env construction (with a warm kernel cache for mjwarp) and "peak
RSS" its own high-water mark. ``--cold`` adds one build per engine into an empty kernel cache
(what a first run on a new machine pays). ``--gpu`` is ``--device cuda``: tensors and (for
mjwarp) the physics on the GPU, plus the device's used memory at the end of each run. An engine
not installed here is skipped; for Genesis, ``--cold`` compiles into an empty Genesis kernel cache.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TASK = "go2_velocity"
ROOT = Path(__file__).resolve().parent.parent


def _one(engine: str, n: int, mode: str, device: str, seconds: float, nthread: int) -> dict[str, Any]:
    """Build, warm up and time one (engine, N) in this process."""
    import torch

    from embodied.registry import make_env

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    env = make_env(TASK, num_envs=n, engine=engine, device=device, nthread=nthread, seed=0)
    build_s = time.perf_counter() - t0
    dev = env.device
    g = torch.Generator(device=dev).manual_seed(0)
    if mode == "env":
        env.reset()

        def step() -> None:
            env.step(torch.rand(n, env.action_dim, generator=g, device=dev) * 2 - 1)
    else:
        b = env.backend
        home = torch.as_tensor(b.info.home_qpos, dtype=torch.float32, device=dev)
        ctrl = home[torch.as_tensor(b.info.qpos_adr, device=dev)].expand(n, -1).contiguous()

        def step() -> None:
            b.step(ctrl)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for _ in range(3):  # first steps load kernels and size buffers
        step()
    sync()
    calls, t0, cpu0 = 0, time.perf_counter(), time.process_time()
    while calls < 5 or time.perf_counter() - t0 < seconds:
        step()
        calls += 1
        if calls % 10 == 0:
            sync()
    sync()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    out = {
        "engine": engine,
        "num_envs": n,
        "env_steps_per_s": n * calls / elapsed,
        "env_steps_per_cpu_s": n * calls / max(cpu, 1e-9),
        "ms_per_step": 1e3 * elapsed / calls,
        "build_s": build_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if dev.type == "cuda":
        free, total = torch.cuda.mem_get_info(dev)
        out["gpu_used_mb"] = (total - free) / 2**20
    env.close()
    return out


def _cold_build(engine: str, device: str) -> dict[str, float]:
    """Seconds from ``make_env`` to the end of the first step of a one-env go2_velocity (engine
    imports included), into an empty kernel cache and then into the one that run filled."""
    code = (
        "import time, torch; from embodied.registry import make_env; t = time.perf_counter(); "
        f"e = make_env({TASK!r}, num_envs=1, engine={engine!r}, device={device!r}); "
        "e.step(torch.zeros(1, e.action_dim)); print(time.perf_counter() - t)"
    )
    result = {}
    with tempfile.TemporaryDirectory() as cache:
        for label in ("cold_s", "cached_s"):  # the second build finds what the first compiled
            p = subprocess.run(
                [sys.executable, "-c", code],
                cwd=ROOT,
                env={**os.environ, "EMBODIED_WARP_CACHE": cache, "EMBODIED_GENESIS_CACHE": cache},
                capture_output=True,
                text=True,
                check=True,
            )
            result[label] = float(p.stdout.strip().splitlines()[-1])
    return result


def _table(rows: list[dict[str, Any]]) -> str:
    gpu = any("gpu_used_mb" in r for r in rows)
    head = "| engine | N | env-steps/s | env-steps / CPU-s | ms / step | build (s) | peak RSS (MB) |"
    head += " GPU used (MB) |" if gpu else ""
    lines = [head, "|---" * (8 if gpu else 7) + "|"]
    for r in rows:
        line = (
            f"| {r['engine']} | {r['num_envs']} | {r['env_steps_per_s']:,.0f} | "
            f"{r['env_steps_per_cpu_s']:,.0f} | {r['ms_per_step']:.2f} | {r['build_s']:.1f} | "
            f"{r['peak_rss_mb']:.0f} |"
        )
        lines.append(line + (f" {r.get('gpu_used_mb', 0):.0f} |" if gpu else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--engines", nargs="+", default=["mujoco", "mjwarp", "genesis"])
    ap.add_argument("--num-envs", nargs="+", type=int, default=[1, 16, 128, 1024])
    ap.add_argument("--mode", choices=("env", "backend"), default="env")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--gpu", action="store_true", help="same as --device cuda")
    ap.add_argument("--seconds", type=float, default=5.0, help="timed seconds per (engine, N)")
    ap.add_argument("--nthread", type=int, default=os.cpu_count() or 1, help="CPU MuJoCo's threads")
    ap.add_argument("--cold", action="store_true", help="also time a build into an empty kernel cache")
    ap.add_argument("--out", type=Path, help="also write the results as JSON")
    ap.add_argument("--one", nargs=2, metavar=("ENGINE", "N"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    device = "cuda" if a.gpu else a.device
    if a.one:
        print(json.dumps(_one(a.one[0], int(a.one[1]), a.mode, device, a.seconds, a.nthread)))
        return 0

    from sim.backend import available_backends

    engines = [e for e in a.engines if e in available_backends()]
    skipped = sorted(set(a.engines) - set(engines))
    if skipped:
        print(f"skipped (not installed or unknown): {', '.join(skipped)}", file=sys.stderr)
    rows = []
    for engine in engines:
        for n in a.num_envs:
            cmd = [sys.executable, __file__, "--one", engine, str(n), "--mode", a.mode]
            cmd += ["--device", device, "--seconds", str(a.seconds), "--nthread", str(a.nthread)]
            p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            if p.returncode != 0:
                tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
                print(f"{engine} N={n} failed: {tail}", file=sys.stderr)
                continue
            rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
            print(f"{engine:8s} N={n:5d} {rows[-1]['env_steps_per_s']:12,.0f} env-steps/s", file=sys.stderr)
    load = (
        f", load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
        if hasattr(os, "getloadavg")
        else ""
    )
    print(f"\n{TASK}, mode={a.mode}, device={device}, nthread={a.nthread} (mujoco){load}\n")
    print(_table(rows))
    compile_rows = {}
    if a.cold:
        for engine in engines:
            compile_rows[engine] = _cold_build(engine, device)
        print("\n| engine | first build, empty kernel cache (s) | next build, cached (s) |\n|---|---|---|")
        for engine, c in compile_rows.items():
            print(f"| {engine} | {c['cold_s']:.1f} | {c['cached_s']:.1f} |")
    if a.out:
        a.out.write_text(json.dumps({"rows": rows, "compile": compile_rows, "argv": sys.argv}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
