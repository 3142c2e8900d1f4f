"""``embodied safety-eval``: one run's policy under several safety-filter settings, same seeds and states.

A setting is ``none`` (no filter) or a registered filter, or a chain ``box+cbf``. For every seed the
env is built and reset with that seed, so each setting starts its N episodes (one per env) from
the same initial states; the policy acts deterministically. Per setting it reports cost events
per step (all terms and each term), the share of episodes with any cost event, the filters'
intervention rate and correction size |applied - proposed action|, return and the task's own
metrics, each as the mean over seeds of the per-seed means with a 95 % t-interval. The report
(``<run>/safety/report.md``, ``.json``, ``.png``, see ``embodied.safety_report``) comes with the
episode that had the most cost events under the last filtered setting, re-run on video.
"""

from __future__ import annotations

import inspect
import json
import math
import shlex
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from embodied.env import BatchedEnv
from embodied.errors import ConfigError
from embodied.evaluate import Episodes, Policy, run_episodes
from policies.safety import FILTERS, FilterChain, FilterError, build_chain

NONE = "none"
CONFIDENCE = 0.95
# Two-sided 95 % quantiles of Student's t, t(0.975; df) for df = 1..30; beyond, a Cornish-Fisher series.
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)  # fmt: skip
Z975 = 1.959964
CRITIC_SEED = 12345  # the critic's training env, apart from the usual evaluation seeds


def t975(df: int) -> float:
    """The 97.5 % quantile of Student's t with ``df`` >= 1 degrees of freedom (3 decimals)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(T975):
        return T975[df - 1]
    z = Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def interval(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and 95 % t-interval half-width of per-seed values (None: undefined for that seed).

    With fewer than two defined values the half-width is None: one seed gives no spread.
    """
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return {"mean": None, "half_width": None, "per_seed": list(values)}
    mean = sum(xs) / len(xs)
    half = None
    if len(xs) > 1:
        sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
        half = t975(len(xs) - 1) * sd / math.sqrt(len(xs))
    return {"mean": mean, "half_width": half, "per_seed": list(values)}


def parse_setting(text: str) -> list[str]:
    """``none`` -> [], ``box`` -> [box], ``box+cbf`` -> [box, cbf] (the chain, in order)."""
    text = str(text).strip()
    if text == NONE:
        return []
    names = [n.strip() for n in text.split("+")]
    if not all(names) or NONE in names:
        raise ConfigError(f"bad filter setting {text!r}: use none, a filter name or a chain like box+cbf")
    return names


def _ratio(num: torch.Tensor | None, den: torch.Tensor | None) -> float | None:
    """sum(num) / sum(den) over the episodes; None where nothing was counted."""
    if num is None or den is None or float(den.sum()) == 0.0:
        return None
    return float(num.sum() / den.sum())


def seed_figures(ep: Episodes, filters: Sequence[str]) -> dict[str, float | None]:
    """One seed's figures, each the mean over its episodes of a per-episode value.

    Per-step rates (cost events, interventions, correction) are per-episode fractions of steps;
    ``correction_when_intervened`` is the mean correction over all intervened steps of the seed.
    """
    steps = ep.length.clamp(min=1).float()
    zero = torch.zeros_like(steps)
    events = sum(ep.cost_events.values(), zero)
    out: dict[str, float | None] = {
        "return": float(ep.ret.mean()),
        "length_s": float(ep.length.float().mean() * ep.dt),
        "fall_rate": float(ep.fell.float().mean()),
        "cost_per_step": float((events / steps).mean()),
        **{f"cost_per_step/{k}": float((v / steps).mean()) for k, v in ep.cost_events.items()},
        "violation_share": float((events > 0).float().mean()),
    }
    for suffix, key, mag_key in [
        ("", "safety/intervened", "safety/correction"),
        *((f"/{f}", f"safety/{f}/intervened", f"safety/{f}/magnitude") for f in filters),
    ]:
        hits = ep.interventions.get(key)
        out["intervention_rate" + suffix] = float((ep.interventions.get(key, zero) / steps).mean())
        out["correction" + suffix] = float((ep.magnitude.get(mag_key, zero) / steps).mean())
        out["correction_when_intervened" + suffix] = _ratio(ep.magnitude_intervened.get(mag_key), hits)
    for k, v in ep.metrics.items():
        if not k.startswith("metric/cost/"):
            out["task/" + k.removeprefix("metric/")] = float(v.mean())
    return out


