"""Captions from task state, for training and evaluating the sim-domain VLM (embodied/rewards/sim_vlm.py).

A task's state is read into **facets**: small integer labels per env (N,), each a fact a frame
shows, e.g. arm_push's ``place`` (the cube is on / near / far from the green goal pad) and ``side``
(where the cube is relative to the pad, as the camera sees it). -1 marks a facet that does not apply
or sits in the band between two values (a cube 5.5 cm from the pad is neither clearly on nor near);
captions about it are then neither positives nor negatives for that frame.

A **caption bank** is every sentence of a split's templates: each template names the facet values
it states (``{"place": ON}``) and is written once per noun phrase of the split. A frame matches a
caption when every facet the caption states has that value in the frame. The ``heldout`` split's
templates and noun phrases are never used in training; the ranking benchmark scores frames with them.

Camera conventions (the tasks' default cameras): arm tasks look from the table's front (+x) at the
arm, so the image's right is +y and "behind" is farther from the camera (smaller x); the driving
chase camera rides behind the car, so "left" is the car's left (lane offset > 0).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from embodied.errors import ConfigError

Facets = dict[str, torch.Tensor]  # facet name -> (N,) long, -1 where it does not apply
SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class Caption:
    text: str
    task: str
    facets: tuple[tuple[str, int], ...]  # the facet values the sentence states


def _band(x: torch.Tensor, edges: list[tuple[float, float]]) -> torch.Tensor:
    """Index of the [lo, hi) interval holding each value of ``x`` (N,); -1 in the gaps between them."""
    out = torch.full(x.shape, -1, dtype=torch.long, device=x.device)
    for i, (lo, hi) in enumerate(edges):
        out = torch.where((x >= lo) & (x < hi), i, out)
    return out


# -- arm_push ---------------------------------------------------------------------------------
ON, NEAR, FAR = 0, 1, 2
LEFT, RIGHT, BEHIND, FRONT = 0, 1, 2, 3
CLOSE, AWAY = 0, 1


def push_facets(env: Any) -> Facets:
    """place: cube centre to goal (xy) within the success radius / 7-13 cm / beyond 16 cm; side: the
    dominant axis of cube - goal in the camera's view (off the pad only); hand: the hand within 7 cm
    of the cube or beyond 12 cm."""
    s = env.state
    thr = float(env.success_threshold)
    d = s.object_pos[:, :2] - s.goal_pos[:, :2]
    dist = d.norm(dim=-1)
    place = _band(dist, [(0.0, 0.8 * thr), (thr + 0.02, thr + 0.08), (thr + 0.11, 1e9)])
    place = torch.where(s.success, place, torch.where(place == ON, -1, place))  # on = the task's success
    lateral = d[:, 1].abs() >= d[:, 0].abs()
    side = torch.where(
        lateral, torch.where(d[:, 1] < 0, LEFT, RIGHT), torch.where(d[:, 0] < 0, BEHIND, FRONT)
    )
    major = torch.maximum(d[:, 0].abs(), d[:, 1].abs())
    minor = torch.minimum(d[:, 0].abs(), d[:, 1].abs())
    side = torch.where((dist > thr + 0.03) & (major > 1.5 * minor), side, -1)
    hand = _band((s.ee_pos - s.object_pos).norm(dim=-1), [(0.0, 0.07), (0.12, 1e9)])
    return {"place": place, "side": side, "hand": hand}


OBJ = {
    "train": ["the red cube", "the cube", "the red block", "the small red cube"],
    "heldout": ["the red box"],
}
PAD = {
    "train": ["the green target", "the green pad", "the goal", "the green goal marker"],
    "heldout": ["the green disc", "the goal spot"],
}
PUSH_TEMPLATES = {
    "train": [
        ({"place": ON}, "{obj} is on {pad}"),
        ({"place": ON}, "{obj} sits on {pad}"),
        ({"place": ON}, "{obj} has reached {pad}"),
        ({"place": ON}, "the arm pushed {obj} onto {pad}"),
        ({"place": NEAR}, "{obj} is close to {pad} but not on it"),
        ({"place": NEAR}, "{obj} is almost at {pad}"),
        ({"place": NEAR}, "{obj} is next to {pad}"),
        ({"place": FAR}, "{obj} is far from {pad}"),
        ({"place": FAR}, "{obj} is a long way from {pad}"),
        ({"place": FAR}, "{obj} is nowhere near {pad}"),
        ({"side": LEFT}, "{obj} is left of {pad}"),
        ({"side": RIGHT}, "{obj} is right of {pad}"),
        ({"side": BEHIND}, "{obj} is behind {pad}"),
        ({"side": FRONT}, "{obj} is in front of {pad}"),
        ({"side": LEFT, "place": FAR}, "{obj} is far to the left of {pad}"),
        ({"side": RIGHT, "place": FAR}, "{obj} is far to the right of {pad}"),
        ({"side": LEFT, "place": NEAR}, "{obj} is just left of {pad}"),
        ({"side": RIGHT, "place": NEAR}, "{obj} is just right of {pad}"),
        ({"hand": CLOSE}, "the gripper is next to {obj}"),
        ({"hand": CLOSE}, "the robot hand touches {obj}"),
        ({"hand": AWAY}, "the gripper is away from {obj}"),
        ({"hand": AWAY}, "the robot hand is far from {obj}"),
    ],
    "heldout": [
        ({"place": ON}, "{obj} rests on top of {pad}"),
        ({"place": ON}, "{obj} was pushed onto {pad}"),
        ({"place": NEAR}, "{obj} stopped just short of {pad}"),
        ({"place": FAR}, "{obj} lies well away from {pad}"),
        ({"side": LEFT}, "{obj} is to the left side of {pad}"),
        ({"side": RIGHT}, "{obj} is on the right side of {pad}"),
        ({"hand": CLOSE}, "the fingers are beside {obj}"),
        ({"hand": AWAY}, "the fingers are distant from {obj}"),
    ],
}

# -- arm_reach --------------------------------------------------------------------------------
AT, MID, OFF = 0, 1, 2
HAND = {
    "train": ["the hand", "the gripper", "the robot hand", "the end effector"],
    "heldout": ["the arm's tip"],
}
SPOT = {
    "train": ["the green target", "the green ball", "the target", "the green sphere"],
    "heldout": ["the green dot"],
}
REACH_TEMPLATES = {
    "train": [
        ({"reach": AT}, "{hand} is at {spot}"),
        ({"reach": AT}, "{hand} touches {spot}"),
        ({"reach": AT}, "{hand} has reached {spot}"),
        ({"reach": MID}, "{hand} is close to {spot}"),
        ({"reach": MID}, "{hand} is almost at {spot}"),
        ({"reach": OFF}, "{hand} is far from {spot}"),
        ({"reach": OFF}, "{hand} is a long way from {spot}"),
    ],
    "heldout": [
        ({"reach": AT}, "{hand} arrived on {spot}"),
        ({"reach": MID}, "{hand} is nearly on {spot}"),
        ({"reach": OFF}, "{hand} is distant from {spot}"),
    ],
}


def reach_facets(env: Any) -> Facets:
    """reach: hand to target within the success radius / 5-12 cm / beyond 18 cm."""
    s = env.state
    thr = float(env.success_threshold)
    dist = (s.ee_pos - s.goal_pos).norm(dim=-1)
    reach = _band(dist, [(0.0, thr), (thr + 0.02, thr + 0.09), (thr + 0.15, 1e9)])
    return {"reach": reach}


# -- driving ----------------------------------------------------------------------------------
CENTRED, DRIFTING, OFFROAD = 0, 1, 2
DRIFT_LEFT, DRIFT_RIGHT = 0, 1
CAR = {"train": ["the car", "the red car", "the vehicle"], "heldout": ["the automobile"]}
DRIVE_TEMPLATES = {
    "train": [
        ({"lane": CENTRED}, "{car} drives in the centre of its lane"),
        ({"lane": CENTRED}, "{car} stays in its lane"),
        ({"lane": CENTRED}, "{car} is centred in the lane"),
        ({"lane": CENTRED}, "{car} keeps to the middle of its lane"),
        ({"lane": DRIFTING}, "{car} drifts out of its lane"),
        ({"lane": DRIFTING}, "{car} crosses the lane line"),
        ({"lane": DRIFTING}, "{car} is leaving its lane"),
        ({"lane": OFFROAD}, "{car} has left the road"),
        ({"lane": OFFROAD}, "{car} is off the road"),
        ({"lane": OFFROAD}, "{car} drives on the grass"),
        ({"drift": DRIFT_LEFT}, "{car} is left of its lane centre"),
        ({"drift": DRIFT_RIGHT}, "{car} is right of its lane centre"),
        ({"lane": DRIFTING, "drift": DRIFT_LEFT}, "{car} drifts to the left"),
        ({"lane": DRIFTING, "drift": DRIFT_RIGHT}, "{car} drifts to the right"),
    ],
    "heldout": [
        ({"lane": CENTRED}, "{car} follows the middle of its lane"),
        ({"lane": CENTRED}, "{car} is driving well inside its lane"),
        ({"lane": DRIFTING}, "{car} is wandering out of its lane"),
        ({"lane": OFFROAD}, "{car} went off the road onto the grass"),
        ({"drift": DRIFT_LEFT}, "{car} sits toward the left of its lane"),
    ],
}


def drive_facets(env: Any) -> Facets:
    """lane: |lane offset| under 0.35 m / over 1.0 m (a wheel over the line) on the road / the car's
    centre past the road's edge; drift: the side of a lane offset over 0.5 m."""
    s = env.state
    off = s.lane_offset
    on_road = s.road_offset.abs() < s.road_half_width - 0.2
    past = s.road_offset.abs() > s.road_half_width + 0.1
    lane = torch.where(off.abs() < 0.35, CENTRED, -1)
    lane = torch.where((off.abs() > 1.0) & on_road, DRIFTING, lane)
    lane = torch.where(past, OFFROAD, lane)
    drift = torch.where(off.abs() > 0.5, torch.where(off > 0, DRIFT_LEFT, DRIFT_RIGHT), -1)
    return {"lane": lane, "drift": drift}


