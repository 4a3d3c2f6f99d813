"""``otpe-train``: turn a Hydra config into a Trainer and run it. Thin on purpose."""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import OmegaConf

from .checkpoint import CHECKPOINT_NAME, CheckpointError
from .config import ConfigError, ignored_logger_keys, validate
from .data import DataError
from .logs import SUMMARY_NAME, OutputError, write_json_atomic

log = logging.getLogger("otpe-train")


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


class StopParallelSweep(Callback):
    """Ctrl-C or a stop signal to a joblib sweep (``hydra/launcher=local_parallel``) stops it
    the way it stops a single run: every running job checkpoints at the end of its iteration,
    jobs not yet started are skipped, and the sweep exits 128 + signal naming how to resume.

    Without this, the parent's KeyboardInterrupt made joblib kill its workers at once (their
    work since the last checkpoint lost), and a SIGTERM to the parent alone left them training
    on as orphans. Here the parent catches the stop signals while its jobs run and passes a
    SIGTERM on to each child process that handles SIGTERM, i.e. each worker that has started
    a job (see ``_hydra_main``); a worker still starting up is passed it once it is ready, so
    that it skips its jobs instead of being killed mid-import."""

    def __getstate__(self) -> dict:  # joblib pickles the callbacks with every job: the
        return {}                     # parent's handlers, event and thread stay with it

    def on_multirun_start(self, config, **kwargs) -> None:
        from .trainer import stop_signals

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
        if not _children_handling(signal.SIGTERM):
            # No job has started, so there is nothing to checkpoint; and a Ctrl-C that reached
            # the workers too kills those still unpickling their first job, which joblib would
            # report with a traceback. Stop now instead. Not by raising SystemExit here: it can
            # land inside joblib's start-up (a thread's start), which then reports it with a
            # traceback. Workers still starting die of SIGTERM; loky's resource tracker ignores
            # it and cleans up once this process has gone.
            _say(f"otpe-train: {name} before any job of the sweep started; run the same sweep "
                 f"command with hydra.sweep.dir={self.sweep_dir} to start it again.\n")
            for pid in _children_handling(None):
                try:
                    os.kill(pid, signal.SIGTERM)
                except OSError:
                    pass
            os._exit(128 + signum)
        _say(f"otpe-train: {name}: stopping the sweep; running jobs checkpoint at the end of "
             "their iteration, jobs not started are skipped.\n")
        threading.Thread(target=self._pass_on, daemon=True).start()

    def _pass_on(self) -> None:
        """SIGTERM to every child that handles it, once, until the sweep ends."""
        told = set()
        while not self.done.is_set():
            for pid in set(_children_handling(signal.SIGTERM)) - told:
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


def _say(line: str) -> None:
    """One line to stderr from a signal handler (os.write: a print() here could re-enter one
    the signal interrupted)."""
    try:
        os.write(sys.__stderr__.fileno(), line.encode())
    except (OSError, AttributeError, ValueError):
        pass


def _children_handling(sig: int | None) -> list[int]:
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


#: errors that are the user's input or the run's numerics: one sentence, no traceback
USER_ERRORS = (ConfigError, DataError, CheckpointError, OutputError, ValueError,
               FileNotFoundError, PermissionError)


def _record_failure(run_dir: Path, cfg, message: str) -> bool:
    """Write a ``failed`` summary.json for a run refused or stopped by ``message``, unless the
    directory holds a finished run's results or a resumable checkpoint (a refusal must not
    replace them). True when summary.json now records this failure (the trainer records the
    ones it meets while training)."""
    from .trainer import config_choices

    path = run_dir / SUMMARY_NAME
    try:
        if not path.exists() and not (run_dir / CHECKPOINT_NAME).exists():
            write_json_atomic(path, {"status": "failed", "error": message,
                                     "config": config_choices(cfg)})
        summary = json.loads(path.read_text())
        return summary.get("status") == "failed" and summary.get("error") == message
    except (OSError, ValueError, AttributeError):
        return False


