"""Demonstrations in LeRobot's dataset layout v3.0: exact round trip, consistent meta, whole episodes
out of batched rollouts, ``embodied demos``, bad input, and LeRobot's own loader where it installs."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest
import torch

pq = pytest.importorskip("pyarrow.parquet", reason="the demos extra (pyarrow, av) is not installed")
pytest.importorskip("av", reason="the demos extra (pyarrow, av) is not installed")

from embodied.data.lerobot import EpisodeBatch, LeRobotWriter, write_episodes  # noqa: E402
from embodied.data.lerobot_read import load_lerobot  # noqa: E402
from embodied.data.lerobot_record import EpisodeRecorder, task_texts, whole_episodes  # noqa: E402
from embodied.env import StepOut  # noqa: E402
from embodied.errors import ConfigError  # noqa: E402
from policies.spec import TensorSpec  # noqa: E402
from tests.test_cli import assert_one_line_error, embodied  # noqa: E402

CAM = "observation.images.rgb"


def synthetic(lengths=(5, 9, 3, 7), h=20, w=22, seed=0) -> EpisodeBatch:
    """Episodes of random values and random frames (the hardest input for a video codec)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    f = int(lengths.sum())
    done = torch.zeros(f, dtype=torch.bool)
    done[lengths.cumsum(0) - 1] = True
    cols = {
        "observation.state": torch.randn(f, 4, generator=g),
        CAM: torch.randint(0, 256, (f, 3, h, w), dtype=torch.uint8, generator=g),
        "action": torch.rand(f, 2, generator=g) * 2 - 1,
        "next.reward": torch.randn(f, generator=g),
        "next.done": done,
        "next.success": torch.rand(f, generator=g) > 0.5,
        "cost": (torch.rand(f, generator=g) > 0.7).float(),
    }
    tasks = ["push the red cube onto the blue pad", "reach the goal", "push the red cube onto the blue pad"]
    return EpisodeBatch(cols, lengths, (tasks * 4)[: len(lengths)])


@pytest.fixture(scope="module", params=["one_file", "a_file_per_episode"])
def written(request, tmp_path_factory) -> tuple[Path, EpisodeBatch]:
    batch = synthetic()
    limit = 100.0 if request.param == "one_file" else 1e-6  # a tiny limit: every episode starts a file
    root = tmp_path_factory.mktemp(request.param) / "ds"
    write_episodes(root, batch, 25, data_files_size_in_mb=limit, video_files_size_in_mb=limit, chunks_size=2)
    return root, batch


def test_round_trip_is_exact_for_every_column_and_frame(written):
    root, batch = written
    d = load_lerobot(root)
    for k, v in batch.columns.items():
        got = d.frames(k) if k == CAM else d.columns[k]
        assert got.dtype == v.dtype and torch.equal(got, v), k
    assert d.episode_tasks() == batch.tasks
    assert [d.tasks[i] for i in d.columns["task_index"][batch.lengths.cumsum(0) - 1].tolist()] == batch.tasks
    ep = d.episode(1)
    assert torch.equal(ep[CAM], batch.columns[CAM][5:14]) and torch.equal(ep["frame_index"], torch.arange(9))


