"""The MuJoCo backend: decimation, PD servos, masked reset, rendering, model loading errors."""

from __future__ import annotations

import pytest
import torch

from sim.assets import load_model
from sim.backend import SimConfigError, make_backend

HINGE = """
<mujoco>
  <option timestep="0.002" gravity="0 0 0"/>
  <worldbody>
    <body>
      <joint name="j" type="hinge" axis="0 0 1" armature="0.01" damping="0.01"/>
      <geom type="capsule" fromto="0 0 0 0.2 0 0" size="0.02" mass="0.5"/>
    </body>
  </worldbody>
  <actuator><position name="a" joint="j" kp="20" kv="1" forcerange="-2 2"/></actuator>
  <sensor><actuatorfrc name="torque" actuator="a"/></sensor>
</mujoco>
"""

URDF = """<?xml version="1.0"?>
<robot name="arm">
  <link name="base"><inertial><mass value="1"/><inertia ixx="0.01" iyy="0.01" izz="0.01" ixy="0" ixz="0" iyz="0"/></inertial></link>
  <link name="link1"><inertial><mass value="0.5"/><inertia ixx="0.01" iyy="0.01" izz="0.01" ixy="0" ixz="0" iyz="0"/></inertial></link>
  <joint name="j1" type="revolute"><parent link="base"/><child link="link1"/><axis xyz="0 0 1"/>
    <limit lower="-1" upper="1" effort="5" velocity="3"/></joint>
</robot>
"""


@pytest.fixture
def hinge(tmp_path):
    p = tmp_path / "hinge.xml"
    p.write_text(HINGE)
    return str(p)


def test_one_step_is_decimation_physics_steps(hinge):
    b = make_backend("mujoco", hinge, 3, decimation=5, nthread=2)
    b.step(torch.zeros(3, 1))
    assert torch.allclose(b.state().time, torch.full((3,), 5 * 0.002))
    b.close()


def test_position_servo_tracks_target_and_respects_torque_limit(hinge):
    b = make_backend("mujoco", hinge, 2, decimation=10, nthread=1)
    target = torch.tensor([[0.5], [-0.3]])
    for _ in range(100):  # 2 s
        b.step(target)
    assert torch.allclose(b.state().qpos, target, atol=1e-3)
    torque = b.state().sensordata[:, b.sensor("torque")]
    assert torque.abs().max() < 0.05, "at the target the servo holds with ~no torque"
    b.step(torch.tensor([[50.0], [-50.0]]))  # a far target saturates at the forcerange
    torque = b.state().sensordata[:, b.sensor("torque")]
    assert torch.allclose(torque, torch.tensor([[2.0], [-2.0]]))
    b.close()


def test_masked_reset_writes_only_masked_rows(hinge):
    b = make_backend("mujoco", hinge, 4, decimation=2, nthread=2)
    for _ in range(5):
        b.step(torch.full((4, 1), 0.4))
    before = b.state().qpos.clone()
    mask = torch.tensor([True, False, True, False])
    b.reset(mask, torch.full((4, 1), -0.2), torch.zeros(4, 1))
    after = b.state()
    assert torch.equal(after.qpos[~mask], before[~mask])
    assert torch.allclose(after.qpos[mask], torch.full((2, 1), -0.2))
    assert (after.time[mask] == 0).all() and (after.time[~mask] > 0).all()
    b.close()


def test_render_gives_uint8_frames_of_chosen_envs():
    b = make_backend("mujoco", "go2_flat.xml", 3, decimation=4, nthread=1)
    frames = b.render([0, 2], 64, 48, camera="track")
    assert frames.shape == (2, 3, 48, 64) and frames.dtype == torch.uint8
    assert frames.float().std() > 1.0, "an image, not a blank buffer"
    b.close()


def test_sensor_lookup_by_name():
    b = make_backend("mujoco", "go2_flat.xml", 1)
    assert b.sensor("FL_foot_contact").stop - b.sensor("FL_foot_contact").start == 1
    with pytest.raises(SimConfigError, match="no sensor named"):
        b.sensor("nope")
    b.close()


def test_missing_model_file_is_a_clear_error(tmp_path):
    with pytest.raises(SimConfigError, match="not found"):
        load_model(tmp_path / "robot.xml")


def test_malformed_model_is_a_one_line_error(tmp_path):
    p = tmp_path / "bad.xml"
    p.write_text("<mujoco><worldbody><body><geom type='sphere'</worldbody></mujoco>")
    with pytest.raises(SimConfigError, match="malformed robot model") as e:
        load_model(p)
    assert "\n" not in str(e.value)


def test_wrong_extension_is_refused(tmp_path):
    p = tmp_path / "robot.obj"
    p.write_text("v 0 0 0")
    with pytest.raises(SimConfigError, match="MJCF"):
        load_model(p)


def test_user_urdf_loads(tmp_path):
    p = tmp_path / "arm.urdf"
    p.write_text(URDF)
    m = load_model(p)
    assert m.njnt == 1 and m.joint(0).name == "j1"


def test_unknown_engine_is_refused():
    with pytest.raises(SimConfigError, match="unknown sim engine 'bullet'"):
        make_backend("bullet", "go2_flat.xml", 1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_refused():
    with pytest.raises(SimConfigError, match="CUDA is not available"):
        make_backend("mujoco", "go2_flat.xml", 1, device="cuda")
