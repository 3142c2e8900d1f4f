"""Data-parallel training over torch.distributed: each rank owns its envs, everything else agrees.

A rank reads its place from torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT);
``embodied train dist.nproc=K`` starts K such ranks through torch's elastic agent. With one process
nothing here runs and no process group exists. What the ranks agree on, all by collectives:

    parameters             broadcast from rank 0 at the start (and after a resume)
    gradients              averaged after every backward (``Distributed.grads``, bucketed all-reduce)
    normalizer moments     combined with count weighting at every update (``combine_moments``)
    advantage mean / std   over every rank's rollout, so the standardization is the global one
    adaptive-KL lr         the minibatch KL averaged before the schedule reads it (as rsl_rl does)
    PPO-Lag multiplier     the episode cost pooled over ranks before the multiplier update
    logged statistics      averaged over ranks; rank 0 alone writes logs, checkpoints and exports

A rank that dies makes the others' next collective fail (gloo: at once; NCCL: after
``dist.timeout_s``), which ends the job with one line; there is no watchdog of our own.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from embodied.errors import ConfigError

BUCKET_BYTES = 25 * 2**20  # gradient all-reduce bucket, as DDP's default
ENV_SPLITS = ("per_rank", "split")


@dataclass(frozen=True)
class DistConfig:
    """The ``dist:`` config block, validated."""

    nproc: int = 1
    envs: str = "per_rank"  # per_rank: num_envs on every rank; split: num_envs in total
    timeout_s: float = 300.0
    allow_resize: bool = False


def dist_config(node: Mapping[str, Any] | None) -> DistConfig:
    """The ``dist`` config block (defaults where absent or None); bad values are one-line ConfigErrors."""
    node = dict(node or {})
    unknown = sorted(set(node) - {"nproc", "envs", "timeout_s", "allow_resize"})
    if unknown:
        raise ConfigError(f"unknown dist key(s) {unknown}; known: nproc, envs, timeout_s, allow_resize")
    d = DistConfig(**node)
    if isinstance(d.nproc, bool) or not isinstance(d.nproc, int) or d.nproc < 1:
        raise ConfigError(f"dist.nproc must be an integer >= 1 (processes on this node), got {d.nproc!r}")
    if d.envs not in ENV_SPLITS:
        raise ConfigError(f"dist.envs must be one of {', '.join(ENV_SPLITS)}, got {d.envs!r}")
    if isinstance(d.timeout_s, bool) or not isinstance(d.timeout_s, int | float) or not d.timeout_s > 0:
        raise ConfigError(f"dist.timeout_s must be a number of seconds > 0, got {d.timeout_s!r}")
    if not isinstance(d.allow_resize, bool):
        raise ConfigError(f"dist.allow_resize must be true or false, got {d.allow_resize!r}")
    return d


def launched_world_size() -> int:
    """WORLD_SIZE as torchrun (or our elastic launch) set it; 1 outside a launched job."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None


def backend_for(device: str) -> str:
    """gloo for CPU tensors, NCCL for CUDA ones; NCCL without CUDA is a ConfigError."""
    if not str(device).startswith("cuda"):
        return "gloo"
    if not torch.cuda.is_available() or not dist.is_nccl_available():
        raise ConfigError(
            f"device={device} asks for NCCL, but this torch has no usable CUDA (use device=cpu for gloo)"
        )
    return "nccl"


def check_resume_world(ckpt: Mapping[str, Any], world_size: int, allow_resize: bool, path: Any) -> None:
    """Refuse to resume a run of another world size unless ``dist.allow_resize=true``."""
    saved = int(ckpt.get("world_size", 1))
    if saved != world_size and not allow_resize:
        raise ConfigError(
            f"{path} was trained with {saved} process(es), this job has {world_size}; "
            "resume with the same dist.nproc or set dist.allow_resize=true"
        )