def test_meta_files_are_consistent_with_the_data(written):
    root, batch = written
    info = json.loads((root / "meta/info.json").read_text())
    d = load_lerobot(root)
    lengths = batch.lengths.tolist()
    assert info["codebase_version"] == "v3.0" and info["fps"] == 25
    assert info["total_episodes"] == len(lengths) and info["total_frames"] == sum(lengths)
    assert info["total_tasks"] == len(set(batch.tasks)) == len(d.tasks)
    assert info["splits"] == {"train": f"0:{len(lengths)}"}
    assert info["features"][CAM]["shape"] == [20, 22, 3] and info["features"][CAM]["dtype"] == "video"
    assert info["features"]["observation.state"] == {"dtype": "float32", "shape": [4], "names": None}
    assert info["features"]["next.done"]["dtype"] == "bool"
    for k in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert k in info["features"] and k in d.columns
    ep = d.episodes
    assert ep["episode_index"] == list(range(len(lengths))) and ep["length"] == lengths
    starts = [sum(lengths[:e]) for e in range(len(lengths))]
    assert ep["dataset_from_index"] == starts
    assert ep["dataset_to_index"] == [s + n for s, n in zip(starts, lengths, strict=True)]
    assert torch.equal(d.columns["index"], torch.arange(sum(lengths)))
    rows = 0
    for e in range(len(lengths)):  # each episode's rows sit in the data file its row names
        path = root / info["data_path"].format(
            chunk_index=ep["data/chunk_index"][e], file_index=ep["data/file_index"][e]
        )
        t = pq.read_table(path).to_pydict()
        assert t["episode_index"].count(e) == lengths[e]
        rows += lengths[e]
        assert ep[f"videos/{CAM}/to_timestamp"][e] - ep[f"videos/{CAM}/from_timestamp"][e] == pytest.approx(
            lengths[e] / 25
        )
        assert (
            root
            / info["video_path"].format(
                video_key=CAM,
                chunk_index=ep[f"videos/{CAM}/chunk_index"][e],
                file_index=ep[f"videos/{CAM}/file_index"][e],
            )
        ).is_file()
    assert rows == info["total_frames"]
    assert torch.allclose(d.columns["timestamp"].double(), d.columns["frame_index"].double() / 25)
    assert ep["success"] == [
        bool(batch.columns["next.success"][s + n - 1]) for s, n in zip(starts, lengths, strict=True)
    ]


def test_stats_match_the_data(written):
    root, batch = written
    stats = json.loads((root / "meta/stats.json").read_text())
    for k in ("observation.state", "action", "next.reward", "cost"):
        v = batch.columns[k].double().reshape(batch.columns[k].shape[0], -1)
        s = {n: torch.tensor(x, dtype=torch.float64) for n, x in stats[k].items()}
        assert torch.allclose(s["mean"], v.mean(0)) and torch.allclose(s["std"], v.std(0, correction=0))
        assert torch.equal(s["min"], v.min(0).values) and torch.equal(s["max"], v.max(0).values)
        q = torch.quantile(v, torch.tensor([0.01, 0.5, 0.99], dtype=torch.float64), dim=0)
        assert torch.allclose(torch.stack([s["q01"], s["q50"], s["q99"]]), q)
        assert stats[k]["count"] == [v.shape[0]]
    img = batch.columns[CAM].double() / 255.0
    cam = {n: torch.tensor(x, dtype=torch.float64) for n, x in stats[CAM].items() if n != "count"}
    assert cam["mean"].shape == (3, 1, 1)
    assert torch.allclose(cam["mean"].flatten(), img.mean((0, 2, 3)))
    assert torch.allclose(cam["std"].flatten(), img.permute(1, 0, 2, 3).reshape(3, -1).std(1, correction=0))
    assert torch.equal(cam["max"].flatten(), img.amax((0, 2, 3)))
    ep = load_lerobot(root).episodes  # per-episode stats, as LeRobot keeps them
    assert ep["stats/action/max"][1] == batch.columns["action"][5:14].double().max(0).values.tolist()


def test_writer_is_atomic_and_refuses_an_existing_dataset(tmp_path):
    root = tmp_path / "ds"
    with pytest.raises(RuntimeError, match="boom"):
        with LeRobotWriter(root, 25) as w:
            w.add(synthetic())
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []  # neither the dataset nor its temporary folder
    write_episodes(root, synthetic(), 25)
    with pytest.raises(ConfigError, match="already exists"):
        LeRobotWriter(root, 25)
    write_episodes(root, synthetic(lengths=(2, 2)), 25, overwrite=True)
    assert load_lerobot(root).num_episodes == 2 and len(list(tmp_path.iterdir())) == 1


