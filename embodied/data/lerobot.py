"""Episodes written in LeRobot's dataset layout (codebase version v3.0), so LeRobot's loader reads them.

Layout under the dataset root (episodes packed back to back into files; a file holds whole episodes):

    meta/info.json                          version, fps, features (dtype, shape, names), path templates
    meta/stats.json                         per feature min, max, mean, std, count, q01 q10 q50 q90 q99
    meta/tasks.parquet                      task string (the index) -> task_index
    meta/episodes/chunk-000/file-000.parquet one row per episode: length, tasks, frame range
                                            (dataset_from_index, dataset_to_index), its data and video
                                            files (chunk/file index, from/to timestamp), per-episode stats
    data/chunk-XXX/file-YYY.parquet         one row per frame: observation.state, action, timestamp,
                                            frame_index, episode_index, index, task_index, next.reward,
                                            next.done, next.success, cost (and any other extra column)
    videos/<observation.images.KEY>/chunk-XXX/file-YYY.mp4   the frames of those episodes, in order

Row t of an episode holds the observation the action was taken on, that action, and what followed
(``next.*``, ``cost``). Frames are stored losslessly: H.264 in RGB (libx264rgb) at qp 0, so decoding
(pyav or torchcodec, LeRobot's decoder) gives back the rendered uint8 frames bit for bit; LeRobot's
default (AV1 in yuv420p) is lossy and would change every frame.

The writer works in a temporary folder beside the root and renames it into place on ``close``: a
dataset path holds a whole dataset or nothing.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from embodied.data.lerobot_stats import ImageStats, feature_stats
from embodied.errors import ConfigError

CODEBASE_VERSION = "v3.0"
INFO = "meta/info.json"
STATS = "meta/stats.json"
TASKS = "meta/tasks.parquet"
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"
EPISODES_PATH = "meta/episodes/" + CHUNK_FILE + ".parquet"
INDEX_COLUMNS = ("timestamp", "frame_index", "episode_index", "index", "task_index")
VIDEO_CODEC = {"codec": "libx264rgb", "pix_fmt": "rgb24", "options": {"qp": "0", "bf": "0"}}
_DTYPES = {torch.float32: "float32", torch.float64: "float64", torch.int64: "int64", torch.bool: "bool"}


@dataclass
class EpisodeBatch:
    """E whole episodes, their F frames back to back (episode 0's, then episode 1's, ...).

    columns: feature name -> (F, ...) CPU tensor: vectors (F, D) and scalars (F,) of a dtype in
        ``_DTYPES``; videos ("observation.images.<key>") (F, 3, H, W) uint8.
    lengths: (E,) long, frames per episode (sum F). tasks: E task strings (the instruction).
    """

    columns: dict[str, torch.Tensor]
    lengths: torch.Tensor
    tasks: list[str]

    def __post_init__(self) -> None:
        total = int(self.lengths.sum())
        bad = {k: tuple(v.shape) for k, v in self.columns.items() if v.shape[0] != total}
        if bad or len(self.tasks) != len(self.lengths):
            raise ValueError(
                f"episode batch of {len(self.lengths)} episodes, {total} frames, {len(self.tasks)} tasks: "
                f"columns of another length {bad}"
            )
        if bool((self.lengths < 1).any()):
            raise ValueError("every episode needs at least one frame")


def feature(t: torch.Tensor, names: Sequence[str] | None = None) -> dict[str, Any]:
    """The info.json feature of a (F, ...) column: video for (F, 3, H, W) uint8, else its dtype/shape."""
    if t.dtype == torch.uint8 and t.dim() == 4 and t.shape[1] == 3:
        _, _, h, w = t.shape
        return {"dtype": "video", "shape": [int(h), int(w), 3], "names": ["height", "width", "channels"]}
    if t.dtype not in _DTYPES or t.dim() > 2:
        raise ValueError(f"column of dtype {t.dtype} and shape {tuple(t.shape)} has no LeRobot feature")
    shape = [1] if t.dim() == 1 else [int(t.shape[1])]
    return {"dtype": _DTYPES[t.dtype], "shape": shape, "names": None if names is None else list(names)}


def _arrow_column(t: torch.Tensor) -> pa.Array:
    values = t.numpy()
    if t.dim() == 1:
        return pa.array(values)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), int(t.shape[1]))


def _video_info(h: int, w: int, fps: int) -> dict[str, Any]:
    return {
        "video.height": h,
        "video.width": w,
        "video.codec": "h264",
        "video.pix_fmt": "gbrp",  # what an H.264 decoder reports for RGB 4:4:4: planar R, G, B
        "video.is_depth_map": False,
        "video.fps": fps,
        "video.channels": 3,
        "has_audio": False,
        "encoder": f"{VIDEO_CODEC['codec']} qp=0 (lossless RGB)",
    }


class _VideoFile:
    """One camera's mp4 being written: frames appended in order, pts = frame number (time base 1/fps)."""

    def __init__(self, path: Path, fps: int, h: int, w: int, gop: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(path), "w")
        self.stream = self.container.add_stream(
            VIDEO_CODEC["codec"], rate=fps, options={**VIDEO_CODEC["options"], "g": str(gop)}
        )
        self.stream.width, self.stream.height, self.stream.pix_fmt = w, h, VIDEO_CODEC["pix_fmt"]
        self.frames = 0

    def add(self, frames: torch.Tensor) -> None:
        """frames: (F, 3, H, W) uint8."""
        for img in frames.permute(0, 2, 3, 1).contiguous().numpy():
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = self.frames
            self.container.mux(self.stream.encode(f))
            self.frames += 1

    def close(self) -> None:
        self.container.mux(self.stream.encode())
        self.container.close()


