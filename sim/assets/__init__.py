"""Robot and scene models written for this project, and a loader for a user's own MJCF/URDF."""

from __future__ import annotations

from pathlib import Path

import mujoco

from sim.backend import SimConfigError

ASSET_DIR = Path(__file__).resolve().parent


def resolve_model_path(path: str | Path) -> Path:
    """A bare name (``go2_flat.xml``) means a bundled asset, ``gymnasium:ant.xml`` one of
    gymnasium's MuJoCo assets; anything else is a user path."""
    text = str(path)
    if text.startswith("gymnasium:"):
        try:
            import gymnasium.envs.mujoco as gym_mujoco
        except ImportError as e:
            raise SimConfigError(f"{text} needs gymnasium[mujoco]: {e}") from None
        text = str(Path(gym_mujoco.__file__).parent / "assets" / text.split(":", 1)[1])
    p = Path(text).expanduser()
    if not p.is_absolute() and not p.exists() and (ASSET_DIR / p).exists():
        p = ASSET_DIR / p
    if not p.exists():
        raise SimConfigError(f"robot model file not found: {p}")
    if p.suffix.lower() not in (".xml", ".mjcf", ".urdf"):
        raise SimConfigError(f"robot model must be MJCF (.xml) or URDF (.urdf), got {p.name}")
    return p


def load_model(path: str | Path) -> mujoco.MjModel:
    """Compile an MJCF or URDF file into an MjModel, with a one-line error when it is malformed."""
    p = resolve_model_path(path)
    try:
        return mujoco.MjModel.from_xml_path(str(p))
    except ValueError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unknown error"
        raise SimConfigError(f"malformed robot model {p}: {first}") from None
