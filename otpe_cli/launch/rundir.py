"""The run directory as a process uses it: one ``otpe-train`` at a time (a lock), Hydra's
config files kept only for a run that was accepted, and the record of a run refused before it
trained."""
from __future__ import annotations

import json
import logging
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from ..identity import config_choices
from ..logs import CHECKPOINT_NAME, SUMMARY_NAME, write_json_atomic

log = logging.getLogger("otpe-train")

LOCK_NAME = ".otpe-train.lock"
#: where conf/config.yaml has Hydra write a job's config files first (hydra.output_subdir,
#: one folder per process: ``.hydra/pending/${otpe_pid:}``)
PENDING_HYDRA_DIR = ".hydra/pending"


class RunDirBusy(RuntimeError):
    """Another otpe-train process is using the run directory."""


@contextmanager
def run_dir_lock(run_dir: Path):
    """Hold an exclusive lock on the run directory while a run uses it, so that a second
    ``otpe-train`` with the same directory (a job resubmitted while the first still runs) is
    refused instead of interleaving its metrics with the first one's. The lock is an flock on
    ``<run_dir>/.otpe-train.lock``, which the system releases when the process ends however it
    ends, and the file is removed when the run ends; where the file system cannot lock, runs go
    on without it."""
    try:
        import fcntl

        run_dir.mkdir(parents=True, exist_ok=True)
    except (ImportError, OSError):  # no fcntl (Windows), or the directory is not writable:
        yield                       # the trainer says so in its own words
        return
    path = run_dir / LOCK_NAME
    while True:
        try:
            handle = open(path, "a+")
        except OSError:
            yield
            return
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            handle.close()
            raise RunDirBusy(f"the run directory {run_dir} is in use by another otpe-train "
                             f"(pid {holder}); wait for it to end, or stop it (it checkpoints "
                             "on SIGTERM) and run this again to resume.") from None
        except OSError:  # locks not supported here
            handle.close()
            yield
            return
        try:  # the file may have been removed by its last holder just before we locked it
            same = os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
        except OSError:
            same = False
        if same:
            break
        handle.close()
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        try:
            path.unlink()  # (while still held: a process that locks it next sees it is gone)
        except OSError:
            pass
        handle.close()  # (releases the lock)


def settle_hydra_files(run_dir: Path, output_subdir: str | None, accepted: bool,
                       keep_if_first: bool = True) -> None:
    """Move Hydra's config files for this job from its folder under .hydra/pending up into
    .hydra/ when the run was accepted, or when .hydra/ holds none yet and ``keep_if_first``
    (a new run that failed keeps the config it failed with); otherwise drop them, so that a
    refused rerun leaves the run's record as it was. Does nothing when the user points
    hydra.output_subdir elsewhere."""
    if not output_subdir or Path(output_subdir).parent != Path(PENDING_HYDRA_DIR):
        return
    pending = run_dir / output_subdir
    if not pending.is_dir():
        return
    target = run_dir / Path(PENDING_HYDRA_DIR).parent
    try:
        if accepted or (keep_if_first and not (target / "config.yaml").exists()):
            for path in pending.iterdir():
                os.replace(path, target / path.name)
        shutil.rmtree(pending, ignore_errors=True)
        pending.parent.rmdir()  # .hydra/pending, unless another process's folder is there
    except OSError as exc:
        if pending.exists():
            log.warning("could not move Hydra's config files out of %s (%s)", pending, exc)


def record_failure(run_dir: Path, cfg, message: str) -> bool:
    """Write a ``failed`` summary.json for a run refused or stopped by ``message``, unless the
    directory holds a finished run's results or a resumable checkpoint (a refusal must not
    replace them). True when summary.json now records this failure (the trainer records the
    ones it meets while training)."""
    path = run_dir / SUMMARY_NAME
    try:
        if not path.exists() and not (run_dir / CHECKPOINT_NAME).exists():
            write_json_atomic(path, {"status": "failed", "error": message,
                                     "config": config_choices(cfg)})
        summary = json.loads(path.read_text())
        return summary.get("status") == "failed" and summary.get("error") == message
    except (OSError, ValueError, AttributeError):
        return False
