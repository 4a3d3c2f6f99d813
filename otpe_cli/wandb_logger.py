"""Weights & Biases for one run: the resolved config, every metric row, a final summary.

Imported only when ``logger=wandb`` (``import wandb`` costs about a second). W&B must never stop
training: without an API key or network the run logs offline (one line says how to
``wandb sync`` it later); if W&B cannot start even offline, training goes on without it.

- Files: ``<run_dir>/wandb/`` (``dir=run_dir``), so every job of a sweep keeps its own.
- One W&B run per job: ``reinit="finish_previous"`` and ``finish()`` at the end of every job,
  also when several jobs share a process (Hydra's basic launcher).
- Resume: the trainer keeps the run id and the number of rows sent (W&B's history steps) in its
  checkpoint; a resumed job continues the same W&B run, rewound to the checkpoint
  (``resume_from="<id>?_step=<steps − 1>"``), so that the rows it makes again after a kill are
  in W&B once. Where the server refuses the rewind, it continues the run as it is
  (``resume="allow"``).
- Step axis: the trainer's iteration (``define_metric(..., step_metric="iter")``).
- Summary: summary.json's keys and values, so one name means one thing everywhere: a metric's
  own key is its final value (``test/acc``), ``best/…`` the best one and where it was
  (``best/test_acc``, ``best/test_acc_iter``, ``best/test_acc_at_best_val``), ``align_mean/…``
  the mean over the run's alignment steps, and ``status`` how the run ended.
"""
from __future__ import annotations

import os
import secrets
import socket
import string
import threading
from pathlib import Path
from urllib.parse import urlsplit

from omegaconf import OmegaConf

#: seconds ``wandb.init`` may wait for the server; wandb's own default (90 s) stalls a job
INIT_TIMEOUT_S = 15.0
#: seconds ``finish()`` may spend uploading (wandb's default: forever); the local
#: ``<run_dir>/wandb/run-*`` files keep everything for a later ``wandb sync``
FINISH_TIMEOUT_S = 300.0
#: seconds to wait for a TCP connection to the W&B server before trying online at all
PROBE_TIMEOUT_S = 3.0
#: with a proxy the server may be reachable although a direct connection is not: no probe
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                   "all_proxy")


