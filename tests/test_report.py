"""``otpe-report`` on a real small sweep (CSV, table, figures) and on the awkward cases: failed
runs, runs in progress or interrupted, mixed sweeps, bad arguments."""
from __future__ import annotations

import csv
import io
import json
import shutil
import statistics
import warnings
from pathlib import Path

import pytest
from rich.console import Console

from helpers import run_cli
from otpe_cli.report import CHOICES, FIGURES, main, make_report

TINY_SWEEP = ["debug=quick", "dataset.num_units=10",
              "trainer.iterations=2", "trainer.eval_every=1",
              "trainer.align_every=2", "dataset.num_steps=10", "model.width=8",
              "trainer.batch_size=8", "dataset.test_samples_per_class=5",
              "trainer.progress=none"]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """2 algorithms × 2 depths × 2 seeds, in one process (basic launcher)."""
    root = tmp_path_factory.mktemp("report")
    sweep = root / "sweep"
    res = run_cli(["-m", *TINY_SWEEP, "algorithm=ottt,otpe", "model.depth=2,3",
                   "trainer.seed=0,1", f"hydra.sweep.dir={sweep}"], cwd=root)
    assert res.returncode == 0, res.stderr[-3000:]
    return sweep


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_report_on_a_real_sweep_writes_csv_table_and_figures(sweep, tmp_path):
    res = run_cli([str(sweep)], cwd=tmp_path, executable="otpe-report")
    assert res.returncode == 0, res.stderr[-3000:]
    out = sweep / "report"  # the default: a report/ folder in the first DIR
    rows = read_csv(out / "results.csv")
    assert len(rows) == 8 and {r["status"] for r in rows} == {"finished"}
    for key in ("run", "dataset", "algorithm", "depth", "seed", "lr", "test/acc",
                "best/test_acc", "train/loss", "align/cos/layers.0.weight",
                "align_mean/cos/layers.0.weight"):
        assert key in rows[0], key
    # the table: mean ± std over the two seeds, in %, per algorithm × depth
    summaries = {}
    for path in sweep.glob("*/summary.json"):
        s = json.loads(path.read_text())
        summaries.setdefault((s["config"]["algorithm"], s["config"]["depth"]), []).append(
            s["test/acc"])
    values = summaries[("otpe", 3)]
    cell = f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f} (2)"
    md = (out / "results.md").read_text()
    assert "## randman" in md and "| algorithm | depth 2 | depth 3 |" in md
    otpe_row = next(line for line in md.splitlines() if line.startswith("| otpe |"))
    assert otpe_row.rstrip(" |").split(" | ")[2] == cell
    assert md.index("| ottt |") < md.index("| otpe |")  # the paper's order
    assert "cosine to BPTT" in md
    # per depth, each layer's weight cosine to BPTT (mean over training), mean ± std over seeds
    layer_cos = [[json.loads(p.read_text())[f"align_mean/cos/layers.{i}.weight"]
                  for p in sorted(sweep.glob("*_ottt_d3_*/summary.json"))] for i in range(3)]
    expected = " | ".join(f"{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f} (2)"
                          for v in layer_cos)
    depth3 = md[md.index("depth 3: weight cosine to BPTT per layer, each algorithm"):]
    assert "| algorithm | layer 1 | layer 2 | layer 3 (output) |" in depth3
    assert f"| ottt | {expected} |" in depth3
    assert "depth 2: weight cosine to BPTT per layer" in md
    # the same table on the console (rich), and the paths written
    assert "randman: test/acc in %" in res.stdout and cell in res.stdout
    assert "results.csv" in res.stdout
    for name in FIGURES:
        data = (out / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, name


BASE_CONFIG = {"dataset": "randman", "encoding": "rate", "algorithm": "otpe", "depth": 3,
               "width": 128, "optimizer": "adamax", "lr": 0.001, "batch_size": 128,
               "update": "offline", "seed": 0, "iterations": 10, "bias_trace": False}


def _fake_run(path: Path, status="finished", acc=0.5, rows=(),
              error="non-finite loss or gradient at iteration 3", extra=None, **config) -> None:
    """A run directory as otpe-train leaves it: summary.json ("finished", "failed" with an
    error, or "interrupted": the finished keys at the last checkpoint; ``extra`` keys on top)
    and, given ``rows``, metrics.jsonl."""
    path.mkdir(parents=True)
    summary = {"status": status, "config": {**BASE_CONFIG, **config}}
    if status == "failed":
        summary["error"] = error
    else:
        summary.update({"test/acc": acc, "iter": rows[-1]["iter"] if rows else 10,
                        "align_mean/cos/global": 0.9})
    summary.update(extra or {})
    (path / "summary.json").write_text(json.dumps(summary))
    if rows:
        (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _fake_in_progress(path: Path, rows, **config) -> None:
    """A run still training: metrics.jsonl and .hydra/config.yaml (JSON is YAML), no summary."""
    (path / ".hydra").mkdir(parents=True)
    cfg: dict = {}
    for key, dotted in CHOICES.items():
        *parents, leaf = dotted.split(".")
        node = cfg
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = {**BASE_CONFIG, **config}[key]
    (path / ".hydra" / "config.yaml").write_text(json.dumps(cfg))
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _curve_rows(last: int, acc: float = 0.5) -> list[dict]:
    return [{"iter": i, "test/acc": acc * i / last, "train/loss": 1.0 / i,
             "align/cos/layers.0.weight": 0.8, "align/cos/layers.1.weight": 0.7}
            for i in range(1, last + 1)]


#: runs refused at validation (otpe-train's cli writes these), one with the unresolved Adamax lr
REFUSED = {
    "bad_depth": ({"depth": 0}, "model.depth=0 must be at least 1."),
    "bad_width": ({"width": -5}, "model.width=-5 must be at least 1."),
    "bad_lr": ({"lr": -0.001}, "optimizer.lr=-0.001 must be positive."),
    "bad_update": ({"update": "onlin", "lr": "${dataset.adamax_lr.${trainer.update}}"},
                   "trainer.update='onlin' is not one of: offline, online."),
}


def _refused_runs(root: Path) -> None:
    for name, (config, error) in REFUSED.items():
        _fake_run(root / name, status="failed", error=error, **config)


def _report(dirs, out, **kwargs) -> tuple[dict, str]:
    """make_report with its console output captured."""
    console = Console(file=io.StringIO(), width=200)
    written = make_report(dirs, out, console=console, **kwargs)
    return written, console.file.getvalue()


def test_means_and_std_are_exact(tmp_path):
    for seed, acc in enumerate((0.8, 0.9, 1.0)):
        _fake_run(tmp_path / f"s{seed}", acc=acc, seed=seed)
    written = make_report([tmp_path], tmp_path / "out", figures=False)
    md = written["markdown"].read_text()
    assert "| otpe | 90.00 ± 10.00 (3) |" in md
    assert "| otpe | 0.900 ± 0.000 (3) |" in md  # the mean cosine to BPTT
    assert not written["notes"]


def test_runs_linked_into_one_folder_are_found_once(tmp_path):
    """Run directories gathered by symbolic links are followed; a link back up does not loop,
    and a run reached twice counts once."""
    for seed, acc in enumerate((0.8, 0.9, 1.0)):
        _fake_run(tmp_path / "runs" / f"s{seed}", acc=acc, seed=seed)
    gathered = tmp_path / "gathered"
    gathered.mkdir()
    for seed in range(3):
        (gathered / f"s{seed}").symlink_to(tmp_path / "runs" / f"s{seed}")
    (gathered / "again").symlink_to(tmp_path / "runs" / "s0")
    (gathered / "loop").symlink_to(gathered)
    written = make_report([gathered], tmp_path / "out", figures=False)
    assert "| otpe | 90.00 ± 10.00 (3) |" in written["markdown"].read_text()


def test_failed_in_progress_and_mixed_runs_are_noted_not_fatal(sweep, tmp_path):
    root = tmp_path / "mixed"
    shutil.copytree(sweep, root, ignore=shutil.ignore_patterns("report"))
    in_progress = root / "5_otpe_d2_s1"
    (in_progress / "summary.json").unlink()  # still training: metrics.jsonl only
    like_sweep = {k: v for k, v in json.loads((root / "0_ottt_d2_s0" / "summary.json")
                                              .read_text())["config"].items()
                  if k in ("width", "batch_size", "iterations")}
    _fake_run(root / "extra_failed", status="failed", algorithm="ottt", depth=2, **like_sweep)
    _fake_run(root / "extra_lr", acc=0.7, lr=0.01, algorithm="otpe", depth=2, **like_sweep)
    (root / "empty_job").mkdir()  # a job that died before writing anything: ignored
    written = make_report([root], tmp_path / "out")
    by_run = {Path(r["run"]).name: r for r in read_csv(written["csv"])}
    assert by_run["5_otpe_d2_s1"]["status"] == "in progress"
    assert by_run["5_otpe_d2_s1"]["test/acc"]  # its latest value
    assert "extra_failed" not in by_run  # no results: only in the notes
    notes = "\n".join(written["notes"])
    assert "1 failed run(s)" in notes and "extra_failed" in notes
    assert f"{root / 'extra_failed'}: non-finite loss" in notes
    assert "in progress" in notes and "5_otpe_d2_s1" in notes
    assert "differ in lr" in notes
    md = written["markdown"].read_text()
    assert "otpe [lr=0.01]" in md and "otpe [lr=0.001]" in md and "## Notes" in md
    assert all(p.read_bytes().startswith(PNG) for p in written["figures"])


def test_failed_runs_stay_out_of_tables_csv_and_figures(tmp_path):
    """Runs refused at validation (depth 0, width -5, a negative lr, a misspelt update with the
    unresolved lr string) add no columns, rows, CSV lines or curves; the notes list each one
    with its error, in results.md and on the console."""
    root = tmp_path / "runs"
    for algorithm in ("ottt", "otpe"):
        for seed, acc in enumerate((0.8, 1.0)):
            _fake_run(root / f"{algorithm}_s{seed}", acc=acc, rows=_curve_rows(4, acc),
                      algorithm=algorithm, seed=seed)
    clean, _ = _report([root], tmp_path / "clean")
    _refused_runs(root)
    written, printed = _report([root], tmp_path / "out")

    md = written["markdown"].read_text()
    tables = md[:md.index("## Notes")]
    assert "| algorithm | depth 3 |" in tables and "depth 0" not in tables
    assert "| ottt | 90.00 ± 14.14 (2) |" in tables and "| otpe | 90.00 ± 14.14 (2) |" in tables
    printed_tables = printed[:printed.index("note:")]
    assert "randman: test/acc in %" in printed_tables
    for text in ("depth 0", "width=", "lr=", "update=", "onlin", "${"):
        assert text not in tables and text not in printed_tables, text
    assert "differ in" not in md  # the refused settings split no rows
    rows = read_csv(written["csv"])
    assert sorted(Path(r["run"]).name for r in rows) == ["otpe_s0", "otpe_s1", "ottt_s0",
                                                         "ottt_s1"]
    assert {r["status"] for r in rows} == {"finished"}
    # counted, and listed with the error sentence, in the notes of results.md and the console
    assert "8 runs (4 failed, 4 finished)" in md
    notes = md[md.index("## Notes"):]
    assert "4 failed run(s)" in notes and "4 failed run(s)" in printed
    for name, (_, error) in REFUSED.items():
        assert f"{root / name}: {error}" in notes
        assert f"{root / name}: {error}" in printed
    # the figures are those of the finished runs alone
    assert [p.name for p in written["figures"]] == list(FIGURES)
    for ours, theirs in zip(written["figures"], clean["figures"]):
        assert ours.read_bytes() == theirs.read_bytes(), ours.name


def test_only_failed_runs_give_notes_and_no_tables(tmp_path):
    _refused_runs(tmp_path / "runs")
    written, printed = _report([tmp_path / "runs"], tmp_path / "out")
    assert read_csv(written["csv"]) == [] and written["figures"] == []
    md = written["markdown"].read_text()
    assert "4 runs (4 failed)" in md and "| algorithm |" not in md
    assert "trainer.update='onlin' is not one of: offline, online." in md
    assert "no run with results" in printed


def test_interrupted_summary_is_reported_as_interrupted(tmp_path):
    """A run stopped by a signal writes summary.json with "status": "interrupted" (its values
    at the last checkpoint): listed as interrupted and resumable, in the CSV and the curves,
    not in the means, and neither "in progress" nor finished."""
    root = tmp_path / "runs"
    for seed, acc in enumerate((0.8, 1.0)):
        _fake_run(root / f"s{seed}", acc=acc, rows=_curve_rows(10, acc), seed=seed)
    without, _ = _report([root], tmp_path / "without")
    _fake_run(root / "stopped", status="interrupted", acc=0.2, rows=_curve_rows(4, 0.2), seed=2)
    written, printed = _report([root], tmp_path / "out")

    by_run = {Path(r["run"]).name: r for r in read_csv(written["csv"])}
    assert by_run["stopped"]["status"] == "interrupted"
    assert by_run["stopped"]["iter"] == "4" and float(by_run["stopped"]["test/acc"]) == 0.2
    md = written["markdown"].read_text()
    assert "3 runs (2 finished, 1 interrupted)" in md
    assert "| otpe | 90.00 ± 14.14 (2) |" in md  # the means: finished runs only
    notes = "\n".join(written["notes"])
    assert "1 interrupted run(s)" in notes and "resumable" in notes
    assert f"{root / 'stopped'}: iteration 4 of 10" in notes
    assert "in progress" not in notes and "finished without" not in notes
    assert "1 interrupted run(s)" in printed and "1 interrupted run(s)" in md
    # its curve is drawn, as a run in progress's is
    curves = dict(zip(FIGURES, written["figures"]))["test_acc_vs_iter.png"]
    assert curves.read_bytes() != (tmp_path / "without" / curves.name).read_bytes()


def test_a_mix_of_runs_plots_without_warnings(tmp_path):
    """Finished, failed (depth 0 among them), interrupted and in-progress runs together: no
    UserWarning (no legend without labelled curves, no layout that gives up)."""
    root = tmp_path / "runs"
    for depth in (2, 3):
        for algorithm in ("bptt", "otpe"):
            _fake_run(root / f"{algorithm}_d{depth}", rows=_curve_rows(4), algorithm=algorithm,
                      depth=depth)
    _refused_runs(root)
    _fake_run(root / "stopped", status="interrupted", rows=_curve_rows(2), depth=3, seed=1)
    _fake_in_progress(root / "running", _curve_rows(3), depth=2, seed=1)
    _fake_run(root / "only_summary", depth=4)  # a panel with no curve at all
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        written, printed = _report([root], tmp_path / "out")
    assert len(written["figures"]) == 3
    assert "depth 0" not in printed and "| algorithm | depth 2 | depth 3 | depth 4 |" in \
        written["markdown"].read_text()
    statuses = {Path(r["run"]).name: r["status"] for r in read_csv(written["csv"])}
    assert statuses["running"] == "in progress" and statuses["stopped"] == "interrupted"


def test_many_rows_and_dollar_signs_plot_without_warnings(tmp_path):
    """Rows split by several settings give long labels: the figures make room for them (one
    legend below the panels); a "$" in a label is shown, not parsed as mathematics."""
    root = tmp_path / "runs"
    i = 0
    for algorithm in ("bptt", "ottt", "otpe", "f_approx_otpe"):
        for lr in (0.001, 0.0001, "${dataset.adamax_lr.${trainer.update}}"):
            for width in (64, 128):
                i += 1
                _fake_run(root / f"r{i}", rows=_curve_rows(3), algorithm=algorithm, lr=lr,
                          width=width)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        written, _ = _report([root], tmp_path / "out")
    assert all(p.read_bytes().startswith(PNG) for p in written["figures"])
    assert "differ in width, lr" in "\n".join(written["notes"])


def test_runs_still_in_progress_alone_still_give_a_report(sweep, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(sweep / "0_ottt_d2_s0", run)
    (run / "summary.json").unlink()
    written = make_report([run], tmp_path / "out")
    assert read_csv(written["csv"])[0]["status"] == "in progress"
    assert "| ottt | — |" in written["markdown"].read_text()
    assert len(written["figures"]) == 3


def test_clear_errors_and_help(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "missing")])
    assert exc.value.code != 0
    assert "otpe-report: error: no such directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "empty")])
    assert exc.value.code != 0
    assert "no runs found in" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    help_text = capsys.readouterr().out
    for word in ("results.csv", "results.md", "--out", "--metric", "examples"):
        assert word in help_text


def test_runs_that_differ_in_any_setting_get_rows_of_their_own(tmp_path):
    """Settings that are not among the config choices (T, β, readout, momentum, ...) still
    make different experiments: they split the rows (named by what differs) and are not
    counted as seeds of one config. A summary without settings (older runs) takes them from
    .hydra/config.yaml."""
    base = {"model.beta": 0.95, "dataset.num_steps": 50, "trainer.seed": 0}
    for name, acc, steps in (("t10", 0.2, 10), ("t50", 0.6, 50)):
        _fake_run(tmp_path / "runs" / name, acc=acc,
                  extra={"settings": {**base, "dataset.num_steps": steps}})
    old = tmp_path / "runs" / "old"  # no settings in its summary: read from .hydra
    _fake_run(old, acc=0.4)
    (old / ".hydra").mkdir()
    (old / ".hydra" / "config.yaml").write_text(
        "model: {depth: 3, width: 128, beta: 0.95, threshold: 1.0, slope: 25.0}\n"
        "algorithm: {name: otpe, readout: null, bias_trace: false}\n"
        "optimizer: {name: adamax, lr: 0.001, betas: [0.9, 0.999], momentum: 0.0, "
        "weight_decay: 0.0}\n"
        "dataset: {name: randman, num_steps: 20, root: /somewhere}\n"
        "encoding: {name: rate}\n"
        "trainer: {update: offline, batch_size: 128, seed: 0, dtype: float32}\n")
    written = make_report([tmp_path / "runs"], tmp_path / "out", figures=False)
    md = written["markdown"].read_text()
    for steps, acc in ((10, "20.00"), (20, "40.00"), (50, "60.00")):
        assert f"| otpe [dataset.num_steps={steps}] | {acc} (1) |" in md, md
    assert not any("share one config" in n for n in written["notes"])
    rows = read_csv(written["csv"])
    assert sorted(r["dataset.num_steps"] for r in rows) == ["10", "20", "50"]


def test_runs_from_before_the_per_draw_normalisation_are_the_fixed_ones(tmp_path):
    """A Randman run whose settings hold no dataset.normalisation was made with the fixed one:
    it gets a row of its own beside per-draw runs, not their mean."""
    base = {"model.beta": 0.95, "trainer.seed": 0}
    _fake_run(tmp_path / "runs" / "old", acc=0.99, extra={"settings": base})
    _fake_run(tmp_path / "runs" / "new", acc=0.6,
              extra={"settings": {**base, "dataset.normalisation": "per_draw"}})
    md = make_report([tmp_path / "runs"], tmp_path / "out", figures=False)["markdown"].read_text()
    assert "| otpe [dataset.normalisation=fixed] | 99.00 (1) |" in md, md
    assert "| otpe [dataset.normalisation=per_draw] | 60.00 (1) |" in md


def test_the_authors_alignment_protocol_has_a_table_of_its_own(tmp_path):
    """Runs of algorithm=bptt with trainer.align_with: each listed rule's per-layer weight
    cosine at BPTT's parameters (align_mean/<rule>/cos/…), mean ± std over seeds, beside the
    own-trajectory table of the other runs."""
    cosines = {"ottt": (0.2, 0.4), "otpe": (0.8, 0.9)}
    for seed in (0, 1):
        extra = {f"align_mean/{rule}/cos/layers.{i}.weight": v + 0.1 * seed
                 for rule, (a, b) in cosines.items() for i, v in enumerate((a, b, 1.0))}
        extra.update({f"align_mean/{rule}/sign/layers.0.weight": 0.5 for rule in cosines})
        _fake_run(tmp_path / "runs" / f"bptt{seed}", algorithm="bptt", seed=seed, extra=extra)
        _fake_run(tmp_path / "runs" / f"otpe{seed}", seed=seed,
                  extra={f"align_mean/cos/layers.{i}.weight": 0.7 for i in range(3)})
    md = make_report([tmp_path / "runs"], tmp_path / "out", figures=False)["markdown"].read_text()
    authors = md[md.index("the authors' protocol"):]
    assert "| rule at the trained model | layer 1 | layer 2 | layer 3 (output) |" in authors
    assert ("| ottt at bptt | 0.250 ± 0.071 (2) | 0.450 ± 0.071 (2) | 1.050 ± 0.071 (2) |"
            in authors), authors
    assert authors.index("| ottt at bptt |") < authors.index("| otpe at bptt |")
    own = md[md.index("each algorithm at its own parameters"):md.index("the authors' protocol")]
    assert "| otpe | 0.700 ± 0.000 (2) |" in own


def test_accuracy_metrics_are_in_percent_and_a_misspelt_metric_is_refused(tmp_path, capsys):
    for seed, acc in enumerate((0.9993, 0.9998)):
        _fake_run(tmp_path / "runs" / f"s{seed}", acc=acc, seed=seed,
                  extra={"best/test_acc_at_best_val": acc})
    md = make_report([tmp_path / "runs"], tmp_path / "out", figures=False,
                     metric="best/test_acc_at_best_val")["markdown"].read_text()
    assert "best/test_acc_at_best_val in %" in md and "| otpe | 99.95 ± 0.04 (2) |" in md
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "runs"), "--metric", "test/acc_typo", "-o", str(tmp_path / "o2")])
    assert exc.value.code == 1
    assert ("otpe-report: error: no run has the metric 'test/acc_typo' (did you mean "
            "test/acc?)") in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()
    # a metric otpe-train writes, which these runs lack (no validation split): noted, not refused
    written = make_report([tmp_path / "runs"], tmp_path / "o3", figures=False,
                          metric="best/val_acc")
    assert any("no run has the metric 'best/val_acc' (validation metrics exist only for data "
               "sets with a validation split" in n for n in written["notes"])


