"""World-model prediction quality per task family, on held-out episodes, against two baselines.

    python benchmarks/wm_prediction.py [--runs-dir runs/wm_bench] [--families go2_velocity,...]
        [--reuse] [--out wm_prediction.json] [world_model.<key>=<value> ...] [seed=N]

For each family (go2_velocity, arm_push, driving_lane_follow):
1. data: a short PPO run with ``replay.enabled=true`` (256 envs; the learning policy's transitions
   are varied); ``--reuse`` keeps a run directory that already holds a replay and a checkpoint;
2. ``embodied wm-train`` on that replay (configs/world_model/ensemble.yaml, plus overrides);
3. held-out test episodes: the run's final policy (sampling, as in training) on a fresh env with
   another seed, never seen by the fit; evaluated per horizon H on windows of H consecutive steps
   of one episode, open loop with the recorded actions.

RMSE is over state dimensions each divided by its std on the training data (so families compare;
dimensions that never vary in the training data are left out) of the state H steps after the
window's start. The ensemble's prediction is the mean of K=32 sampled futures (each following one
elite member, with its Gaussian noise). Baselines, fitted and evaluated on the same data:
"no change" (the state stays) and "linear" (least squares of the state change on [state, action,
1] over the training split, rolled out). Calibration is the share of true states (per dimension)
inside the predicted central 90 % interval: at H=1 the ensemble's combined Gaussian (variance of
the elites' means + their mean predicted variance), at H=10 a Gaussian with the mean and std of the
K sampled futures (so both epistemic and aleatoric spread).

Exits 1 unless the ensemble beats both baselines at every horizon and the coverage is within
[0.80, 0.98] at H=1 and H=10 on every family.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from embodied.world_model import run_transitions, train_world_model
from world_models import TransitionBuffer, Transitions, WorldModel, imagine, load_world_model
from world_models.buffer import StreamRecorder

FAMILIES = {"go2_velocity": 50, "arm_push": 40, "driving_lane_follow": 40}  # PPO iterations
NUM_ENVS = 256
HORIZONS = (1, 10, 50)
CALIBRATED = (1, 10)
COVERAGE = (0.80, 0.98)
Z90 = 1.6449  # central 90 % of a Gaussian
FUTURES = 32
MAX_WINDOWS = 1000
TEST_ENVS, TEST_STEPS, TEST_SEED = 128, 200, 1001
LIGHT = ["threads.torch=1", "threads.torch_collect=1", "sim.nthread=1"]


def collect(task: str, iterations: int, run_dir: Path, reuse: bool) -> float | None:
    """The PPO run with replay; seconds it took (None when an existing run was kept)."""
    if reuse and (run_dir / "replay" / "meta.json").is_file() and any(run_dir.glob("checkpoints/*.pt")):
        return None
    if run_dir.exists():
        raise SystemExit(f"{run_dir} exists; move it away or pass --reuse")
    cmd = [
        sys.executable,
        "-m",
        "embodied.cli",
        "train",
        f"task={task}",
        f"num_envs={NUM_ENVS}",
        f"train.max_iterations={iterations}",
        "seed=1",
        "replay.enabled=true",
        "replay.groups=[critic,draw]",
        "train.evaluate=false",
        "train.export=false",
        "train.video=false",
        *LIGHT,
        f"run_dir={run_dir}",
    ]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


@torch.no_grad()
def test_episodes(run_dir: Path, model: WorldModel) -> Transitions:
    """TEST_STEPS steps of TEST_ENVS fresh envs (another seed) under the run's final sampling policy."""
    from embodied.wm_video import model_state
    from embodied.workflow import build_env, load_policy, load_run

    _, cfg = load_run(str(run_dir))
    env = build_env(cfg, num_envs=TEST_ENVS, seed=TEST_SEED)
    policy, _ = load_policy(run_dir, cfg, env, None)
    torch.manual_seed(TEST_SEED)
    rec = StreamRecorder(lambda obs: model_state(obs, model.layout), capacity=TEST_STEPS)
    obs = env.reset(seed=TEST_SEED)
    for _ in range(TEST_STEPS):
        action = policy.act(obs)
        out = env.step(action)
        rec.on_step(obs, action, out)
        obs = out.obs
    env.close()
    return rec.transitions()