def new_run_id() -> str:
    """A W&B-style run id (8 characters of [a-z0-9]), chosen before init so a fallback keeps it."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def run_name(cfg) -> str:
    """``logger.run_name``, else ``<algorithm>_d<depth>_s<seed>`` (the sweep subdir's words)."""
    if cfg.logger.run_name:
        return str(cfg.logger.run_name)
    return f"{cfg.algorithm.name}_d{cfg.model.depth}_s{cfg.trainer.seed}"


def sweep_group(cfg) -> str | None:
    """``logger.group``, else in a multirun the sweep directory's name, shared by all its jobs.

    A name without letters (the default ``outputs/sweeps/<date>/<time>``) gets its parent's name
    in front, so that groups of different days stay apart.
    """
    if cfg.logger.group:
        return str(cfg.logger.group)
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
            return None
        sweep_dir = Path(str(HydraConfig.get().sweep.dir))
    except Exception:  # composed without Hydra's app (tests, notebooks): no sweep
        return None
    name = sweep_dir.name
    if not any(c.isalpha() for c in name) and sweep_dir.parent.name:
        name = f"{sweep_dir.parent.name}_{name}"
    return name


class WandbLogger:
    """One W&B run for one training run; every call is safe when W&B is unavailable."""

    def __init__(self, cfg, run_dir: Path, wandb_run_id: str | None = None, console=None,
                 steps: int = 0):
        self.console = console
        self.run_dir = Path(run_dir)
        self.run_id = wandb_run_id or new_run_id()
        #: rows sent to W&B in this run so far (its history steps), from earlier starts too
        self.steps = steps if wandb_run_id else 0
        self.run = None
        self.mode = str(cfg.logger.mode)
        self.quiet = cfg.trainer.progress == "none"  # wandb's own lines too; warnings stay
        try:
            import wandb
        except Exception as exc:  # a broken install must not stop training
            self._say(f"W&B: cannot import wandb ({exc}); training continues without W&B.")
            return
        self._wandb = wandb
        try:
            self._init_kwargs = dict(
                project=cfg.logger.project, entity=cfg.logger.entity, group=sweep_group(cfg),
                job_type=str(cfg.algorithm.name), name=run_name(cfg),
                tags=list(cfg.logger.tags or []) or None, config=self._config(cfg),
                dir=str(self.run_dir), reinit="finish_previous", allow_val_change=True)
        except Exception as exc:
            self._say(f"W&B: cannot read the logger config ({exc}); training continues "
                      "without W&B.")
            return
        unreachable = self._unreachable() if self.mode == "online" else None
        if unreachable:  # wandb itself takes up to INIT_TIMEOUT_S and more to find out
            self._say(f"W&B: cannot reach the server ({unreachable}); logging offline "
                      "instead.")
            self.mode = "offline"
        if self.mode == "online" and not self._has_key():
            self._say("W&B: no API key (run `wandb login` or set WANDB_API_KEY); logging "
                      "offline instead.")
            self.mode = "offline"
        self.run = self._init(self.mode)
        if self.run is None and self.mode == "online":
            self.mode = "offline"
            try:
                wandb.teardown()  # the failed online attempt keeps its run id "in use"
            except Exception:
                pass
            self.run = self._init("offline")
        if self.run is None:
            self._say("W&B: could not start even offline; training continues without W&B.")
            return
        self._define_axes()

    # ------------------------------------------------------------------ setup
    def _config(self, cfg) -> dict:
        """The resolved config (as written unresolved if an interpolation cannot resolve)."""
        try:
            config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        except Exception:
            config = OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)
        config["run_dir"] = str(self.run_dir)
        return config

    def _has_key(self) -> bool:
        """True when an API key is configured; never prompts and never touches the network."""
        try:
            return bool(self._wandb.login(prompt=False, verify=False))
        except Exception:
            return False

    @staticmethod
    def _unreachable() -> str | None:
        """Why a TCP connection to the W&B server fails (within PROBE_TIMEOUT_S), or None when
        it succeeds or the probe cannot tell (a proxy is set, or no server URL is found): then
        ``wandb.init`` finds out itself."""
        if any(os.environ.get(name) for name in PROXY_VARIABLES):
            return None
        try:
            from wandb.sdk import wandb_setup  # the base URL wandb will use (env, settings)

            url = urlsplit(str(wandb_setup.singleton().settings.base_url))
            host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
        except Exception:
            return None
        if not host:
            return None
        failure: list[str] = []

        def connect():
            try:
                socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
            except OSError as exc:
                failure.append(f"{host}:{port}: {exc.strerror or exc}")

        probe = threading.Thread(target=connect, daemon=True)  # a name lookup has no timeout
        probe.start()
        probe.join(PROBE_TIMEOUT_S + 0.5)
        if probe.is_alive():
            return f"{host}:{port}: no answer within {PROBE_TIMEOUT_S:g} s"
        return failure[0] if failure else None

    def _init(self, mode: str):
        wandb = self._wandb
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            settings = wandb.Settings(
                init_timeout=float(os.environ.get("WANDB_INIT_TIMEOUT", INIT_TIMEOUT_S)),
                finish_timeout=float(os.environ.get("WANDB_FINISH_TIMEOUT", FINISH_TIMEOUT_S)),
                console="off", silent=self.quiet)  # the console stays rich's and Hydra's
            resumes = [dict(id=self.run_id, resume="allow")]
            if self.steps:  # rewound to the checkpoint's last row; else continued as it is
                resumes.insert(0, dict(resume_from=f"{self.run_id}?_step={self.steps - 1}"))
            for i, resume in enumerate(resumes):
                try:
                    return wandb.init(mode=mode, settings=settings, **resume,
                                      **self._init_kwargs)
                except Exception:
                    if i == len(resumes) - 1:
                        raise
                    self.steps = 0  # continued without the rewind: its rows are counted anew
        except Exception as exc:
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            fallback = "trying offline" if mode == "online" else "giving up on W&B"
            self._say(f"W&B: {mode} init failed ({first_line}); {fallback}.")
            return None

    def _define_axes(self) -> None:
        try:
            self.run.define_metric("iter")
            self.run.define_metric("*", step_metric="iter")
        except Exception as exc:
            self._lost(exc)

    # ------------------------------------------------------------------ logging
    def log(self, row: dict) -> None:
        if self.run is None:
            return
        try:
            self.run.log({k: v for k, v in row.items() if v is not None})
            self.steps += 1
        except Exception as exc:
            self._lost(exc)

    def finish(self, summary: dict, failed: bool = False, preempted: bool = False) -> None:
        """Write the final summary and close the run: exit code 1 when the job failed or was
        stopped by a signal; a stopped job is first marked preempting, so that W&B shows it
        as preempted (it resumes into the same run), not as failed."""
        if self.run is None:
            return
        run, self.run = self.run, None
        try:
            final = {k: v for k, v in summary.items()
                     if k not in ("config", "settings") and v is not None}
            final["status"] = ("interrupted" if preempted else "failed" if failed
                               else summary.get("status", "finished"))
            run.summary.update(final)  # the config is the run's config already
            if preempted:
                run.mark_preempting()
            run.finish(exit_code=1 if failed or preempted else 0)
        except Exception as exc:
            self._say(f"W&B: could not finish the run cleanly ({exc}); the local files in "
                      f"{self.run_dir} are complete.")
        if self.mode == "offline" and not self.quiet:  # a resumed run adds a folder per start
            self._say("W&B: offline run saved; upload it later with: wandb sync "
                      f"{self.run_dir / 'wandb'}/offline-run-*")

    def _lost(self, exc: Exception) -> None:
        """A W&B call failed mid-run: stop using W&B for this run, keep training."""
        self._say(f"W&B: logging failed ({exc}); training continues without W&B.")
        try:
            self.run.finish(exit_code=1)
        except Exception:
            pass
        self.run = None

    def _say(self, line: str) -> None:
        if self.console is not None:
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            import sys

            print(line, file=sys.stderr)
