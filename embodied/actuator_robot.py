"""A simulated robot with a hidden actuator, logging what a real one would: for testing the fitter.

``simulate_log`` drives one MuJoCo robot (go2 by default) whose actuator model (sim/actuators.py)
the caller chooses and the fitter does not see, with random joint targets held for random spans,
and records one row per physics tick: the commanded target, the measured position and velocity
(before the tick) and the torque the motor applied, each with measurement noise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from embodied.actuator_log import ActuatorLog
from sim.mujoco_backend import MujocoBackend

# The hidden robot of tests and benchmarks: a DC motor unlike the training default (ideal PD),
# plus 2 physics steps (10 ms) of delay.
HIDDEN_GO2 = {
    "model": "dc_motor",
    "tau_stall": [30.0, 30.0, 58.0] * 4,  # N m; efforts 23.7, 23.7, 45.43 clip it near stall
    "w_free": [22.0, 22.0, 18.0] * 4,  # rad/s
    "delay_steps": 2,
}


def simulate_log(
    actuator: Mapping[str, Any] = HIDDEN_GO2,
    *,
    model: str = "go2_flat.xml",
    ticks: int = 6000,
    physics_dt: float = 0.005,
    amplitude: float = 0.9,
    hold: tuple[int, int] = (6, 40),
    noise: tuple[float, float, float] = (1e-4, 0.02, 0.1),
    seed: int = 0,
) -> ActuatorLog:
    """``ticks`` rows of one robot driven by random targets (home +- ``amplitude`` rad, each held
    ``hold`` ticks); ``noise`` is the std of the (position, velocity, torque) measurement noise."""
    gen = torch.Generator().manual_seed(seed)
    sim = MujocoBackend(model, 1, "cpu", decimation=1, physics_dt=physics_dt)
    sim.set_actuator(dict(actuator))
    act = sim.actuator
    if act is None or not act.torque_mode:
        raise ValueError("simulate_log needs a torque actuator model (dc_motor or mlp)")
    info = sim.info
    home = torch.as_tensor(info.home_qpos[info.qpos_adr], dtype=torch.float64)
    lo, hi = (torch.as_tensor(info.ctrl_range[:, k], dtype=torch.float64) for k in (0, 1))
    qa = torch.as_tensor(info.qpos_adr, dtype=torch.long)
    da = torch.as_tensor(info.dof_adr, dtype=torch.long)
    nu = info.nu
    rows = {k: torch.zeros(ticks, nu, dtype=torch.float64) for k in ("target", "pos", "vel", "torque")}
    target, left = home.clone(), 0
    for t in range(ticks):
        if left == 0:
            target = (home + amplitude * (2 * torch.rand(nu, generator=gen, dtype=torch.float64) - 1)).clamp(
                lo, hi
            )
            left = int(torch.randint(hold[0], hold[1] + 1, (1,), generator=gen))
        left -= 1
        s = sim.state()
        rows["pos"][t] = s.qpos[0, qa].double()
        rows["vel"][t] = s.qvel[0, da].double()
        rows["target"][t] = target
        sim.step(target[None].float())
        rows["torque"][t] = act.last_torque[0]
    sim.close()
    for k, std in zip(("pos", "vel", "torque"), noise, strict=True):
        rows[k] += std * torch.randn(rows[k].shape, generator=gen, dtype=torch.float64)
    time = torch.arange(ticks, dtype=torch.float64) * physics_dt
    return ActuatorLog(
        joints=list(info.actuated_joints),
        time=time,
        target=rows["target"],
        pos=rows["pos"],
        vel=rows["vel"],
        torque=rows["torque"],
        valid=torch.ones(ticks, dtype=torch.bool),
        dropped=0,
        dt=physics_dt,
    )
