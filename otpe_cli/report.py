"""``otpe-report``: the paper's tables and figures from run and sweep directories, without W&B.

A run is a directory holding ``summary.json`` (a finished, failed or interrupted run) or
``metrics.jsonl`` (a run still in progress, or one that was killed). ``otpe-report`` finds them
recursively and writes to OUT:

- ``results.csv``: one row per run that did not fail, its config choices and final (or latest)
  metrics;
- ``results.md`` (also printed as rich tables): mean ± std over seeds per
  dataset × algorithm × depth, the paper's layout, and per depth each layer's weight cosine to
  BPTT in two protocols: each algorithm's own gradient at its own parameters along its own
  training (``align_mean/cos/…``), and, for runs with ``trainer.align_with``, every listed
  rule's gradient at the trained model's parameters on its batches — with ``algorithm=bptt``,
  the authors' protocol (``align_mean/<rule>/cos/…``);
- ``test_acc_vs_iter.png``, ``final_acc_vs_depth.png``, ``alignment_per_layer.png``.

Failed runs (refused at validation, or stopped by an error) hold no results: they are kept out
of the CSV, the tables and the figures, and only counted and listed, with their error, in the
notes. Runs in progress or interrupted (stopped by a signal at a checkpoint, resumable) are in
the CSV and the curves but not in the means; they, and sweeps that mix other settings, are
reported with a note.
"""
from __future__ import annotations

import argparse
import csv
import difflib
import json
import math
import os
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .logs import METRICS_NAME, SUMMARY_NAME, read_metrics

PROG = "otpe-report"
#: otpe-train's log in a run directory: there from the start, before any metric
RUN_LOG = "otpe-train.log"
DEFAULT_METRIC = "test/acc"
#: config choices of a run (summary.json "config"), and where .hydra/config.yaml keeps them
CHOICES = {
    "dataset": "dataset.name", "encoding": "encoding.name", "algorithm": "algorithm.name",
    "depth": "model.depth", "width": "model.width", "optimizer": "optimizer.name",
    "lr": "optimizer.lr", "batch_size": "trainer.batch_size", "update": "trainer.update",
    "seed": "trainer.seed", "iterations": "trainer.iterations",
    "bias_trace": "algorithm.bias_trace",
}
#: what a table cell gathers over (seeds) and what it is keyed by
TABLE_KEYS = ("dataset", "algorithm", "depth")
ALGORITHM_ORDER = ("bptt", "ottt", "ostl", "otpe", "approx_otpe", "f_otpe", "f_approx_otpe")
#: the CSV's leading metric columns; every other scalar metric follows, sorted
CSV_METRICS = ("test/acc", "best/test_acc", "best/test_acc_iter", "val/acc", "best/val_acc",
               "best/test_acc_at_best_val", "train/loss", "train/acc", "test/loss",
               "align/cos/global", "align_mean/cos/global", "wall_time_s", "skipped_updates")
ALIGN_METRIC = "align_mean/cos/global"
LAYER_ALIGN_METRIC = "align_mean/cos/layers.{}.weight"
#: the authors' protocol (trainer.align_with): a listed rule's cosine at the trained model's
#: parameters, on its batches, mean over training
RULE_ALIGN_METRIC = "align_mean/{}/cos/layers.{}.weight"
RULE_ALIGN_KEY = re.compile(r"align_mean/([a-z_]+)/cos/layers\.(\d+)\.weight$")
MEASURES = ("cos", "sign", "norm_ratio")
SKIP_DIRS = {"wandb", ".submitit", ".hydra", "__pycache__"}
FIGURES = ("test_acc_vs_iter.png", "final_acc_vs_depth.png", "alignment_per_layer.png")
#: statuses of a run that has results, but not final ones: in the CSV and the curves, not the means
PARTIAL = ("in progress", "interrupted")
#: a run directory with only its log: stopped during start-up, or still starting
NO_RESULTS = "no results"
#: statuses with nothing to show in the CSV, tables or figures (the notes list them)
LISTED_ONLY = ("failed", NO_RESULTS)


