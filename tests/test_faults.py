"""Faults and bad input: non-finite values, determinism, and a catalogue of bad inputs.

Every bad input must end with one clear sentence naming the problem, a non-zero exit code, no
Python traceback, and the run directory's existing results and checkpoint untouched (same bytes,
same mtime). One real ``otpe-train`` process per kind of failure (started all at once, so the
catalogue costs about one process's time); the many variants of each kind are checked in
process through the same code (``cli.run``), whose exceptions the CLI turns into that sentence.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import TINY, compose_cfg, strip_time
from otpe_cli import checkpoint as ckpt
from otpe_cli.algorithms import Algorithm
from otpe_cli.cli import run
from otpe_cli.errors import USER_ERRORS
from otpe_cli.config import validate
from otpe_cli.logs import read_metrics
from otpe_cli.trainer import Interrupted, NonFiniteError, Trainer

try:  # the SHD fixtures come with the SHD data set; without them the SHD cases are skipped
    from shd_fixtures import make_hsd
except ImportError:  # pragma: no cover
    make_hsd = None

ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TIMEOUT = 300
BASE = [o for o in TINY if not o.startswith(("trainer.checkpoint_every", "trainer.log_every",
                                             "trainer.align_every", "dataset.num_units"))]
#: 12 iterations, a checkpoint every 4, a row every iteration, no alignment (so that the
#: algorithm's gradients are computed exactly once per iteration)
NAN_RUN = ["dataset=trandman", "algorithm=otpe", "trainer.iterations=12", "dataset.num_steps=10",
           *BASE, "trainer.checkpoint_every=4", "trainer.log_every=1", "trainer.align_every=0"]
#: the finished run whose files every bad input must leave alone
VICTIM = ["dataset=randman", "algorithm=otpe", "trainer.iterations=8", "dataset.num_steps=10",
          *BASE, "trainer.checkpoint_every=4", "trainer.log_every=2", "trainer.align_every=4"]
KEPT = ("checkpoint.pt", "metrics.jsonl", "summary.json", ".hydra/config.yaml")
GARBAGE = bytes((i * 7919 + 13) % 251 for i in range(5000))  # fixed: the same error every run


pytestmark = pytest.mark.usefixtures("one_thread")


def snapshot(run_dir: Path) -> dict:
    return {name: ((run_dir / name).read_bytes(), (run_dir / name).stat().st_mtime_ns)
            for name in KEPT if (run_dir / name).exists()}


# ============================================================================ non-finite values
def nan_in_offline_gradients(monkeypatch, at: int, loss: bool = False):
    """The algorithm's offline gradient (or loss) is NaN in iteration ``at`` (1-based)."""
    original, calls = Algorithm.gradients, []

    def gradients(self, model, x, y):
        grads, stats = original(self, model, x, y)
        calls.append(1)
        if len(calls) == at:
            if loss:
                stats = dataclasses.replace(stats, loss=math.nan)
            else:
                grads = [g.clone() for g in grads]
                grads[0][0, 0] = math.nan
        return grads, stats

    monkeypatch.setattr(Algorithm, "gradients", gradients)


def nan_in_online_step(monkeypatch, at: int, step: int, loss: bool = False):
    """In online mode, time step ``step`` of iteration ``at`` gives a NaN gradient of
    layers.1.weight (or the sequence's loss is NaN)."""
    original, calls = Algorithm.train_online, []

    def train_online(self, model, x, y, on_step):
        calls.append(1)
        steps = []

        def patched(grads):
            steps.append(1)
            if len(calls) == at and len(steps) == step and not loss:
                grads = [g.clone() for g in grads]
                grads[2][0, 0] = math.inf
            on_step(grads)

        stats = original(self, model, x, y, patched)
        if len(calls) == at and loss:
            stats = dataclasses.replace(stats, loss=math.nan)
        return stats

    monkeypatch.setattr(Algorithm, "train_online", train_online)


def count_updates(monkeypatch) -> list:
    applied = []
    original = Trainer._apply

    def _apply(self, grads, **kw):
        taken = original(self, grads, **kw)
        if taken:
            applied.append(self.iteration + 1)
        return taken

    monkeypatch.setattr(Trainer, "_apply", _apply)
    return applied