class FakeEnv:
    """N envs whose episodes end at random steps, with an instruction per episode (``arm_multi``'s
    interface: ``instructions``, ``obs["instruction"]`` (N, 1) int64, ``instruction_texts``)."""

    def __init__(self, n=3, max_len=6, seed=0):
        self.instructions = [
            "push the red cube onto the blue pad",
            "push the blue cube onto the green pad",
            "wave",
        ]
        self.num_envs, self.max_episode_length, self.device, self.action_dim = (
            n,
            max_len,
            torch.device("cpu"),
            2,
        )
        self.obs_spec = {
            "proprio": TensorSpec((3,)),
            "rgb": TensorSpec((3, 4, 5), torch.uint8, "rgb"),
            "instruction": TensorSpec((1,), torch.int64, "instruction"),
        }
        self.g = torch.Generator().manual_seed(seed)
        self.t = torch.zeros(n, dtype=torch.long)
        self.instr = torch.randint(0, 3, (n, 1), generator=self.g)

    def instruction_texts(self, idx):
        return [self.instructions[i] for i in idx.tolist()]

    def observe(self):
        n = self.num_envs
        return {
            "proprio": torch.randn(n, 3, generator=self.g),
            "rgb": torch.randint(0, 256, (n, 3, 4, 5), dtype=torch.uint8, generator=self.g),
            "instruction": self.instr.clone(),
        }

    def step(self, action):
        self.t += 1
        term = torch.rand(self.num_envs, generator=self.g) < 0.15
        trunc = (self.t >= self.max_episode_length) & ~term
        done = term | trunc
        out = StepOut(
            {},
            torch.randn(self.num_envs, generator=self.g),
            torch.rand(self.num_envs, generator=self.g),
            term,
            trunc,
            {"metric/success": (torch.rand(self.num_envs, generator=self.g) > 0.5).float()},
        )
        self.t[done] = 0
        self.instr = torch.where(
            done[:, None], torch.randint(0, 3, (self.num_envs, 1), generator=self.g), self.instr
        )
        out.obs = self.observe()
        return out


def test_recorder_writes_the_whole_episodes_of_a_batched_rollout_exactly(tmp_path):
    env = FakeEnv()
    writer = LeRobotWriter(tmp_path / "ds", 25)
    rec = EpisodeRecorder(
        writer, env, state_group="proprio", task=task_texts(env, "unused"), fresh=False, window=2
    )
    obs, steps = env.observe(), []
    for _ in range(40):
        action = torch.randn(env.num_envs, 2, generator=env.g)
        out = env.step(action)
        rec.on_step(obs, action, out)
        steps.append((obs, action, out))
        obs = out.obs
    rec.close()
    writer.close()
    expected = []  # the reference: per env, the episodes between two dones (the first one is partial)
    for n in range(env.num_envs):
        begin = None
        for t, (_, _, out) in enumerate(steps):
            if bool(out.terminated[n] | out.truncated[n]):
                if begin is not None:
                    expected.append((t, n, begin))
                begin = t + 1
    expected.sort()
    d = load_lerobot(tmp_path / "ds")
    assert d.num_episodes == len(expected) > 10
    for e, (end, n, begin) in enumerate(expected):
        got = d.episode(e)
        span = steps[begin : end + 1]
        assert torch.equal(got["observation.state"], torch.stack([s[0]["proprio"][n] for s in span]))
        assert torch.equal(got[CAM], torch.stack([s[0]["rgb"][n] for s in span]))
        assert torch.equal(got["action"], torch.stack([s[1][n] for s in span]))
        assert torch.equal(got["next.reward"], torch.stack([s[2].reward[n] for s in span]))
        assert torch.equal(got["cost"], torch.stack([s[2].cost[n] for s in span]))
        assert got["next.done"].tolist() == [False] * (len(span) - 1) + [True]
        assert d.episode_tasks()[e] == env.instructions[int(span[0][0]["instruction"][n])]