class Distributed:
    """This process's rank in an initialized process group, and the collectives training uses.

    The algorithms call ``grads``, ``mean``, ``mean_std`` and ``pooled_mean`` through their
    ``sync`` attribute (embodied/algorithms/base.py's LocalSync is the one-process twin).
    """

    def __init__(self, rank: int, world_size: int, local_rank: int, device: torch.device) -> None:
        self.rank, self.world_size, self.local_rank, self.device = rank, world_size, local_rank, device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --- what the algorithms call -------------------------------------------------------------
    @torch.no_grad()
    def grads(self, params: Iterable[nn.Parameter]) -> None:
        """Average ``.grad`` over ranks in place, a few flat buckets at a time."""
        grads = [p.grad for p in params if p.grad is not None]
        bucket: list[torch.Tensor] = []
        size = 0
        for g in grads:
            bucket.append(g)
            size += g.numel() * g.element_size()
            if size >= BUCKET_BYTES:
                self._reduce_bucket(bucket)
                bucket, size = [], 0
        if bucket:
            self._reduce_bucket(bucket)

    def _reduce_bucket(self, bucket: list[torch.Tensor]) -> None:
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for g in bucket:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def mean(self, value: float) -> float:
        """The mean of a scalar over ranks (every rank gets the same bits)."""
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t[0]) / self.world_size

    @torch.no_grad()
    def mean_std(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and unbiased std of x pooled over every rank's elements (as ``x.mean(), x.std()``)."""
        x64 = x.detach().to(torch.float64).reshape(-1)
        t = torch.stack([x64.new_tensor(float(x64.numel())), x64.sum(), x64.square().sum()])
        dist.all_reduce(t)
        n, s, ss = t[0], t[1], t[2]
        mean = s / n
        var = (ss - n * mean.square()).clamp(min=0.0) / (n - 1).clamp(min=1.0)
        return mean.to(x.dtype), var.sqrt().to(x.dtype)

    def pooled_mean(self, x: torch.Tensor) -> float | None:
        """Mean of x's elements over every rank; None when no rank has any."""
        t = torch.stack(
            [x.detach().to(torch.float64).sum(), torch.tensor(float(x.numel()), dtype=torch.float64)]
        )
        t = t.to(self.device)
        dist.all_reduce(t)
        return None if float(t[1]) == 0 else float(t[0] / t[1])

    @torch.no_grad()
    def combine_moments(
        self, n: int, mean: torch.Tensor, var: torch.Tensor
    ) -> tuple[int, torch.Tensor, torch.Tensor]:
        """Count-weighted (n, mean, population var) of the union of every rank's batch.

        One all-reduce of a (world, 1 + 2D) table in which each rank fills its own row, then Chan's
        merge, so the result is the statistics of the concatenated batches, the same on every rank.
        """
        d = mean.numel()
        table = torch.zeros(self.world_size, 1 + 2 * d, dtype=torch.float64, device=mean.device)
        table[self.rank, 0] = float(n)
        table[self.rank, 1 : 1 + d] = mean.to(torch.float64)
        table[self.rank, 1 + d :] = var.to(torch.float64)
        dist.all_reduce(table)
        ns, means, vars_ = table[:, :1], table[:, 1 : 1 + d], table[:, 1 + d :]
        total = ns.sum()
        mean_all = (ns * means).sum(0) / total
        var_all = (ns * (vars_ + (means - mean_all).square())).sum(0) / total
        return int(total), mean_all.to(mean.dtype), var_all.to(var.dtype)

    # --- what the runner and the CLI call -----------------------------------------------------
    @torch.no_grad()
    def broadcast_modules(self, modules: Iterable[nn.Module]) -> None:
        """Rank 0's parameters and buffers (normalizer statistics included) onto every rank."""
        for module in modules:
            for t in [*module.parameters(), *module.buffers()]:
                dist.broadcast(t.data, src=0)

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (a run directory, an error message)."""
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def reduce_stats(self, stats: dict[str, float]) -> dict[str, float]:
        """Each logged scalar averaged over the ranks that report it (episode means need finished ones)."""
        gathered: list[dict[str, float] | None] = [None] * self.world_size
        dist.all_gather_object(gathered, stats)
        out: dict[str, list[float]] = {}
        for s in gathered:
            for k, v in (s or {}).items():
                out.setdefault(k, []).append(float(v))
        return {k: sum(v) / len(v) for k, v in out.items()}

    def attach(self, alg: Any) -> None:
        """Make ``alg`` agree with its peers: its sync hook, its normalizers, rank 0's weights."""
        if not hasattr(alg, "sync"):
            raise ConfigError(
                f"{type(alg).__name__} has no sync hook (embodied/algorithms/base.py) and cannot train "
                "with more than one process"
            )
        alg.sync = self
        modules = [m for m in vars(alg).values() if isinstance(m, nn.Module)]
        modules = list({id(m): m for m in [alg.policy, *modules]}.values())
        for module in modules:
            for m in module.modules():
                if hasattr(m, "reduce_moments"):
                    m.reduce_moments = self.combine_moments
        self.broadcast_modules(modules)

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def init_from_env(device: str, timeout_s: float) -> Distributed | None:
    """Join the process group torchrun's environment describes; None when WORLD_SIZE is 1.

    On CUDA, rank r uses ``cuda:LOCAL_RANK``; collectives that wait longer than ``timeout_s`` fail.
    """
    world = launched_world_size()
    if world <= 1:
        return None
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    backend = backend_for(device)
    dev = torch.device("cpu")
    if backend == "nccl":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local_rank} but this node has {torch.cuda.device_count()} GPU(s)")
        dev = torch.device(f"cuda:{local_rank}")
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"device_id": dev} if backend == "nccl" else {}
        dist.init_process_group(
            backend, rank=rank, world_size=world, timeout=timedelta(seconds=float(timeout_s)), **kwargs
        )
    return Distributed(rank, world, local_rank, dev)