@pytest.mark.parametrize("mode", ["offline", "online"])
def test_non_finite_gradient_stops_and_keeps_the_last_good_checkpoint(make_cfg, tmp_path,
                                                                      monkeypatch, mode):
    over = [*NAN_RUN, f"trainer.update={mode}"]
    with monkeypatch.context() as m:
        if mode == "offline":
            nan_in_offline_gradients(m, at=7)
            bad = "layers.0.weight"
        else:
            nan_in_online_step(m, at=6, step=3)
            bad = "layers.1.weight"
        with pytest.raises(NonFiniteError) as err:
            run(make_cfg(over), tmp_path / "run")
    path = tmp_path / "run" / "checkpoint.pt"
    message = str(err.value)
    assert "\n" not in message
    at = 7 if mode == "offline" else 6
    assert f"non-finite gradient of {bad} at iteration {at}" in message
    assert f"last good checkpoint ({path}, iteration 4) is kept" in message
    assert "trainer.on_nan=skip" in message
    state = ckpt.load(path)
    assert state["iteration"] == 4
    assert all(bool(torch.isfinite(p).all()) for p in state["model"].values())
    failed = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert failed["status"] == "failed" and failed["error"] == message
    assert failed["iter"] == at - 1 and failed["config"]["algorithm"] == "otpe"
    # the kept checkpoint is good: resuming it (without the fault) ends exactly like a clean run
    run(make_cfg(over), tmp_path / "clean")
    run(make_cfg(over), tmp_path / "run")
    assert strip_time(read_metrics(tmp_path / "run" / "metrics.jsonl")) == \
        strip_time(read_metrics(tmp_path / "clean" / "metrics.jsonl"))


def test_non_finite_loss_stops_the_run(make_cfg, tmp_path, monkeypatch):
    nan_in_offline_gradients(monkeypatch, at=2, loss=True)
    with pytest.raises(NonFiniteError, match=r"non-finite loss nan at iteration 2, .*no "
                                             r"checkpoint had been written yet"):
        run(make_cfg([*NAN_RUN, "trainer.checkpoint_every=0"]), tmp_path)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_non_finite_loss_online_stops_the_run(make_cfg, tmp_path, monkeypatch):
    nan_in_online_step(monkeypatch, at=5, step=0, loss=True)
    with pytest.raises(NonFiniteError, match="non-finite loss nan at iteration 5"):
        run(make_cfg([*NAN_RUN, "trainer.update=online"]), tmp_path)
    assert ckpt.load(tmp_path / "checkpoint.pt")["iteration"] == 4


def test_skip_offline_skips_that_update_and_counts_it(make_cfg, tmp_path, monkeypatch):
    nan_in_offline_gradients(monkeypatch, at=7)
    applied = count_updates(monkeypatch)
    summary = run(make_cfg([*NAN_RUN, "trainer.on_nan=skip"]), tmp_path)
    assert applied == [i for i in range(1, 13) if i != 7]
    assert summary["status"] == "finished" and summary["skipped_updates"] == 1
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r.get("train/skipped_updates", 0) for r in rows] == [0] * 6 + [1] * 6
    state = ckpt.load(tmp_path / "checkpoint.pt")
    assert state["skipped"] == 1
    assert all(bool(torch.isfinite(p).all()) for p in state["model"].values())


def test_skip_online_skips_that_step_and_counts_it(make_cfg, tmp_path, monkeypatch):
    nan_in_online_step(monkeypatch, at=6, step=3)
    applied = count_updates(monkeypatch)
    summary = run(make_cfg([*NAN_RUN, "trainer.update=online", "trainer.on_nan=skip"]),
                  tmp_path)
    assert len(applied) == 12 * 10 - 1 and applied.count(6) == 9  # one time step skipped
    assert summary["skipped_updates"] == 1
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r.get("train/skipped_updates", 0) for r in rows] == [0] * 5 + [1] * 7
    model = ckpt.load(tmp_path / "checkpoint.pt")["model"]
    assert all(bool(torch.isfinite(p).all()) for p in model.values())


def test_skip_counts_are_resumed(make_cfg, tmp_path, monkeypatch):
    over = [*NAN_RUN, "trainer.on_nan=skip"]
    with monkeypatch.context() as m:
        nan_in_offline_gradients(m, at=2)
        trainer = Trainer(make_cfg(over), tmp_path)
        original = trainer.train_step

        def signal_in_iteration_5(*a):
            row = original(*a)
            if trainer.iteration == 4:  # (incremented after this step returns)
                trainer.stop.signum = 15  # as the SIGTERM handler would
            return row

        trainer.train_step = signal_in_iteration_5
        with pytest.raises(Interrupted):
            trainer.train()
    assert run(make_cfg(over), tmp_path)["skipped_updates"] == 1


