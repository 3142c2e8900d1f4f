"""Each task family's term tables: its own terms plus the generic ones its state supports.

A family sees only its own namespace, so a manipulation config cannot pick up a driving term by
accident, and two terms of one name in a namespace are an error at import or registration time,
never a silent shadow. ``register_term`` adds a term (a function or a class, see ``build_terms``)
to one family from outside the package.
"""

from __future__ import annotations

from collections.abc import Mapping

from embodied.errors import ConfigError
from embodied.terms import TermFn, driving, manipulation
from embodied.terms import costs as loco_costs
from embodied.terms import observations as loco_obs
from embodied.terms import rewards as loco_rewards
from embodied.terms import terminations as loco_terms

KINDS = ("rewards", "costs", "terminations", "observations")


def merge(kind: str, *tables: Mapping[str, TermFn]) -> dict[str, TermFn]:
    """One table from several; a name in two of them is a ConfigError."""
    out: dict[str, TermFn] = {}
    for table in tables:
        for name, fn in table.items():
            if name in out and out[name] is not fn:
                raise ConfigError(f"{kind} term {name!r} is defined twice in one family's namespace")
            out[name] = fn
    return out


def _pick(table: Mapping[str, TermFn], *names: str) -> dict[str, TermFn]:
    return {n: table[n] for n in names}


# Terms of joint-space or action state that the arm (and, for last_action, the car) share with
# the legged robots; their state dataclasses carry the same field names.
_ARM_GENERIC = {
    "rewards": _pick(loco_rewards.REWARDS, "action_rate_l2", "joint_pos_limits"),
    "costs": _pick(loco_costs.COSTS, "joint_limit_violation"),
    "terminations": {},
    "observations": _pick(loco_obs.OBSERVATIONS, "joint_pos_rel", "joint_vel", "last_action", "robot_qpos"),
}
_CAR_GENERIC = {
    "rewards": _pick(loco_rewards.REWARDS, "action_rate_l2"),
    "costs": {},
    "terminations": {},
    "observations": _pick(loco_obs.OBSERVATIONS, "last_action", "robot_qpos"),
}
_FAMILY_OWN = {
    "locomotion": {
        "rewards": loco_rewards.REWARDS,
        "costs": loco_costs.COSTS,
        "terminations": loco_terms.TERMINATIONS,
        "observations": loco_obs.OBSERVATIONS,
    },
    "manipulation": {
        "rewards": manipulation.MANIP_REWARDS,
        "costs": manipulation.MANIP_COSTS,
        "terminations": manipulation.MANIP_TERMINATIONS,
        "observations": manipulation.MANIP_OBSERVATIONS,
    },
    "driving": {
        "rewards": driving.DRIVE_REWARDS,
        "costs": driving.DRIVE_COSTS,
        "terminations": driving.DRIVE_TERMINATIONS,
        "observations": driving.DRIVE_OBSERVATIONS,
    },
}
_GENERIC = {"locomotion": {k: {} for k in KINDS}, "manipulation": _ARM_GENERIC, "driving": _CAR_GENERIC}

FAMILY_TERMS: dict[str, dict[str, dict[str, TermFn]]] = {
    family: {kind: merge(kind, _GENERIC[family][kind], own[kind]) for kind in KINDS}
    for family, own in _FAMILY_OWN.items()
}


def family_terms(family: str) -> dict[str, dict[str, TermFn]]:
    """{kind: {name: term}} of one family; an unknown family is a ConfigError."""
    if family not in FAMILY_TERMS:
        raise ConfigError(f"no term namespace for family {family!r}; known: {', '.join(FAMILY_TERMS)}")
    return FAMILY_TERMS[family]


def register_term(family: str, kind: str, name: str, term: TermFn) -> None:
    """Add a term (a function ``(state, **params) -> (N,)`` or a class) to one family's namespace."""
    if kind not in KINDS:
        raise ConfigError(f"unknown term kind {kind!r}; kinds: {', '.join(KINDS)}")
    table = family_terms(family)[kind]
    if name in table and table[name] is not term:
        raise ConfigError(f"{kind} term {name!r} already exists in the {family} namespace")
    table[name] = term
