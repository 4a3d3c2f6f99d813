"""One Hydra job as a process: how it is told to stop, how many threads it takes, which of
its files are kept, and how each way of ending becomes an exit code and one sentence.

`run_job` wraps the CLI's ``run(cfg, run_dir, on_accepted)``:
- a joblib worker remembers a stop between jobs (the next job is skipped), a submitit job has
  its requeue signal relayed (`sweep.SubmititHandover`), a parallel job takes its share of
  threads;
- a stop signal while the job starts up stops it in words (exit 128 + n), one during training
  checkpoints it (`signals.Interrupted`);
- a refusal or an error prints one ``otpe-train: error:`` line and exits 2; in a sweep the job
  records it and returns, so that the other jobs run on (`sweep.FailedJobs` names it later).
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from ..config import ignored_logger_keys
from .console import console_log_level, to_log_file
from .rundir import RunDirBusy, record_failure, settle_hydra_files
from .signals import PENDING_STOP, Interrupted, StopSignal, raise_stop, stop_signals
from .sweep import SubmititHandover, mark_failed, threads_per_job

log = logging.getLogger("otpe-train")


def warn_about_unused_settings(cfg, hc, multirun: bool) -> None:
    """A sweep preset run without -m, and W&B keys given while W&B is off."""
    sweeps = dict(hc.sweeper.get("params") or {})
    if not multirun and sweeps:  # an experiment preset meant as a sweep, run without -m
        chosen = {k: OmegaConf.select(cfg, k) for k in sweeps}
        chosen = {k: v.get("name", v) if OmegaConf.is_dict(v) else v for k, v in chosen.items()}
        log.warning("this config sweeps over %s, but without -m only one job runs (%s); add "
                    "-m to run the whole sweep", ", ".join(sweeps),
                    ", ".join(f"{k}={v}" for k, v in chosen.items()))
    ignored = ignored_logger_keys(cfg, list(hc.overrides.task))
    if ignored:
        log.warning("%s set, but W&B is off: add logger=wandb to log to W&B", ", ".join(ignored))


def run_job(cfg, run, user_errors: tuple):
    """Run ``run(cfg, run_dir, on_accepted)`` as this Hydra job; returns its test accuracy."""
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    if OmegaConf.select(cfg, "trainer.progress") == "none":
        console_log_level(logging.WARNING)  # info lines go to otpe-train.log only
    launcher = hc.launcher.get("_target_", "")
    worker = multirun and launcher.endswith("JoblibLauncher")  # one of joblib's processes
    if worker:
        os.environ["OTPE_PARALLEL_JOB"] = "1"  # parallel bars would overwrite each other
        # a stop between jobs is remembered: the next job is skipped. SIGTERM last: the parent
        # takes a child that handles SIGTERM for one that has begun a job, which must then
        # survive the rest of a Ctrl-C (see StopParallelSweep._stop)
        for sig in sorted(stop_signals(), key=lambda s: s == signal.SIGTERM):
            signal.signal(sig, lambda signum, _: PENDING_STOP.append(signum))
        if PENDING_STOP:
            log.warning("sweep stopping: %s not started", run_dir)
            settle_hydra_files(run_dir, hc.output_subdir, accepted=False)
            return None
    handover = SubmititHandover() if multirun and "submitit" in launcher else None
    threads = threads_per_job(hc.launcher) if multirun else None
    if threads:
        import torch

        torch.set_num_threads(threads)
    accepted = False

    def accept():  # the run is this process's: its warnings may go into the run's log now
        nonlocal accepted
        accepted = True
        settle_hydra_files(run_dir, hc.output_subdir, accepted=True)
        warn_about_unused_settings(cfg, hc, multirun)

    startup = {}  # (joblib workers and submitit jobs have handlers of their own)
    if not worker and handover is None and threading.current_thread() is threading.main_thread():
        startup = {sig: signal.signal(sig, raise_stop) for sig in stop_signals()
                   if sig != signal.SIGINT}
    again = f"same sweep command with hydra.sweep.dir={hc.sweep.dir}" if multirun \
        else f"same command with hydra.run.dir={run_dir}"
    try:
        summary = run(cfg, run_dir, accept)
    except KeyboardInterrupt as exc:  # before the training loop: nothing trained in this job
        if not startup:  # a worker's or a submitit job's: as before
            raise
        signum = exc.signum if isinstance(exc, StopSignal) else signal.SIGINT
        line = (f"otpe-train: stopped by {signal.Signals(signum).name} before training began; "
                f"run the {again} to resume.")
        print(line, file=sys.stderr)
        to_log_file(line)
        raise SystemExit(128 + signum) from None
    except Interrupted as exc:
        if handover is not None and handover.relayed:
            log.warning("%s from submitit (time limit or preemption): checkpoint saved in %s; "
                        "submitit requeues the job, which resumes from it",
                        signal.Signals(handover.signum).name, run_dir)
            handover.requeue()
        log.warning("%s: checkpoint saved in %s; run the %s to resume", exc, run_dir, again)
        if worker:  # returning lets joblib collect the other jobs; the parent exits 128 + sig
            PENDING_STOP.append(exc.signum)
            return None
        raise SystemExit(128 + exc.signum)
    except RunDirBusy as exc:  # the directory is the other process's: no summary there
        key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
        if not any(o.split("=", 1)[0].lstrip("+") == key for o in hc.overrides.hydra):
            # a directory named by the clock: most likely another run started in the same second
            exc = RunDirBusy(f"{exc} If it is a different run started in the same second, "
                             f"give this one a directory of its own with {key}=DIR.")
        print(f"otpe-train: error: {exc}", file=sys.stderr)
        settle_hydra_files(run_dir, hc.output_subdir, accepted=False, keep_if_first=False)
        if multirun:  # a mark beside the other's files, for FailedJobs to count and remove
            mark_failed(run_dir, str(exc))
            return None
        raise SystemExit(2)
    except user_errors as exc:
        message = str(exc)
        recorded = record_failure(run_dir, cfg, message)
        if multirun:  # the other jobs go on; FailedJobs names this one when the sweep ends
            print(f"otpe-train: error: {run_dir}: {message}", file=sys.stderr)
            if not recorded and not mark_failed(run_dir, message):
                raise  # nothing can be written there (a full disk): the sweep ends in error
            return None
        print(f"otpe-train: error: {message}", file=sys.stderr)
        raise SystemExit(2)
    finally:
        for sig, handler in startup.items():
            signal.signal(sig, handler)
        if not accepted:
            settle_hydra_files(run_dir, hc.output_subdir, accepted=False)
    return summary.get("test/acc")