def _mark_failed(run_dir: Path, message: str) -> bool:
    """For a sweep's job whose failure summary.json cannot tell (it was refused beside another
    run's results, or the disk is full): a mark that FailedJobs counts and removes."""
    try:
        (run_dir / FAILED_MARK).write_text(f"{message}\n")
        return True
    except OSError:
        return False


def _threads_per_job(launcher) -> int | None:
    """Torch threads for one job of a parallel sweep, so that jobs do not oversubscribe cores."""
    target = launcher.get("_target_", "")
    if target.endswith("JoblibLauncher"):
        return 1
    if "submitit" in target:  # local: all jobs at once; SLURM: the job's allocation
        return launcher.get("cpus_per_task") or (1 if target.endswith("LocalLauncher") else None)
    return None


class _SubmititHandover:
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


#: where conf/config.yaml has Hydra write a job's config files first (hydra.output_subdir)
PENDING_HYDRA_DIR = ".hydra/pending"
# Each process gets a folder of its own under .hydra/pending (hydra.output_subdir is
# .hydra/pending/${otpe_pid:}): a second otpe-train refused on a directory in use must not
# overwrite the first one's files there before the first one moves them up.
OmegaConf.register_new_resolver("otpe_pid", os.getpid, replace=True)


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


LOCK_NAME = ".otpe-train.lock"
FAILED_MARK = ".otpe-train.failed"  # a sweep's failed job that its summary.json does not show


class RunDirBusy(RuntimeError):
    """Another otpe-train process is using the run directory."""


@contextmanager
def run_dir_lock(run_dir: Path):
    """Hold an exclusive lock on the run directory while a run uses it, so that a second
    ``otpe-train`` with the same directory (a job resubmitted while the first still runs) is
    refused instead of interleaving its metrics with the first one's. The lock is an flock on
    ``<run_dir>/.otpe-train.lock``, which the system releases when the process ends however it
    ends; where the file system cannot lock, runs go on without it."""
    try:
        import fcntl

        run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(run_dir / LOCK_NAME, "a+")
    except (ImportError, OSError):  # no fcntl (Windows), or the directory is not writable:
        yield                       # the trainer says so in its own words
        return
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            raise RunDirBusy(f"the run directory {run_dir} is in use by another otpe-train "
                             f"(pid {holder}); wait for it to end, or stop it (it checkpoints "
                             "on SIGTERM) and run this again to resume.") from None
        except OSError:  # locks not supported here
            yield
            return
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # (releases the lock)


def run(cfg, run_dir: Path, on_accepted=None) -> dict:
    """Validate, build and train; returns the run's summary (also written to summary.json).
    ``on_accepted()`` is called once the config and the run directory have been accepted."""
    with run_dir_lock(Path(run_dir)):
        return _run(cfg, Path(run_dir), on_accepted)


def _run(cfg, run_dir: Path, on_accepted=None) -> dict:
    from .trainer import Trainer

    validate(cfg)
    trainer = Trainer(cfg, run_dir)
    done = trainer.finished_summary()
    if done is not None:  # its record (.hydra/config.yaml) stays the one it was trained with
        log.info("run in %s already finished (%d iterations, test/acc %.4f); not training "
                 "again", run_dir, done.get("iter", 0), done.get("test/acc", float("nan")))
        return done
    if trainer.iteration > cfg.trainer.iterations:
        raise ValueError(f"the checkpoint in {run_dir} is at iteration {trainer.iteration}, "
                         f"beyond trainer.iterations={cfg.trainer.iterations}: resume it with "
                         f"trainer.iterations={trainer.iteration} or more.")
    if on_accepted is not None:
        on_accepted()
    if trainer.iteration:
        log.info("resuming %s from iteration %d", run_dir, trainer.iteration)
    return trainer.train()