def setting_config(cfg: DictConfig, names: Sequence[str], params: Mapping[str, Any]) -> DictConfig:
    """The run's config with ``safety.filters=names`` and, per filter, the run's params + ``params``."""
    safety = OmegaConf.to_container(cfg.get("safety") or OmegaConf.create({}), resolve=True)
    run_params = safety.get("params") or {}
    merged = {
        n: OmegaConf.to_container(OmegaConf.merge(run_params.get(n) or {}, params.get(n) or {}))
        for n in names
    }
    out = cfg.copy()
    out.safety = {**safety, "filters": list(names), "params": merged}
    return out


def command_line(
    run_dir: Path,
    settings: Sequence[str],
    episodes: int,
    seeds: Sequence[int],
    checkpoint: str | None,
    video: bool,
    params: Mapping[str, Any],
) -> str:
    """The ``embodied safety-eval`` command line that repeats a call made from Python."""

    def flat(prefix: str, value: Any) -> list[str]:
        if isinstance(value, Mapping):
            return [a for k, v in value.items() for a in flat(f"{prefix}.{k}", v)]
        return [f"+{prefix}={json.dumps(value) if isinstance(value, str) else value}"]

    args = [f"run={run_dir}", f"filters=[{','.join(settings)}]", f"episodes={episodes}"]
    args += [f"seeds=[{','.join(map(str, seeds))}]", f"video={str(video).lower()}"]
    args += [f"checkpoint={checkpoint}"] if checkpoint else []
    args += flat("safety.params", params) if params else []
    return " ".join(["embodied", "safety-eval", *(shlex.quote(a) for a in args)])


def train_critic(
    make_env: Callable[..., BatchedEnv], policy: Policy, out: Path, options: Mapping[str, Any]
) -> dict[str, Any]:
    """Train the run's safety critic into ``out`` with ``embodied.safety_critic.train_safety_critic``.

    ``options``: ``num_envs`` (64) and ``seed`` (CRITIC_SEED, apart from the evaluation seeds) of the
    env it collects on; every other key goes to ``train_safety_critic`` (iterations, epochs, ...).
    """
    try:
        from embodied.safety_critic import train_safety_critic
    except ModuleNotFoundError as e:
        if e.name != "embodied.safety_critic":
            raise
        raise ConfigError(
            "the critic setting needs embodied.safety_critic, which does not exist yet; "
            "pass +safety.params.critic.path=<critic file>"
        ) from None
    kwargs = dict(options)
    num_envs, seed = int(kwargs.pop("num_envs", 64)), int(kwargs.pop("seed", CRITIC_SEED))
    known = [
        k for k in inspect.signature(train_safety_critic).parameters if k not in ("env", "policy", "out_path")
    ]
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown safety.params.critic.train key(s) {unknown}; known: num_envs, {', '.join(known)}"
        )
    env = make_env(seed, num_envs)
    try:
        path = train_safety_critic(env, policy, out, seed=seed, **kwargs)
    finally:
        env.close()
    return {"path": str(path), "trained": True, "num_envs": num_envs, "seed": seed, **kwargs}