def test_a_run_with_an_undefined_mean_cosine_is_named_in_the_notes(tmp_path):
    _fake_run(tmp_path / "runs" / "ok", seed=0)
    _fake_run(tmp_path / "runs" / "zero_grad", seed=1,
              extra={"align_mean/cos/global": None})  # NaN, written as null
    written = make_report([tmp_path / "runs"], tmp_path / "out", figures=False)
    assert any(n.startswith(f"{tmp_path / 'runs' / 'zero_grad'}: its align_mean/cos/global "
                            "is not finite") for n in written["notes"])
    assert "| otpe | 0.900 (1) |" in written["markdown"].read_text()


def test_figures_plot_accuracies_in_percent_and_keep_many_variants_apart(tmp_path, monkeypatch):
    import matplotlib.figure

    from otpe_cli.report.figures import _colors

    for seed in (0, 1):
        _fake_run(tmp_path / "runs" / f"s{seed}", acc=0.5, rows=_curve_rows(4), seed=seed)
    saved = []
    real_savefig = matplotlib.figure.Figure.savefig

    def keep(fig, *args, **kwargs):
        saved.append((fig.axes[0].get_ylabel(),
                      [line.get_ydata() for line in fig.axes[0].get_lines()]))
        return real_savefig(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    make_report([tmp_path / "runs"], tmp_path / "out")
    (curve_label, curves), (depth_label, points) = saved[0], saved[1]
    assert curve_label == "test accuracy (%)" and max(curves[0]) == pytest.approx(50.0)
    assert depth_label == "test/acc in %" and list(points[0]) == pytest.approx([50.0])
    labels = [f"alg{i}" for i in range(14)]
    assert len(set(_colors(labels).values())) == 14


def test_a_run_stopped_during_start_up_is_listed(tmp_path):
    """Killed before its first logged iteration, a run directory holds only its log (and
    Hydra's pending files): listed in the notes, not silently skipped, and not in the CSV."""
    _fake_run(tmp_path / "runs" / "done", seed=0)
    early = tmp_path / "runs" / "early"
    (early / ".hydra" / "pending").mkdir(parents=True)
    (early / "otpe-train.log").write_text("")
    written = make_report([tmp_path / "runs"], tmp_path / "out", figures=False)
    assert any("1 run directory with no results" in n for n in written["notes"])
    assert f"  {early}" in written["notes"]
    assert [r["run"] for r in read_csv(written["csv"])] == [str(tmp_path / "runs" / "done")]
    assert "| otpe | 50.00 (1) |" in written["markdown"].read_text()


def test_settings_name_the_algorithm_s_own_readout():
    """readout left null means the algorithm's own logits: the same experiment as naming
    them, so the report must not split such runs."""
    from helpers import compose_cfg
    from otpe_cli.identity import settings

    assert settings(compose_cfg([])) == settings(compose_cfg(["algorithm.readout=spikes"]))
    assert settings(compose_cfg(["algorithm=f_otpe"]))["algorithm.readout"] == "trace"
    assert settings(compose_cfg(["algorithm=bptt", "algorithm.readout=trace"])) != \
        settings(compose_cfg(["algorithm=bptt"]))


def test_row_labels_show_settings_briefly_and_unknown_ones_as_a_question_mark(tmp_path):
    for name, beta in (("a", 0.9525741268224334), ("b", 0.5), ("bare", None)):
        # "bare": an old run with neither settings nor .hydra/
        _fake_run(tmp_path / "runs" / name, extra=None if beta is None else
                  {"settings": {"model.beta": beta, "model.slope": 25.0}})
    written = make_report([tmp_path / "runs"], tmp_path / "out", figures=False)
    md = written["markdown"].read_text()
    for label in ("otpe [model.beta=0.952574]", "otpe [model.beta=0.5]", "otpe [model.beta=?]"):
        assert f"| {label} | 50.00 (1) |" in md, label
    header = list(read_csv(written["csv"])[0])
    assert "model.beta" in header and "model.slope" not in header  # only what differs


def test_time_and_memory_per_run_are_tabulated_per_algorithm(tmp_path):
    for seed, (t, mb) in enumerate(((0.02, 300.0), (0.04, 310.0))):
        _fake_run(tmp_path / "runs" / f"s{seed}", seed=seed,
                  extra={"time/iter_s": t, "memory/peak_mb": mb})
    md = make_report([tmp_path / "runs"], tmp_path / "out", figures=False)["markdown"].read_text()
    assert "seconds per training iteration, mean over the run (time/iter_s)" in md
    assert "| otpe | 0.0300 ± 0.0141 (2) |" in md
    assert "| otpe | 305.0 ± 7.1 (2) |" in md
    rows = read_csv(tmp_path / "out" / "results.csv")
    assert {"time/iter_s", "memory/peak_mb"} <= set(rows[0])
