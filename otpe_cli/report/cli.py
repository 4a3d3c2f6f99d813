"""``otpe-report DIR …``: find the runs, write the CSV, the Markdown tables and the figures."""
from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

from ..logs import METRICS_NAME, SUMMARY_NAME
from .figures import write_figures
from .runs import LISTED_ONLY, find_run_dirs, load_run
from .tables import (CSV_METRICS, Tables, _count, print_tables, status_notes, write_csv,
                     write_markdown)

PROG = "otpe-report"


DEFAULT_METRIC = "test/acc"


class ReportError(Exception):
    """A problem with the inputs or the output folder, said in one sentence."""


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
