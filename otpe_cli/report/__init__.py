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
from .cli import DEFAULT_METRIC, ReportError, build_parser, main, make_report
from .figures import FIGURES
from .runs import Run, find_run_dirs, load_run
from .tables import Tables
from ..identity import CHOICES

__all__ = ["make_report", "main", "build_parser", "ReportError", "DEFAULT_METRIC", "FIGURES",
           "CHOICES", "Run", "Tables", "find_run_dirs", "load_run"]
