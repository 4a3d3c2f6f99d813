"""Checkpoints and resume: nothing lost, nothing counted twice.

Real ``otpe-train`` processes are stopped with SIGTERM / SIGINT / SIGUSR1 mid-run and started
again with the same run directory; the result must equal an uninterrupted run of the same seed
(every metrics.jsonl key except time/*, and the summary). In-process tests cover the cheaper
cases: a crash between checkpoints, both update modes, the W&B run id, refusals.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import TINY, compose_cfg, crash_at, run_cli, strip_time
from otpe_cli import checkpoint as ckpt
from otpe_cli.checkpoint import CheckpointError
from otpe_cli.cli import run
from otpe_cli.logs import read_metrics

ITERS = 40
#: tiny but real: 40 iterations, a checkpoint every 4, a metrics row every 2
ARGS = ["dataset=randman", "algorithm=otpe", f"trainer.iterations={ITERS}",
        "dataset.num_steps=20",
        *[o for o in TINY if not o.startswith(("trainer.checkpoint_every", "trainer.log_every"))],
        "trainer.checkpoint_every=4", "trainer.log_every=2"]
#: one torch thread per process: much faster on a busy machine, and the same numerics as
#: the in-process baseline (which also runs with one thread)
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TIMEOUT = 240  # generous: the machine is shared and busy


pytestmark = pytest.mark.usefixtures("one_thread")


def comparable_summary(path: Path) -> dict:
    summary = json.loads(Path(path).read_text())
    return {k: v for k, v in summary.items()
            if k != "wall_time_s" and not k.startswith(("time/", "memory/"))}


def exe() -> str:
    path = Path(sys.executable).with_name("otpe-train")
    return str(path) if path.exists() else "otpe-train"


def start(args, run_dir: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", **ENV}
    out = open(log, "w")
    proc = subprocess.Popen([exe(), *args, f"hydra.run.dir={run_dir}"], cwd=run_dir.parent,
                            env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    out.close()
    return proc


def wait_for_iter(proc: subprocess.Popen, run_dir: Path, at_least: int, log: Path,
                  timeout: float = TIMEOUT) -> int:
    """Poll metrics.jsonl until a row with iter >= at_least appears (the trainer is in its loop,
    with its signal handlers installed); returns that iteration."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = read_metrics(run_dir / "metrics.jsonl")
        if rows and rows[-1].get("iter", 0) >= at_least:
            return rows[-1]["iter"]
        if proc.poll() is not None:
            pytest.fail(f"otpe-train ended (rc {proc.returncode}) before iteration {at_least}:\n"
                        + log.read_text()[-3000:])
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"no progress to iteration {at_least} within {timeout} s:\n"
                + log.read_text()[-3000:])


def interrupt(run_dir: Path, sig: signal.Signals, at_least: int, tag: str) -> int:
    """Start (or resume) the run, wait for progress, send ``sig``; returns the checkpoint's
    iteration after checking the exit code and the files."""
    log = run_dir.parent / f"{run_dir.name}.{tag}.log"
    proc = start(ARGS, run_dir, log)
    seen = wait_for_iter(proc, run_dir, at_least, log)
    # under way: no summary (a resumed run drops the "interrupted" one of its last stop)
    assert not (run_dir / "summary.json").exists()
    proc.send_signal(sig)
    rc = proc.wait(timeout=TIMEOUT)
    out = log.read_text()
    assert rc == 128 + sig, out[-3000:]
    assert "Traceback" not in out
    assert f"stopped by {sig.name}" in out and "to resume" in out
    state = ckpt.load(run_dir / "checkpoint.pt")
    assert seen <= state["iteration"] < ITERS, (seen, state["iteration"])
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert rows[-1]["iter"] <= state["iteration"]
    summary = json.loads((run_dir / "summary.json").read_text())  # resumable, at the checkpoint
    assert summary["status"] == "interrupted" and summary["iter"] == state["iteration"]
    assert summary["config"]["algorithm"] == "otpe" and "train/loss" in summary
    assert not list(run_dir.glob("checkpoint.pt.*.tmp"))  # no temporary file left behind
    return state["iteration"]