@dataclass(frozen=True)
class TaskCaptions:
    facets: Callable[[Any], Facets]
    templates: dict[str, list[tuple[dict[str, int], str]]]
    nouns: dict[str, dict[str, list[str]]]  # placeholder -> split -> phrases
    success: tuple[str, int]  # the facet value that is the task's goal (the ranking's positives)


TASKS: dict[str, TaskCaptions] = {
    "arm_push": TaskCaptions(push_facets, PUSH_TEMPLATES, {"obj": OBJ, "pad": PAD}, ("place", ON)),
    "arm_reach": TaskCaptions(reach_facets, REACH_TEMPLATES, {"hand": HAND, "spot": SPOT}, ("reach", AT)),
    "driving_lane_follow": TaskCaptions(drive_facets, DRIVE_TEMPLATES, {"car": CAR}, ("lane", CENTRED)),
}


def task_captions(task: str) -> TaskCaptions:
    if task not in TASKS:
        raise ConfigError(f"no captions for task {task!r}; captioned tasks: {', '.join(sorted(TASKS))}")
    return TASKS[task]


def _fill(template: str, nouns: dict[str, dict[str, list[str]]], split: str) -> list[str]:
    out = [template]
    for key, phrases in nouns.items():
        slot = "{" + key + "}"
        if any(slot in t for t in out):
            out = [t.replace(slot, p) for t in out for p in phrases[split]]
    return out


