"""arm_multi: push the instructed one of several cubes onto the instructed one of several pads.

The arm, action modes, costs and shaping are ``ArmEnv``'s push objective; the scene
(``arm_multi.xml``) holds one cube per colour (bodies and free joints ``cube_<colour>``, leading
qpos), and the task draws one flat target pad per colour (visual-only markers of radius
``success_threshold``). Each episode samples a layout (cubes and pads at least ``layout.*`` apart),
a goal (cube index, pad index) and an instruction naming it, from config templates with
``{cube}`` and ``{pad}`` placeholders ("push the {cube} cube onto the {pad} pad").

Two goals, normally one:
- ``env.goal`` (N, 2) long (cube, pad): what the task measures. Reward, ``metric/success``,
  terminations and the privileged observation terms (``object_*`` and ``goal_*`` read the goal's cube
  and pad) all use it.
- the instruction, ``env.instruction`` (N,) long into ``env.instructions`` (``obs["instruction"]``
  (N, 1) int64): what a language-conditioned policy is told; ``env.instruction_goals[i]`` is the
  goal instruction i names, and ``metric/instruction_success`` scores that goal.
They differ only when asked: ``set_instruction`` tells envs another instruction, ``override_goal``
measures them against another goal (both for the current episode), and ``instructions.swap: true``
makes every episode's instruction name a goal other than ``env.goal`` (for "the policy follows the
words" evaluations: ``metric/success`` then scores the original goal, ``metric/instruction_success``
the named one).

``group_size: G`` (``num_envs`` divisible by G): the envs ``[kG, (k+1)G)`` reset in one call get
identical initial states (arm, cubes, pads), goal, instruction and physics randomization, for
group-relative rollouts (GRPO).
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from embodied.env import Obs
from embodied.errors import ConfigError
from embodied.task_env import Markers
from embodied.tasks.manipulation import ARM_DOF, ArmEnv, ArmState
from policies.spec import TensorSpec
from sim.assets import load_model
from sim.backend import SimBackend, SimConfigError
from sim.randomize import PhysicsParams

PLACEHOLDERS = ("cube", "pad")
SPLITS = ("train", "heldout")
# Colour words a template may not spell out: objects are named through the placeholders only.
COLOUR_WORDS = frozenset(
    "red green blue yellow orange purple violet pink black white grey gray brown cyan magenta teal "
    "gold silver".split()
)


@dataclass
class MultiArmState(ArmState):
    """ArmState whose object_* / goal_pos are the goal's cube and pad, plus every cube and pad."""

    goal: torch.Tensor | None = None  # (N, 2) long: cube index, pad index
    cubes_pos: torch.Tensor | None = None  # (N, K, 3)
    cubes_lin_vel: torch.Tensor | None = None  # (N, K, 3)
    pads_pos: torch.Tensor | None = None  # (N, P, 3) pad centres on the table top


def check_templates(templates: Sequence[str], colours: Sequence[str], where: str) -> list[str]:
    """Validate instruction templates: only ``{cube}`` and ``{pad}`` placeholders, both present,
    and no colour spelt out (a colour the task lacks, or one that would contradict the goal)."""
    if isinstance(templates, str) or not templates:
        raise ConfigError(f"{where} must be a non-empty list of templates, got {templates!r}")
    out = []
    for t in templates:
        t = str(t)
        try:
            parsed = list(string.Formatter().parse(t))
        except ValueError as e:
            raise ConfigError(f"{where}: malformed template {t!r} ({e})") from None
        names = [f for _, f, spec, conv in parsed if f is not None]
        for _, f, spec, conv in parsed:
            if f is not None and (f not in PLACEHOLDERS or spec or conv):
                raise ConfigError(
                    f"{where}: template {t!r} names an unknown object {{{f}}}; known: {{cube}}, {{pad}}"
                )
        literal = "".join(text for text, *_ in parsed).lower()
        for word in re.findall(r"[a-z]+", literal):
            if word in COLOUR_WORDS:
                kind = "a colour this task does not have" if word not in colours else "a fixed object"
                raise ConfigError(
                    f"{where}: template {t!r} names {word!r}, {kind}; objects ({', '.join(colours)}) "
                    "are named through {cube} and {pad}"
                )
        missing = [p for p in PLACEHOLDERS if p not in names]
        if missing:
            raise ConfigError(f"{where}: template {t!r} does not name the goal's {' and '.join(missing)}")
        out.append(t)
    if len(set(out)) != len(out):
        raise ConfigError(f"{where} lists a template twice")
    return out