def finish(run_dir: Path, resumed_from: int):
    res = run_cli([*ARGS, f"hydra.run.dir={run_dir}"], cwd=run_dir.parent, env=ENV,
                  timeout=TIMEOUT)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    # (an info line: in the run's log; with trainer.progress=none, there only)
    assert f"resuming {run_dir} from iteration {resumed_from}" in \
        (run_dir / "otpe-train.log").read_text()


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, one_thread) -> Path:
    """The uninterrupted run (in-process: same code and numerics as the CLI, seconds faster)."""
    run_dir = tmp_path_factory.mktemp("baseline") / "run"
    run(compose_cfg(ARGS), run_dir)
    return run_dir


def assert_same_run(run_dir: Path, baseline: Path):
    rows = read_metrics(run_dir / "metrics.jsonl")
    iters = [r["iter"] for r in rows]
    assert iters == sorted(set(iters)), "an iteration was logged twice"
    assert strip_time(rows) == strip_time(read_metrics(baseline / "metrics.jsonl"))
    ours, theirs = comparable_summary(run_dir / "summary.json"), \
        comparable_summary(baseline / "summary.json")
    assert ours["test/acc"] == theirs["test/acc"]
    assert ours == theirs


# ============================================================================ real processes
def test_sigterm_then_resume_equals_an_uninterrupted_run(tmp_path, baseline):
    run_dir = tmp_path / "run"
    at = interrupt(run_dir, signal.SIGTERM, 10, "term")
    hydra = run_dir / ".hydra"
    assert f"iterations: {ITERS}" in (hydra / "config.yaml").read_text()  # Hydra's record
    assert not (hydra / "pending").exists()
    finish(run_dir, at)
    assert_same_run(run_dir, baseline)
    assert (hydra / "config.yaml").exists() and not (hydra / "pending").exists()


@pytest.mark.slow
def test_sigint_sigusr1_and_sighup_interrupted_then_resumed(tmp_path, baseline):
    """SIGINT (Ctrl-C), SIGUSR1 (SLURM's preemption warning) and SIGHUP (the terminal or ssh
    session went away), one after the other."""
    run_dir = tmp_path / "run"
    first = interrupt(run_dir, signal.SIGINT, 6, "int")
    second = interrupt(run_dir, signal.SIGUSR1, first + 10, "usr1")
    third = interrupt(run_dir, signal.SIGHUP, second + 10, "hup")
    assert third > second > first
    finish(run_dir, third)
    assert_same_run(run_dir, baseline)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_while_a_run_starts_up_is_answered_in_words(tmp_path, sig):
    """Before the training loop installs its handlers (here: while the test set is drawn),
    SIGTERM or SIGHUP stops the run as Ctrl-C does there: one sentence and exit 128 + signal,
    where the process used to die without a word."""
    run_dir, log = tmp_path / "run", tmp_path / "log"
    proc = start(["debug=quick", "dataset.test_samples_per_class=3000"], run_dir, log)
    deadline = time.monotonic() + TIMEOUT
    while "run directory" not in log.read_text():  # printed as training starts up, before
        assert proc.poll() is None, log.read_text()[-3000:]  # the test set is drawn (seconds)
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(sig)
    assert proc.wait(timeout=TIMEOUT) == 128 + sig, log.read_text()[-3000:]
    text = log.read_text()
    assert text.strip().splitlines()[-1] == (
        f"otpe-train: stopped by {sig.name} before training began; run the same command with "
        f"hydra.run.dir={run_dir} to resume.")
    assert "Traceback" not in text
    assert not read_metrics(run_dir / "metrics.jsonl")
    assert not (run_dir / "checkpoint.pt").exists()


