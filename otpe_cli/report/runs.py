"""Reading run directories: what each holds (its status, config choices and settings, final
metrics and metrics rows), for the tables and the figures."""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..identity import CHOICES
from ..logs import METRICS_NAME, SUMMARY_NAME, read_metrics

#: otpe-train's log in a run directory: there from the start, before any metric
RUN_LOG = "otpe-train.log"


SKIP_DIRS = {"wandb", ".submitit", ".hydra", "__pycache__"}


#: statuses of a run that has results, but not final ones: in the CSV and the curves, not the means
PARTIAL = ("in progress", "interrupted")


#: a run directory with only its log: stopped during start-up, or still starting
NO_RESULTS = "no results"


#: statuses with nothing to show in the CSV, tables or figures (the notes list them)
LISTED_ONLY = ("failed", NO_RESULTS)


@dataclass
class Run:
    path: Path
    status: str                                  # finished | failed | in progress | interrupted
    config: dict
    final: dict                                  # final (or, in progress, latest) metrics
    rows: list = field(default_factory=list)     # metrics.jsonl
    error: str | None = None
    #: every setting that makes it a different experiment, as dotted keys (trainer.settings)
    settings: dict = field(default_factory=dict)

    def get(self, key):
        """A config choice (``algorithm``, ``depth``, ...) or a setting (``model.beta``)."""
        return self.config[key] if key in self.config else self.settings.get(key)

    @property
    def iteration(self):
        return self.final.get("iter") or (self.rows[-1].get("iter") if self.rows else 0)


def _natural(path: Path) -> list:
    """Sort key that puts 2_otpe before 10_otpe (sweep job numbers)."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part)
            for part in re.split(r"(\d+)", str(path))]


def find_run_dirs(roots: list[Path], skip: Path | None = None) -> list[Path]:
    """Every directory under ``roots`` that holds summary.json or metrics.jsonl, sorted.
    Symbolic links are followed (runs gathered from several places into one folder), each real
    directory once, so a link that points back up cannot loop."""
    found, seen = set(), set()
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            here = Path(dirpath)
            seen.add(here.resolve())
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS
                                 and (skip is None or here / d != skip)
                                 and (here / d).resolve() not in seen)
            if SUMMARY_NAME in filenames or METRICS_NAME in filenames or RUN_LOG in filenames:
                found.add(here.resolve())
    return sorted(found, key=_natural)


def _scalar(value) -> bool:
    return value is None or isinstance(value, (int, float, str, bool))


def _config_from_hydra(path: Path) -> tuple[dict, dict]:
    """The config choices and the settings from ``.hydra/config.yaml`` (a run without a
    summary yet, or with a summary from before summaries held the settings)."""
    file = path / ".hydra" / "config.yaml"
    if not file.exists():
        return {}, {}
    try:
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(file)
        choices = {k: OmegaConf.select(cfg, p, default=None) for k, p in CHOICES.items()}
    except Exception:
        return {}, {}
    try:
        from ..identity import settings

        return choices, json.loads(json.dumps(settings(cfg), default=str))
    except Exception:
        return choices, {}


def load_run(path: Path) -> Run:
    summary, error = None, None
    if (path / SUMMARY_NAME).exists():
        try:
            summary = json.loads((path / SUMMARY_NAME).read_text())
            if not isinstance(summary, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:  # JSONDecodeError is a ValueError
            summary, error = None, f"unreadable {SUMMARY_NAME} ({exc})"
    rows = read_metrics(path / METRICS_NAME)
    config = dict((summary or {}).get("config") or {})
    settings = (summary or {}).get("settings")
    if not config or not isinstance(settings, dict):  # in progress, or an older summary
        hydra_choices, hydra_settings = _config_from_hydra(path)
        config = config or hydra_choices
        settings = settings if isinstance(settings, dict) else hydra_settings
    if (settings and config.get("dataset") in ("randman", "trandman")
            and "dataset.normalisation" not in settings):
        # made before the per-draw normalisation existed: the fixed one
        settings = {**settings, "dataset.normalisation": "fixed"}
    final = {}
    for row in rows:  # the latest value of every metric; a summary has the last word
        final.update({k: v for k, v in row.items() if _scalar(v)})
    if summary is not None:
        # "interrupted": stopped by a signal, the summary taken at its last checkpoint
        status = summary.get("status", "finished")
        error = summary.get("error")
        final.update({k: v for k, v in summary.items()
                      if k not in ("config", "status", "error") and _scalar(v)})
    else:
        status = "failed" if error else "in progress" if rows else NO_RESULTS
    return Run(path, status, config, final, rows, error, settings)


def number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None