# ============================================================================ determinism
@pytest.mark.parametrize("over", [
    ["algorithm=f_otpe", "trainer.update=online"],
    ["algorithm=ostl", "optimizer=sgd", "optimizer.momentum=0.9"],
], ids=["online-f_otpe", "offline-ostl-sgd"])
def test_same_config_and_seed_give_identical_metrics(make_cfg, tmp_path, over):
    cfg = ["dataset=trandman", "trainer.iterations=10", "dataset.num_steps=10", *TINY, *over]
    run(make_cfg(cfg), tmp_path / "a")
    run(make_cfg(cfg), tmp_path / "b")
    a, b = (strip_time(read_metrics(tmp_path / d / "metrics.jsonl")) for d in "ab")
    assert a == b and len(a) == 3


# ============================================================================ bad input, in process
@pytest.fixture(scope="module")
def victim(tmp_path_factory, one_thread) -> Path:
    """A finished run: results and a checkpoint that no bad input may touch."""
    run_dir = tmp_path_factory.mktemp("victim") / "run"
    run(compose_cfg(VICTIM), run_dir)
    return run_dir


def copy_of(victim: Path, dest: Path, unfinished: bool = False) -> Path:
    shutil.copytree(victim, dest)
    (dest / ".hydra").mkdir(exist_ok=True)  # as Hydra left it when the run was made
    (dest / ".hydra" / "config.yaml").write_text("# the config this run was made with\n")
    if unfinished:  # so that the next start tries to resume from the checkpoint
        (dest / "summary.json").unlink()
    return dest


def refused(cfg, run_dir: Path, *words: str, full_stop: bool = True):
    """``run`` refuses with one sentence holding ``words``; the existing files are untouched.
    ``cfg``: a config, or the overrides of one (composed here: composing may refuse them)."""
    before = snapshot(run_dir) if run_dir.exists() else {}
    with pytest.raises(USER_ERRORS) as err:
        if isinstance(cfg, list):
            cfg = compose_cfg(cfg)
        validate(cfg)
        run(cfg, run_dir)
    message = str(err.value)
    assert "\n" not in message and (message.endswith(".") or not full_stop), message
    for w in words:
        assert w in message, (w, message)
    if before:
        assert snapshot(run_dir) == before
    return message


@pytest.mark.parametrize("overrides, words", [
    (["model.width=0"], ["model.width=0 is out of range"]),
    (["model.depth=-1"], ["model.depth=-1"]),
    (["model.beta=1.0"], ["model.beta=1.0", "[0, 1)"]),
    (["optimizer.lr=-0.1"], ["optimizer.lr=-0.1"]),
    (["trainer.iterations=0"], ["trainer.iterations=0"]),
    (["trainer.checkpoint_every=-1"], ["trainer.checkpoint_every=-1"]),
    (["trainer.on_nan=ignore"], ["trainer.on_nan='ignore'", "stop, skip"]),
    (["trainer.update=sometimes"], ["trainer.update='sometimes'"]),
    (["trainer.device=tpu"], ["trainer.device='tpu'"]),
    (["dataset.num_classes=1"], ["dataset.num_classes=1"]),
    (["algorithm.name=sgdx"], ["algorithm.name='sgdx'"]),
    (["algorithm=bptt", "trainer.update=online"], ["trainer.update=online", "bptt"]),
    (["encoding.name=counts"], ["encoding=counts is a code for the spike data sets",
                                "encoding=rate"]),
])
def test_out_of_range_values_are_refused(tmp_path, victim, overrides, words):
    refused([*VICTIM, *overrides], copy_of(victim, tmp_path / "run"), *words)


@pytest.mark.parametrize("overrides, words", [
    (["trainer.iterations=abc"], ["trainer.iterations", "abc"]),
    (["model.width=1.5"], ["model.width", "1.5"]),
    (["trainer.seed=[1,2]"], ["trainer.seed"]),
    (["trainer.foo=1"], ["trainer.foo"]),
    (["model.widht=16"], ["model.widht"]),
    (["dataset=mnist"], ["dataset=mnist", "randman"]),
    (["algorithm=sgdx"], ["algorithm=sgdx", "otpe"]),
])
def test_wrong_types_unknown_keys_and_unknown_choices_are_refused(overrides, words):
    """Composing refuses these in one sentence naming the key (the CLI prints it, exit 2)."""
    from otpe_cli.config import ConfigError

    with pytest.raises(ConfigError) as err:
        compose_cfg([*VICTIM, *overrides])
    text = str(err.value)
    assert "\n" not in text and text.endswith("."), text
    for w in words:
        assert w in text, (w, text)


def test_unknown_dataset_name_is_refused(tmp_path, victim):
    refused([*VICTIM, "dataset.name=mnist"], copy_of(victim, tmp_path / "run"),
            "dataset.name='mnist' is not one of: randman, trandman, shd, ssc.")