def fit_linear(state: torch.Tensor, action: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """(S + A + 1, S) least-squares weights of the state change on [state, action, 1]."""
    x = torch.cat([state, action, torch.ones_like(state[:, :1])], -1).double()
    return torch.linalg.lstsq(x, delta.double(), driver="gelsd").solution.float()


def rollout_linear(w: torch.Tensor, start: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """(H, M, S) open-loop states from start (M, S) under actions (H, M, A)."""
    s, out = start, []
    for a in actions:
        s = s + torch.cat([s, a, torch.ones_like(s[:, :1])], -1) @ w
        out.append(s)
    return torch.stack(out)


def nrmse(pred: torch.Tensor, true: torch.Tensor, std: torch.Tensor, varies: torch.Tensor) -> float:
    """RMSE in units of each dimension's training std; inf when the prediction diverged."""
    r = float((((pred - true)[:, varies] / std[varies]) ** 2).mean().sqrt())
    return r if r == r and r != float("inf") else float("inf")


@torch.no_grad()
def evaluate(model: WorldModel, train: TransitionBuffer, test: Transitions, seed: int = 0) -> dict[str, Any]:
    """RMSE per horizon of the ensemble and both baselines, and the ensemble's 90 % coverage."""
    ens = model.ensemble
    state, action, target, _ = train.flat("train")
    std = state.std(0)
    varies = std > 1e-6
    w = fit_linear(state, action, target[:, : ens.state_dim])
    test_buf = TransitionBuffer(test, val_fraction=0.0, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    rows = {}
    for h in HORIZONS:
        win = test_buf.windows(h, "train", MAX_WINDOWS, seed=seed)
        s0, true = win.state[0], win.next_state[-1]
        fut = imagine(model, s0, win.action, h, FUTURES, spread=False, generator=gen)
        final = fut.state[-1]  # (M, K, S)
        row = {
            "windows": int(s0.shape[0]),
            "ensemble": nrmse(final.mean(1), true, std, varies),
            "no_change": nrmse(s0, true, std, varies),
            "linear": nrmse(rollout_linear(w, s0, win.action)[-1], true, std, varies),
        }
        if h == 1:  # the ensemble's own combined Gaussian, one step
            p = ens.predict(s0, win.action[0])
            mean_e = p.delta_mean[ens.elite_idx]
            mu = s0 + mean_e.mean(0)
            sd = (mean_e.var(0, unbiased=False) + (p.delta_std[ens.elite_idx] ** 2).mean(0)).sqrt()
        else:  # a Gaussian fitted to the K sampled futures
            mu, sd = final.mean(1), final.std(1)
        inside = ((true - mu).abs() <= Z90 * sd)[:, varies]
        row["coverage90"] = float(inside.float().mean())
        rows[h] = row
    return {"dims": int(varies.sum()), "state_dim": ens.state_dim, "horizons": rows}


def checks(family: str, r: dict[str, Any]) -> list[tuple[bool, str]]:
    out = []
    for h, row in r["horizons"].items():
        best = min(row["no_change"], row["linear"])
        out.append(
            (row["ensemble"] < best, f"{family} H={h}: ensemble {row['ensemble']:.4f} < baselines {best:.4f}")
        )
        if h in CALIBRATED:
            lo, hi = COVERAGE
            ok = lo <= row["coverage90"] <= hi
            out.append((ok, f"{family} H={h}: 90 % coverage {row['coverage90']:.3f} in [{lo}, {hi}]"))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs-dir", default="runs/wm_bench")
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--reuse", action="store_true", help="keep existing PPO runs (their replay) as data")
    ap.add_argument("--reuse-model", action="store_true", help="keep a run's fitted world_model/model.pt")
    ap.add_argument("--out", default="")
    ap.add_argument("overrides", nargs="*", help="world_model.<key>=<value> or seed=<int> for wm-train")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    results, all_checks = {}, []
    for family in args.families.split(","):
        run_dir = Path(args.runs_dir) / family
        collect_s = collect(family, FAMILIES.get(family, 3), run_dir, args.reuse)
        path = run_dir / "world_model" / "model.pt"
        if args.reuse_model and path.is_file():
            fig = json.loads((path.parent / "metrics.json").read_text())
        else:
            path, fig = train_world_model(run_dir, args.overrides)
        model = load_world_model(path, task=family)
        wm = fig["config"]
        data = run_transitions(run_dir, model.layout.groups, model.layout)
        train = TransitionBuffer(data, float(wm["val_fraction"]), seed=fig["split_seed"])  # wm-train's split
        t0 = time.perf_counter()
        test = test_episodes(run_dir, model)
        r = evaluate(model, train, test)
        r.update(
            collect_s=collect_s,
            fit_s=fig["fit"]["seconds"],
            epochs=fig["fit"]["epochs"],
            transitions=fig["transitions"],
            episodes=fig["episodes"],
            test_transitions=int(test.reward.numel()),
            test_episodes=int(test.episode_ids().max()) + 1,
            eval_s=time.perf_counter() - t0,
        )
        results[family] = r
        all_checks += checks(family, r)
        print(f"{family}: {json.dumps(r)}", file=sys.stderr, flush=True)
    print(
        "| family | data (transitions, episodes) | PPO run s | fit s (epochs) | H | ensemble | no change "
        "| linear | 90 % coverage |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for family, r in results.items():
        for h, row in r["horizons"].items():
            cov = f"{row['coverage90']:.3f}" if h in CALIBRATED else "-"
            lead = (
                f"{family} | {r['transitions']:,}, {r['episodes']} | "
                + ("reused" if r["collect_s"] is None else f"{r['collect_s']:.0f}")
                + f" | {r['fit_s']:.0f} ({r['epochs']})"
                if h == HORIZONS[0]
                else " | | |"
            )
            figs = f"**{row['ensemble']:.4f}** | {row['no_change']:.4f} | {row['linear']:.4f}"
            print(f"| {lead} | {h} | {figs} | {cov} |")
    print()
    for ok, text in all_checks:
        print(("PASS  " if ok else "MISS  ") + text)
    if args.out:
        Path(args.out).write_text(json.dumps({"command": " ".join(sys.argv), "results": results}, indent=2))
    return 0 if all(ok for ok, _ in all_checks) else 1


if __name__ == "__main__":
    os.environ.setdefault("MUJOCO_GL", "egl")
    sys.exit(main())