def safety_eval(
    run_dir: str | Path,
    cfg: DictConfig,
    settings: Sequence[str],
    *,
    episodes: int,
    seeds: Sequence[int],
    checkpoint: str | None = None,
    video: bool = True,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Evaluate the run's policy under each filter setting; writes and returns the report.

    ``settings``: ``none``, filter names or chains ``a+b``; ``episodes`` per seed (= num_envs).
    ``params``: filter parameters over the run's own ``safety.params`` ({filter: {key: value}}).
    Returns are the task's reward only, no intervention penalty, so that settings compare. Writes
    ``<run>/safety/report.{json,md,png}`` (embodied.safety_report) and, with ``video``,
    ``worst_episode.mp4``.
    """
    from embodied.checkpoint import latest_checkpoint
    from embodied.safety_report import write_report
    from embodied.workflow import bind_policy, build_env, build_filters, load_policy, set_threads

    run_dir, params = Path(run_dir), {k: dict(v) for k, v in (params or {}).items()}
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ConfigError(f"episodes must be an integer >= 1 (per seed), got {episodes!r}")
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"seeds must be a non-empty list of integers, got {list(seeds)!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds appear twice: {list(seeds)}")
    if not settings or len(set(settings)) != len(settings):
        raise ConfigError(f"filters must list distinct settings, got {list(settings)!r}")
    chains = {s: parse_setting(s) for s in settings}
    used = {n for names in chains.values() for n in names}
    for name in sorted(used - set(FILTERS)):  # before any work, in the registry's own words
        try:
            build_chain([name], {}, [], 0)
        except FilterError as e:
            raise ConfigError(str(e)) from None
    stray = sorted(set(params) - used)
    if stray:
        raise ConfigError(f"safety.params given for filters in no setting: {stray}")
    ckpt_path = Path(checkpoint) if checkpoint else latest_checkpoint(run_dir)
    if ckpt_path is None:
        raise ConfigError(f"{run_dir} has no checkpoint in checkpoints/")

    set_threads(cfg)
    plain = setting_config(cfg, [], {})
    ev = OmegaConf.to_container(cfg.task.get("eval") or {}, resolve=True)
    warmup_s = float(ev.get("warmup_s", 0.0))

    def make_env(seed: int, num_envs: int = episodes) -> BatchedEnv:
        env = build_env(plain, num_envs=num_envs, seed=seed)
        if "commands" in ev and hasattr(env, "set_command_ranges"):
            env.set_command_ranges(ev["commands"])
        return env

    env = make_env(seeds[0])
    policy, ckpt = load_policy(run_dir, cfg, env, str(ckpt_path))
    critic = None
    if "critic" in used:  # its file: given, the run's own, or trained now for this policy
        options = params.get("critic", {}).pop("train", None) or {}
        own = setting_config(cfg, ["critic"], params).safety.params.critic
        critic = {"path": own.get("path"), "trained": False}
        if not critic["path"]:
            critic = train_critic(make_env, policy, run_dir / "safety" / "critic.pt", options)
            params["critic"] = {**params.get("critic", {}), "path": critic["path"]}
    filters = {s: build_filters(setting_config(cfg, names, params), env) for s, names in chains.items()}
    for chain in filters.values():  # filters that imagine the policy's next steps (predictive)
        bind_policy(chain, policy)
    per_seed: dict[str, list[dict[str, float | None]]] = {s: [] for s in settings}
    filtered = [s for s in settings if chains[s]]
    target = (filtered or list(settings))[-1]  # the setting whose worst episode goes on video
    target_events: list[torch.Tensor] = []
    try:
        for i, seed in enumerate(seeds):
            if i > 0:
                env.close()
                env = make_env(seed)
            for s in settings:
                env.set_filters(filters[s])
                ep = run_episodes(env, policy, seed=seed, warmup_s=warmup_s)
                per_seed[s].append(seed_figures(ep, chains[s]))
                if s == target:
                    target_events.append(sum(ep.cost_events.values(), torch.zeros_like(ep.ret)))
    finally:
        env.close()

    results = {}
    for s in settings:
        names = list(dict.fromkeys(k for fig in per_seed[s] for k in fig))
        results[s] = {
            "filters": chains[s],
            "params": filters[s].params,
            "metrics": {k: interval([fig.get(k) for fig in per_seed[s]]) for k in names},
        }
    report: dict[str, Any] = {
        "command": command or command_line(run_dir, settings, episodes, seeds, checkpoint, video, params),
        "run": str(run_dir),
        "task": str(cfg.task.name),
        "checkpoint": str(ckpt_path),
        "iteration": int(ckpt["iteration"]),
        "settings": list(settings),
        "seeds": list(seeds),
        "episodes": episodes,
        "warmup_s": warmup_s,
        "confidence": CONFIDENCE,
        "interval": "mean of the per-seed means ± 95 % t-interval half-width "
        "(t(0.975, seeds - 1) sd / sqrt(seeds)); n/a with one seed",
        "params": params,
        "critic": critic,
        "results": results,
        "worst_episode": None,
    }
    if video:
        report["worst_episode"] = _record_worst(
            run_dir / "safety" / "worst_episode.mp4", target, seeds, target_events,
            make_env, filters[target], policy, warmup_s,
        )  # fmt: skip
    write_report(report, run_dir / "safety")
    return report


def _record_worst(
    path: Path,
    setting: str,
    seeds: Sequence[int],
    events: Sequence[torch.Tensor],
    make_env: Callable[..., BatchedEnv],
    chain: FilterChain,
    policy: Policy,
    warmup_s: float,
) -> dict[str, Any]:
    """Re-run the seed of the episode with the most cost events under ``setting`` and film that env."""
    counts = torch.stack([e.cpu() for e in events])  # (seeds, N)
    best = int(torch.argmax(counts.flatten()))  # the first of equals: lowest seed, then env
    i, k = divmod(best, counts.shape[1])
    env = make_env(seeds[i])
    try:
        env.set_filters(chain)
        ep = run_episodes(env, policy, seed=seeds[i], warmup_s=warmup_s, video_path=path, video_env=k)
    finally:
        env.close()
    return {
        "setting": setting,
        "seed": seeds[i],
        "episode": k,
        "cost_events": int(counts[i, k]),
        "rerun_cost_events": int(sum(v[k] for v in ep.cost_events.values())),
        "video": str(path),
    }
