"""The build's work directory: each finished stage's result, keyed by what made it, so that a
killed or changed build resumes at the first stage whose inputs or settings changed (as hloc's
pipeline keeps each stage's output).

A stage's result is `<stage>.npz` (arrays; loaded without pickle) plus `<stage>.json` (its key,
seconds and plain metadata), written in that order and each atomically: a stage counts as finished
only once its JSON is there, and its key chains the key of the stage before it, so redoing one
stage redoes everything after it.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from .evaluation import write_atomic

log = logging.getLogger(__name__)
# The stages in order, each with its format: raise a stage's number when the code changes what the
# stage computes or stores, so that the work directories of earlier builds redo it (and what follows).
STAGE_VERSIONS = {"frames": 1, "features": 1, "sfm": 2, "landmarks": 1, "training": 1, "fine": 3, "write": 1}
STAGES = tuple(STAGE_VERSIONS)


def stage_key(parent: str, stage: str, settings: Any) -> str:
    """The key of a stage: its parent stage's key, its format and its own settings (anything JSON
    can write)."""
    text = json.dumps([parent, stage, STAGE_VERSIONS[stage], settings], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def path_identity(path: Path) -> list:
    """What identifies an input file or directory: each file's name, size and modification time."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [str(path.resolve())] + [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]


class WorkDir:
    """Stage results under `path`. `redo_from` names the first stage to redo whatever is stored."""

    def __init__(self, path: str | Path, redo_from: str | None = None) -> None:
        if redo_from is not None and redo_from not in STAGES:
            raise ValueError(f"unknown stage {redo_from!r}; stages: {', '.join(STAGES)}")
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.redo = set(STAGES[STAGES.index(redo_from):]) if redo_from else set()

    def load(self, stage: str, key: str, resume: bool = True) -> tuple[dict[str, np.ndarray], dict] | None:
        """(arrays, metadata) of the stage when it finished with this key, else None. `resume`
        False also returns a stage that `redo_from` names (one redone by this build)."""
        meta_path, npz_path = self.path / f"{stage}.json", self.path / f"{stage}.npz"
        if (resume and stage in self.redo) or not meta_path.exists() or not npz_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("key") != key:
                return None
            with np.load(npz_path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:  # a damaged result is redone, not trusted
            log.warning("work directory %s: stage %s unreadable (%s); redoing it", self.path, stage, exc)
            return None
        return arrays, meta["meta"]

    def save(self, stage: str, key: str, arrays: dict[str, np.ndarray], meta: dict, seconds: float) -> None:
        (self.path / f"{stage}.json").unlink(missing_ok=True)  # unfinished until the new JSON is there
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        write_atomic(self.path / f"{stage}.npz", buf.getvalue())
        write_atomic(self.path / f"{stage}.json", json.dumps({"key": key, "seconds": seconds, "meta": meta},
                                                             default=_plain))


def _plain(x: Any) -> Any:
    """numpy scalars and arrays as JSON values."""
    return x.tolist() if hasattr(x, "tolist") else str(x)