def _console_log_level(level: int) -> None:
    """Set the level of the console handlers of Hydra's job logging (not of its log file)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and \
                not isinstance(handler, logging.FileHandler):
            handler.setLevel(level)


def _warn_about_unused_settings(cfg, hc, multirun: bool) -> None:
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


@hydra.main(config_path="pkg://otpe_cli.conf", config_name="config", version_base="1.3")
def _hydra_main(cfg):
    from .trainer import PENDING_STOP, Interrupted, NonFiniteError, stop_signals

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    if OmegaConf.select(cfg, "trainer.progress") == "none":
        _console_log_level(logging.WARNING)  # info lines go to otpe-train.log only
    launcher = hc.launcher.get("_target_", "")
    handover = None
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
    if multirun and "submitit" in launcher:
        handover = _SubmititHandover()
    threads = _threads_per_job(hc.launcher) if multirun else None
    if threads:
        import torch

        torch.set_num_threads(threads)
    accepted = False

    def accept():  # the run is this process's: its warnings may go into the run's log now
        nonlocal accepted
        accepted = True
        settle_hydra_files(run_dir, hc.output_subdir, accepted=True)
        _warn_about_unused_settings(cfg, hc, multirun)

    startup = {}  # (joblib workers and submitit jobs have handlers of their own)
    if not worker and handover is None and threading.current_thread() is threading.main_thread():
        startup = {sig: signal.signal(sig, _raise_stop) for sig in stop_signals()
                   if sig != signal.SIGINT}
    again = f"same sweep command with hydra.sweep.dir={hc.sweep.dir}" if multirun \
        else f"same command with hydra.run.dir={run_dir}"
    try:
        summary = run(cfg, run_dir, accept)
    except KeyboardInterrupt as exc:  # before the training loop: nothing trained in this job
        if not startup:  # a worker's or a submitit job's: as before
            raise
        signum = getattr(exc, "signum", signal.SIGINT)
        print(f"otpe-train: stopped by {signal.Signals(signum).name} before training began; "
              f"run the {again} to resume.", file=sys.stderr)
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
            _mark_failed(run_dir, str(exc))
            return None
        raise SystemExit(2)
    except (*USER_ERRORS, NonFiniteError) as exc:
        message = str(exc)
        recorded = _record_failure(run_dir, cfg, message)
        if multirun:  # the other jobs go on; FailedJobs names this one when the sweep ends
            print(f"otpe-train: error: {run_dir}: {message}", file=sys.stderr)
            if not recorded and not _mark_failed(run_dir, message):
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


def _run_dir_problem(argv: list[str]) -> str | None:
    """Hydra creates the run directory before any of our code runs and answers a failure with a
    traceback; an explicit ``hydra.run.dir=DIR`` of a single run is checked here first."""
    if any(a.startswith("-") for a in argv):  # --multirun, --help, --cfg ...: not one run
        return None
    for arg in argv:
        key, _, value = arg.lstrip("+").partition("=")
        if key != "hydra.run.dir" or not value or "${" in value:
            continue
        path = Path(value)
        try:
            path.mkdir(parents=True, exist_ok=True)
            if not os.access(path, os.W_OK):
                raise PermissionError(13, "Permission denied")
        except OSError as exc:
            blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()),
                           None)
            why = f"{blocker} is a file" if blocker else (exc.strerror or str(exc))
            return (f"the run directory {path} cannot be created or written ({why}); choose "
                    "another with hydra.run.dir=DIR.")
    return None


class _PipeSafe:
    """A console stream that outlives its reader (``otpe-train | head``): on the first broken
    pipe its descriptor is pointed at /dev/null, so the run goes on and writes its files as if
    nothing had happened (the console output is what is lost, not the run)."""

    def __init__(self, stream):
        self._stream = stream

    def _silence(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self._stream.fileno())
        finally:
            os.close(devnull)

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._silence()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._silence()
            self._stream.flush()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _guard_console_streams() -> None:
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        try:
            stream.fileno()
        except (AttributeError, OSError, ValueError):  # captured (pytest): not a pipe
            continue
        setattr(sys, name, _PipeSafe(stream))


def _config_groups() -> set[str]:
    """What ``name=value`` may choose at the top level: the config groups (``algorithm``,
    ``dataset``, ``experiment``, ...) and the schema sections."""
    from importlib.resources import files

    from .config import SECTIONS

    try:
        groups = {p.name for p in files("otpe_cli.conf").iterdir() if p.is_dir()}
    except (OSError, ModuleNotFoundError):
        groups = set()
    return (groups | set(SECTIONS)) - {"hydra", "__pycache__"}


def _unknown_key_problem(argv: list[str]) -> str | None:
    """A misspelt ``section.key=value`` (or ``group=choice``) gets a sentence with the nearest
    key; Hydra would answer with several lines and a hint to add the key with ``+`` (which
    validation then refuses)."""
    from .config import SECTIONS, section_keys, unknown_key_message

    groups = _config_groups()
    for arg in argv:
        if arg.startswith(("-", "+", "~")) or "=" not in arg:
            continue
        section, _, rest = arg.partition("=")[0].partition(".")
        if not rest and "/" not in section and section not in groups:
            return unknown_key_message(section, groups, kind="group")
        if not rest or section == "hydra":
            continue
        if section not in SECTIONS:
            return unknown_key_message(section, set(SECTIONS), kind="section")
        key, known = rest.partition(".")[0], section_keys(section)
        if key not in known:
            return unknown_key_message(f"{section}.{key}", known)
    return None


#: hydra/launcher choices → (the Hydra plugin module they need, its pip name)
LAUNCHER_PLUGINS = {
    "local_parallel": ("hydra_joblib_launcher", "hydra-joblib-launcher"),
    "joblib": ("hydra_joblib_launcher", "hydra-joblib-launcher"),
    "slurm": ("hydra_submitit_launcher", "hydra-submitit-launcher"),
    "submitit_local": ("hydra_submitit_launcher", "hydra-submitit-launcher"),
    "submitit_slurm": ("hydra_submitit_launcher", "hydra-submitit-launcher"),
}


def _plugin_installed(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(f"hydra_plugins.{module}") is not None
    except ImportError:
        return False


def _launcher_problem(argv: list[str]) -> str | None:
    """A launcher whose plugin is not installed (Hydra says only "Could not load
    'hydra/launcher/joblib'"), and submitit's SLURM launcher where SLURM is absent (it fails
    with a traceback and an empty sweep directory): say so first."""
    for arg in argv:
        key, _, choice = arg.lstrip("+").partition("=")
        module, pip_name = LAUNCHER_PLUGINS.get(choice, (None, None))
        if key == "hydra/launcher" and module and not _plugin_installed(module):
            return (f"hydra/launcher={choice} needs the Hydra plugin {pip_name}, which is not "
                    f"installed here: pip install {pip_name} (or install otpe-cli with its "
                    "launchers extra, e.g. pip install -e '.[launchers]' in the clone).")
    missing = [c for c in ("sbatch", "srun") if shutil.which(c) is None]
    if "hydra/launcher=slurm" in argv and missing:
        return (f"hydra/launcher=slurm needs SLURM, and {' and '.join(map(repr, missing))} "
                f"{'is' if len(missing) == 1 else 'are'} not on PATH here: launch the sweep "
                "from a node of the cluster, or run it on this machine with "
                "hydra/launcher=local_parallel or the basic launcher.")
    return None


class _StopSignal(KeyboardInterrupt):
    """SIGTERM, SIGHUP or SIGUSR1 while a job starts up, before its training loop installs its
    own handlers: stop as Ctrl-C does there, in words, instead of dying without a word."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_stop(signum, frame):
    raise _StopSignal(signum)


def main() -> None:
    _guard_console_streams()
    argv = sys.argv[1:]
    if "--version" in argv:  # (Hydra's own flag names only Hydra)
        import torch

        from . import __version__

        print(f"otpe-train {__version__} (Hydra {hydra.__version__}, torch {torch.__version__})")
        return
    problem = _unknown_key_problem(argv) or _run_dir_problem(argv) or _launcher_problem(argv)
    if problem:
        print(f"otpe-train: error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    try:
        _hydra_main()
    except KeyboardInterrupt:  # Ctrl-C outside a job (a job answers it itself)
        print("otpe-train: interrupted; run the same command again to resume.", file=sys.stderr)
        raise SystemExit(128 + signal.SIGINT) from None


if __name__ == "__main__":
    main()
