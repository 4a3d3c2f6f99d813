"""Run checkpoints: what a run's state is, written atomically, loaded with
``weights_only=True`` (no pickled code), and restored.

A checkpoint is one dict of tensors and plain values (numbers, strings, lists, dicts, None):
`trainer_state` makes it, `restore` puts it back into a Trainer after checking that it belongs
to the same experiment (its fingerprint, `identity`).
``save_atomic`` writes it beside the target, fsyncs it and renames it over the target, so a
crash or a kill mid-write leaves the previous good checkpoint in place. A checkpoint that cannot
be read is never replaced or deleted: the run stops with one sentence naming the file.
"""
from __future__ import annotations

import os
import pickle
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from .errors import CheckpointError
from .identity import describe_differences, fingerprint, upgrade_fingerprint
from .logs import CHECKPOINT_NAME, write_failure

#: the keys every checkpoint of this version holds (checked before anything is restored)
REQUIRED_KEYS = ("fingerprint", "iteration", "model", "optimizer", "batch_gen", "torch_rng",
                 "numpy_rng")




def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_torch_atomic(obj, path: Path, prefix: str | None = None) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``:
    a partial write never replaces a good file. OSError propagates; the temporary is removed."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=prefix or path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # like any other output file (mkstemp makes it 0600)
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def save_atomic(state: dict, path: Path) -> None:
    """Write a checkpoint atomically; a failed write keeps the previous checkpoint."""
    try:
        write_torch_atomic(state, path)
    except (OSError, RuntimeError) as exc:  # disk full, quota, a vanished or unwritable folder
        # (torch's zip writer reports a full disk as a RuntimeError: "unexpected pos")
        raise CheckpointError(f"checkpoint {path} cannot be written "
                              f"({write_failure(path, exc)}); the previous checkpoint, if any, "
                              "is kept.") from None


def remove_stale_temporaries(path: Path) -> None:
    """Temporary files that a killed writer (SIGKILL, power loss) left beside ``path``."""
    path = Path(path)
    for tmp in path.parent.glob(path.name + ".*.tmp"):
        try:
            tmp.unlink()
        except OSError:
            pass


def load(path: Path) -> dict:
    """Load a checkpoint without running pickled code; anything unreadable → CheckpointError."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" in str(exc):  # a reference to code (a class, a function): refused
            raise CheckpointError(
                f"checkpoint {path} holds objects other than tensors and plain values, so it "
                "was not loaded (torch.load with weights_only=True runs no pickled code); it is "
                "not a checkpoint of otpe-train — move it away to start this run afresh."
            ) from None
        raise _unreadable(path, exc) from None
    except Exception as exc:  # truncated, corrupt, empty, not a torch file at all
        raise _unreadable(path, exc) from None
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED_KEYS):
        missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
        raise CheckpointError(
            f"checkpoint {path} is not an otpe-train checkpoint (missing "
            f"{', '.join(missing)}); move it away to start this run afresh — nothing was "
            "changed.")
    return state


def _unreadable(path: Path, exc: Exception) -> CheckpointError:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    # torch's weights_only errors open with a long generic paragraph: keep the telling line
    telling = [line for line in lines if line.startswith(("Unsupported", "Trying to load"))]
    detail = ((telling or lines or [""])[0]).split(". ")[0].rstrip(".")[:160]
    detail = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return CheckpointError(
        f"checkpoint {path} cannot be read ({detail}): it may be truncated or corrupt, and it "
        "was left in place with nothing else changed — move it away to start this run afresh.")


def numpy_rng_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def set_numpy_rng_state(state: dict) -> None:
    np.random.set_state((state["name"], state["keys"].numpy().astype(np.uint32), state["pos"],
                         state["has_gauss"], state["cached"]))


def python_rng_state() -> dict:
    version, internal, gauss = random.getstate()
    return {"version": version, "state": torch.tensor(internal, dtype=torch.int64),
            "gauss": gauss}


def set_python_rng_state(state: dict) -> None:
    random.setstate((state["version"], tuple(int(v) for v in state["state"].tolist()),
                     state["gauss"]))


def compare_fingerprints(saved: dict, current: dict, path: Path) -> None:
    """Refuse a checkpoint made with a different model, algorithm, optimizer or data config,
    naming every key that differs (``model.width is 16 in the checkpoint but 32 now``)."""
    shown = describe_differences(saved, current, "in the checkpoint")
    if shown:
        raise CheckpointError(
            f"checkpoint {path} was made with a different configuration ({shown}), so it is "
            "kept as it is: resume with the checkpoint's settings, or give this config its own "
            "run directory with hydra.run.dir=DIR.")


def trainer_state(trainer) -> dict:
    """Everything a run needs to continue exactly: parameters, optimizer, iteration, every
    random generator, the best-so-far and window sums, the alignment sums and the W&B run id."""
    return {
        "fingerprint": fingerprint(trainer.cfg),
        "iteration": trainer.iteration,
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "batch_gen": trainer.batch_gen.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if trainer.device.type == "cuda" else [],
        "numpy_rng": numpy_rng_state(),
        "python_rng": python_rng_state(),
        "best": trainer.best, "window": trainer.window, "align_sums": trainer.align_sums,
        "align_count": trainer.align_count, "skipped": trainer.skipped,
        "elapsed": trainer.wall_time(),
        "time_sum": trainer.time_sum, "time_count": trainer.time_count,
        "peak_mb": trainer.peak_mb,
        "wandb_run_id": trainer.wandb_run_id,
        "wandb_steps": trainer.logger.wandb_steps if hasattr(trainer, "logger")
        else trainer.wandb_steps,
        "metrics": trainer.logger.metrics.saved_copy() if hasattr(trainer, "logger")
        else trainer.saved_metrics,
    }


def restore(trainer, path: Path) -> None:
    """Load ``path`` into ``trainer``, or refuse it with one sentence (the file is never
    changed here)."""
    state = load(path)
    current = fingerprint(trainer.cfg)
    compare_fingerprints(upgrade_fingerprint(state["fingerprint"], current), current, path)
    try:
        iteration = int(state["iteration"])
        trainer.model.load_state_dict(state["model"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.batch_gen.set_state(state["batch_gen"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") and trainer.device.type == "cuda":
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        set_numpy_rng_state(state["numpy_rng"])
        if "python_rng" in state:
            set_python_rng_state(state["python_rng"])
        best, window = dict(state.get("best", {})), dict(state.get("window", {}))
        align_sums = dict(state.get("align_sums", {}))
        align_count, skipped = int(state.get("align_count", 0)), int(state.get("skipped", 0))
        elapsed = float(state.get("elapsed", 0.0))
        timing = (float(state.get("time_sum", 0.0)), int(state.get("time_count", 0)),
                  float(state.get("peak_mb", 0.0)))
    except (KeyError, RuntimeError, ValueError, TypeError, IndexError, AttributeError) as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(f"checkpoint {path} does not fit this run ({detail}); it is kept "
                              "as it is — use another run directory (hydra.run.dir=DIR) for "
                              "this config.") from None
    trainer.iteration = trainer.checkpoint_iteration = iteration
    trainer.best, trainer.window = best, window
    trainer.align_sums, trainer.align_count = align_sums, align_count
    trainer.skipped, trainer.elapsed = skipped, elapsed
    trainer.time_sum, trainer.time_count, trainer.peak_mb = timing
    trainer.wandb_run_id = state.get("wandb_run_id")
    trainer.wandb_steps = int(state.get("wandb_steps") or 0)
    trainer.saved_metrics = state.get("metrics")  # (None in checkpoints of earlier versions)
