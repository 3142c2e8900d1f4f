"""Reads a LeRobot v3.0 dataset (ours, see ``embodied.data.lerobot``, or any other) back into tensors.

Every parquet column comes back with its stored dtype and values, and every video frame as the
uint8 image that was encoded (exactly so for our lossless files). Bad paths are one-line ConfigErrors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from embodied.data.lerobot import EPISODES_PATH, INFO, STATS, TASKS
from embodied.errors import ConfigError


def _to_torch(col: pa.ChunkedArray) -> torch.Tensor:
    arr = col.combine_chunks()
    if pa.types.is_fixed_size_list(arr.type) or pa.types.is_list(arr.type):
        width = len(arr[0]) if len(arr) else 0
        values = arr.flatten().to_numpy(zero_copy_only=False)
        return torch.from_numpy(values.copy()).reshape(len(arr), width)
    return torch.from_numpy(arr.to_numpy(zero_copy_only=False).copy())


def _rgb(frame: av.VideoFrame) -> torch.Tensor:
    """(3, H, W) uint8 of a decoded frame. RGB H.264 decodes to planar gbrp (planes G, B, R), read
    as they are; any other format goes through libswscale's conversion to rgb24."""
    if frame.format.name != "gbrp":
        return torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)
    h, w = frame.height, frame.width
    planes = [
        torch.frombuffer(bytearray(p), dtype=torch.uint8).reshape(h, p.line_size)[:, :w] for p in frame.planes
    ]
    return torch.stack([planes[2], planes[0], planes[1]])


def _decode(path: Path) -> torch.Tensor:
    """Every frame of an mp4 in order: (F, 3, H, W) uint8."""
    with av.open(str(path)) as c:
        frames = [_rgb(f) for f in c.decode(video=0)]
    if not frames:
        raise ConfigError(f"{path} holds no video frames")
    return torch.stack(frames)


@dataclass
class LeRobotData:
    """A loaded dataset. ``columns``: every data column, (F, ...) in frame (``index``) order;
    ``episodes``: the episodes table (column -> one value per episode); ``tasks``: by task_index."""

    root: Path
    info: dict[str, Any]
    stats: dict[str, Any]
    tasks: list[str]
    episodes: dict[str, list]
    columns: dict[str, torch.Tensor]
    _frames: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def fps(self) -> int:
        return int(self.info["fps"])

    @property
    def video_keys(self) -> list[str]:
        return [k for k, f in self.info["features"].items() if f["dtype"] == "video"]

    @property
    def num_episodes(self) -> int:
        return len(self.episodes["episode_index"])

    def episode_tasks(self) -> list[str]:
        """The task string (instruction) of each episode."""
        return [t[0] for t in self.episodes["tasks"]]

    def frames(self, key: str) -> torch.Tensor:
        """All frames of one camera, (F, 3, H, W) uint8 in frame order (decoded once, kept)."""
        if key not in self._frames:
            self._frames[key] = self._load_frames(key)
        return self._frames[key]

    def _load_frames(self, key: str) -> torch.Tensor:
        if key not in self.video_keys:
            raise ConfigError(f"{self.root} has no video {key!r}; it has {self.video_keys}")
        decoded: dict[Path, torch.Tensor] = {}
        parts = []
        ep = self.episodes
        order = sorted(range(self.num_episodes), key=lambda e: ep["dataset_from_index"][e])
        for e in order:
            path = self.root / self.info["video_path"].format(
                video_key=key,
                chunk_index=ep[f"videos/{key}/chunk_index"][e],
                file_index=ep[f"videos/{key}/file_index"][e],
            )
            if path not in decoded:
                if not path.is_file():
                    raise ConfigError(f"{self.root}: video file {path} is missing")
                decoded[path] = _decode(path)
            start = round(ep[f"videos/{key}/from_timestamp"][e] * self.fps)
            n = ep["length"][e]
            if start + n > decoded[path].shape[0]:
                raise ConfigError(f"{path} ends before episode {ep['episode_index'][e]}'s last frame")
            parts.append(decoded[path][start : start + n])
        return torch.cat(parts)

    def episode(self, e: int) -> dict[str, torch.Tensor]:
        """Episode ``e``'s columns and frames, each (T, ...)."""
        lo, hi = self.episodes["dataset_from_index"][e], self.episodes["dataset_to_index"][e]
        out = {k: v[lo:hi] for k, v in self.columns.items()}
        out.update({k: self.frames(k)[lo:hi] for k in self.video_keys})
        return out


def load_lerobot(root: str | Path) -> LeRobotData:
    """The dataset at ``root``: meta, tasks, episodes and every data column (frames decode on demand)."""
    root = Path(root)
    if not (root / INFO).is_file():
        raise ConfigError(f"{root} is not a LeRobot dataset (no {INFO})")
    try:
        info = json.loads((root / INFO).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{root / INFO} is not JSON ({e})") from None
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3."):
        raise ConfigError(f"{root} is a LeRobot dataset of version {version or '?'}; this reader reads v3.x")
    try:
        stats = json.loads((root / STATS).read_text()) if (root / STATS).is_file() else {}
        tasks_table = pq.read_table(root / TASKS)
        ep_paths = sorted((root / "meta" / "episodes").glob("*/*.parquet"))
        data_paths = sorted((root / "data").glob("*/*.parquet"))
        if not ep_paths or not data_paths:
            raise ConfigError(f"{root} has no {EPISODES_PATH.split('/')[1]} or data parquet files")
        episodes = pa.concat_tables([pq.read_table(p) for p in ep_paths]).to_pydict()
        data = pa.concat_tables([pq.read_table(p) for p in data_paths])
    except (OSError, pa.ArrowInvalid) as e:
        raise ConfigError(f"{root}: unreadable dataset file ({str(e).splitlines()[0][:160]})") from None
    name = "task" if "task" in tasks_table.column_names else "__index_level_0__"
    by_index = dict(zip(tasks_table["task_index"].to_pylist(), tasks_table[name].to_pylist(), strict=True))
    tasks = [by_index[i] for i in range(len(by_index))]
    columns = {k: _to_torch(data[k]) for k in data.column_names}
    order = torch.argsort(columns["index"])
    columns = {k: v[order] for k, v in columns.items()}
    if len(order) != int(info["total_frames"]):
        raise ConfigError(f"{root}: {len(order)} data rows, info.json says {info['total_frames']} frames")
    return LeRobotData(root, info, stats, tasks, episodes, columns)