def _file_index(n: int, chunks_size: int) -> dict[str, int]:
    return {"chunk_index": n // chunks_size, "file_index": n % chunks_size}


class LeRobotWriter:
    """Writes whole episodes (``add``) into a new LeRobot v3.0 dataset at ``root`` (``close``).

    The first batch fixes the features; later batches must carry the same columns. ``names`` gives
    the per-dimension names of vector columns (``observation.state``, ``action``). A new data file
    (and video file) starts when the current one would pass ``data_files_size_in_mb`` (uncompressed
    rows) or ``video_files_size_in_mb`` (raw frames); ``chunks_size`` files make a chunk.
    """

    def __init__(
        self,
        root: str | Path,
        fps: int,
        *,
        names: Mapping[str, Sequence[str]] | None = None,
        robot_type: str | None = None,
        overwrite: bool = False,
        chunks_size: int = 1000,
        data_files_size_in_mb: float = 100,
        video_files_size_in_mb: float = 200,
        gop: int | None = None,
        info_extra: Mapping[str, Any] | None = None,
    ) -> None:
        if int(fps) < 1:
            raise ConfigError(f"dataset fps must be a positive integer, got {fps}")
        self.root = Path(root)
        if self.root.exists() and not overwrite:
            raise ConfigError(f"{self.root} already exists; choose a new dataset path (or overwrite=true)")
        self.overwrite = overwrite
        self.tmp = self.root.parent / f".{self.root.name}.tmp-{os.getpid()}"
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.fps, self.names, self.robot_type = int(fps), dict(names or {}), robot_type
        self.chunks_size = int(chunks_size)
        self.limits = tuple(
            int(x) if float(x).is_integer() else float(x)
            for x in (data_files_size_in_mb, video_files_size_in_mb)
        )
        self.gop = int(gop or self.fps)
        self.info_extra = dict(info_extra or {})
        self.features: dict[str, dict[str, Any]] | None = None
        self.tasks: dict[str, int] = {}
        self.episodes: list[dict[str, Any]] = []
        self.numeric: dict[str, list[torch.Tensor]] = {}
        self.image_stats: dict[str, ImageStats] = {}
        self.frames_total = 0
        self.file_number = -1
        self.data_writer: pq.ParquetWriter | None = None
        self.videos: dict[str, _VideoFile] = {}
        self.file_bytes = (0, 0)
        self.closed = False

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    def _video_keys(self) -> list[str]:
        return [k for k, f in (self.features or {}).items() if f["dtype"] == "video"]

    def _set_features(self, batch: EpisodeBatch) -> None:
        feats: dict[str, dict[str, Any]] = {}
        for k, v in batch.columns.items():
            if k in INDEX_COLUMNS:
                raise ConfigError(f"column {k!r} is written by the dataset itself")
            feats[k] = feature(v, self.names.get(k))
            if feats[k]["dtype"] == "video":
                if not k.startswith("observation.images."):
                    raise ConfigError(f"video column {k!r} must be named observation.images.<camera>")
                h, w, _ = feats[k]["shape"]
                feats[k]["info"] = _video_info(h, w, self.fps)
        feats["timestamp"] = {"dtype": "float32", "shape": [1], "names": None}
        for k in INDEX_COLUMNS[1:]:
            feats[k] = {"dtype": "int64", "shape": [1], "names": None}
        self.features = feats

    def _open_files(self) -> None:
        self._close_files()
        self.file_number += 1
        where = _file_index(self.file_number, self.chunks_size)
        self.data_path = self.tmp / DATA_PATH.format(**where)
        self.data_path.parent.mkdir(parents=True, exist_ok=True)
        self.data_writer = None  # opened with the first rows: the schema comes from them
        for key in self._video_keys():
            h, w, _ = self.features[key]["shape"]
            path = self.tmp / VIDEO_PATH.format(video_key=key, **where)
            self.videos[key] = _VideoFile(path, self.fps, h, w, self.gop)
        self.file_bytes = (0, 0)

    def _close_files(self) -> None:
        if self.data_writer is not None:
            self.data_writer.close()
            self.data_writer = None
        for v in self.videos.values():
            v.close()
        self.videos = {}

    def add(self, batch: EpisodeBatch) -> None:
        """Append the batch's episodes, in order, each with its task string."""
        if self.closed:
            raise RuntimeError("dataset writer is closed")
        if self.features is None:
            self._set_features(batch)
            self._open_files()
        want = set(self.features) - set(INDEX_COLUMNS)
        if set(batch.columns) != want:
            raise ConfigError(
                f"episode columns {sorted(batch.columns)} differ from the dataset's {sorted(want)}"
            )
        starts = torch.cat([torch.zeros(1, dtype=torch.long), batch.lengths.cumsum(0)]).tolist()
        for e, task in enumerate(batch.tasks):
            cols = {k: v[starts[e] : starts[e + 1]] for k, v in batch.columns.items()}
            self._add_episode(cols, task)

    def _add_episode(self, cols: dict[str, torch.Tensor], task: str) -> None:
        n = next(iter(cols.values())).shape[0]
        vkeys = self._video_keys()
        data_b = sum(v.numel() * v.element_size() for k, v in cols.items() if k not in vkeys) + 40 * n
        video_b = sum(cols[k].numel() for k in vkeys)
        mb, have = 1024.0**2, self.file_bytes
        if have != (0, 0) and (
            (have[0] + data_b) / mb > self.limits[0] or (have[1] + video_b) / mb > self.limits[1]
        ):
            self._open_files()  # this episode starts the next file
        task_index = self.tasks.setdefault(task, len(self.tasks))
        ep, first = len(self.episodes), self.frames_total
        frame_index = torch.arange(n, dtype=torch.long)
        table = {
            **{k: _arrow_column(v) for k, v in cols.items() if k not in vkeys},
            "timestamp": _arrow_column((frame_index.double() / self.fps).float()),
            "frame_index": _arrow_column(frame_index),
            "episode_index": _arrow_column(torch.full((n,), ep, dtype=torch.long)),
            "index": _arrow_column(frame_index + first),
            "task_index": _arrow_column(torch.full((n,), task_index, dtype=torch.long)),
        }
        rows = pa.table(table)
        if self.data_writer is None:
            self.data_writer = pq.ParquetWriter(self.data_path, rows.schema)
        self.data_writer.write_table(rows)
        where = _file_index(self.file_number, self.chunks_size)
        meta: dict[str, Any] = {
            "episode_index": ep,
            "tasks": [task],
            "length": n,
            "data/chunk_index": where["chunk_index"],
            "data/file_index": where["file_index"],
            "dataset_from_index": first,
            "dataset_to_index": first + n,
        }
        for k in vkeys:
            video = self.videos[k]
            meta[f"videos/{k}/chunk_index"] = where["chunk_index"]
            meta[f"videos/{k}/file_index"] = where["file_index"]
            meta[f"videos/{k}/from_timestamp"] = video.frames / self.fps
            video.add(cols[k])
            meta[f"videos/{k}/to_timestamp"] = video.frames / self.fps
            self.image_stats.setdefault(k, ImageStats()).add(cols[k])
        if "next.success" in cols:  # the task's own criterion at the episode's end
            meta["success"] = bool(cols["next.success"][-1])
        if "next.reward" in cols:
            meta["return"] = float(cols["next.reward"].double().sum())
        if "cost" in cols:
            meta["cost_sum"] = float(cols["cost"].double().sum())
        for k, v in cols.items():
            if k not in vkeys:
                self.numeric.setdefault(k, []).append(v)
                for s, val in feature_stats(v).items():
                    meta[f"stats/{k}/{s}"] = val
        self.episodes.append(meta)
        self.frames_total += n
        self.file_bytes = (self.file_bytes[0] + data_b, self.file_bytes[1] + video_b)

    def _write_meta(self) -> None:
        (self.tmp / "meta").mkdir(parents=True, exist_ok=True)
        total = self.frames_total
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": len(self.episodes),
            "total_frames": total,
            "total_tasks": len(self.tasks),
            "chunks_size": self.chunks_size,
            "data_files_size_in_mb": self.limits[0],
            "video_files_size_in_mb": self.limits[1],
            "fps": self.fps,
            "splits": {"train": f"0:{len(self.episodes)}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if self._video_keys() else None,
            "features": self.features,
            **self.info_extra,
        }
        (self.tmp / INFO).write_text(json.dumps(info, indent=2))
        stats = {k: feature_stats(torch.cat(v)) for k, v in self.numeric.items()}
        stats.update({k: s.stats() for k, s in self.image_stats.items()})
        index = {
            "timestamp": torch.cat([torch.arange(e["length"]) for e in self.episodes]).double() / self.fps,
            "frame_index": torch.cat([torch.arange(e["length"]) for e in self.episodes]),
            "episode_index": torch.cat(
                [torch.full((e["length"],), e["episode_index"]) for e in self.episodes]
            ),
            "index": torch.arange(total),
            "task_index": torch.cat(
                [torch.full((e["length"],), self.tasks[e["tasks"][0]]) for e in self.episodes]
            ),
        }
        stats.update({k: feature_stats(v) for k, v in index.items()})
        (self.tmp / STATS).write_text(json.dumps(stats, indent=2))
        self._write_tasks()
        rows = {k: [e[k] for e in self.episodes] for k in self.episodes[0]}
        where = {"chunk_index": 0, "file_index": 0}
        rows["meta/episodes/chunk_index"] = [0] * len(self.episodes)
        rows["meta/episodes/file_index"] = [0] * len(self.episodes)
        path = self.tmp / EPISODES_PATH.format(**where)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(rows), path)

    def _write_tasks(self) -> None:
        """tasks.parquet as pandas writes a frame indexed by the task string (LeRobot reads it so)."""
        names = sorted(self.tasks, key=self.tasks.get)
        table = pa.table({"task_index": pa.array([self.tasks[t] for t in names], pa.int64()), "task": names})
        pandas_meta = {
            "index_columns": ["task"],
            "column_indexes": [
                {
                    "name": None,
                    "field_name": None,
                    "pandas_type": "unicode",
                    "numpy_type": "object",
                    "metadata": {"encoding": "UTF-8"},
                }
            ],
            "columns": [
                {
                    "name": "task_index",
                    "field_name": "task_index",
                    "pandas_type": "int64",
                    "numpy_type": "int64",
                    "metadata": None,
                },
                {
                    "name": "task",
                    "field_name": "task",
                    "pandas_type": "unicode",
                    "numpy_type": "object",
                    "metadata": None,
                },
            ],
            "attributes": {},
            "creator": {"library": "pyarrow", "version": pa.__version__},
            "pandas_version": "2.2.0",
        }
        table = table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})
        pq.write_table(table, self.tmp / TASKS)

    def close(self) -> Path:
        """Finish the files, write meta/ and move the dataset into place; returns its root."""
        if self.closed:
            return self.root
        self._close_files()
        self.closed = True
        if not self.episodes:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise ConfigError(f"no whole episode to write to {self.root}")
        try:
            self._write_meta()
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        if self.root.exists() and self.overwrite:
            shutil.rmtree(self.root)
        self.root.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.tmp, self.root)
        return self.root

    def abort(self) -> None:
        """Drop what was written; the dataset path is left as it was."""
        self._close_files()
        self.closed = True
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> LeRobotWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_episodes(root: str | Path, batch: EpisodeBatch, fps: int, **kwargs: Any) -> Path:
    """One batch of whole episodes as a new dataset at ``root`` (LeRobotWriter's keyword options)."""
    with LeRobotWriter(root, fps, **kwargs) as w:
        w.add(batch)
    return w.root