def test_a_resumed_run_stopped_during_start_up_keeps_its_summary_and_logs_the_stop(tmp_path):
    """Stopped while it starts up again, an interrupted run keeps the summary of its last stop
    (it has not trained on) and its otpe-train.log has the stop line too."""
    run_dir, args = tmp_path / "run", [*ARGS, "dataset.test_samples_per_class=3000"]
    log = tmp_path / "first.log"
    proc = start(args, run_dir, log)
    wait_for_iter(proc, run_dir, 4, log)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=TIMEOUT) == 128 + signal.SIGTERM, log.read_text()[-3000:]
    before = (run_dir / "summary.json").read_text()
    assert json.loads(before)["status"] == "interrupted"
    proc = start(args, run_dir, log)
    deadline = time.monotonic() + TIMEOUT
    while "resuming" not in (run_dir / "otpe-train.log").read_text():  # (then it draws
        assert proc.poll() is None, log.read_text()[-3000:]  # 30 000 test samples: seconds)
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=TIMEOUT) == 128 + signal.SIGTERM, log.read_text()[-3000:]
    assert "before training began" in log.read_text()
    assert (run_dir / "summary.json").read_text() == before
    assert "stopped by SIGTERM before training began" in (run_dir / "otpe-train.log").read_text()


def test_a_run_started_under_nohup_trains_on_through_a_hangup(tmp_path, baseline):
    """``nohup`` ignores SIGHUP; the run must not stop on it (it used to install its own
    handler over the ignore, and a closed ssh session stopped the run)."""
    run_dir, log = tmp_path / "run", tmp_path / "log"
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", **ENV}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [exe(), *ARGS, f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=env, stdout=out,
            stderr=subprocess.STDOUT, text=True,
            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))  # as nohup does
    wait_for_iter(proc, run_dir, 10, log)
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(timeout=TIMEOUT) == 0, log.read_text()[-3000:]
    assert_same_run(run_dir, baseline)


def test_finished_run_started_again_says_so_and_changes_nothing(tmp_path, baseline, cli):
    run_dir = tmp_path / "run"
    shutil.copytree(baseline, run_dir)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.iterdir()
              if p.is_file()}
    (run_dir / ".hydra").mkdir(exist_ok=True)
    (run_dir / ".hydra" / "config.yaml").write_text("# the config this run was trained with\n")
    recorded = (run_dir / ".hydra" / "config.yaml").read_bytes()
    # a change that may come with a resume, but there is nothing left to resume (and
    # progress lines, under which the info line reaches the console: none keeps it in the log)
    args = [o for o in ARGS if not o.startswith("trainer.progress")] + ["trainer.progress=lines"]
    res = cli([*args, "trainer.eval_every=2", f"hydra.run.dir={run_dir}"], cwd=tmp_path,
              env=ENV, timeout=TIMEOUT)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "already finished" in out and "not training again" in out
    assert (run_dir / ".hydra" / "config.yaml").read_bytes() == recorded  # what it ran with
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.iterdir()
             if p.is_file() and p.name in before}
    for name in ("metrics.jsonl", "summary.json", "checkpoint.pt"):
        assert after[name] == before[name], name


# ============================================================================ in process
CRASHING = ["dataset=trandman", "trainer.iterations=14", "dataset.num_steps=12",
            *[o for o in TINY if not o.startswith(("trainer.checkpoint_every",
                                                   "trainer.log_every"))],
            "trainer.checkpoint_every=4", "trainer.log_every=1", "trainer.eval_every=5",
            "trainer.align_every=3"]


@pytest.mark.parametrize("extra", [
    ["algorithm=bptt"],
    ["algorithm=f_otpe", "trainer.update=online", "trainer.on_nan=skip"],
], ids=["offline-bptt", "online-f_otpe"])
def test_crash_between_checkpoints_resumes_from_the_last_one(make_cfg, tmp_path, monkeypatch,
                                                              extra):
    over = [*CRASHING, *extra]
    run(make_cfg(over), tmp_path / "whole")
    with monkeypatch.context() as m:
        crash_at(m, 11)
        with pytest.raises(SystemExit):
            run(make_cfg(over), tmp_path / "crashed")
    assert read_metrics(tmp_path / "crashed" / "metrics.jsonl")[-1]["iter"] == 10
    assert ckpt.load(tmp_path / "crashed" / "checkpoint.pt")["iteration"] == 8
    stale = tmp_path / "crashed" / "checkpoint.pt.x1y2.tmp"  # as a SIGKILL mid-write leaves
    stale.write_bytes(b"half a checkpoint")
    run(make_cfg(over), tmp_path / "crashed")  # rows 9 and 10 are dropped and made again
    assert not stale.exists()
    assert_same_run(tmp_path / "crashed", tmp_path / "whole")