def test_whole_episodes_drops_partial_ones_and_orders_by_end():
    first = torch.tensor([[1, 0], [0, 0], [1, 1], [0, 0]], dtype=torch.bool)  # (L=4, N=2)
    done = torch.tensor([[0, 0], [1, 1], [0, 0], [0, 1]], dtype=torch.bool)
    rows, lengths, env, start = whole_episodes(first, done)
    assert lengths.tolist() == [2, 2] and env.tolist() == [0, 1] and start.tolist() == [0, 2]
    assert rows.tolist() == [0, 1, 6, 7]  # env-major rows: env 0's steps 0-1, env 1's steps 2-3


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("lerobot") / "run"
    p = embodied(
        "train",
        "task=arm_reach",
        "num_envs=8",
        "train.max_iterations=1",
        "train.evaluate=false",
        "train.export=false",
        "threads.torch=1",
        f"run_dir={run_dir}",
    )
    assert p.returncode == 0, p.stderr
    return run_dir


def test_demos_renders_a_trained_policy_into_a_dataset(tiny_run, tmp_path):
    out = tmp_path / "demos"
    p = embodied(
        "demos",
        f"run={tiny_run}",
        "episodes=3",
        "num_envs=2",
        f"out={out}",
        "task.episode_length_s=0.4",
        "task.rgb.width=32",
        "task.rgb.height=24",
    )
    assert p.returncode == 0, p.stderr
    assert "3 episodes, 30 frames at 25 fps" in p.stdout
    d = load_lerobot(out)
    assert d.frames(CAM).shape == (30, 3, 24, 32) and d.columns["observation.state"].shape == (30, 23)
    assert d.tasks == [
        "Panda-class arm: move the end effector to a target point sampled per episode above the table."
    ]
    assert d.info["features"]["observation.state"]["names"][0] == "joint_pos_rel.0"
    assert d.frames(CAM).float().std() > 5  # rendered images, not blank frames
    assert embodied("demos", f"run={tiny_run}", "episodes=1", f"out={out}").returncode == 2  # exists


def test_demo_frames_are_the_frames_the_policy_saw(tmp_path):
    from embodied.cli import compose
    from embodied.demos import record_demos
    from embodied.workflow import build_env, build_policy

    cfg = compose(
        [
            "task=arm_reach",
            "task.rgb.enabled=true",
            "task.rgb.width=16",
            "task.rgb.height=16",
            "task.episode_length_s=0.4",
            "threads.torch=1",
        ]
    )
    env = build_env(cfg, num_envs=2)
    policy, seen = build_policy(cfg, env), []

    def spy(obs):
        seen.append({k: v.clone() for k, v in obs.items()})
        return policy(obs)

    writer = LeRobotWriter(tmp_path / "ds", 25)
    record_demos(env, spy, writer, 2, state_group="policy", task="reach", seed=3)
    writer.close()
    env.close()
    d = load_lerobot(tmp_path / "ds")
    assert d.episodes["length"] == [10, 10]
    for e in range(2):
        assert torch.equal(d.episode(e)[CAM], torch.stack([s["rgb"][e] for s in seen[:10]]))
        assert torch.equal(
            d.episode(e)["observation.state"], torch.stack([s["policy"][e] for s in seen[:10]])
        )