def caption_bank(task: str, split: str = "train") -> list[Caption]:
    """Every caption sentence of the task's ``split`` (templates x noun phrases), in a fixed order."""
    if split not in SPLITS:
        raise ConfigError(f"unknown caption split {split!r}; known: {', '.join(SPLITS)}")
    tc = task_captions(task)
    bank = []
    for facets, template in tc.templates[split]:
        for text in _fill(template, tc.nouns, split):
            bank.append(Caption(text, task, tuple(sorted(facets.items()))))
    return bank


def prompts_for(task: str, facet: str, value: int, split: str = "heldout") -> list[str]:
    """The split's sentences that state exactly ``facet == value`` (prompts for the ranking)."""
    return [c.text for c in caption_bank(task, split) if c.facets == ((facet, value),)]


def match_matrix(facets: Facets, task: str, bank: list[Caption]) -> torch.Tensor:
    """(N, K) int8: 1 where frame n shows what caption k states, 0 where it shows otherwise, -1 where a
    stated facet does not apply to the frame (or the caption is of the frame's task but unknown)."""
    n = next(iter(facets.values())).shape[0]
    out = torch.zeros(n, len(bank), dtype=torch.int8)
    for k, c in enumerate(bank):
        if c.task != task:
            continue  # another task's caption: a negative
        ok = torch.ones(n, dtype=torch.bool)
        unknown = torch.zeros(n, dtype=torch.bool)
        for name, value in c.facets:
            v = facets[name].cpu()
            unknown |= v < 0
            ok &= v == value
        out[:, k] = torch.where(unknown, -1, ok.to(torch.int8))
    return out


def describe(facets: Facets, task: str, generator: torch.Generator, split: str = "train") -> list[str]:
    """One caption per frame drawn from the split's matching sentences (deterministic for a given
    state and generator state); frames that no sentence matches get ``""``."""
    bank = caption_bank(task, split)
    m = match_matrix(facets, task, bank) == 1
    pick = torch.rand(m.shape[0], generator=generator)
    out = []
    for row, u in zip(m, pick.tolist(), strict=True):
        idx = row.nonzero().flatten().tolist()
        out.append(bank[idx[min(int(u * len(idx)), len(idx) - 1)]].text if idx else "")
    return out