@pytest.mark.parametrize("damage", ["middle", "torn-at-checkpoint", "all-gone"])
def test_a_damaged_metrics_file_loses_no_row_the_checkpoint_covers(make_cfg, tmp_path,
                                                                   monkeypatch, caplog, damage):
    """A run killed after its checkpoint at iteration 8: an unreadable line in the middle of
    metrics.jsonl, the checkpoint's own row torn, or the file gone. The resumed run ends with
    every row of an uninterrupted run and says in one line what it repaired."""
    import logging

    run(make_cfg(CRASHING), tmp_path / "whole")
    with monkeypatch.context() as m:
        crash_at(m, 11)
        with pytest.raises(SystemExit):
            run(make_cfg(CRASHING), tmp_path / "crashed")
    path = tmp_path / "crashed" / "metrics.jsonl"
    lines = path.read_text().splitlines()
    assert [json.loads(line)["iter"] for line in lines] == list(range(1, 11))
    if damage == "middle":
        lines[3] = lines[3][:20] + "\x00garbage"
        path.write_text("\n".join(lines) + "\n")
    elif damage == "torn-at-checkpoint":  # the row of iteration 8, half written, and no later
        path.write_text("\n".join(lines[:7] + [lines[7][:25]]))
    else:
        path.unlink()
    with caplog.at_level(logging.WARNING, logger="otpe-train"):
        run(make_cfg(CRASHING), tmp_path / "crashed")
    assert_same_run(tmp_path / "crashed", tmp_path / "whole")
    repaired = [r.getMessage() for r in caplog.records if "written again" in r.getMessage()]
    assert len(repaired) == 1 and "up to iteration 8" in repaired[0], repaired


def test_checkpoint_keeps_the_wandb_run_id(make_cfg, tmp_path, monkeypatch):
    from otpe_cli import trainer as trainer_mod

    passed = []

    class Logger(trainer_mod.RunLogger):  # stands in for W&B: only the run id matters here
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            passed.append(args[-1])

        @property
        def wandb_run_id(self):
            return "run12345"

    monkeypatch.setattr(trainer_mod, "RunLogger", Logger)
    over = ["dataset=randman", "trainer.iterations=3", "dataset.num_steps=10", *TINY]
    trainer = trainer_mod.Trainer(make_cfg(over), tmp_path)
    trainer.stop.signum = signal.SIGTERM  # as if it had arrived during the first iteration
    with pytest.raises(trainer_mod.Interrupted):
        trainer.train()
    state = ckpt.load(tmp_path / "checkpoint.pt")
    assert state["wandb_run_id"] == "run12345" and state["iteration"] == 0
    resumed = trainer_mod.Trainer(make_cfg(over), tmp_path)
    assert resumed.wandb_run_id == "run12345"
    resumed.train()
    assert passed == [None, "run12345"]  # the resumed run continues the same W&B run


def test_generators_are_restored(make_cfg, tmp_path):
    import random

    import numpy as np

    from otpe_cli.trainer import Trainer

    over = ["dataset=randman", "trainer.iterations=6", "dataset.num_steps=10", *TINY]
    trainer = Trainer(make_cfg(over), tmp_path)
    np.random.seed(1)
    random.seed(1)
    torch.manual_seed(1)
    trainer.batch_gen.manual_seed(7)
    trainer.save_checkpoint()
    expected = (np.random.random(), random.random(), float(torch.rand(())),
                float(torch.rand((), generator=trainer.batch_gen)))
    np.random.seed(2)
    random.seed(2)
    torch.manual_seed(2)
    again = Trainer(make_cfg(over), tmp_path)
    got = (np.random.random(), random.random(), float(torch.rand(())),
           float(torch.rand((), generator=again.batch_gen)))
    assert got == expected


