"""A sweep's processes (``otpe-train -m``): its Hydra callbacks, the relay of a stop signal to
joblib's workers, threads per job, and submitit's requeue signal."""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from hydra.experimental.callback import Callback

from ..logs import SUMMARY_NAME
from .signals import say, stop_signals

FAILED_MARK = ".otpe-train.failed"  # a sweep's failed job that its summary.json does not show


class FailedJobs(Callback):
    """After a sweep (``-m``), name the jobs that failed in it and exit 1.

    A failing job records ``status: failed`` and its reason in its own summary.json, prints
    one ``otpe-train: error:`` line and returns, so that the other jobs run on; Hydra would
    otherwise end the sweep with a traceback of the job's exception. The jobs are found by
    their summary.json, written since the sweep started, so any launcher (workers, SLURM)
    is covered."""

    def on_multirun_start(self, config, **kwargs) -> None:
        self.started = time.time()

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        failed = []
        for path in sorted(sweep_dir.glob(f"*/{SUMMARY_NAME}")):
            try:
                if path.stat().st_mtime < getattr(self, "started", 0.0):
                    continue  # an earlier sweep's job, not run again this time
                summary = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(summary, dict) and summary.get("status") == "failed":
                failed.append(f"  {path.parent}: {summary.get('error', 'no reason recorded')}")
        for path in sorted(sweep_dir.glob(f"*/{FAILED_MARK}")):  # failed, summary.json silent
            try:
                if path.stat().st_mtime >= getattr(self, "started", 0.0):
                    failed.append(f"  {path.parent}: {path.read_text().strip()}")
                path.unlink()
            except OSError:
                continue
        if failed:
            print(f"otpe-train: error: {len(failed)} job(s) of the sweep in {sweep_dir} failed "
                  "(each below with why; any other job kept its results):",
                  file=sys.stderr)
            print("\n".join(failed), file=sys.stderr)
            raise SystemExit(1)


def mark_failed(run_dir: Path, message: str) -> bool:
    """For a sweep's job whose failure summary.json cannot tell (it was refused beside another
    run's results, or the disk is full): a mark that FailedJobs counts and removes."""
    try:
        (run_dir / FAILED_MARK).write_text(f"{message}\n")
        return True
    except OSError:
        return False


class StopParallelSweep(Callback):
    """Ctrl-C or a stop signal to a joblib sweep (``hydra/launcher=local_parallel``) stops it
    the way it stops a single run: every running job checkpoints at the end of its iteration,
    jobs not yet started are skipped, and the sweep exits 128 + signal naming how to resume.

    The parent catches the stop signals while its jobs run and passes a SIGTERM on to each
    child process that handles SIGTERM, i.e. each worker that has started a job (see
    `launch.job`); a worker still starting up is passed it once it is ready, so that it skips
    its jobs instead of being killed mid-import."""

    def __getstate__(self) -> dict:  # joblib pickles the callbacks with every job: the
        return {}                     # parent's handlers, event and thread stay with it

    def on_multirun_start(self, config, **kwargs) -> None:
        self.signum, self.previous, self.done = None, {}, threading.Event()
        self.sweep_dir = str(config.hydra.sweep.dir)
        target = str(config.hydra.launcher.get("_target_", ""))
        if target.endswith("JoblibLauncher"):
            for sig in stop_signals():
                self.previous[sig] = signal.signal(sig, self._stop)

    def _stop(self, signum, frame) -> None:
        if self.signum is not None:
            return
        self.signum = signum
        name = signal.Signals(signum).name
        if not children_handling(signal.SIGTERM):
            # No job has started, so there is nothing to checkpoint; and a Ctrl-C that reached
            # the workers too kills those still unpickling their first job, which joblib would
            # report with a traceback. Stop now instead. Not by raising SystemExit here: it can
            # land inside joblib's start-up (a thread's start), which then reports it with a
            # traceback. Workers still starting die of SIGTERM; loky's resource tracker ignores
            # it and cleans up once this process has gone.
            say(f"otpe-train: {name} before any job of the sweep started; run the same sweep "
                f"command with hydra.sweep.dir={self.sweep_dir} to start it again.\n")
            for pid in children_handling(None):
                try:
                    os.kill(pid, signal.SIGTERM)
                except OSError:
                    pass
            os._exit(128 + signum)
        say(f"otpe-train: {name}: stopping the sweep; running jobs checkpoint at the end of "
            "their iteration, jobs not started are skipped.\n")
        threading.Thread(target=self._pass_on, daemon=True).start()

    def _pass_on(self) -> None:
        """SIGTERM to every child that handles it, once, until the sweep ends."""
        told = set()
        while not self.done.is_set():
            for pid in set(children_handling(signal.SIGTERM)) - told:
                try:
                    os.kill(pid, signal.SIGTERM)
                except OSError:
                    pass
                told.add(pid)
            self.done.wait(0.2)

    def on_multirun_end(self, config, **kwargs) -> None:
        if hasattr(self, "done"):
            self.done.set()
        for sig, handler in getattr(self, "previous", {}).items():
            signal.signal(sig, handler)
        if getattr(self, "signum", None) is not None:
            print(f"otpe-train: sweep stopped by {signal.Signals(self.signum).name}; run the "
                  f"same sweep command with hydra.sweep.dir={config.hydra.sweep.dir} to resume.",
                  file=sys.stderr)
            raise SystemExit(128 + self.signum)


def children_handling(sig: int | None) -> list[int]:
    """PIDs of this process's children that have a handler for ``sig`` (Linux /proc: the
    ``SigCgt`` mask; elsewhere none are found), or all of them for None. loky's resource
    tracker ignores SIGTERM, and a worker still importing would die of it. A child forked but
    not yet exec'd (its command line still ours) has our handlers without being a worker."""
    me, found = os.getpid(), []
    try:
        own_cmdline = Path(f"/proc/{me}/cmdline").read_bytes()
    except OSError:
        own_cmdline = None
    for entry in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in entry.read_text().splitlines()
                          if ":\t" in line)
            if int(fields["PPid"]) != me:
                continue
            if sig is not None and not (
                    int(fields["SigCgt"], 16) >> (sig - 1) & 1
                    and (entry.parent / "cmdline").read_bytes() != own_cmdline):
                continue
            found.append(int(entry.parent.name))
        except (OSError, ValueError, KeyError):
            continue
    return found


def threads_per_job(launcher) -> int | None:
    """Torch threads for one job of a parallel sweep, so that jobs do not oversubscribe cores."""
    target = launcher.get("_target_", "")
    if target.endswith("JoblibLauncher"):
        return 1
    if "submitit" in target:  # local: all jobs at once; SLURM: the job's allocation
        return launcher.get("cpus_per_task") or (1 if target.endswith("LocalLauncher") else None)
    return None


class SubmititHandover:
    """submitit requeues a job on its signal (USR2: time limit or preemption), which the trainer
    does not catch: relay it as SIGUSR1 so the trainer checkpoints first, then requeue."""

    def __init__(self):
        import submitit

        self.signum = getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)
        self.requeue_handler = signal.getsignal(self.signum)
        self.relayed = False
        signal.signal(self.signum, self._relay)

    def _relay(self, signum, frame) -> None:
        if callable(signal.getsignal(signal.SIGUSR1)):  # the trainer is in its loop
            self.relayed = True
            os.kill(os.getpid(), signal.SIGUSR1)
        else:
            self.requeue()

    def requeue(self) -> None:
        signal.signal(self.signum, self.requeue_handler)
        if callable(self.requeue_handler):
            self.requeue_handler(self.signum, None)  # submitit requeues the job and exits
