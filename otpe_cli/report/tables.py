"""The report's tables: runs grouped per data set into rows (algorithm, plus any setting that
splits an algorithm's runs) × depths, cells the mean ± std over seeds; the notes on what was
left out; and the CSV, Markdown and console renderings."""
from __future__ import annotations

import csv
import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..identity import CHOICES
from ..spec import ALGORITHMS as ALGORITHM_ORDER
from .runs import LISTED_ONLY, NO_RESULTS, Run, number

#: what a table cell gathers over (seeds) and what it is keyed by
TABLE_KEYS = ("dataset", "algorithm", "depth")


#: the CSV's leading metric columns; every other scalar metric follows, sorted
CSV_METRICS = ("test/acc", "best/test_acc", "best/test_acc_iter", "val/acc", "best/val_acc",
               "best/test_acc_at_best_val", "train/loss", "train/acc", "test/loss",
               "align/cos/global", "align_mean/cos/global", "time/iter_s", "memory/peak_mb",
               "wall_time_s", "skipped_updates")
#: what each run costs, tabulated per algorithm: (metric, title, decimals)
COST_METRICS = (("time/iter_s", "seconds per training iteration, mean over the run", 4),
                ("memory/peak_mb", "peak memory of the run in MB (CPU: resident set; "
                                   "CUDA: allocated)", 1))


ALIGN_METRIC = "align_mean/cos/global"


LAYER_ALIGN_METRIC = "align_mean/cos/layers.{}.weight"


#: the authors' protocol (trainer.align_with): a listed rule's cosine at the trained model's
#: parameters, on its batches, mean over training
RULE_ALIGN_METRIC = "align_mean/{}/cos/layers.{}.weight"


RULE_ALIGN_KEY = re.compile(r"align_mean/([a-z_]+)/cos/layers\.(\d+)\.weight$")


MEASURES = ("cos", "sign", "norm_ratio")


def _count(n: int, noun: str) -> str:
    """``1 run``, ``2 runs``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


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
            # a row is an algorithm: only what differs among one algorithm's runs splits it
            # (the logits F-OTPE is defined with differ from OTPE's without splitting a row)
            per_algorithm = defaultdict(list)
            for r in runs:
                per_algorithm[r.get("algorithm")].append(r)
            candidates = [k for k in [*CHOICES, *setting_keys(runs)]
                          if k not in (*TABLE_KEYS, "seed")]
            keys = [k for k in candidates
                    if any(k in differing(group, [k]) for group in per_algorithm.values())]
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
        values = [v for v in (number(r.final.get(metric)) for r in runs) if v is not None]
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
    digits = next((d for m, _, d in COST_METRICS if m == metric), digits)
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
    missing = [r for r in runs if r.status == "finished" and number(r.final.get(metric)) is None]
    for r in missing:
        notes.append(f"{r.path}: finished without a finite {metric}; left out of the means.")
    if metric != ALIGN_METRIC:  # (alignment off: no key at all; here it is, but undefined)
        for r in runs:
            if (r.status == "finished" and ALIGN_METRIC in r.final
                    and number(r.final[ALIGN_METRIC]) is None):
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
        if any(number(r.final.get(ALIGN_METRIC)) is not None for r in tables.usable
               if r.get("dataset") == dataset and r.status == "finished"):
            out.append((dataset, f"mean cosine to BPTT over training ({ALIGN_METRIC})",
                        *table_rows(tables, dataset, ALIGN_METRIC)))
            out += layer_sections(tables, dataset)
        out += rule_sections(tables, dataset)
        for cost, title, _ in COST_METRICS:
            if any(number(r.final.get(cost)) is not None for r in tables.usable
                   if r.get("dataset") == dataset and r.status == "finished"):
                out.append((dataset, f"{title} ({cost})", *table_rows(tables, dataset, cost)))
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