class TinySet:
    """A finite SpikeDataset of 10 samples (stands in for any data set with a training set)."""

    @staticmethod
    def build(dataset_cfg, encoding):
        from otpe_cli.data import SpikeDataset

        class Tiny(SpikeDataset):
            num_inputs, num_classes, num_steps = 50, 10, 10
            splits = {"test": (torch.zeros(10, 4, 50), torch.zeros(4, dtype=torch.long))}

            @property
            def train_size(self):
                return 10

            def train_batch(self, batch_size, generator):
                return torch.zeros(10, batch_size, 50), torch.zeros(batch_size, dtype=torch.long)

        return Tiny()


def test_batch_larger_than_a_finite_data_set_is_refused(tmp_path, victim, monkeypatch):
    import otpe_cli.trainer as trainer_mod

    monkeypatch.setattr(trainer_mod, "build_dataset", TinySet.build)
    refused(compose_cfg([*VICTIM]), copy_of(victim, tmp_path / "run"),
            "trainer.batch_size=32 is larger than the training set (10 samples)",
            "trainer.batch_size=10 or less")


@pytest.fixture
def shd_cfg(tmp_path):
    if make_hsd is None:
        pytest.skip("no SHD fixtures (tests/shd_fixtures.py)")
    root = tmp_path / "data"
    make_hsd(root, "shd")  # 40 training samples, 4 of them held out for validation

    def make(*overrides):
        return compose_cfg(["dataset=shd", f"dataset.root={root}", "dataset.download=false",
                            "trainer.iterations=2", "model.width=8", "trainer.batch_size=8",
                            "trainer.progress=none", *overrides])
    make.root = root
    return make


def test_shd_batch_larger_than_the_training_set_is_refused(tmp_path, victim, shd_cfg):
    refused(shd_cfg("trainer.batch_size=64"), copy_of(victim, tmp_path / "run"),
            "trainer.batch_size=64 is larger than the training set (36 samples)")


@pytest.mark.parametrize("damage, words", [
    ("missing", ["SHD data not found", "shd_test.h5", "dataset.download=false"]),
    ("garbage", ["shd_test.h5", "not a readable HDF5 file"]),
    ("truncated", ["shd_test.h5", "not a readable HDF5 file"]),
])
def test_missing_or_corrupt_data_file_is_refused(tmp_path, victim, shd_cfg, damage, words):
    path = shd_cfg.root / "SHD" / "shd_test.h5"
    if damage == "missing":
        path.unlink()
    elif damage == "garbage":
        path.write_bytes(GARBAGE)
    else:
        path.write_bytes(path.read_bytes()[:700])
    refused(shd_cfg("dataset.cache=false"), copy_of(victim, tmp_path / "run"), *words)


class Payload:
    """Pickles as a call that would create a marker file if it were ever run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("damage, words", [
    ("truncated", ["cannot be read", "truncated or corrupt", "left in place"]),
    ("garbage", ["cannot be read", "truncated or corrupt"]),
    ("empty", ["cannot be read"]),
    ("pickled code", ["holds objects other than tensors", "weights_only=True"]),
    ("foreign", ["is not an otpe-train checkpoint", "missing fingerprint"]),
])
def test_corrupt_or_truncated_checkpoint_is_refused_and_left_in_place(tmp_path, victim, damage,
                                                                      words):
    run_dir = copy_of(victim, tmp_path / "run", unfinished=True)
    path = run_dir / "checkpoint.pt"
    marker = tmp_path / "pwned"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(GARBAGE)
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "pickled code":
        torch.save({"iteration": 3, "model": Payload(marker)}, path)
    else:
        torch.save({"iteration": 3, "weights": torch.zeros(3)}, path)
    refused(compose_cfg(VICTIM), run_dir, str(path), *words)
    assert not marker.exists()  # no pickled code ran


def test_unwritable_run_directory_is_refused(tmp_path, victim):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    refused(compose_cfg(VICTIM), afile / "run", "cannot be written", "hydra.run.dir")
    assert afile.read_text() == "keep me"


# a full disk under metrics.jsonl, for a real otpe-train process (loaded through PYTHONPATH)
FULL_DISK_SITE = """
import builtins
_open = builtins.open
def _open_on_full_disk(file, mode="r", *args, **kwargs):
    if str(file).endswith("metrics.jsonl") and "a" in mode:
        return _open("/dev/full", "w", *args, **kwargs)  # every write: ENOSPC
    return _open(file, mode, *args, **kwargs)
