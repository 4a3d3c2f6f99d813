"""otpe_cli.optim against torch.optim's classes: the same bits, step for step, and state
dictionaries that load into each other (checkpoints of either kind resume)."""
from __future__ import annotations

import copy

import pytest
import torch

from otpe_cli.optim import Optimizer

SHAPES = [(7, 5), (7,), (3, 7), (3,)]
CASES = [("adamax", {"betas": (0.9, 0.999)}, {"betas": (0.9, 0.999)}),
         ("adam", {"betas": (0.8, 0.99)}, {"betas": (0.8, 0.99)}),
         ("sgd", {"momentum": 0.0}, {"momentum": 0.0}),
         ("sgd", {"momentum": 0.9}, {"momentum": 0.9})]
CLASSES = {"adamax": torch.optim.Adamax, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}


def params(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=dtype)) for s in SHAPES]


def gradients(step, dtype):
    gen = torch.Generator().manual_seed(100 + step)
    return [torch.randn(s, generator=gen, dtype=dtype) for s in SHAPES]


def torch_step(opt, ps, grads):
    for p, g in zip(ps, grads):
        p.grad = g.clone()
    opt.step()


def same(a, b):
    return all(torch.equal(x.detach(), y.detach()) for x, y in zip(a, b))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name, ours_kw, torch_kw", CASES)
def test_the_same_bits_as_torch_optim_step_for_step(name, ours_kw, torch_kw, dtype):
    mine, theirs = params(dtype), params(dtype)
    ours = Optimizer(name, mine, lr=3e-3, weight_decay=0.01, **ours_kw)
    ref = CLASSES[name](theirs, lr=3e-3, weight_decay=0.01, **torch_kw)
    for step in range(6):
        grads = gradients(step, dtype)
        ours.step(grads)
        torch_step(ref, theirs, grads)
        assert same(mine, theirs), (name, step)
    saved, expected = ours.state_dict(), ref.state_dict()
    assert sorted(saved["state"]) == sorted(expected["state"])
    for i, entries in expected["state"].items():
        assert sorted(saved["state"][i]) == sorted(entries)
        assert all(torch.equal(saved["state"][i][k], v) for k, v in entries.items())
    drop = lambda groups: [{k: v for k, v in g.items() if k != "foreach"} for g in groups]  # noqa: E731
    assert drop(saved["param_groups"]) == drop(expected["param_groups"])


@pytest.mark.parametrize("name, ours_kw, torch_kw", CASES)
def test_state_dicts_load_into_each_other_and_training_goes_on_the_same(name, ours_kw,
                                                                        torch_kw):
    """torch.optim's state → ours, and ours → torch.optim's, after three steps: the next three
    steps of all four optimizers agree bit for bit."""
    a, b, c, d = (params(torch.float32) for _ in range(4))
    ours_a = Optimizer(name, a, lr=1e-2, **ours_kw)
    ref_b = CLASSES[name](b, lr=1e-2, **torch_kw)
    for step in range(3):
        grads = gradients(step, torch.float32)
        ours_a.step(grads)
        torch_step(ref_b, b, grads)
    with torch.no_grad():
        for x, y, src in zip(c, d, a):
            x.copy_(src)
            y.copy_(src)
    ours_c = Optimizer(name, c, lr=1e-2, **ours_kw)
    ours_c.load_state_dict(copy.deepcopy(ref_b.state_dict()))  # (as from a file)
    ref_d = CLASSES[name](d, lr=1e-2, **torch_kw)
    ref_d.load_state_dict(copy.deepcopy(ours_a.state_dict()))
    for step in range(3, 6):
        grads = gradients(step, torch.float32)
        ours_a.step(grads)
        torch_step(ref_b, b, grads)
        ours_c.step(grads)
        torch_step(ref_d, d, grads)
        assert same(a, b) and same(a, c) and same(a, d), (name, step)


def test_a_state_of_another_model_is_refused_in_words():
    ours = Optimizer("adamax", params(torch.float32), lr=1e-3)
    other = Optimizer("adamax", params(torch.float32)[:2], lr=1e-3)
    with pytest.raises(ValueError, match="has 2 parameters in 1 groups; this model has 4"):
        ours.load_state_dict(other.state_dict())


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name, ours_kw, torch_kw", CASES)
def test_step_if_finite_is_torch_optims_step_and_skips_a_non_finite_gradient(
        name, ours_kw, torch_kw, dtype, fused, monkeypatch):
    """Online mode's step (on CPUs Adamax's is one fused kernel, `kernels.adamax_step`): the
    bits of torch.optim's step, with the kernels and without; a gradient with a NaN or an inf
    anywhere changes nothing (parameters, state, step count) and returns False."""
    from otpe_cli import kernels

    if fused:
        kernels.load()
        if name == "adamax" and kernels.status() != "used":
            pytest.skip(f"no fused kernels here: {kernels.status()}")
    else:
        monkeypatch.setattr(kernels, "_module", None)
        monkeypatch.setattr(kernels, "_unusable", "off in this test")
    mine, theirs = params(dtype), params(dtype)
    ours = Optimizer(name, mine, lr=3e-3, weight_decay=0.01, **ours_kw)
    ref = CLASSES[name](theirs, lr=3e-3, weight_decay=0.01, **torch_kw)
    for step in range(6):
        grads = gradients(step, dtype)
        if step in (2, 4):
            bad = [g.clone() for g in grads]
            bad[-1][-1] = float("nan") if step == 2 else -float("inf")
            before = copy.deepcopy((mine, ours.state_dict()))
            assert ours.step_if_finite(bad) is False
            assert same(mine, before[0])
            state = ours.state_dict()["state"]
            assert all(torch.equal(v, before[1]["state"][i][k])
                       for i, entries in state.items() for k, v in entries.items())
        assert ours.step_if_finite(grads) is True
        torch_step(ref, theirs, grads)
        assert same(mine, theirs), (name, step)
    expected = ref.state_dict()["state"]
    assert all(torch.equal(ours.state_dict()["state"][i][k], v)
               for i, entries in expected.items() for k, v in entries.items())