def rank_envs(total: int, seed: int, ctx: Distributed | None, split: str) -> tuple[int, int]:
    """(num_envs, env seed) of this rank: ``per_rank`` gives every rank ``total`` envs, ``split``
    divides ``total`` among the ranks; seeds are ``seed * world + rank``, distinct over seeds and ranks."""
    if ctx is None:
        return total, seed
    n = total
    if split == "split":
        if total % ctx.world_size:
            raise ConfigError(
                f"dist.envs=split: num_envs={total} does not divide over {ctx.world_size} ranks"
            )
        n = total // ctx.world_size
    return n, seed * ctx.world_size + ctx.rank


def is_collective_failure(e: BaseException) -> bool:
    """Whether an error came out of a collective (gloo raises plain RuntimeErrors naming itself)."""
    text = str(e).lower()
    return isinstance(e, dist.DistError) or any(w in text for w in ("gloo", "nccl", "timed out", "peer"))


def describe_failure(e: BaseException) -> str:
    """The first line of a collective's failure, as one error line."""
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return f"dist: a peer rank failed or timed out ({type(e).__name__}: {first[:200]})"


def _worker(argv: list[str]) -> None:
    """Entry point of each rank the elastic agent starts: the CLI itself, in the launched environment."""
    from embodied.cli import main

    rc = main(argv)
    if rc:
        sys.exit(rc)


def launch(argv: list[str], nproc: int, monitor_interval: float = 0.5) -> int:
    """Run ``embodied <argv>`` as ``nproc`` ranks on this node through torch's elastic agent.

    A standalone c10d rendezvous on a free local port, as ``torchrun --standalone``; no restarts, so
    the job ends when a rank fails. Returns 0, or raises DistributedFailure naming the first failed rank.
    """
    import uuid

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=monitor_interval,
        start_method="spawn",
    )
    try:
        elastic_launch(config, _worker)(argv)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        raise DistributedFailure(
            f"dist: rank {rank} of {nproc} failed with exit code {failure.exitcode}; see its message above"
        ) from None
    return 0


class DistributedFailure(RuntimeError):
    """A rank failed or a collective timed out; the CLI prints it as one line and exits 1."""
