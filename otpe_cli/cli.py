"""``otpe-train``: turn a Hydra config into a Trainer and run it. Thin on purpose."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from .checkpoint import CheckpointError
from .config import ConfigError, register_configs, validate
from .data import DataError
from .logs import SUMMARY_NAME, write_json_atomic

log = logging.getLogger("otpe-train")

register_configs()


class RunFailed(RuntimeError):
    """One run of a sweep failed; its directory records why and the other runs go on."""


#: errors that are the user's input or the run's numerics: one sentence, no traceback
USER_ERRORS = (ConfigError, DataError, CheckpointError, ValueError, FileNotFoundError,
               PermissionError)


def _record_failure(run_dir: Path, cfg, message: str) -> None:
    from .trainer import config_choices

    path = run_dir / SUMMARY_NAME
    try:
        if path.exists():  # never replace a finished run's results
            return
        write_json_atomic(path, {"status": "failed", "error": message,
                                 "config": config_choices(cfg)})
    except OSError:
        pass


def run(cfg, run_dir: Path) -> dict:
    """Validate, build and train; returns the run's summary (also written to summary.json)."""
    from .trainer import Trainer

    validate(cfg)
    trainer = Trainer(cfg, run_dir)
    done = trainer.finished_summary()
    if done is not None:
        log.info("run in %s already finished (%d iterations, test/acc %.4f); not training "
                 "again", run_dir, done.get("iter", 0), done.get("test/acc", float("nan")))
        return done
    if trainer.iteration:
        log.info("resuming %s from iteration %d", run_dir, trainer.iteration)
    return trainer.train()


@hydra.main(config_path="pkg://otpe_cli.conf", config_name="config", version_base="1.3")
def _hydra_main(cfg):
    from .trainer import Interrupted, NonFiniteError

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    if multirun and hc.launcher.get("_target_", "").endswith("JoblibLauncher"):
        os.environ["OTPE_PARALLEL_JOB"] = "1"  # parallel bars would overwrite each other
    try:
        summary = run(cfg, run_dir)
    except Interrupted as exc:
        log.warning("%s: checkpoint saved in %s; run the same command with hydra.run.dir=%s "
                    "to resume", exc, run_dir, run_dir)
        raise SystemExit(128 + exc.signum)
    except (*USER_ERRORS, NonFiniteError) as exc:
        message = str(exc)
        _record_failure(run_dir, cfg, message)
        if multirun:
            raise RunFailed(f"{run_dir}: {message}") from None
        print(f"otpe-train: error: {message}", file=sys.stderr)
        raise SystemExit(2)
    return summary.get("test/acc")


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