builtins.open = _open_on_full_disk
"""


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_a_full_disk_mid_run_stops_it_in_one_sentence_and_records_it(tmp_path, cli):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(FULL_DISK_SITE)
    run_dir = tmp_path / "run"
    args = ["debug=quick", f"hydra.run.dir={run_dir}"]
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    res = cli(args, cwd=tmp_path, env={"PYTHONPATH": path})
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"otpe-train: error: {run_dir / 'metrics.jsonl'} cannot be written "
                           "(No space left on device; ")
    assert last.endswith(" MiB free on its disk); the last checkpoint, if any, is kept: free "
                         "some space and run the same command again to resume.")
    failed = json.loads((run_dir / "summary.json").read_text())
    assert failed["status"] == "failed" and failed["error"] == last[len("otpe-train: error: "):]
    res = cli(args, cwd=tmp_path)  # the disk has room again: the same command runs
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"


def test_a_checkpoint_that_cannot_be_written_stops_the_run_and_keeps_the_last_one(
        make_cfg, tmp_path, monkeypatch):
    """torch's zip writer reports a full disk as a RuntimeError ("unexpected pos"): the run
    stops in one sentence, the last good checkpoint stays, summary.json says failed."""
    real_save, saves = torch.save, []

    def save_on_a_full_disk(obj, f, *args, **kwargs):
        saves.append(obj["iteration"])
        if len(saves) == 2:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 "
                               "vs 0")
        return real_save(obj, f, *args, **kwargs)

    path = tmp_path / "checkpoint.pt"
    with monkeypatch.context() as m:
        m.setattr(torch, "save", save_on_a_full_disk)
        with pytest.raises(ckpt.CheckpointError) as err:
            run(make_cfg(NAN_RUN), tmp_path)
    message = str(err.value)
    assert message.startswith(f"checkpoint {path} cannot be written ([enforce fail at "
                              "inline_container.cc:672] . unexpected pos 64 vs 0; ")
    assert message.endswith(" MiB free on its disk); the previous checkpoint, if any, is kept.")
    assert saves == [4, 8] and ckpt.load(path)["iteration"] == 4
    assert [p.name for p in tmp_path.glob("checkpoint.pt*")] == ["checkpoint.pt"]
    failed = json.loads((tmp_path / "summary.json").read_text())
    assert failed["status"] == "failed" and failed["error"] == message and failed["iter"] == 8
    assert run(make_cfg(NAN_RUN), tmp_path)["status"] == "finished"  # resumed from 4


# ============================================================================ bad input, real CLI
NAN_DRIVER = """
import math, sys
import otpe_cli.algorithms as A
from otpe_cli.cli import main

original, calls = A.Algorithm.gradients, []

def gradients(self, model, x, y):
    grads, stats = original(self, model, x, y)
    calls.append(1)
    if len(calls) == 6:
        grads = [g.clone() for g in grads]
        grads[1][0] = math.nan
    return grads, stats

