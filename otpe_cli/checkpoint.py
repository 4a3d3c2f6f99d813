"""Run checkpoints: written atomically, loaded with ``weights_only=True`` (no pickled code)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

CHECKPOINT_NAME = "checkpoint.pt"


class CheckpointError(RuntimeError):
    """A checkpoint is unreadable or belongs to a different run configuration."""


def save_atomic(state: dict, path: Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``:
    a partial write never replaces a good checkpoint."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, corrupt, or holding objects weights_only refuses
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}); it may be truncated or "
            "corrupt. Move it away to start this run afresh; nothing else was changed.") from exc


def numpy_rng_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def set_numpy_rng_state(state: dict) -> None:
    np.random.set_state((state["name"], state["keys"].numpy().astype(np.uint32), state["pos"],
                         state["has_gauss"], state["cached"]))


def compare_fingerprints(saved: dict, current: dict, path: Path) -> None:
    """Refuse a checkpoint made with a different model, algorithm or data config."""
    diffs = [f"{k}: checkpoint has {saved.get(k)!r}, config has {v!r}"
             for k, v in current.items() if saved.get(k) != v]
    if diffs:
        raise CheckpointError(f"checkpoint {path} was made with a different configuration — "
                              + "; ".join(diffs)
                              + ". Use another run directory (hydra.run.dir=...) for this config.")