def expand_instructions(
    templates: Sequence[str], cubes: Sequence[str], pads: Sequence[str]
) -> tuple[list[str], torch.Tensor]:
    """Every (template, cube, pad) string, template-major, and the (I, 2) goal each one names."""
    texts, goals = [], []
    for t in templates:
        for c, cube in enumerate(cubes):
            for p, pad in enumerate(pads):
                texts.append(t.format(cube=cube, pad=pad))
                goals.append((c, p))
    return texts, torch.tensor(goals, dtype=torch.long)


class ArmMultiEnv(ArmEnv):
    """Several cubes and pads, a (cube, pad) goal and an instruction per episode (see module doc)."""

    def __init__(self, cfg: Mapping[str, Any], backend: SimBackend, seed: int = 0) -> None:
        n, dev = backend.num_envs, backend.device
        if cfg.get("objective", "push") != "push":
            raise ConfigError(
                f"arm_multi pushes cubes onto pads: objective must be push, got {cfg['objective']!r}"
            )
        objects = dict(cfg.get("objects") or {})
        self.cube_names = [str(c) for c in objects.get("cubes") or []]
        pads = dict(objects.get("pads") or {})
        self.pad_names = [str(p) for p in pads]
        if not self.cube_names or not self.pad_names:
            raise ConfigError("arm_multi needs objects.cubes (a list) and objects.pads (name: rgba)")
        self.pad_rgba = [tuple(float(v) for v in pads[p]) for p in self.pad_names]
        if any(len(c) != 4 for c in self.pad_rgba):
            raise ConfigError(f"objects.pads: each pad needs an rgba of 4 numbers, got {pads}")
        self._read_cubes(cfg["model"], dev)
        self._init_instructions(dict(cfg.get("instructions") or {}), dev)
        self._init_layout(dict(cfg.get("layout") or {}), dev)
        self.group_size = int(cfg.get("group_size", 1))
        if self.group_size < 1 or n % self.group_size:
            raise ConfigError(f"group_size must be >= 1 and divide num_envs ({n}), got {self.group_size}")
        self._leader = torch.arange(n, device=dev) // self.group_size * self.group_size
        k, p = len(self.cube_names), len(self.pad_names)
        self.goal = torch.zeros(n, 2, dtype=torch.long, device=dev)
        self.instruction = torch.zeros(n, dtype=torch.long, device=dev)
        self.pads = torch.zeros(n, p, 3, device=dev)
        self._new_pads = self.pads
        self._rows = torch.arange(n, device=dev)
        self._num_goals = k * p
        super().__init__(cfg, backend, seed)
        self.obs_spec["instruction"] = TensorSpec((1,), torch.int64, "instruction")

    # -- config --------------------------------------------------------------------------------
    def _read_cubes(self, model_path: str, dev: torch.device) -> None:
        try:
            m = load_model(model_path)
        except SimConfigError as e:
            raise ConfigError(str(e)) from None
        pos, vel = [], []
        for name in self.cube_names:
            try:
                j = m.joint(f"cube_{name}")
            except KeyError:
                raise ConfigError(
                    f"objects.cubes names {name!r}, but the model has no free joint 'cube_{name}'"
                ) from None
            if int(j.type[0]) != 0:  # mjJNT_FREE
                raise ConfigError(f"joint 'cube_{name}' must be a free joint")
            pos.append(int(j.qposadr[0]))
            vel.append(int(j.dofadr[0]))
        qa = torch.tensor(pos, device=dev)[:, None]
        va = torch.tensor(vel, device=dev)[:, None]
        self._cube_pos_cols = qa + torch.arange(3, device=dev)  # (K, 3)
        self._cube_quat_cols = qa + 3 + torch.arange(4, device=dev)  # (K, 4)
        self._cube_vel_cols = va + torch.arange(3, device=dev)  # (K, 3)

    def _init_instructions(self, icfg: dict[str, Any], dev: torch.device) -> None:
        unknown = sorted(set(icfg) - {"split", *SPLITS, "swap"})
        if unknown:
            raise ConfigError(f"unknown instructions keys {unknown}; known: split, swap, {', '.join(SPLITS)}")
        self.split = str(icfg.get("split", "train"))
        if self.split not in SPLITS:
            raise ConfigError(f"instructions.split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        colours = sorted({*self.cube_names, *self.pad_names})
        lists = {s: check_templates(icfg.get(s) or [], colours, f"instructions.{s}") for s in SPLITS}
        shared = set(lists["train"]) & set(lists["heldout"])
        if shared:
            raise ConfigError(f"instructions: templates both in train and heldout: {sorted(shared)}")
        self.templates = lists[self.split]
        self.instructions, goals = expand_instructions(self.templates, self.cube_names, self.pad_names)
        self.instruction_goals = goals.to(dev)  # (I, 2)
        self.swap_instructions = bool(icfg.get("swap", False))

    def _init_layout(self, lcfg: dict[str, Any], dev: torch.device) -> None:
        k, p = len(self.cube_names), len(self.pad_names)
        d = {
            key: float(lcfg.get(key, v))
            for key, v in (("cube_cube", 0.09), ("pad_pad", 0.12), ("cube_pad", 0.1))
        }
        self.layout_candidates = int(lcfg.get("candidates", 32))
        if self.layout_candidates < 1 or min(d.values()) < 0:
            raise ConfigError(f"layout distances must be >= 0 and candidates >= 1, got {lcfg}")
        m = torch.full((k + p, k + p), d["cube_pad"], device=dev)
        m[:k, :k], m[k:, k:] = d["cube_cube"], d["pad_pad"]
        self._layout_min = m

    # -- contract additions --------------------------------------------------------------------
    def instruction_texts(self, idx: torch.Tensor) -> list[str]:
        """Instruction strings of indices ``idx`` (any shape, flattened in order)."""
        flat = torch.as_tensor(idx).flatten().tolist()
        bad = [i for i in flat if not 0 <= i < len(self.instructions)]
        if bad:
            raise ValueError(f"instruction indices {bad[:3]} outside [0, {len(self.instructions)})")
        return [self.instructions[i] for i in flat]

    def set_instruction(self, idx: torch.Tensor | int, mask: torch.Tensor | None = None) -> Obs:
        """Tell the envs where ``mask`` (N,) bool (all when None) instruction ``idx`` ((N,) or scalar)
        for the rest of their episode; ``env.goal`` (what success measures) is left as it is.

        Returns the refreshed observation (the one the next action should read).
        """
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.device).expand(self.num_envs)
        if bool(((idx < 0) | (idx >= len(self.instructions))).any()):
            raise ValueError(f"instruction indices must lie in [0, {len(self.instructions)})")
        mask = self._mask(mask)
        self.instruction = torch.where(mask, idx, self.instruction)
        self._obs = {**self._obs, "instruction": self.instruction[:, None].clone()}
        return self._obs

    def override_goal(
        self, cube: torch.Tensor | int, pad: torch.Tensor | int, mask: torch.Tensor | None = None
    ) -> Obs:
        """Measure the envs where ``mask`` (all when None) against goal (cube, pad) for the rest of
        their episode: reward, ``metric/success`` and the privileged observations follow it, the
        instruction does not. Returns the refreshed observation."""
        goal = torch.stack(
            [
                torch.as_tensor(v, dtype=torch.long, device=self.device).expand(self.num_envs)
                for v in (cube, pad)
            ],
            -1,
        )
        lim = torch.tensor([len(self.cube_names), len(self.pad_names)], device=self.device)
        if bool(((goal < 0) | (goal >= lim)).any()):
            raise ValueError(
                f"goal indices must lie in [0, {len(self.cube_names)}) x [0, {len(self.pad_names)})"
            )
        self.goal = torch.where(self._mask(mask)[:, None], goal, self.goal)
        self._update_goal_pos()
        self.state = self._read_state(self.state.action)
        self._obs = self._observe(self.state)
        return self._obs

    def _mask(self, mask: torch.Tensor | None) -> torch.Tensor:
        if mask is None:
            return torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
        return mask.to(self.device, torch.bool)

    def robot_qpos_columns(self) -> torch.Tensor:
        """Arm joints and fingers, then every cube's free joint (pos, quat)."""
        cubes = torch.cat([self._cube_pos_cols, self._cube_quat_cols], -1).flatten()
        return torch.cat([self._qpos_adr, cubes])

    def markers(self) -> list[Markers]:
        """One flat pad per colour on the table, of the success radius."""
        r = float(self.success_threshold)
        return [
            Markers(self.pads[:, j], "cylinder", (r, 0.001, 0.0), rgba)
            for j, rgba in enumerate(self.pad_rgba)
        ]

    # -- hooks ---------------------------------------------------------------------------------
    def _read_state(self, action: torch.Tensor) -> MultiArmState:
        base = super()._read_state(action)  # its object fields read the first cube: replaced here
        sim = self.backend.state()
        cubes, rows = sim.qpos[:, self._cube_pos_cols], self._rows
        cube = self.goal[:, 0]
        obj = cubes[rows, cube]
        dist = (obj[:, :2] - self.goal_pos[:, :2]).norm(dim=-1)
        resting = obj[:, 2] < self.table_height + self.object_half + 0.01
        s = MultiArmState(**{f.name: getattr(base, f.name) for f in fields(ArmState)})
        s.object_pos = obj
        s.object_quat = sim.qpos[:, self._cube_quat_cols][rows, cube]
        vel = sim.qvel[:, self._cube_vel_cols]
        s.object_lin_vel = vel[rows, cube]
        s.success = (dist < self.success_threshold) & resting
        s.goal, s.cubes_pos, s.cubes_lin_vel, s.pads_pos = self.goal, cubes, vel, self.pads
        if s.finger_contact is not None:  # (N, 2K) in cube order -> the goal's cube's pair
            s.finger_contact = s.finger_contact.view(self.num_envs, -1, 2)[rows, cube]
        return s

    def _update_goal_pos(self) -> None:
        pad = self.pads[self._rows, self.goal[:, 1]]
        self.goal_pos = torch.cat(
            [pad[:, :2], torch.full_like(pad[:, 2:], self.table_height + self.object_half)], -1
        )

    def _group_sample(self, sample: torch.Tensor) -> torch.Tensor:
        """(N / G, ...) draws -> (N, ...): each group of G consecutive envs shares one."""
        return sample.repeat_interleave(self.group_size, 0)

    def _sample_layout(self, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(m, K, 2) cube and (m, P, 2) pad xy, placed one at a time (pads first): each object takes
        the first of ``candidates`` draws that keeps the layout distances to those already placed,
        else the draw that misses them by least."""
        k, p, g, dev = len(self.cube_names), len(self.pad_names), self.generator, self.device
        rows = torch.arange(m, device=dev)
        order = [*range(k, k + p), *range(k)]  # columns of _layout_min: cubes 0..K-1, pads K..K+P-1
        placed: list[torch.Tensor] = []
        for n_done, j in enumerate(order):
            box = self.goal_range if j >= k else self.object_range
            lo, hi = box[0, :2], box[1, :2]
            cand = lo + (hi - lo) * torch.rand(m, self.layout_candidates, 2, generator=g, device=dev)
            if placed:
                prev = torch.stack(placed, 1)  # (m, n_done, 2)
                need = self._layout_min[j, order[:n_done]]  # (n_done,)
                slack = (torch.cdist(cand, prev) - need).amin(-1)  # (m, C)
                ok = slack >= 0
                pick = torch.where(ok.any(-1), ok.float().argmax(-1), slack.argmax(-1))
                cand = cand[rows, pick]
            else:
                cand = cand[:, 0]
            placed.append(cand)
        pads, cubes = torch.stack(placed[:p], 1), torch.stack(placed[p:], 1)
        return cubes, pads

    def _reset_state(self, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, g, dev = self.num_envs, self.generator, self.device
        m, k = n // self.group_size, len(self.cube_names)
        qpos = self.home_qpos.expand(n, -1).clone()
        qvel = torch.zeros(n, self.backend.info.nv, device=dev)
        noise = float(self.reset_cfg.get("joint_pos_noise", 0.0))
        arm, lim = self._qpos_adr[:ARM_DOF], self.joint_soft_limits
        jitter = self._group_sample((torch.rand(m, ARM_DOF, generator=g, device=dev) * 2 - 1) * noise)
        qpos[:, arm] = (qpos[:, arm] + jitter).clamp(lim[:, 0], lim[:, 1])
        cubes, pads = (self._group_sample(x) for x in self._sample_layout(m))
        z = self.table_height + self.object_half
        qpos[:, self._cube_pos_cols] = torch.cat([cubes, torch.full_like(cubes[..., :1], z)], -1)
        max_yaw = float(self.reset_cfg.get("object_yaw", 0.0))
        yaw = self._group_sample((torch.rand(m, k, generator=g, device=dev) * 2 - 1) * max_yaw)
        zeros = torch.zeros_like(yaw)
        qpos[:, self._cube_quat_cols] = torch.stack(
            [torch.cos(yaw / 2), zeros, zeros, torch.sin(yaw / 2)], -1
        )
        self._new_pads = torch.cat([pads, torch.full_like(pads[..., :1], self.table_height)], -1)
        self._ik_target = torch.where(mask[:, None], qpos[:, arm], self._ik_target)
        return qpos, qvel

    def _on_reset(self, mask: torch.Tensor) -> None:
        g, dev = self.generator, self.device
        m, p = self.num_envs // self.group_size, len(self.pad_names)
        flat = torch.randint(self._num_goals, (m,), generator=g, device=dev)
        template = torch.randint(len(self.templates), (m,), generator=g, device=dev)
        told = flat
        if self.swap_instructions:  # another goal, uniform over the other K P - 1
            told = (flat + torch.randint(1, self._num_goals, (m,), generator=g, device=dev)) % self._num_goals
        goal = self._group_sample(torch.stack([flat // p, flat % p], -1))
        instruction = self._group_sample(template * self._num_goals + told)
        self.goal = torch.where(mask[:, None], goal, self.goal)
        self.instruction = torch.where(mask, instruction, self.instruction)
        self.pads = torch.where(mask[:, None, None], self._new_pads, self.pads)
        self._update_goal_pos()
        self.last_action = torch.where(mask[:, None], 0.0, self.last_action)

    def _resample_randomization(self, mask: torch.Tensor) -> None:
        super()._resample_randomization(mask)
        if self.group_size == 1:
            return
        lead = self._leader  # every env takes its group's first env's draw
        if self._randomize_physics:
            for name in PhysicsParams.__dataclass_fields__:
                setattr(self.physics, name, getattr(self.physics, name)[lead])
            self.backend.set_physics(mask, self.physics)
        if self.latency_range[1] > 0:
            self.latency = self.latency[lead]

    def _observe(self, s: MultiArmState, advance: bool = False) -> Obs:
        out = super()._observe(s, advance)
        out["instruction"] = self.instruction[:, None].clone()
        return out

    def _metrics(self, s: MultiArmState) -> dict[str, torch.Tensor]:
        out = super()._metrics(s)
        told = self.instruction_goals[self.instruction]  # (N, 2) the goal the instruction names
        rows = self._rows
        cube, pad = s.cubes_pos[rows, told[:, 0]], s.pads_pos[rows, told[:, 1]]
        near = (cube[:, :2] - pad[:, :2]).norm(dim=-1) < self.success_threshold
        resting = cube[:, 2] < self.table_height + self.object_half + 0.01
        out["instruction_success"] = (near & resting).float()
        return out