def _count(n: int, noun: str) -> str:
    """``1 run``, ``2 runs``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


class ReportError(Exception):
    """A problem with the inputs or the output folder, said in one sentence."""


# =============================================================================================
# reading runs
# =============================================================================================
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
        from .trainer import settings  # (imports torch: only for runs that need it)

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


# =============================================================================================
# aggregation
# =============================================================================================
def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n − 1); no std for a single value."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def _algorithm_rank(name) -> tuple:
    name = str(name)
    return (ALGORITHM_ORDER.index(name) if name in ALGORITHM_ORDER else len(ALGORITHM_ORDER),
            name)


def _depth_rank(depth) -> tuple:
    return (0, depth, "") if isinstance(depth, (int, float)) else (1, 0, str(depth))


@dataclass
class Tables:
    """Runs grouped per dataset into rows (algorithm, plus any other varying setting) × depths."""
    runs: list
    notes: list = field(default_factory=list)
    #: dataset -> the config keys (besides algorithm, depth, seed) that differ between its runs
    extras: dict = field(default_factory=dict)

    def __post_init__(self):
        # A failed run has no results, and its config may be the very settings that were
        # refused (depth 0, a negative lr, a misspelt update, an unresolved "${...}"): in the
        # tables it would add columns and rows of its own. It is only listed (status_notes).
        self.usable = [r for r in self.runs
                       if r.status not in LISTED_ONLY and r.config.get("dataset") is not None]
        for r in self.runs:
            if r.status not in LISTED_ONLY and r.config.get("dataset") is None:
                self.notes.append(f"{r.path}: no config found (no summary.json config and no "
                                  ".hydra/config.yaml); left out of the tables and figures.")
        by_dataset = defaultdict(list)
        for r in self.usable:
            by_dataset[r.get("dataset")].append(r)
        for dataset, runs in by_dataset.items():
            keys = [k for k in differing(runs, [*CHOICES, *setting_keys(runs)])
                    if k not in (*TABLE_KEYS, "seed")]
            self.extras[dataset] = keys
            if keys:
                self.notes.append(
                    f"{dataset}: the runs differ in {', '.join(keys)} as well; rows are split by "
                    "those settings, so that a cell only averages over seeds.")

    @property
    def datasets(self) -> list:
        return sorted({r.get("dataset") for r in self.usable}, key=str)

    def label(self, run: Run) -> str:
        extras = self.extras.get(run.get("dataset"), [])
        if not extras:
            return str(run.get("algorithm"))
        return f"{run.get('algorithm')} [" + ", ".join(f"{k}={_shown(run, k)}"
                                                      for k in extras) + "]"

    def groups(self, dataset, statuses=("finished",)) -> dict:
        """{(label, depth): [runs]} for one dataset."""
        out = defaultdict(list)
        for r in self.usable:
            if r.get("dataset") == dataset and r.status in statuses:
                out[(self.label(r), r.get("depth"))].append(r)
        return out

    def layout(self, dataset) -> tuple[list, list]:
        """Row labels (algorithm order) and depths (ascending) of one dataset."""
        runs = [r for r in self.usable if r.get("dataset") == dataset]
        labels = sorted({self.label(r) for r in runs},
                        key=lambda s: (_algorithm_rank(s.split(" [")[0]), s))
        depths = sorted({r.get("depth") for r in runs}, key=_depth_rank)
        return labels, depths

    def cell(self, dataset, label, depth, metric) -> tuple[float, float | None, int] | None:
        runs = self.groups(dataset).get((label, depth), [])
        values = [v for v in (_number(r.final.get(metric)) for r in runs) if v is not None]
        if not values:
            return None
        mean, std = mean_std(values)
        return mean, std, len(values)


def _shown(run: Run, key) -> str:
    """A choice or setting as a row label shows it: "?" where the run does not record it
    (an old run without settings or .hydra/), floats to 6 digits."""
    if key not in run.config and key not in run.settings:
        return "?"
    value = run.get(key)
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def setting_keys(runs: list) -> list[str]:
    """The settings of these runs that are not config choices too (``model.beta``, ...)."""
    chosen = set(CHOICES.values())
    keys = {k for r in runs for k in r.settings if k not in chosen}
    return sorted(keys)


def differing(runs: list, keys: list) -> list:
    """The keys (choices or settings) whose values differ between the runs that record them."""
    return [k for k in keys if len({json.dumps(r.get(k)) for r in runs
                                    if k in CHOICES or k in r.settings}) > 1]


def experiment(run: Run) -> tuple:
    """What makes runs the same experiment: every choice and setting except the seed."""
    return tuple(json.dumps(run.get(k)) for k in [*CHOICES, *setting_keys([run])]
                 if k != "seed")


def is_accuracy(metric: str) -> bool:
    """An accuracy (a fraction in the files, % in the tables): test/acc, best/val_acc,
    best/test_acc_at_best_val, ...; not best/test_acc_iter."""
    name = metric.rsplit("/", 1)[-1]
    return name.endswith("acc") or name.endswith("acc_at_best_val")


def _fmt_cell(cell, metric: str) -> str:
    if cell is None:
        return "—"
    mean, std, n = cell
    scale, digits = (100.0, 2) if is_accuracy(metric) else (1.0, 3)
    text = f"{mean * scale:.{digits}f}"
    if std is not None:
        text += f" ± {std * scale:.{digits}f}"
    return f"{text} ({n})"


def _describe(metric: str) -> str:
    if is_accuracy(metric):
        return f"{metric} in %"
    return metric


def _progress(run: Run) -> str:
    total = run.get("iterations")
    return f"  {run.path}: iteration {run.iteration}" + (f" of {total}" if total else "")


def status_notes(runs: list, metric: str) -> list[str]:
    notes = []
    failed = [r for r in runs if r.status == "failed"]
    running = [r for r in runs if r.status == "in progress"]
    interrupted = [r for r in runs if r.status == "interrupted"]
    if failed:
        notes.append(f"{len(failed)} failed run(s), left out of the CSV, the tables and the "
                     "figures:")
        notes += [f"  {r.path}: {r.error or 'no error recorded'}" for r in failed]
    if interrupted:
        notes.append(f"{len(interrupted)} interrupted run(s) (stopped by a signal; resumable: "
                     "run the same command again), left out of the means; their values at the "
                     "last checkpoint are in the CSV:")
        notes += [_progress(r) for r in interrupted]
    if running:
        notes.append(f"{len(running)} run(s) in progress or stopped (metrics.jsonl without "
                     "summary.json), left out of the means; their latest values are in the CSV:")
        notes += [_progress(r) for r in running]
    empty = [r for r in runs if r.status == NO_RESULTS]
    if empty:
        notes.append(f"{len(empty)} run director{'y' if len(empty) == 1 else 'ies'} with no "
                     "results (stopped during start-up, before the first logged iteration, or "
                     "still starting; the same command starts it again):")
        notes += [f"  {r.path}" for r in empty]
    missing = [r for r in runs if r.status == "finished" and _number(r.final.get(metric)) is None]
    for r in missing:
        notes.append(f"{r.path}: finished without a finite {metric}; left out of the means.")
    if metric != ALIGN_METRIC:  # (alignment off: no key at all; here it is, but undefined)
        for r in runs:
            if (r.status == "finished" and ALIGN_METRIC in r.final
                    and _number(r.final[ALIGN_METRIC]) is None):
                notes.append(f"{r.path}: its {ALIGN_METRIC} is not finite (a gradient of zero "
                             "or a non-finite one at an alignment step); left out of the "
                             "cosine tables.")
    seen = defaultdict(list)
    for r in runs:
        if r.status == "finished" and r.get("dataset") is not None:
            seen[(experiment(r), json.dumps(r.get("seed")))].append(r)
    for same in seen.values():
        if len(same) > 1:
            notes.append(f"{len(same)} finished runs share one config and seed (counted as "
                         f"separate samples): {', '.join(str(r.path) for r in same)}")
    return notes


# =============================================================================================
# outputs
# =============================================================================================
def write_csv(runs: list, path: Path) -> None:
    """One row per run given; failed runs are not given (no results, and an error column that
    only they fill): the notes list them."""
    present = set().union(*(r.final.keys() for r in runs))
    metrics = [m for m in CSV_METRICS if m in present]
    metrics += sorted(present - set(metrics) - {"iter"})
    apart = differing(runs, setting_keys(runs))  # the settings that tell these runs apart
    header = ["run", "status", *CHOICES, *apart, "iter", *metrics]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for r in runs:
            writer.writerow([str(r.path), r.status, *(r.get(k) for k in [*CHOICES, *apart]),
                             r.iteration, *(r.final.get(m) for m in metrics)])


def table_rows(tables: Tables, dataset, metric: str) -> tuple[list, list]:
    labels, depths = tables.layout(dataset)
    header = ["algorithm", *(f"depth {d}" for d in depths)]
    rows = [[label, *(_fmt_cell(tables.cell(dataset, label, d, metric), metric)
                      for d in depths)] for label in labels]
    return header, rows


def _md_table(header: list, rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _sections(tables: Tables, metric: str) -> list:
    """[(dataset, title, header, rows)] for the accuracy table and the alignment table."""
    out = []
    for dataset in tables.datasets:
        out.append((dataset, _describe(metric), *table_rows(tables, dataset, metric)))
        if any(_number(r.final.get(ALIGN_METRIC)) is not None for r in tables.usable
               if r.get("dataset") == dataset and r.status == "finished"):
            out.append((dataset, f"mean cosine to BPTT over training ({ALIGN_METRIC})",
                        *table_rows(tables, dataset, ALIGN_METRIC)))
            out += layer_sections(tables, dataset)
        out += rule_sections(tables, dataset)
    return out


def aligned_rules(runs: list) -> list[str]:
    """The rules that runs measured at their own parameters (``trainer.align_with``)."""
    found = {m.group(1) for r in runs for k in r.final
             for m in [RULE_ALIGN_KEY.match(k)] if m and m.group(1) not in MEASURES}
    return sorted(found, key=_algorithm_rank)


def rule_sections(tables: Tables, dataset) -> list:
    """The authors' alignment protocol: per depth, each listed rule's weight cosine to BPTT per
    layer, measured at the trained algorithm's parameters on its batches (``align_with``),
    rows ``<rule> at <algorithm>``."""
    out = []
    labels, depths = tables.layout(dataset)
    runs = [r for r in tables.usable if r.get("dataset") == dataset and r.status == "finished"]
    rules = aligned_rules(runs)
    for depth in depths:
        if not isinstance(depth, int) or not rules:
            continue
        rows = []
        for label in labels:
            for rule in rules:
                metrics = [RULE_ALIGN_METRIC.format(rule, i) for i in range(depth)]
                cells = [tables.cell(dataset, label, depth, m) for m in metrics]
                if any(c is not None for c in cells):
                    rows.append([f"{rule} at {label}",
                                 *(_fmt_cell(c, m) for c, m in zip(cells, metrics))])
        if rows:
            header = ["rule at the trained model", *(f"layer {i + 1}" for i in range(depth - 1)),
                      f"layer {depth} (output)"]
            out.append((dataset, f"depth {depth}: weight cosine to BPTT per layer at the trained "
                                 "model's parameters, every listed rule on its batches (the "
                                 "authors' protocol, trainer.align_with), mean over training "
                                 f"({RULE_ALIGN_METRIC.format('<rule>', '<i>')})", header, rows))
    return out


def layer_sections(tables: Tables, dataset) -> list:
    """Per depth, one table of each layer's weight cosine to BPTT (mean over training), rows
    by algorithm, columns layer 1 … L (SPEC §4); algorithms without alignment rows are left out."""
    out = []
    labels, depths = tables.layout(dataset)
    for depth in depths:
        if not isinstance(depth, int):
            continue
        metrics = [LAYER_ALIGN_METRIC.format(i) for i in range(depth)]
        rows = []
        for label in labels:
            cells = [tables.cell(dataset, label, depth, m) for m in metrics]
            if any(c is not None for c in cells):
                rows.append([label, *(_fmt_cell(c, m) for c, m in zip(cells, metrics))])
        if rows:
            header = ["algorithm", *(f"layer {i + 1}" for i in range(depth - 1)),
                      f"layer {depth} (output)"]
            out.append((dataset, f"depth {depth}: weight cosine to BPTT per layer, each "
                                 "algorithm at its own parameters along its own training, mean "
                                 f"over training ({LAYER_ALIGN_METRIC.format('<i>')})", header,
                        rows))
    return out


def write_markdown(tables: Tables, metric: str, roots: list, path: Path, notes: list) -> None:
    counts = defaultdict(int)
    for r in tables.runs:
        counts[r.status] += 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    lines = ["# Results", "",
             f"{_count(len(tables.runs), 'run')} ({summary}) from: " + ", ".join(f"`{p}`" for p in roots),
             "", "Cells: mean ± sample standard deviation over seeds, (number of runs).", ""]
    current = None
    for dataset, title, header, rows in _sections(tables, metric):
        if dataset != current:
            lines += [f"## {dataset}", ""]
            current = dataset
        lines += [f"{title}:", "", _md_table(header, rows), ""]
    if notes:
        lines += ["## Notes", ""] + [f"- {n.strip()}" if not n.startswith("  ")
                                     else f"  - {n.strip()}" for n in notes] + [""]
    path.write_text("\n".join(lines))


def print_tables(tables: Tables, metric: str, notes: list, console) -> None:
    from rich.table import Table
    from rich.text import Text

    for dataset, title, header, rows in _sections(tables, metric):
        table = Table(title=f"{dataset}: {title}", title_justify="left",
                      caption="mean ± std over seeds (runs)", caption_justify="left")
        for i, h in enumerate(header):
            table.add_column(h, justify="left" if i == 0 else "right")
        for row in rows:
            table.add_row(*(Text(c) for c in row))  # labels hold [..]: not markup
        console.print(table)
    for note in notes:
        console.print(f"note: {note}" if not note.startswith("  ") else note,
                      style="yellow", markup=False, highlight=False, soft_wrap=True)


# ------------------------------------------------------------------------------ figures
def _curve(runs: list, key: str) -> tuple[list, list, list]:
    """Iterations, mean and std of ``key`` over runs, at every logged iteration."""
    at = defaultdict(list)
    for r in runs:
        for row in r.rows:
            v = _number(row.get(key))
            if v is not None and "iter" in row:
                at[row["iter"]].append(v)
    its = sorted(at)
    stats = [mean_std(at[i]) for i in its]
    return its, [m for m, _ in stats], [s or 0.0 for _, s in stats]


def _layer_cosines(run: Run) -> dict[int, float]:
    """Mean cosine to BPTT per layer's weight over the run's alignment rows (SPEC §4)."""
    out = {}
    prefix = "align/cos/layers."
    keys = {k for row in run.rows for k in row if k.startswith(prefix) and k.endswith(".weight")}
    for key in keys:
        values = [v for v in (_number(row.get(key)) for row in run.rows) if v is not None]
        if values:
            out[int(key[len(prefix):-len(".weight")])] = sum(values) / len(values)
    if not out:  # no metrics rows: the summary's mean over training
        prefix = "align_mean/cos/layers."
        for key, v in run.final.items():
            if key.startswith(prefix) and key.endswith(".weight") and _number(v) is not None:
                out[int(key[len(prefix):-len(".weight")])] = float(v)
    return out


def _grid(plt, nrows: int, ncols: int):
    # constrained layout rather than tight_layout: it leaves room for the figure legend below
    # the panels, and does not give up ("Tight layout not applied") on crowded decorations
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False,
                             layout="constrained")
    return fig, axes


def _mpl_text(text) -> str:
    """``text`` shown as is: matplotlib reads "$...$" as mathematics, and an unresolved
    "${dataset.adamax_lr.${trainer.update}}" in a label would stop the report with a parse
    error."""
    return str(text).replace("$", r"\$")


def _figure_legend(fig, order: list) -> None:
    """One legend for the whole figure, below the panels, in ``order`` (colours are shared by
    all panels), and only when a panel drew something labelled: ``legend()`` with nothing
    labelled only warns. Per-panel legends inside the axes would hide the curves, and with
    long labels (rows split by lr, width, ...) leave constrained layout no room; so the figure
    is widened and heightened to hold the legend instead."""
    handles = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    labels = [label for label in order if label in handles]
    labels += [label for label in handles if label not in labels]
    if not labels:
        return
    renderer = fig.canvas.get_renderer()

    def legend(ncols):
        return fig.legend([handles[label] for label in labels], labels, loc="outside lower center",
                          ncols=ncols, fontsize=7, frameon=False)

    one = legend(1)  # its width is that of the widest entry: as many columns as fit
    entry = one.get_window_extent(renderer).width / fig.dpi
    one.remove()
    width = fig.get_figwidth()
    final = legend(max(1, min(len(labels), int(width // max(entry, 1e-3)))))
    box = final.get_window_extent(renderer)
    fig.set_size_inches(max(width, box.width / fig.dpi + 0.2),
                        fig.get_figheight() + box.height / fig.dpi + 0.1)


def _colors(labels: list) -> dict:
    import matplotlib

    n = 10 if len(labels) <= 10 else 20  # tab20 keeps up to 20 variants apart
    cmap = matplotlib.colormaps[f"tab{n}"]
    return {label: cmap(i % n) for i, label in enumerate(labels)}


def write_figures(tables: Tables, metric: str, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    datasets = tables.datasets
    if not datasets:
        return written
    layouts = {d: tables.layout(d) for d in datasets}
    all_labels = sorted({lab for d in datasets for lab in layouts[d][0]},
                        key=lambda s: (_algorithm_rank(s.split(" [")[0]), s))
    color = _colors(all_labels)
    ncols = max(len(layouts[d][1]) for d in datasets)
    live = ("finished", *PARTIAL)  # curves show runs not finished yet, up to where they are

    def dataset_by_depth_panels():
        """Rows = datasets, columns = depths: yields (axes, dataset, depth, labels, groups)."""
        fig, axes = _grid(plt, len(datasets), ncols)
        for i, dataset in enumerate(datasets):
            labels, depths = layouts[dataset]
            groups = tables.groups(dataset, live)
            for j in range(ncols):
                if j >= len(depths):
                    axes[i][j].axis("off")
                    continue
                yield axes[i][j], dataset, depths[j], labels, groups
                axes[i][j].grid(alpha=0.3)
        save(fig)

    def save(fig):
        _figure_legend(fig, [_mpl_text(label) for label in all_labels])
        written.append(out / FIGURES[len(written)])
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)

    # test accuracy over iterations
    for ax, dataset, depth, labels, groups in dataset_by_depth_panels():
        for label in labels:
            its, mean, std = _curve(groups.get((label, depth), []), "test/acc")
            if not its:
                continue
            mean, std = [100 * m for m in mean], [100 * s for s in std]  # % as in the tables
            ax.plot(its, mean, marker="o" if len(its) < 3 else None, ms=3,
                    label=_mpl_text(label), color=color[label])
            ax.fill_between(its, [m - s for m, s in zip(mean, std)],
                            [m + s for m, s in zip(mean, std)], color=color[label],
                            alpha=0.2, lw=0)
        ax.set(title=_mpl_text(f"{dataset}, depth {depth}"), xlabel="iteration",
               ylabel="test accuracy (%)")

    # final accuracy against depth: one panel per dataset
    scale = 100.0 if is_accuracy(metric) else 1.0  # % as in the tables
    fig, axes = _grid(plt, 1, len(datasets))
    for i, dataset in enumerate(datasets):
        ax = axes[0][i]
        labels, depths = layouts[dataset]
        numeric = [d for d in depths if isinstance(d, (int, float))]
        for label in labels:
            points = [(d, tables.cell(dataset, label, d, metric)) for d in numeric]
            points = [(d, c) for d, c in points if c is not None]
            if not points:
                continue
            ax.errorbar([d for d, _ in points], [scale * c[0] for _, c in points],
                        yerr=[scale * (c[1] or 0.0) for _, c in points], marker="o", capsize=3,
                        label=_mpl_text(label), color=color[label])
        ax.set(title=_mpl_text(dataset), xlabel="depth (spiking layers)",
               ylabel=_mpl_text(_describe(metric)))
        if numeric:
            ax.set_xticks(numeric)
        ax.grid(alpha=0.3)
    save(fig)

    # per-layer cosine to BPTT (BPTT itself is 1 everywhere)
    for ax, dataset, depth, labels, groups in dataset_by_depth_panels():
        for label in labels:
            if label.split(" [")[0] == "bptt":
                continue
            per_layer = defaultdict(list)
            for r in groups.get((label, depth), []):
                for layer, cos in _layer_cosines(r).items():
                    per_layer[layer].append(cos)
            if not per_layer:
                continue
            layers = sorted(per_layer)
            stats = [mean_std(per_layer[k]) for k in layers]
            ax.errorbar([k + 1 for k in layers], [m for m, _ in stats],
                        yerr=[s or 0.0 for _, s in stats], marker="o", capsize=3,
                        label=_mpl_text(label), color=color[label])
        ax.set(title=_mpl_text(f"{dataset}, depth {depth}"), xlabel="layer (last = output)",
               ylabel="cosine to BPTT (weights)")
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        if isinstance(depth, int):
            ax.set_xticks(range(1, depth + 1))
    return written


# =============================================================================================
# command line
# =============================================================================================
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Tables and figures from otpe-train run and sweep directories, "
                    "without W&B.\n\n"
                    "Finds every run under DIR (a folder with summary.json or metrics.jsonl)\n"
                    "and writes to OUT:\n"
                    "  results.csv    one row per run: config choices and final metrics\n"
                    "  results.md     mean ± std over seeds per dataset × algorithm × depth\n"
                    "                 (also printed), the final test accuracy, the mean\n"
                    "                 cosine to BPTT, and each layer's weight cosine:\n"
                    "                 along each algorithm's own training, and (runs\n"
                    "                 with trainer.align_with) every listed rule at\n"
                    "                 the trained model's parameters (the authors'\n"
                    "                 protocol with algorithm=bptt)\n"
                    "  *.png          test accuracy over iterations, final accuracy against\n"
                    "                 depth, per-layer cosine to BPTT",
        epilog="examples:\n"
               "  otpe-report outputs/sweeps/randman_compare/2024-05-01_10-00-00\n"
               "  otpe-report outputs/sweeps/A outputs/sweeps/B -o paper/figures\n"
               "  otpe-report outputs/runs --metric best/test_acc_at_best_val\n\n"
               "Failed runs are only counted and listed, with their error, in the notes; runs\n"
               "still in progress or interrupted (resumable) are in the CSV and noted. The\n"
               "means use finished runs only. Runs that differ in any other setting (lr,\n"
               "width, T, beta, readout, ...) get rows of their own, named by the settings\n"
               "that differ. Accuracies are in % in the tables, fractions in the CSV.\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dirs", nargs="+", metavar="DIR",
                        help="run or sweep directories (searched recursively)")
    parser.add_argument("-o", "--out", metavar="OUT", type=Path,
                        help="output folder (default: DIR/report for the first DIR)")
    parser.add_argument("--metric", default=DEFAULT_METRIC,
                        help="summary metric for the tables and the depth figure (default: "
                             "test/acc, the final test accuracy; e.g. best/test_acc, "
                             "best/test_acc_at_best_val)")
    parser.add_argument("--no-figures", action="store_true", help="write no PNG figures")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="print only the paths written, not the tables")
    return parser


def make_report(dirs: list, out: Path | None = None, metric: str = DEFAULT_METRIC,
                figures: bool = True, console=None) -> dict:
    """Read the runs under ``dirs`` and write the report; returns what was written."""
    roots = [Path(d) for d in dirs]
    for root in roots:
        if not root.exists():
            raise ReportError(f"no such directory: {root}")
        if not root.is_dir():
            raise ReportError(f"{root} is not a directory; give a run or sweep directory.")
    out = Path(out) if out is not None else roots[0] / "report"
    run_dirs = find_run_dirs(roots, skip=out.resolve())
    if not run_dirs:
        raise ReportError(f"no runs found in {', '.join(map(str, roots))}: a run directory "
                          f"holds {SUMMARY_NAME} or {METRICS_NAME} (otpe-train writes them).")
    runs = [load_run(p) for p in run_dirs]
    present = {k for r in runs if r.status not in LISTED_ONLY for k in r.final}
    if metric not in present and metric not in CSV_METRICS:  # (a known one: noted below)
        near = difflib.get_close_matches(metric, sorted(present | set(CSV_METRICS)), n=1,
                                         cutoff=0.6)
        raise ReportError(f"no run has the metric {metric!r}" +
                          (f" (did you mean {near[0]}?)" if near else "") +
                          f"; results.csv lists the metrics, --metric {DEFAULT_METRIC} is the "
                          "default.")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"cannot create the output folder {out} ({exc.strerror}).") from None
    tables = Tables(runs)
    notes = tables.notes + status_notes(runs, metric)
    results = [r for r in runs if r.status not in LISTED_ONLY]
    if not tables.usable:
        notes.append("no run with results (every run failed or has no config); the tables "
                     "and figures are empty.")
    elif metric not in {k for r in tables.usable for k in r.final}:
        why = (" (validation metrics exist only for data sets with a validation split: SHD, "
               "SSC)" if "val" in metric else "")
        notes.append(f"no run has the metric {metric!r}{why}; the tables are empty (see the "
                     "CSV for the metric names).")
    written = {"csv": out / "results.csv", "markdown": out / "results.md", "figures": []}
    try:
        write_csv(results, written["csv"])
        write_markdown(tables, metric, roots, written["markdown"], notes)
        if figures:
            written["figures"] = write_figures(tables, metric, out)
    except OSError as exc:
        raise ReportError(f"cannot write to {out} ({exc.strerror or exc}).") from None
    if console is not None:
        print_tables(tables, metric, notes, console)
    written.update(runs=runs, notes=notes)
    return written


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    from rich.console import Console

    console = Console()
    try:
        written = make_report(args.dirs, args.out, args.metric, not args.no_figures,
                              None if args.quiet else console)
    except ReportError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        raise SystemExit(1)
    paths = [written["csv"], written["markdown"], *written["figures"]]
    console.print(f"{_count(len(written['runs']), 'run')}; wrote " + ", ".join(str(p) for p in paths),
                  markup=False, highlight=False, soft_wrap=True)


if __name__ == "__main__":
    main()
