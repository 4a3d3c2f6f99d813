"""``otpe-train``: turn a Hydra config into a Trainer and run it.

The process around a run (signals, sweeps, the run directory, the command line's refusals)
is `otpe_cli.launch`'s; here a config becomes objects and the trainer trains.
"""
from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import hydra

from .config import validate
from .errors import USER_ERRORS
from .launch import argv as command_line
from .launch.console import guard_console_streams
from .launch.job import run_job
from .launch.rundir import run_dir_lock
from .launch.signals import StopSignal

log = logging.getLogger("otpe-train")


def run(cfg, run_dir: Path, on_accepted=None) -> dict:
    """Validate, build and train; returns the run's summary (also written to summary.json).
    ``on_accepted()`` is called once the config and the run directory have been accepted."""
    run_dir = Path(run_dir)
    with run_dir_lock(run_dir):
        validate(cfg)
        from .trainer import Trainer  # (torch: only once the config is accepted)

        trainer = Trainer(cfg, run_dir)
        done = trainer.finished_summary()
        if done is not None:  # its record (.hydra/config.yaml) stays the one it was trained with
            log.info("run in %s already finished (%d iterations, test/acc %.4f); not training "
                     "again", run_dir, done.get("iter", 0), done.get("test/acc", float("nan")))
            return done
        if trainer.iteration > cfg.trainer.iterations:
            raise ValueError(f"the checkpoint in {run_dir} is at iteration {trainer.iteration}, "
                             f"beyond trainer.iterations={cfg.trainer.iterations}: resume it "
                             f"with trainer.iterations={trainer.iteration} or more.")
        if on_accepted is not None:
            on_accepted()
        if trainer.iteration:
            log.info("resuming %s from iteration %d", run_dir, trainer.iteration)
        return trainer.train()


@hydra.main(config_path="pkg://otpe_cli.conf", config_name="config", version_base="1.3")
def _hydra_main(cfg):
    return run_job(cfg, run, USER_ERRORS)


def main() -> None:
    guard_console_streams()
    argv = sys.argv[1:]
    if "--version" in argv:  # (Hydra's own flag names only Hydra)
        from importlib.metadata import version

        print(f"otpe-train {version('otpe-cli')} (Hydra {hydra.__version__}, torch "
              f"{version('torch')})")
        return
    problem = command_line.problem(argv)
    if problem:
        print(f"otpe-train: error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    try:
        _hydra_main()
    except KeyboardInterrupt as exc:  # a stop outside a job (a job answers it itself)
        signum = exc.signum if isinstance(exc, StopSignal) else signal.SIGINT
        print(f"otpe-train: stopped by {signal.Signals(signum).name}; run the same command "
              "again to resume.", file=sys.stderr)
        raise SystemExit(128 + signum) from None


if __name__ == "__main__":
    main()