def test_different_model_config_is_refused_naming_it(make_cfg, tmp_path, baseline):
    run_dir = tmp_path / "run"
    shutil.copytree(baseline, run_dir)
    before = (run_dir / "checkpoint.pt").read_bytes()
    from otpe_cli.trainer import Trainer

    with pytest.raises(CheckpointError) as err:
        Trainer(make_cfg([*ARGS, "model.width=32"]), run_dir)
    message = str(err.value)
    assert "model.width is 16 in the checkpoint but 32 now" in message
    assert str(run_dir / "checkpoint.pt") in message and "hydra.run.dir" in message
    assert "\n" not in message
    for changed, key in ((["algorithm=ottt"], "algorithm.name"),
                         (["optimizer.lr=0.01"], "optimizer.lr"),
                         (["trainer.seed=1"], "trainer.seed"),
                         (["dataset.num_steps=30"], "dataset.num_steps"),
                         (["trainer.dtype=float64"], "trainer.dtype")):
        with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
            Trainer(make_cfg([*ARGS, *changed]), run_dir)
    assert (run_dir / "checkpoint.pt").read_bytes() == before
    # what may change on resume: length, logging cadence, device, on_nan, progress
    Trainer(make_cfg([*ARGS, "trainer.iterations=50", "trainer.eval_every=7",
                      "trainer.checkpoint_every=0", "trainer.on_nan=skip",
                      "trainer.progress=lines"]), run_dir)


def test_finished_results_without_checkpoint_are_kept(make_cfg, tmp_path, baseline):
    """checkpoint.pt moved away (to save space): a finished run still counts as finished, and
    a different config is refused rather than overwriting the results."""
    run_dir = tmp_path / "run"
    shutil.copytree(baseline, run_dir)
    (run_dir / "checkpoint.pt").unlink()
    before = (run_dir / "metrics.jsonl").read_bytes()
    summary = run(make_cfg(ARGS), run_dir)
    assert summary == json.loads((baseline / "summary.json").read_text())
    with pytest.raises(ValueError, match="holds the finished results of a different run "
                       r"\(depth is 3 in summary.json but 2 now\)"):
        run(make_cfg([*ARGS, "model.depth=2"]), run_dir)
    assert (run_dir / "metrics.jsonl").read_bytes() == before
    assert not (run_dir / "checkpoint.pt").exists()


def test_a_finished_run_answers_without_drawing_its_data(make_cfg, tmp_path, baseline,
                                                          monkeypatch):
    """Started again, a finished run says so before the test set is drawn (the slow part)."""
    from otpe_cli.data.randman import Randman

    run_dir = tmp_path / "run"
    shutil.copytree(baseline, run_dir)

    def no_drawing(self):
        raise AssertionError("the data set was drawn for a finished run")

    monkeypatch.setattr(Randman, "_prepare", no_drawing)
    monkeypatch.setattr(Randman, "splits", property(no_drawing))
    assert run(make_cfg(ARGS), run_dir) == json.loads((baseline / "summary.json").read_text())
    with pytest.raises(AssertionError, match="drawn"):  # a run still to train draws it
        run(make_cfg([*ARGS, "trainer.iterations=44"]), run_dir)


def test_the_test_set_drawn_on_first_use_is_not_timed_as_iteration_1(make_cfg, tmp_path,
                                                                      monkeypatch):
    from otpe_cli.data.randman import Randman

    real = Randman._prepare

    def slow(self):
        if self._splits is None:
            time.sleep(1.0)
        return real(self)

    monkeypatch.setattr(Randman, "_prepare", slow)
    monkeypatch.setattr(Randman, "prepare", slow)
    monkeypatch.setattr(Randman, "splits", property(slow))
    run(make_cfg([*ARGS, "trainer.iterations=2", "trainer.log_every=1"]), tmp_path / "run")
    first = read_metrics(tmp_path / "run" / "metrics.jsonl")[0]
    assert first["iter"] == 1 and first["time/iter_s"] < 1.0


