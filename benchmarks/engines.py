"""Physics engines side by side on the go2_velocity task: env-steps/s at several N, build time,
kernel compile time (cold and cached) and peak memory; with ``--train``, PPO training on each
engine against MuJoCo's wall time. Prints the markdown rows BENCHMARKS.md holds; exits 1 on a miss.

    python benchmarks/engines.py [--engines mujoco mjwarp genesis] [--num-envs 1 16 128 1024]
                                 [--mode env|backend] [--seconds 5] [--cold] [--gpu]
                                 [--train] [--train-engines mujoco genesis] [--train-iterations 10]

``--mode env`` (default) steps the task env with uniform random actions in [-1, 1] (terms,
observations and auto-resets included); ``--mode backend`` steps the raw backend with the home
pose as PD targets. Env-steps/s counts every env's control step (4 physics steps of 5 ms each);
env-steps / CPU-s divides by the process's CPU time (all its threads) instead of wall time, which
stays meaningful on a machine shared with other jobs; "vs mujoco" is the env-steps/s ratio to
MuJoCo at the same N, in the same run. Each (engine, N) runs in a fresh process, so "build" is
that process's env construction (with a warm kernel cache for mjwarp) and "peak RSS" its own
high-water mark. ``--cold`` adds one build per engine into an empty kernel cache (what a first run
on a new machine pays). ``--gpu`` is ``--device cuda``: tensors and (for mjwarp) the physics on the
GPU, plus the device's used memory at the end of each run. An engine not installed here is
skipped (and said so); for Genesis, ``--cold`` compiles into an empty Genesis kernel cache.

``--train`` runs ``embodied train task=go2_velocity sim=<engine> train.max_iterations=10`` (no
evaluation, video or export) for each of ``--train-engines``, in turn, and reads the run's
metrics.csv: PPO and collection samples/s over iterations 3-10, and the wall time of the whole
command (start-up included). Threshold (the issue's): an engine's wall time within
MAX_TRAIN_WALL_RATIO x MuJoCo's.

Exit status: 1 when an (engine, N) run or a training run failed, or a training ratio missed.
"""

from __future__ import annotations

import argparse
import csv
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
MAX_TRAIN_WALL_RATIO = 2.0  # an engine's training wall time / MuJoCo's
TRAIN_ARGS = ["train.evaluate=false", "train.video=false", "train.export=false"]


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
    """The throughput rows as BENCHMARKS.md holds them."""
    gpu = any("gpu_used_mb" in r for r in rows)
    mujoco = {r["num_envs"]: r["env_steps_per_s"] for r in rows if r["engine"] == "mujoco"}
    head = (
        "| engine | N | env-steps/s | vs mujoco | env-steps / CPU-s | ms / step | build (s) | peak RSS (MB) |"
    )
    head += " GPU used (MB) |" if gpu else ""
    lines = [head, "|---" * (9 if gpu else 8) + "|"]
    for r in rows:
        ref = mujoco.get(r["num_envs"])
        ratio = f"{r['env_steps_per_s'] / ref:.2f}x" if ref else "-"
        line = (
            f"| {r['engine']} | {r['num_envs']} | {r['env_steps_per_s']:,.0f} | {ratio} | "
            f"{r['env_steps_per_cpu_s']:,.0f} | {r['ms_per_step']:.2f} | {r['build_s']:.1f} | "
            f"{r['peak_rss_mb']:.0f} |"
        )
        lines.append(line + (f" {r.get('gpu_used_mb', 0):.0f} |" if gpu else ""))
    return "\n".join(lines)


