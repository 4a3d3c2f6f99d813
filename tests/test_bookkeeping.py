"""The trainer's bookkeeping, held against independent computations: best-validation model
selection, alignment means, logging windows, one initialisation for every algorithm,
evaluation over several batches, and strict JSON where a metric is not finite.

Tiny runs on T-Randman (few steps, a narrow network, a handful of iterations).
"""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import TINY
from otpe_cli import trainer as trainer_module
from otpe_cli.cli import run
from otpe_cli.logs import read_metrics
from otpe_cli.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

ALGS = ["bptt", "ottt", "ostl", "otpe", "approx_otpe", "f_otpe", "f_approx_otpe"]

#: T-Randman small enough for seconds; 4 classes and a lower threshold so that the tiny
#: network spikes (finite alignment, non-trivial accuracy)
SMALL = ["dataset=trandman", "dataset.num_steps=20", "dataset.num_classes=4",
         "model.threshold=0.5", "optimizer.lr=0.02",
         *[o for o in TINY if not o.startswith(("trainer.eval_every", "trainer.log_every",
                                                 "trainer.align_every"))]]


def strict_loads(text: str):
    """json.loads that refuses NaN / Infinity (not JSON, though Python writes them)."""
    def refuse(name):
        raise ValueError(f"non-JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


# ---------------------------------------------------------------- best validation
def test_best_validation_keeps_the_first_best_and_the_test_accuracy_there(make_cfg, tmp_path,
                                                                          monkeypatch):
    """Model selection: the best val/acc is the FIRST iteration reaching it (a tie does not
    move it), and best/test_acc_at_best_val is the test accuracy at that iteration, not the
    best test accuracy."""
    val = [0.5, 0.7, 0.7, 0.6]
    test = [0.6, 0.5, 0.9, 0.8]
    script = iter(zip(val, test))

    def scripted_evaluate(self):  # what evaluate() reports, in the order of evaluations
        v, t = next(script)
        out = {"val/acc": v, "val/loss": 1.0, "test/acc": t, "test/loss": 1.0}
        self._track_best(out)
        return out

    monkeypatch.setattr(Trainer, "evaluate", scripted_evaluate)
    cfg = make_cfg([*SMALL, "algorithm=otpe", "trainer.iterations=4", "trainer.eval_every=1",
                    "trainer.log_every=1", "trainer.align_every=0"])
    run(cfg, tmp_path)

    expected = {"best/val_acc": 0.7, "best/val_acc_iter": 2,          # first of the tie (2, 3)
                "best/test_acc_at_best_val": 0.5,                       # test at iteration 2
                "best/test_acc": 0.9, "best/test_acc_iter": 3}
    summary = strict_loads((tmp_path / "summary.json").read_text())
    assert {k: summary[k] for k in expected} == expected
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["iter"] for r in rows] == [1, 2, 3, 4]
    assert {k: rows[-1][k] for k in expected} == expected
    # after iteration 2 (before the tie) the selection already holds the same values
    assert rows[1]["best/val_acc_iter"] == 2 and rows[1]["best/test_acc_at_best_val"] == 0.5


# ---------------------------------------------------------------- alignment means
def test_alignment_means_are_plain_means_of_the_logged_alignments(make_cfg, tmp_path):
    """summary.json's align_mean/<m> is the plain mean of every align/<m> logged in
    metrics.jsonl, and align/<m> there is the last one logged."""
    cfg = make_cfg([*SMALL, "algorithm=ottt", "trainer.iterations=7", "trainer.align_every=3",
                    "trainer.log_every=0", "trainer.eval_every=0"])
    run(cfg, tmp_path)
    rows = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "align/cos/global" in r]
    assert [r["iter"] for r in rows] == [1, 3, 6, 7]  # first, every 3rd and the last
    summary = strict_loads((tmp_path / "summary.json").read_text())
    keys = [k for k in rows[0] if k.startswith("align/")]
    assert keys and all(k in r for r in rows for k in keys)
    for key in keys:
        values = [r[key] for r in rows]
        assert all(v is not None and math.isfinite(v) for v in values), key
        mean_key = "align_mean/" + key[len("align/"):]
        assert summary[mean_key] == pytest.approx(sum(values) / len(values), rel=1e-12), key
        assert summary[key] == values[-1], key
    # the check has teeth: the logged values are not all the same
    assert len({r["align/norm_ratio/global"] for r in rows}) > 1


