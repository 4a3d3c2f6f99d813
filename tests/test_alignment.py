"""SPEC §4's alignment measures, held to the plain NumPy formulas of tests/reference.py, and
where the trainer takes them in online mode (at the parameters the batch starts with)."""
import copy
import math

import pytest
import torch

import reference as ref
from helpers import TINY
from otpe_cli import alignment, sequence_gradients
from otpe_cli.trainer import Trainer


def some_gradients(seed):
    g = torch.Generator().manual_seed(seed)
    rule = {"a.weight": torch.randn(5, 4, generator=g, dtype=torch.float64),
            "a.bias": torch.randn(5, generator=g, dtype=torch.float64) * 1e-3,
            "b.weight": torch.randn(3, 5, generator=g, dtype=torch.float64) * 50.0}
    bptt = {k: v + torch.randn(v.shape, generator=g, dtype=torch.float64) * v.std()
            for k, v in rule.items()}
    # signs only count where both exceed 1e-12: a zero, two tiny entries around the threshold
    rule["a.weight"][0, :3] = torch.tensor([0.0, 5e-13, 2e-12])
    bptt["a.weight"][0, :3] = torch.tensor([-1.0, -1.0, -3e-12])
    rule["a.bias"][:2], bptt["a.bias"][:2] = torch.tensor([1.0, -2.0]), torch.tensor([-1.0, 2.0])
    return rule, bptt


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_measures_match_the_plain_formulas_per_parameter_and_global(seed):
    rule, bptt = some_gradients(seed)
    got = alignment(rule, bptt)
    for name in rule:
        assert got[f"align/cos/{name}"] == pytest.approx(ref.cosine(rule[name], bptt[name]),
                                                         rel=1e-12)
        assert got[f"align/sign/{name}"] == ref.sign_agreement(rule[name], bptt[name])
        assert got[f"align/norm_ratio/{name}"] == pytest.approx(
            ref.norm_ratio(rule[name], bptt[name]), rel=1e-12)
    flat = torch.cat([v.flatten() for v in rule.values()])
    flat_ref = torch.cat([bptt[k].flatten() for k in rule])
    assert got["align/cos/global"] == pytest.approx(ref.cosine(flat, flat_ref), rel=1e-12)
    assert got["align/sign/global"] == ref.sign_agreement(flat, flat_ref)
    assert got["align/norm_ratio/global"] == pytest.approx(ref.norm_ratio(flat, flat_ref),
                                                           rel=1e-12)
    # "global" is all parameters flattened together, not an average over parameters
    mean_cos = sum(got[f"align/cos/{n}"] for n in rule) / len(rule)
    assert abs(got["align/cos/global"] - mean_cos) > 1e-3


def test_sign_agreement_ignores_entries_at_or_below_the_threshold():
    rule = {"w": torch.tensor([1e-12, 1e-13, 3.0, -2.0, 1.0], dtype=torch.float64)}
    bptt = {"w": torch.tensor([-1.0, -1.0, 1.0, -1.0, -1.0], dtype=torch.float64)}
    assert alignment(rule, bptt)["align/sign/w"] == pytest.approx(2 / 3)  # 3 counted, 2 agree
    silent = alignment({"w": torch.zeros(3)}, {"w": torch.ones(3)})
    assert math.isnan(silent["align/sign/w"]) and math.isnan(silent["align/cos/w"])
    assert silent["align/norm_ratio/w"] == 0.0


@pytest.mark.parametrize("alg", ["otpe", "f_otpe"])
def test_online_alignment_is_taken_at_the_parameters_the_batch_starts_with(make_cfg, tmp_path,
                                                                           alg):
    cfg = make_cfg(["dataset=trandman", f"algorithm={alg}", "trainer.update=online",
                    "dataset.num_steps=12", "optimizer.lr=0.05", "trainer.dtype=float64",
                    *TINY])
    trainer = Trainer(cfg, tmp_path)
    readout = "trace" if alg.startswith("f_") else "spikes"  # BPTT of the loss the rule sees

    def expected(model, x, y):
        g = sequence_gradients(alg, model, x, y)
        b = sequence_gradients("bptt", model, x, y, readout=readout)
        return {name: ref.cosine(g[name], b[name]) for name in g}

    start = copy.deepcopy(trainer.model)
    for seed in range(3, 13):  # a batch on which no layer is silent at the start (else the
        x, y = trainer.data.train_batch(16, torch.Generator().manual_seed(seed))  # cosine of a
        x = x.to(torch.float64)                                   # zero gradient is undefined)
        at_start = expected(start, x, y)
        if all(math.isfinite(c) for c in at_start.values()):
            break
    assert all(math.isfinite(c) for c in at_start.values()), at_start
    row = trainer.train_step(x, y, align=True)
    after = trainer.model
    assert not torch.equal(start.layers[0].weight, after.layers[0].weight)  # it did train
    at_end = expected(after, x, y)
    for name, cos in at_start.items():
        assert row[f"align/cos/{name}"] == pytest.approx(cos, rel=1e-9)
    assert any(abs(at_end[n] - at_start[n]) > 1e-6 for n in at_start)  # the test can tell


def test_align_with_measures_each_rule_at_the_trained_models_parameters(make_cfg, tmp_path):
    """The authors' protocol (trainer.align_with): BPTT trains, and at every alignment step each
    listed rule's sequence gradient on BPTT's batch, at BPTT's parameters, is compared with
    BPTT's gradient of the rule's own objective (the leaky-trace loss for F-OTPE)."""
    cfg = make_cfg(["dataset=trandman", "algorithm=bptt", "dataset.num_steps=12",
                    "trainer.dtype=float64", "trainer.align_with=[ottt,otpe,f_otpe]", *TINY])
    trainer = Trainer(cfg, tmp_path)
    for seed in range(3, 13):  # a batch on which no layer is silent (see above)
        x, y = trainer.data.train_batch(16, torch.Generator().manual_seed(seed))
        x = x.to(torch.float64)
        spikes = sequence_gradients("bptt", trainer.model, x, y)
        if all(float(g.norm()) > 0 for g in spikes.values()):
            break
    start = copy.deepcopy(trainer.model)
    row = trainer.train_step(x, y, align=True)
    assert not torch.equal(start.layers[0].weight, trainer.model.layers[0].weight)
    assert row["align/cos/global"] == pytest.approx(1.0)  # BPTT against itself
    for rule, readout in (("ottt", "spikes"), ("otpe", "spikes"), ("f_otpe", "trace")):
        g = sequence_gradients(rule, start, x, y)
        b = sequence_gradients("bptt", start, x, y, readout=readout)
        for name in g:
            assert row[f"align/{rule}/cos/{name}"] == pytest.approx(ref.cosine(g[name], b[name]),
                                                                    rel=1e-9)
        flat = torch.cat([v.flatten() for v in g.values()])
        flat_b = torch.cat([b[n].flatten() for n in g])
        assert row[f"align/{rule}/cos/global"] == pytest.approx(ref.cosine(flat, flat_b),
                                                                rel=1e-9)
        assert row[f"align/{rule}/norm_ratio/global"] == pytest.approx(
            float(flat.norm() / flat_b.norm()), rel=1e-9)
        assert f"align/{rule}/sign/layers.0.weight" in row
    assert not any(k.startswith("align/approx_otpe/") for k in row)  # only the listed rules
    summary = trainer.train()
    assert "align_mean/otpe/cos/layers.0.weight" in summary