A.Algorithm.gradients = gradients
sys.argv[0] = "otpe-train"
main()
"""


def _cli_cases(tmp: Path, victim: Path) -> dict:
    """One real process per kind of failure: id → (command, run_dir or None, words)."""
    exe = Path(sys.executable).with_name("otpe-train")
    exe = [str(exe) if exe.exists() else "otpe-train"]
    cases = {}

    def add(name, args, words, prepare=None, command=exe):
        """prepare: None (a copy of the finished victim), "unfinished" (the victim before its
        end) or "fresh" (a new run directory)."""
        run_dir = tmp / name / "run"
        if prepare != "fresh":
            copy_of(victim, run_dir, unfinished=prepare == "unfinished")
        cases[name] = ([*command, *args, f"hydra.run.dir={run_dir}"], run_dir, words)
        return run_dir

    add("wrong-type", [*VICTIM, "trainer.iterations=abc"], ["trainer.iterations", "abc"])
    add("unknown-key", [*VICTIM, "trainer.foo=1"], ["trainer.foo"])
    add("unknown-dataset", [*VICTIM, "dataset=mnist"], ["otpe-train: error: dataset=mnist"])
    add("out-of-range", [*VICTIM, "model.width=-3"],
        ["otpe-train: error: model.width=-3 is out of range"])
    run_dir = add("truncated-checkpoint", VICTIM, ["otpe-train: error: checkpoint", "cannot be "
                                                   "read", "truncated"], "unfinished")
    path = run_dir / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:1000])
    cases["truncated-checkpoint"][2].append(str(path))
    add("bad-update-mode", [*VICTIM, "trainer.update=onlin"],  # Adamax's lr reads the mode
        ["otpe-train: error: trainer.update='onlin' is not one of: offline, online (did you "
         "mean online?)."], "fresh")
    add("different-config", [*VICTIM, "model.width=32"],
        ["otpe-train: error: checkpoint", "model.width is 16 in the checkpoint but 32 now"],
        "unfinished")
    add("iterations-below-checkpoint", [*VICTIM, "trainer.iterations=5"],
        ["otpe-train: error: the checkpoint in", "is at iteration 8, beyond "
         "trainer.iterations=5: resume it with trainer.iterations=8 or more."], "unfinished")
    afile = tmp / "afile"
    afile.write_text("keep me")
    cases["unwritable-dir"] = ([*exe, *VICTIM, f"hydra.run.dir={afile}/run"], None,
                               ["otpe-train: error: the run directory", f"{afile} is a file"])
    cases["unwritable-proc"] = ([*exe, *VICTIM, "hydra.run.dir=/proc/otpe-test/run"], None,
                                ["otpe-train: error: the run directory /proc/otpe-test/run"])
    driver = tmp / "nan_driver.py"
    driver.write_text(NAN_DRIVER)
    add("nan-loss", NAN_RUN, ["otpe-train: error: non-finite gradient of layers.0.bias at "
                              "iteration 6", "iteration 4) is kept"], "fresh",
        command=[sys.executable, str(driver)])
    if make_hsd is not None:
        root = tmp / "shd-data"
        make_hsd(root, "shd")
        shd = ["dataset=shd", f"dataset.root={root}", "dataset.download=false",
               "trainer.iterations=2", "model.width=8", "trainer.progress=none"]
        add("batch-too-large", [*shd, "trainer.batch_size=64"],
            ["otpe-train: error: trainer.batch_size=64 is larger than the training set "
             "(36 samples)"])
        empty = tmp / "no-data"
        empty.mkdir()
        add("missing-data", [*shd, f"dataset.root={empty}"],
            ["otpe-train: error: SHD data not found", "shd_train.h5"])
        bad_root = tmp / "bad-data"
        make_hsd(bad_root, "shd")
        (bad_root / "SHD" / "shd_train.h5").write_bytes(b"this is not HDF5" * 100)
        add("corrupt-data", [*shd, f"dataset.root={bad_root}", "dataset.cache=false"],
            ["otpe-train: error:", "shd_train.h5", "not a readable HDF5 file"])
    return cases


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory, victim):
    """Start every case at once (the machine's cores share the startup costs), then collect."""
    tmp = tmp_path_factory.mktemp("cli")
    cases = _cli_cases(tmp, victim)
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", **ENV}
    before = {name: snapshot(d) if d is not None and d.exists() else {}
              for name, (_, d, _) in cases.items()}
    procs = {name: subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
             for name, (cmd, _, _) in cases.items()}
    results = {}
    deadline = time.monotonic() + TIMEOUT
    for name, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        results[name] = dict(rc=proc.returncode, out=out, err=err, run_dir=cases[name][1],
                             words=cases[name][2], before=before[name], tmp=tmp)
    return results


CLI_CASES = ["wrong-type", "unknown-key", "unknown-dataset", "out-of-range", "bad-update-mode",
             "truncated-checkpoint", "different-config", "iterations-below-checkpoint",
             "unwritable-dir", "unwritable-proc",
             "nan-loss", "batch-too-large", "missing-data", "corrupt-data"]


@pytest.mark.parametrize("name", CLI_CASES)
def test_cli_bad_input_one_sentence_nonzero_exit_no_traceback(cli_results, name):
    if name not in cli_results:
        pytest.skip("no SHD fixtures (tests/shd_fixtures.py)")
    r = cli_results[name]
    text = r["out"] + r["err"]
    assert r["rc"] not in (0, None), text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    for w in r["words"]:
        assert w in r["err"], (w, r["err"][-3000:])
    ours = [line for line in r["err"].splitlines() if line.startswith("otpe-train: error:")]
    if ours:  # our own errors: exactly one line, one sentence, exit 2
        assert len(ours) == 1 and ours[0].endswith("."), ours
        assert r["rc"] == 2
    if r["before"]:
        after = snapshot(r["run_dir"])
        assert {k: after.get(k) for k in r["before"]} == r["before"], "existing files changed"
        if "summary.json" not in r["before"]:  # an unfinished run stays resumable: no
            assert "summary.json" not in after  # 'failed' record is written over it
        assert ".hydra/config.yaml" in r["before"]
        assert not (r["run_dir"] / ".hydra" / "pending").exists()
    if name == "unwritable-dir":
        assert (r["tmp"] / "afile").read_text() == "keep me"
    if name == "bad-update-mode":  # refused on the command line: nothing is made or written
        assert not (r["run_dir"] / "summary.json").exists()
    if name == "truncated-checkpoint":
        assert len((r["run_dir"] / "checkpoint.pt").read_bytes()) == 1000  # left in place
    if name == "nan-loss":
        state = ckpt.load(r["run_dir"] / "checkpoint.pt")
        assert state["iteration"] == 4
        assert all(bool(torch.isfinite(p).all()) for p in state["model"].values())


def test_a_console_reader_that_goes_away_loses_no_run(tmp_path):
    """``otpe-train ... | head -2``: the pipe breaks after two lines; the run still finishes
    and writes its files (only the console output is lost), exit 0."""
    exe = Path(sys.executable).with_name("otpe-train")
    run_dir = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", **ENV}
    proc = subprocess.Popen(
        [str(exe) if exe.exists() else "otpe-train", *VICTIM, "trainer.iterations=30",
         "trainer.progress=lines", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    first = [proc.stdout.readline() for _ in range(2)]
    proc.stdout.close()  # the reader is gone: every later write meets a broken pipe
    assert proc.wait(timeout=TIMEOUT) == 0, first
    assert b"run directory" in first[0]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["iter"] == 30
    assert (run_dir / "checkpoint.pt").exists()


def test_a_batch_that_cannot_fit_in_free_memory_is_refused_before_any_work(make_cfg, tmp_path,
                                                                           monkeypatch):
    from otpe_cli import memory as memory_module
    from otpe_cli import trainer as trainer_module

    cfg = make_cfg([*VICTIM, "trainer.batch_size=64"])
    # OTPE keeps ε and R̃ (2 traces) in layers 1..2, OSTL ε (1) at the output; alignment adds
    # BPTT's membrane and spike per unit and step; T = 10, 50 inputs, width 16, 10 classes
    sizes, batch, steps = [50, 16, 16, 10], 64, 10
    traces = 2 * (16 * 50 + 16 * 16) + 1 * (10 * 16)
    params = 16 * 51 + 16 * 17 + 10 * 17  # weights and biases, held twice (and their grads)
    floor = 4 * (2 * params + steps * batch * 50 + batch * traces
                 + 2 * steps * batch * (16 + 16 + 10))
    from otpe_cli import build_algorithm
    assert build_algorithm("otpe").memory_floor(sizes, batch, steps, 4, True) == floor
    monkeypatch.setattr(memory_module, "available_memory", lambda device: floor - 1)
    refused(cfg, tmp_path / "run", "trainer.batch_size=64 needs at least",
            "algorithm=otpe (its traces and BPTT's graph for alignment, T=10, layers 50-16-16-10)",
            "lower trainer.batch_size or turn the alignment to BPTT off with "
            "trainer.align_every=0 (that bound is a floor; a run needs more).")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    monkeypatch.setattr(memory_module, "available_memory", lambda device: floor)
    trainer_module.Trainer(cfg, tmp_path / "run")  # just fits: accepted


@pytest.mark.parametrize("alg, hint", [
    ("otpe", "lower dataset.num_steps or turn the alignment to BPTT off with "
             "trainer.align_every=0."),
    ("bptt", "lower dataset.num_steps.")])
def test_too_many_time_steps_for_free_memory_name_the_time_steps(make_cfg, tmp_path,
                                                                 monkeypatch, alg, hint):
    """What grows with T is BPTT's graph (and the input batch): the message names T, not the
    width, and for an online rule the alignment that keeps such a graph."""
    from otpe_cli import build_algorithm
    from otpe_cli import memory as memory_module
    from otpe_cli import trainer as trainer_module

    steps = 200_000
    at_batch_1 = build_algorithm(alg).memory_floor([50, 16, 16, 10], 1, steps, 4, True)
    monkeypatch.setattr(memory_module, "available_memory", lambda device: at_batch_1 - 1)
    refused(make_cfg([*VICTIM, f"algorithm={alg}", f"dataset.num_steps={steps}"]),
            tmp_path / "run", f"dataset.num_steps={steps} needs at least",
            "even at batch size 1", f"T={steps}", hint)


def test_too_many_fixed_bins_for_free_memory_name_dt_and_t_max(tmp_path, shd_cfg, monkeypatch):
    """SHD with fixed bins takes T from t_max / dt, not from dataset.num_steps."""
    from otpe_cli import build_algorithm
    from otpe_cli import memory as memory_module
    from otpe_cli import trainer as trainer_module

    steps = 2000  # 2 s in 1 ms bins
    at_batch_1 = build_algorithm("bptt").memory_floor([700, 8, 8, 20], 1, steps, 4, True)
    monkeypatch.setattr(memory_module, "available_memory", lambda device: at_batch_1 - 1)
    refused(shd_cfg("algorithm=bptt", "dataset.binning=fixed", "dataset.dt=0.001",
                    "dataset.t_max=2.0"), tmp_path / "run",
            f"T={steps} (dataset.t_max / dataset.dt) needs at least", "even at batch size 1",
            "raise dataset.dt or lower dataset.t_max.")


def test_a_network_too_wide_for_free_memory_is_refused_before_it_is_built(make_cfg, tmp_path,
                                                                            monkeypatch):
    """Even one sample does not fit: the width is named, and no weight is allocated (a
    width of 10^8 would ask for 40 TB in the model's constructor)."""
    from otpe_cli import memory as memory_module
    from otpe_cli import trainer as trainer_module

    monkeypatch.setattr(memory_module, "available_memory", lambda device: 2**30)
    monkeypatch.setattr(trainer_module, "SNN", lambda *a, **k: pytest.fail("model was built"))
    refused(make_cfg([*VICTIM, "model.width=100000000"]), tmp_path / "run",
            "model.width=100000000 needs at least", "even at batch size 1",
            "but only 1.0 GiB of cpu memory is free: lower model.width or model.depth.")


def test_a_second_otpe_train_on_a_run_directory_in_use_is_refused(tmp_path, cli):
    """A job resubmitted while the first one still trains in the same directory: refused in
    one sentence (exit 2) and nothing written there, instead of two processes interleaving
    their rows in metrics.jsonl. Once the first one has ended, the same command runs."""
    from otpe_cli.launch.rundir import LOCK_NAME, run_dir_lock

    run_dir = tmp_path / "run"
    args = ["debug=quick", "trainer.iterations=2", f"hydra.run.dir={run_dir}"]
    first = run_dir / ".hydra" / "pending" / "99999"  # the first one's, not yet moved up
    first.mkdir(parents=True)
    (first / "config.yaml").write_text("# the first run's config\n")
    first_log = run_dir / "otpe-train.log"
    first_log.write_text("[the first run's log]\n")
    with run_dir_lock(run_dir):  # as the first process holds it while it trains
        # (a W&B key with W&B off: a warning, which must not land in the first one's log)
        res = cli([*args, "trainer.seed=5", "logger.project=x"], cwd=tmp_path)
        assert res.returncode == 2, res.stderr[-3000:]
        assert res.stderr.strip().splitlines()[-1] == (
            f"otpe-train: error: the run directory {run_dir} is in use by another otpe-train "
            f"(pid {os.getpid()}); wait for it to end, or stop it (it checkpoints on SIGTERM) "
            "and run this again to resume.")
        assert not (run_dir / "summary.json").exists()  # no "failed" record in its directory
        assert not (run_dir / "metrics.jsonl").exists() and (run_dir / LOCK_NAME).exists()
        assert first_log.read_text() == "[the first run's log]\n"
        # Hydra's files: the first one's left as they were, none of the refused one's kept
        assert (first / "config.yaml").read_text() == "# the first run's config\n"
        assert sorted(p.name for p in (run_dir / ".hydra").iterdir()) == ["pending"]
        assert [p.name for p in (run_dir / ".hydra" / "pending").iterdir()] == ["99999"]
    shutil.rmtree(run_dir / ".hydra")
    assert not (run_dir / LOCK_NAME).exists()  # released, and no file left behind
    res = cli(args, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"
    assert not (run_dir / LOCK_NAME).exists()  # a finished run's directory holds no lock


def test_two_runs_started_in_the_same_second_are_told_to_take_their_own_directory(tmp_path,
                                                                                   cli):
    """The default run directory is named by the clock to the second: a second run started
    in the same second finds the first one's lock and is told how to run beside it."""
    import contextlib
    import datetime

    from otpe_cli.launch.rundir import run_dir_lock

    now = datetime.datetime.now()
    runs = tmp_path / "outputs" / "runs"
    with contextlib.ExitStack() as held:  # "the first run", on every second the CLI may start in
        for second in range(-1, 30):
            t = now + datetime.timedelta(seconds=second)
            held.enter_context(run_dir_lock(
                runs / t.strftime("%Y-%m-%d") / f"{t.strftime('%H-%M-%S')}_randman_otpe"))
        res = cli(["debug=quick"], cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-3000:]
    assert res.stderr.strip().splitlines()[-1].endswith(
        f"(pid {os.getpid()}); wait for it to end, or stop it (it checkpoints on SIGTERM) and "
        "run this again to resume. If it is a different run started in the same second, give "
        "this one a directory of its own with hydra.run.dir=DIR.")