def test_a_checkpoint_with_a_bias_trace_that_changed_nothing_resumes(make_cfg, tmp_path,
                                                                     baseline):
    """Runs made before bias_trace was refused for algorithms without an OTTT / A-OTPE rule
    (here otpe) carry bias_trace=true in their fingerprint; it changed nothing, so they resume
    without it instead of being refused both ways."""
    run_dir = tmp_path / "run"
    shutil.copytree(baseline, run_dir)
    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    state["fingerprint"]["algorithm"]["bias_trace"] = True
    torch.save(state, run_dir / "checkpoint.pt")
    assert run(make_cfg([*ARGS, "trainer.iterations=44"]), run_dir)["iter"] == 44


def test_a_checkpoint_of_one_normalisation_is_refused_under_the_other(make_cfg, tmp_path,
                                                                    baseline):
    """The baseline is per_draw (the default): fixed is refused naming the key. A checkpoint
    made before the key existed (the fixed normalisation) resumes under fixed only."""
    run_dir = tmp_path / "run"
    shutil.copytree(baseline, run_dir)
    with pytest.raises(CheckpointError, match=r"dataset\.normalisation is 'per_draw' in the "
                                              r"checkpoint but 'fixed' now"):
        run(make_cfg([*ARGS, "dataset.normalisation=fixed", "trainer.iterations=44"]), run_dir)
    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    for key in ("normalisation", "draw_samples_per_class"):
        del state["fingerprint"]["dataset"][key]
    torch.save(state, run_dir / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=r"dataset\.normalisation is 'fixed' in the "
                                              r"checkpoint but 'per_draw' now"):
        run(make_cfg([*ARGS, "trainer.iterations=44"]), run_dir)
    summary = run(make_cfg([*ARGS, "dataset.normalisation=fixed", "trainer.iterations=44"]),
                  run_dir)
    assert summary["iter"] == 44


def test_training_a_finished_run_further(make_cfg, tmp_path, baseline):
    """Raising trainer.iterations continues a finished run from its checkpoint."""
    run_dir = tmp_path / "run"
    shutil.copytree(baseline, run_dir)
    summary = run(make_cfg([*ARGS, "trainer.iterations=44"]), run_dir)
    assert summary["iter"] == 44
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert strip_time(rows[:-2]) == strip_time(read_metrics(baseline / "metrics.jsonl"))
    assert [r["iter"] for r in rows[-2:]] == [42, 44]


def test_a_continued_run_whose_final_summary_is_lost_finishes_on_the_rerun(make_cfg, tmp_path,
                                                                           baseline,
                                                                           monkeypatch):
    """Continued past its end, a run drops its old "finished" summary as it starts: if its new
    final summary cannot be written, the rerun does not answer "already finished" with the old
    results but finishes the run (from the checkpoint at its new end)."""
    from otpe_cli.logs import OutputError, RunLogger

    run_dir = tmp_path / "run"
    shutil.copytree(baseline, run_dir)
    real_write = RunLogger.write_summary

    def write_summary(self, summary):
        if summary["status"] in ("finished", "failed"):
            raise OutputError("summary.json cannot be written (disk full)")
        return real_write(self, summary)

    with monkeypatch.context() as m:
        m.setattr(RunLogger, "write_summary", write_summary)
        with pytest.raises(OutputError):
            run(make_cfg([*ARGS, "trainer.iterations=44"]), run_dir)
    assert not (run_dir / "summary.json").exists()  # not the stale "finished" at 40
    summary = run(make_cfg([*ARGS, "trainer.iterations=44"]), run_dir)
    assert summary["status"] == "finished" and summary["iter"] == 44
    assert json.loads((run_dir / "summary.json").read_text())["iter"] == 44


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    """A write that dies half-way leaves the previous checkpoint as it was, and no litter."""
    path = tmp_path / "checkpoint.pt"
    ckpt.save_atomic({"a": torch.arange(3)}, path)
    good = path.read_bytes()
    real_save = torch.save

    def dying_save(obj, f):
        real_save(obj, f)
        f.write(b"partial")
        raise KeyboardInterrupt  # e.g. a signal's default action mid-write

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_atomic({"a": torch.arange(1000)}, path)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    mode = path.stat().st_mode & 0o777
    assert mode & 0o044, oct(mode)  # readable like the other outputs, not mkstemp's 0600