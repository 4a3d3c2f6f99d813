"""``otpe-report`` on a real small sweep (CSV, table, figures) and on the awkward cases: failed
runs, runs in progress, mixed sweeps, bad arguments."""
from __future__ import annotations

import csv
import json
import shutil
import statistics
from pathlib import Path

import pytest

from conftest import run_cli
from otpe_cli.report import FIGURES, main, make_report

TINY_SWEEP = ["debug=quick", "trainer.iterations=2", "trainer.eval_every=1",
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
    cell = f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f} (2)"
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
    depth3 = md[md.index("depth 3: weight cosine to BPTT per layer"):]
    assert "| algorithm | layer 1 | layer 2 | layer 3 (output) |" in depth3
    assert f"| ottt | {expected} |" in depth3
    assert "depth 2: weight cosine to BPTT per layer" in md
    # the same table on the console (rich), and the paths written
    assert "randman: test/acc in %" in res.stdout and cell in res.stdout
    assert "results.csv" in res.stdout
    for name in FIGURES:
        data = (out / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, name


def _fake_run(path: Path, status="finished", acc=0.5, **config) -> None:
    path.mkdir(parents=True)
    base = {"dataset": "randman", "encoding": "rate", "algorithm": "otpe", "depth": 3,
            "width": 128, "optimizer": "adamax", "lr": 0.001, "batch_size": 128,
            "update": "offline", "seed": 0, "iterations": 10, "bias_trace": False}
    summary = {"status": status, "config": {**base, **config}}
    if status == "finished":
        summary.update({"test/acc": acc, "iter": 10, "align_mean/cos/global": 0.9})
    else:
        summary["error"] = "non-finite loss or gradient at iteration 3"
    (path / "summary.json").write_text(json.dumps(summary))


def test_means_and_std_are_exact(tmp_path):
    for seed, acc in enumerate((0.8, 0.9, 1.0)):
        _fake_run(tmp_path / f"s{seed}", acc=acc, seed=seed)
    written = make_report([tmp_path], tmp_path / "out", figures=False)
    md = written["markdown"].read_text()
    assert "| otpe | 90.0 ± 10.0 (3) |" in md
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
    assert "| otpe | 90.0 ± 10.0 (3) |" in written["markdown"].read_text()


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
    assert by_run["extra_failed"]["status"] == "failed"
    assert "non-finite" in by_run["extra_failed"]["error"]
    notes = "\n".join(written["notes"])
    assert "1 failed run(s)" in notes and "extra_failed" in notes
    assert "in progress" in notes and "5_otpe_d2_s1" in notes
    assert "differ in lr" in notes
    md = written["markdown"].read_text()
    assert "otpe [lr=0.01]" in md and "otpe [lr=0.001]" in md and "## Notes" in md
    assert all(p.read_bytes().startswith(PNG) for p in written["figures"])


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