def test_a_path_without_info_json_is_a_one_line_error(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(ConfigError, match=r"no meta/info\.json"):
        load_lerobot(tmp_path)
    assert_one_line_error(
        embodied("dataset-info", f"data={tmp_path}"), "not a LeRobot dataset", "meta/info.json"
    )
    assert_one_line_error(embodied("demos", f"run={tmp_path}"), "not a run directory")


def _lerobot_dataset_class():
    """LeRobot's LeRobotDataset (the ``lerobot-dataset`` package), or a skip saying why not.

    Its modules import torchvision at import time, yet for video datasets decoded by torchcodec never
    call it; where torchvision is absent (no wheel for this CPU-only torch), a stub whose functions
    raise stands in for those import lines only, and is removed again."""
    if importlib.util.find_spec("ledataset") is None:
        pytest.skip(
            "lerobot-dataset is not installed (pip install --no-deps lerobot-dataset==0.4.4, docs/datasets.md)"
        )
    import datasets  # noqa: F401  (reads whether torchvision exists before any stub is put in)

    stub = importlib.util.find_spec("torchvision") is None
    if stub:

        def refuse(*a, **k):
            raise RuntimeError("torchvision is not installed")

        tv, tr = types.ModuleType("torchvision"), types.ModuleType("torchvision.transforms")
        tr.ToTensor, tv.transforms, tv.set_video_backend = refuse, tr, refuse
        tv.io = types.SimpleNamespace(VideoReader=refuse)
        sys.modules.update({"torchvision": tv, "torchvision.transforms": tr})
    try:
        from ledataset.datasets.lerobot_dataset import LeRobotDataset
    except ImportError as e:
        pytest.skip(f"LeRobot's loader does not import here: {e}")
    finally:
        if stub:
            sys.modules.pop("torchvision", None)
            sys.modules.pop("torchvision.transforms", None)
    return LeRobotDataset


def _torchcodec_reason(video: Path) -> str | None:
    try:
        from torchcodec.decoders import VideoDecoder

        VideoDecoder(str(video))
    except (ImportError, RuntimeError, OSError) as e:
        return f"torchcodec cannot decode here ({str(e).splitlines()[0][:120]})"
    return None


def test_lerobot_loader_reads_our_episodes_tasks_and_frames(written):
    root, batch = written
    cls = _lerobot_dataset_class()
    reason = _torchcodec_reason(next((root / "videos").rglob("*.mp4")))
    if reason:
        pytest.skip(reason)
    ds = cls("local/embodied-test", root=root)
    ours = load_lerobot(root)
    assert ds.video_backend == "torchcodec"
    assert len(ds) == ours.info["total_frames"] and ds.num_episodes == ours.num_episodes
    assert ds.meta.total_tasks == len(ours.tasks) and list(ds.meta.tasks.index) == ours.tasks
    assert ds.meta.camera_keys == [CAM] and ds.fps == 25
    assert ds.meta.stats[CAM]["mean"].shape == (3, 1, 1)
    for i in range(len(ds)):
        item = ds[i]
        assert torch.equal((item[CAM] * 255).round().to(torch.uint8), ours.frames(CAM)[i]), i
        for k, v in ours.columns.items():
            assert torch.equal(item[k].reshape(v[i].shape).to(v.dtype), v[i]), (k, i)
        assert item["task"] == ours.tasks[int(ours.columns["task_index"][i])]
    chunk = cls(
        "local/embodied-test", root=root, episodes=[1], delta_timestamps={"action": [0.0, 0.04, 0.08]}
    )
    assert len(chunk) == 9
    last = chunk[8]  # an action chunk past the episode's end: clamped and marked as padding
    assert torch.equal(last["action"][0], batch.columns["action"][13]) and last["action_is_pad"].tolist() == [
        False,
        True,
        True,
    ]
    assert torch.equal((last[CAM] * 255).round().to(torch.uint8), batch.columns[CAM][13])


def test_rollout_recorder_cuts_at_resets_from_outside_and_moves_the_dataset_into_place(tmp_path):
    from embodied.cli import compose
    from embodied.data.lerobot_record import rollout_recorder
    from embodied.workflow import build_env

    cfg = compose(
        [
            "task=arm_reach",
            "task.rgb.enabled=true",
            "task.rgb.width=8",
            "task.rgb.height=8",
            "task.episode_length_s=0.4",
            "threads.torch=1",
        ]
    )
    env = build_env(cfg, num_envs=2)
    rec = rollout_recorder(tmp_path / "rl", env, task="reach")
    obs = env.reset(seed=0)
    for t in range(15):  # 3 steps, then every env restarts (as an episodic algorithm does), 12 more
        if t == 3:
            obs = env.reset(seed=1)
        action = torch.zeros(2, env.action_dim)
        out = env.step(action)
        rec.on_step(obs, action, out)
        obs = out.obs
    assert not (tmp_path / "rl").exists()
    rec.close()
    env.close()
    d = load_lerobot(tmp_path / "rl")
    assert d.episodes["length"] == [10, 10]  # the 3 steps before the reset are no part of them
    assert d.tasks == ["reach"] and d.columns["observation.state"].shape == (20, 23)