# ---------------------------------------------------------------- logging window
def test_each_metrics_row_holds_the_mean_of_its_logging_window(make_cfg, tmp_path, monkeypatch):
    """With log_every=5 a row's train/* and spikes/* values are the means over the 5
    iterations since the previous row (recorded here from train_step itself)."""
    steps = []
    original = Trainer.train_step

    def recording_train_step(self, x, y, align):
        row = original(self, x, y, align)
        steps.append(dict(row))
        return row

    monkeypatch.setattr(Trainer, "train_step", recording_train_step)
    cfg = make_cfg([*SMALL, "algorithm=otpe", "trainer.iterations=10", "trainer.log_every=5",
                    "trainer.eval_every=0", "trainer.align_every=0"])
    run(cfg, tmp_path)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["iter"] for r in rows] == [5, 10] and len(steps) == 10
    keys = ["train/loss", "train/acc"] + [k for k in steps[0] if k.startswith("spikes/")]
    for row in rows:
        window = steps[row["iter"] - 5:row["iter"]]
        for key in keys:
            values = [s[key] for s in window]
            assert row[key] == pytest.approx(sum(values) / len(values), rel=1e-12), (row["iter"], key)
    # the check has teeth: the loss changes within a window
    assert len({s["train/loss"] for s in steps[:5]}) > 1


# ---------------------------------------------------------------- one initialisation
def test_every_algorithm_starts_from_the_same_parameters(make_cfg, tmp_path):
    """SPEC: all algorithms compared at one seed start from the same parameters (whatever
    the global torch RNG holds when the trainer is built)."""
    states = {}
    for i, alg in enumerate(ALGS):
        torch.manual_seed(1000 + i)  # the global RNG must not matter
        cfg = make_cfg([*SMALL, f"algorithm={alg}", "trainer.seed=3"])
        states[alg] = Trainer(cfg, tmp_path / alg).model.state_dict()
    first = states[ALGS[0]]
    for alg, state in states.items():
        assert state.keys() == first.keys(), alg
        for name in first:
            assert torch.equal(state[name], first[name]), (alg, name)
    # and the seed does choose them
    other = Trainer(make_cfg([*SMALL, "algorithm=bptt", "trainer.seed=4"]), tmp_path / "s4")
    assert not torch.equal(other.model.state_dict()["layers.0.weight"], first["layers.0.weight"])


# ---------------------------------------------------------------- evaluation batches
def test_evaluation_is_a_per_sample_mean_whatever_the_batch_size(make_cfg, tmp_path):
    """test/loss and test/acc are means over samples: batches of 7 (a short last batch)
    give what one batch gives and what a per-sample computation gives."""
    over = [*SMALL, "algorithm=bptt", "trainer.dtype=float64", "model.threshold=0.3"]
    batched = Trainer(make_cfg(over + ["trainer.eval_batch_size=7"]), tmp_path / "b7")
    whole = Trainer(make_cfg(over + ["trainer.eval_batch_size=100000"]), tmp_path / "all")
    xs, ys = batched.data.splits["test"]
    n = len(ys)
    assert n % 7 != 0  # the last batch is short

    # the plain per-sample computation: loss (1/T)·Σ_t CE(z_t, y) per sample, correct when the
    # output spike count's argmax is the label and the output spiked at all; then sample means
    with torch.no_grad():
        logits, spikes, _ = batched.model(xs.to(torch.float64), batched.algorithm.readout)
    T, B, C = logits.shape
    per_sample_loss = F.cross_entropy(logits.reshape(T * B, C), ys.repeat(T),
                                      reduction="none").reshape(T, B).mean(0)
    counts = spikes.sum(0)
    per_sample_correct = (counts.argmax(1) == ys) & (counts.sum(1) > 0)
    loss, correct = float(per_sample_loss.mean()), int(per_sample_correct.sum())
    assert 0 < correct < n  # the check has teeth: some right, some wrong

    ev7, ev_all = batched.evaluate(), whole.evaluate()
    for ev in (ev7, ev_all):
        assert ev["test/acc"] == correct / n
        assert ev["test/loss"] == pytest.approx(loss, rel=1e-10)


# ---------------------------------------------------------------- non-finite metrics
def test_non_finite_metrics_are_written_as_null_in_strict_json(make_cfg, tmp_path, monkeypatch):
    """A NaN or infinite metric (here the alignment) leaves metrics.jsonl and summary.json
    valid JSON, with null for that value."""
    real = trainer_module.alignment

    def broken_alignment(grads, reference):
        out = real(grads, reference)
        out["align/cos/global"] = float("nan")
        out["align/norm_ratio/global"] = float("inf")
        return out

    monkeypatch.setattr(trainer_module, "alignment", broken_alignment)
    cfg = make_cfg([*SMALL, "algorithm=otpe", "trainer.iterations=4", "trainer.align_every=2",
                    "trainer.log_every=1", "trainer.eval_every=2"])
    run(cfg, tmp_path)

    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    rows = [strict_loads(line) for line in lines]  # raises on NaN / Infinity
    aligned = [r for r in rows if "align/cos/global" in r]
    assert [r["iter"] for r in aligned] == [1, 2, 4]
    for r in aligned:
        assert r["align/cos/global"] is None and r["align/norm_ratio/global"] is None
        assert r["align/sign/global"] is not None  # finite values are kept
    summary = strict_loads((tmp_path / "summary.json").read_text())
    for key in ("align/cos/global", "align/norm_ratio/global",
                "align_mean/cos/global", "align_mean/norm_ratio/global"):
        assert key in summary and summary[key] is None, key
    assert summary["status"] == "finished" and summary["test/acc"] is not None