def _train(engine: str, iterations: int, device: str, run_dir: Path) -> dict[str, Any]:
    """``embodied train`` of go2_velocity on ``engine``: wall time and samples/s from metrics.csv."""
    cmd = [sys.executable, "-m", "embodied.cli", "train", f"task={TASK}", f"sim={engine}"]
    cmd += [f"train.max_iterations={iterations}", *TRAIN_ARGS, f"device={device}", f"run_dir={run_dir}"]
    t0 = time.perf_counter()
    p = subprocess.run(
        cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
        return {"engine": engine, "error": tail}
    with (run_dir / "metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if int(float(r["perf/iteration"])) >= 3]
    samples = [float(r["step"]) for r in rows]  # total samples after each iteration
    per_iter = samples[1] - samples[0] if len(samples) > 1 else samples[0] / 3
    seconds = sum(per_iter / float(r["perf/samples_per_s"]) for r in rows)
    collect = sum(per_iter / float(r["perf/collection_samples_per_s"]) for r in rows)
    return {
        "engine": engine,
        "samples_per_s": len(rows) * per_iter / seconds,
        "collection_samples_per_s": len(rows) * per_iter / collect,
        "wall_s": wall,
        "iterations": iterations,
        "samples_per_iteration": per_iter,
    }


def _train_table(runs: list[dict[str, Any]], iterations: int) -> str:
    ref = next((r for r in runs if r["engine"] == "mujoco" and "error" not in r), None)
    lines = [
        f"| engine | PPO samples/s (iterations 3-{iterations}) | collection samples/s | "
        f"wall time, {iterations} iterations incl. start-up |",
        "|---|---|---|---|",
    ]
    for r in runs:
        if "error" in r:
            lines.append(f"| {r['engine']} | failed: {r['error']} | | |")
            continue
        speed = wall = ""
        if ref is not None and r is not ref:
            speed = f" (**{r['samples_per_s'] / ref['samples_per_s']:.2f}x**)"
            wall = f" ({r['wall_s'] / ref['wall_s']:.1f}x)"
        lines.append(
            f"| {r['engine']} | {r['samples_per_s']:,.0f}{speed} | {r['collection_samples_per_s']:,.0f} | "
            f"{r['wall_s']:.1f} s{wall} |"
        )
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
    ap.add_argument("--train", action="store_true", help="also train on each of --train-engines")
    ap.add_argument("--train-engines", nargs="+", default=["mujoco", "genesis"])
    ap.add_argument("--train-iterations", type=int, default=10)
    ap.add_argument("--out", type=Path, help="also write the results as JSON")
    ap.add_argument("--one", nargs=2, metavar=("ENGINE", "N"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    device = "cuda" if a.gpu else a.device
    if a.one:
        print(json.dumps(_one(a.one[0], int(a.one[1]), a.mode, device, a.seconds, a.nthread)))
        return 0

    from sim.backend import available_backends, unavailable_reason

    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    engines = [e for e in a.engines if e in available_backends()]
    for e in a.engines:
        if e not in engines:
            print(f"skipped {e}: {unavailable_reason(e)}", file=sys.stderr)
    rows, failed = [], []
    for engine in engines:
        for n in a.num_envs:
            cmd = [sys.executable, __file__, "--one", engine, str(n), "--mode", a.mode]
            cmd += ["--device", device, "--seconds", str(a.seconds), "--nthread", str(a.nthread)]
            p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            if p.returncode != 0:
                tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
                print(f"{engine} N={n} failed: {tail}", file=sys.stderr)
                failed.append(f"{engine} N={n}: {tail}")
                continue
            rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
            print(f"{engine:8s} N={n:5d} {rows[-1]['env_steps_per_s']:12,.0f} env-steps/s", file=sys.stderr)
    load = f", load average {load0:.1f} at the start on {os.cpu_count()} cores" if load0 is not None else ""
    print(f"\n{TASK}, mode={a.mode}, device={device}, nthread={a.nthread} (mujoco){load}\n")
    print(_table(rows))
    compile_rows = {}
    if a.cold:
        for engine in engines:
            compile_rows[engine] = _cold_build(engine, device)
        print("\n| engine | first build, empty kernel cache (s) | next build, cached (s) |\n|---|---|---|")
        for engine, c in compile_rows.items():
            print(f"| {engine} | {c['cold_s']:.1f} | {c['cached_s']:.1f} |")
    runs: list[dict[str, Any]] = []
    if a.train:
        print(f"\nembodied train task={TASK} sim=<engine> train.max_iterations={a.train_iterations} "
              f"{' '.join(TRAIN_ARGS)}, one engine after the other\n")  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            for engine in a.train_engines:
                if unavailable_reason(engine):
                    print(f"skipped training on {engine}: {unavailable_reason(engine)}", file=sys.stderr)
                    continue
                runs.append(_train(engine, a.train_iterations, device, Path(tmp) / engine))
        print(_train_table(runs, a.train_iterations))
    print()
    print(("PASS" if not failed else "FAIL") + f"  every (engine, N) built and stepped ({len(rows)} runs)")
    for f in failed:
        print(f"      failed: {f}")
    ref = next((r for r in runs if r["engine"] == "mujoco" and "error" not in r), None)
    for r in runs:
        if "error" in r:
            failed.append(f"training on {r['engine']}: {r['error']}")
            print(f"FAIL  training on {r['engine']}: {r['error']}")
        elif ref is not None and r is not ref:
            ratio = r["wall_s"] / ref["wall_s"]
            ok = ratio <= MAX_TRAIN_WALL_RATIO
            if not ok:
                failed.append(f"training on {r['engine']}: {ratio:.1f}x MuJoCo's wall time")
            mark = "PASS" if ok else "FAIL"
            need = f"need <= {MAX_TRAIN_WALL_RATIO}"
            print(f"{mark}  {r['engine']} training wall time / mujoco's: {ratio:.2f} ({need})")
    if a.out:
        payload = {"rows": rows, "compile": compile_rows, "train": runs, "failed": failed, "argv": sys.argv}
        a.out.write_text(json.dumps(payload, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
