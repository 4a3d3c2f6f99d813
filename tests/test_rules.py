"""Hold the production learning rules (``otpe_cli``) to the independent float64 reference.

``tests/reference.py`` was written from SPEC.md alone (no look at ``otpe_cli``); its BPTT is a
hand-written adjoint recursion, which is itself checked here against torch.autograd on an
independent unroll with a custom surrogate-spike autograd.Function.

Production contract used here:
    from otpe_cli import SNN, sequence_gradients
    model = SNN(sizes, beta=..., threshold=..., slope=...)          # .double() works
    grads = sequence_gradients(alg, model, x, y[, readout=..., bias_trace=...])
    -> {"layers.<i>.weight": tensor, "layers.<i>.bias": tensor, ...}
with x of shape (T, B, N_in) and y of shape (B,) (int64 labels).
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np
import pytest
import torch

import reference as ref
from helpers import (BETA, _prod, assert_active, build_active_model, make_x, make_y,
                     model_params, param_names, spike_fractions)

RULES = ("ottt", "ostl", "otpe", "approx_otpe", "f_otpe", "f_approx_otpe")
RTOL, ATOL = 1e-9, 1e-12


# =============================================================================================
# helpers
# =============================================================================================
def as_list(grads: dict, n_layers):
    missing = [n for n in param_names(n_layers) if n not in grads]
    assert not missing, f"sequence_gradients result lacks {missing}; has {sorted(grads)}"
    return [(grads[f"layers.{i}.weight"], grads[f"layers.{i}.bias"]) for i in range(n_layers)]


def assert_grads_close(got, want, what, rtol=RTOL, atol=ATOL):
    """got / want: [(dW, db)] of tensors or arrays."""
    for i, (g_pair, w_pair) in enumerate(zip(got, want)):
        for kind, g, w in zip(("weight", "bias"), g_pair, w_pair):
            g = torch.as_tensor(ref.to_np(g))
            w = torch.as_tensor(ref.to_np(w))
            name = f"layers.{i}.{kind}"
            assert g.shape == w.shape, f"{what}: {name} shape {tuple(g.shape)} != {tuple(w.shape)}"
            diff = float((g - w).abs().max()) if g.numel() else 0.0
            assert torch.allclose(g, w, rtol=rtol, atol=atol), (
                f"{what}: {name} differs, max abs diff {diff:.3e} "
                f"(max |want| {float(w.abs().max()):.3e})"
            )


def assert_nontrivial(grads):
    for i, (dW, _) in enumerate(grads):
        assert np.linalg.norm(ref.to_np(dW)) > 1e-8, f"layer {i} weight gradient is zero"


def flat_hidden_kernels(grads_list):
    return np.concatenate([ref.to_np(dW).ravel() for (dW, _) in grads_list[:-1]])


# =============================================================================================
# 1. self-checks of the reference (need no production code)
# =============================================================================================
class _SurrogateSpike(torch.autograd.Function):
    """H(v - theta) (H(0) = 1) forward, fast-sigmoid surrogate backward."""

    @staticmethod
    def forward(ctx, v, theta, slope):
        ctx.save_for_backward(v)
        ctx.theta, ctx.slope = theta, slope
        return (v - theta >= 0).to(v.dtype)

    @staticmethod
    def backward(ctx, grad):
        (v,) = ctx.saved_tensors
        return grad / (ctx.slope * (v - ctx.theta).abs() + 1.0) ** 2, None, None


def autograd_unroll_grads(params, x, y, beta, theta, slope, readout):
    """An independent tiny float64 unroll differentiated by torch.autograd."""
    P = [(torch.tensor(ref.to_np(W), requires_grad=True),
          torch.tensor(ref.to_np(b), requires_grad=True)) for W, b in params]
    x = torch.as_tensor(ref.to_np(x))
    y = torch.as_tensor(ref.labels_np(y))
    T, B, _ = x.shape
    u = [torch.zeros(B, W.shape[0], dtype=torch.float64) for W, _ in P]
    o = torch.zeros(B, P[-1][0].shape[0], dtype=torch.float64)
    J = torch.zeros((), dtype=torch.float64)
    for t in range(T):
        a = x[t]
        for l, (W, b) in enumerate(P):
            v = beta * u[l] + a @ W.T + b
            s = _SurrogateSpike.apply(v, theta, slope)
            u[l] = v - theta * s  # reset path kept in the graph
            a = s
        o = beta * o + a
        z = a if readout == "spikes" else o
        J = J + torch.nn.functional.cross_entropy(z, y)
    (J / T).backward()
    return [(W.grad.numpy(), b.grad.numpy()) for W, b in P]


def numpy_init(sizes, seed, scale, bias_scale=0.05):
    """Truncated LeCun normal (SPEC 1), for reference-only checks."""
    rng = np.random.default_rng(seed)
    P = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        std = math.sqrt(1.0 / n_in) / 0.87962566
        W = rng.standard_normal((n_out, n_in)) * std
        bad = np.abs(W) > 2 * std
        while bad.any():
            W[bad] = rng.standard_normal(bad.sum()) * std
            bad = np.abs(W) > 2 * std
        P.append((W * scale, bias_scale * rng.standard_normal(n_out)))
    return P


def active_numpy_params(sizes, x, beta=BETA, theta=1.0, slope=25.0, seed0=0):
    for seed in range(seed0, seed0 + 300):
        for scale in (2.0, 2.5, 3.0):
            P = numpy_init(sizes, seed, scale)
            fracs, margin = spike_fractions(P, x, beta, theta, slope)
            if all(0.05 <= f <= 0.95 for f in fracs) and margin > 1e-6:
                return P
    raise AssertionError("no active network")


SELF_CASES = [
    ([6, 5, 4, 3], 1, "spikes"),
    ([6, 5, 4, 3], 7, "counts"),
    ([6, 5, 4, 3], 12, "spikes"),
    ([8, 7, 3], 4, "counts"),
    ([8, 7, 3], 10, "spikes"),
    ([5, 3], 9, "counts"),
]


@pytest.mark.parametrize("readout", ["spikes", "trace"])
@pytest.mark.parametrize("sizes,T,kind", SELF_CASES)
def test_reference_bptt_matches_autograd(sizes, T, kind, readout):
    x = make_x(T, 4, sizes[0], kind, seed=T)
    y = make_y(4, sizes[-1], seed=T)
    P = active_numpy_params(sizes, x)
    fracs, _ = spike_fractions(P, x, BETA, 1.0, 25.0)
    assert all(0 < f < 1 for f in fracs)
    want = autograd_unroll_grads(P, x, y, BETA, 1.0, 25.0, readout)
    got = ref.ref_bptt(P, x, y, BETA, 1.0, 25.0, readout)
    assert_nontrivial(got)
    assert_grads_close(got, want, f"reference bptt[{readout}] vs autograd", rtol=1e-10, atol=1e-14)


def test_reference_bptt_nondefault_constants():
    beta, theta, slope = 0.9, 0.7, 10.0
    sizes, T = [6, 5, 4, 3], 8
    x = make_x(T, 3, sizes[0], "counts", seed=3)
    y = make_y(3, sizes[-1], seed=3)
    P = active_numpy_params(sizes, x, beta, theta, slope)
    for readout in ("spikes", "trace"):
        want = autograd_unroll_grads(P, x, y, beta, theta, slope, readout)
        got = ref.ref_bptt(P, x, y, beta, theta, slope, readout)
        assert_grads_close(got, want, f"reference bptt[{readout}]", rtol=1e-10, atol=1e-14)


def test_reference_gbar_is_leaky_average():
    """SPEC 5.3, within the reference."""
    rng = np.random.default_rng(0)
    for beta in (BETA, 0.5, 0.99):
        psis = rng.random((40, 3, 5))
        g = ref.ref_gbar(psis, beta)
        assert np.allclose(g, ref.ref_leaky_average(psis, beta), rtol=1e-12, atol=1e-15)
        assert np.array_equal(g[0], psis[0])  # gbar_1 = psi_1


@pytest.mark.parametrize("sizes,kind", [([6, 5, 4, 3], "spikes"), ([8, 7, 3], "counts")])
def test_reference_T1_rules_equal_bptt(sizes, kind):
    """SPEC 5.1, within the reference."""
    x = make_x(1, 4, sizes[0], kind, seed=11)
    y = make_y(4, sizes[-1], seed=11)
    P = active_numpy_params(sizes, x)
    bptt = ref.ref_bptt(P, x, y, BETA)
    assert_nontrivial(bptt)
    for alg in RULES:
        for bias_trace in (False, True):
            got = ref.ref_rule_gradients(alg, P, x, y, BETA, bias_trace=bias_trace)
            assert_grads_close(got, bptt, f"reference {alg} (bias_trace={bias_trace}) at T=1")


@pytest.mark.parametrize("kind", ["spikes", "counts"])
def test_reference_depth1_facts(kind):
    """SPEC 5.2, within the reference."""
    sizes, T = [7, 4], 12
    x = make_x(T, 4, sizes[0], kind, seed=5)
    y = make_y(4, sizes[-1], seed=5)
    P = active_numpy_params(sizes, x)
    bptt = ref.ref_bptt(P, x, y, BETA, readout="spikes")
    bptt_trace = ref.ref_bptt(P, x, y, BETA, readout="trace")
    assert_grads_close(ref.ref_rule_gradients("ostl", P, x, y, BETA), bptt, "ref ostl depth 1")
    assert_grads_close(ref.ref_rule_gradients("otpe", P, x, y, BETA), bptt, "ref otpe depth 1")
    assert_grads_close(ref.ref_rule_gradients("f_otpe", P, x, y, BETA), bptt_trace,
                       "ref f_otpe depth 1")
    # and the non-exact rules really differ (the checks above are not trivially true)
    ottt = ref.ref_rule_gradients("ottt", P, x, y, BETA)
    assert max(np.abs(a - b).max() for (a, _), (b, _) in zip(ottt, bptt)) > 1e-6


def test_reference_deep_ordering():
    """SPEC 5.4 within the reference (own init), a smaller version of the production test."""
    cos = {a: [] for a in ("otpe", "approx_otpe", "ostl", "ottt")}
    for seed in range(3):
        x = make_x(50, 8, 20, "spikes", seed=100 + seed, p=0.15)
        y = make_y(8, 6, seed=100 + seed)
        for scale in (1.5, 2.0, 2.5, 3.0):
            P = numpy_init([20, 16, 16, 6], seed, scale, bias_scale=0.0)
            fracs, _ = spike_fractions(P, x, BETA, 1.0, 25.0)
            if all(0.05 <= f <= 0.30 for f in fracs[:-1]) and fracs[-1] > 0:
                break
        else:
            pytest.fail(f"seed {seed}: no scale gives 5-30 % hidden rates")
        bk = flat_hidden_kernels(ref.ref_bptt(P, x, y, BETA))
        for alg in cos:
            cos[alg].append(ref.cosine(flat_hidden_kernels(ref.ref_rule_gradients(alg, P, x, y)), bk))
    m = {a: float(np.mean(v)) for a, v in cos.items()}
    assert m["otpe"] > m["approx_otpe"] > max(m["ostl"], m["ottt"]), m


# =============================================================================================
# 2. production vs reference
# =============================================================================================
PROD_CASES = [
    # sizes, T, B, input kind
    ([6, 5, 4, 3], 1, 4, "spikes"),
    ([6, 5, 4, 3], 5, 3, "counts"),
    ([6, 5, 4, 3], 12, 4, "spikes"),
    ([8, 7, 3], 3, 4, "counts"),
    ([8, 7, 3], 9, 3, "spikes"),
    ([8, 7, 3], 12, 4, "counts"),
]
# (algorithm, kwargs for sequence_gradients)
VARIANTS = [("bptt", {}), ("bptt", {"readout": "trace"})] + [(a, {}) for a in RULES] + [
    ("ottt", {"bias_trace": True}),
    ("approx_otpe", {"bias_trace": True}),
]


def reference_for(alg, kwargs, P, x, y, beta=BETA, theta=1.0, slope=25.0):
    if alg == "bptt":
        return ref.ref_bptt(P, x, y, beta, theta, slope, kwargs.get("readout", "spikes"))
    return ref.ref_rule_gradients(alg, P, x, y, beta, theta, slope,
                                  bias_trace=kwargs.get("bias_trace", False))


def _variant_id(v):
    alg, kw = v
    return alg + "".join(f"-{k}={val}" for k, val in kw.items())


@pytest.mark.parametrize("variant", VARIANTS, ids=[_variant_id(v) for v in VARIANTS])
@pytest.mark.parametrize("sizes,T,B,kind", PROD_CASES,
                         ids=[f"{'-'.join(map(str, c[0]))}_T{c[1]}_B{c[2]}_{c[3]}"
                              for c in PROD_CASES])
def test_matches_reference(sizes, T, B, kind, variant):
    _, sequence_gradients = _prod()
    alg, kwargs = variant
    L = len(sizes) - 1
    x = make_x(T, B, sizes[0], kind, seed=T + B)
    y = make_y(B, sizes[-1], seed=T + B)
    model = build_active_model(sizes, x)
    assert_active(model, x, L)
    P = model_params(model, L)
    want = reference_for(alg, kwargs, P, x, y)
    assert_nontrivial(want)
    got = as_list(sequence_gradients(alg, model, x, y, **kwargs), L)
    assert_grads_close(got, want, f"{_variant_id(variant)} vs reference")


@pytest.mark.parametrize("variant", VARIANTS, ids=[_variant_id(v) for v in VARIANTS])
def test_matches_reference_nondefault_constants(variant):
    """beta, threshold and slope are honoured (not hard-coded)."""
    _, sequence_gradients = _prod()
    alg, kwargs = variant
    beta, theta, slope = 0.9, 0.7, 10.0
    sizes, T, B = [6, 5, 4, 3], 8, 3
    L = len(sizes) - 1
    x = make_x(T, B, sizes[0], "counts", seed=21)
    y = make_y(B, sizes[-1], seed=21)
    model = build_active_model(sizes, x, beta=beta, theta=theta, slope=slope)
    assert_active(model, x, L, beta, theta, slope)
    P = model_params(model, L)
    want = reference_for(alg, kwargs, P, x, y, beta, theta, slope)
    got = as_list(sequence_gradients(alg, model, x, y, **kwargs), L)
    assert_grads_close(got, want, f"{_variant_id(variant)} (beta={beta}, theta={theta}, "
                                  f"slope={slope}) vs reference")


def test_defaults_are_spec_constants():
    """SNN(sizes) without keywords uses beta = sigmoid(3), threshold 1, slope 25 (SPEC 1)."""
    SNN, sequence_gradients = _prod()
    sizes, T, B = [6, 5, 4, 3], 6, 3
    L = len(sizes) - 1
    x = make_x(T, B, sizes[0], "spikes", seed=31)
    y = make_y(B, sizes[-1], seed=31)
    active = build_active_model(sizes, x)
    torch.manual_seed(0)
    model = SNN(list(sizes)).double()
    model.load_state_dict(active.state_dict())
    assert_active(model, x, L)
    P = model_params(model, L)
    for alg, kwargs in (("bptt", {}), ("otpe", {}), ("f_approx_otpe", {})):
        got = as_list(sequence_gradients(alg, model, x, y, **kwargs), L)
        assert_grads_close(got, reference_for(alg, kwargs, P, x, y), f"{alg} with defaults")


def test_init_and_depth():
    """SPEC 1: truncated LeCun normal (cut at 2 std of the untruncated normal), zero bias,
    weight shape (out, in), model.depth counts every spiking layer."""
    SNN, _ = _prod()
    torch.manual_seed(0)
    sizes = [400, 300, 200, 10]
    model = SNN(sizes)
    assert int(model.depth) == 3
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        named = dict(model.named_parameters())
        W, b = named[f"layers.{i}.weight"].detach().double(), named[f"layers.{i}.bias"].detach()
        assert tuple(W.shape) == (n_out, n_in)
        assert tuple(b.shape) == (n_out,)
        assert torch.all(b == 0)
        std = math.sqrt(1.0 / n_in) / 0.87962566
        assert float(W.abs().max()) <= 2 * std * (1 + 1e-6)
        # the truncated normal has std 0.8796... * std = sqrt(1/fan_in)
        assert abs(float(W.std()) / math.sqrt(1.0 / n_in) - 1.0) < 0.05
        assert abs(float(W.mean())) < 0.05 * math.sqrt(1.0 / n_in) * 3


def test_parameters_and_grad_untouched():
    _, sequence_gradients = _prod()
    sizes, T, B = [6, 5, 4, 3], 6, 3
    L = len(sizes) - 1
    x = make_x(T, B, sizes[0], "counts", seed=41)
    y = make_y(B, sizes[-1], seed=41)
    model = build_active_model(sizes, x)
    x_before = x.clone()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for preset in (False, True):
        if preset:
            for p in model.parameters():
                p.grad = torch.randn_like(p)
        grads_before = {n: (None if p.grad is None else p.grad.clone())
                        for n, p in model.named_parameters()}
        for alg, kwargs in VARIANTS:
            sequence_gradients(alg, model, x, y, **kwargs)
            for n, p in model.named_parameters():
                assert torch.equal(p.detach(), before[n]), f"{alg} changed parameter {n}"
                assert p.requires_grad, f"{alg} switched off requires_grad of {n}"
                if grads_before[n] is None:
                    assert p.grad is None, f"{alg} set .grad of {n}"
                else:
                    assert p.grad is not None and torch.equal(p.grad, grads_before[n]), \
                        f"{alg} changed .grad of {n}"
            assert torch.equal(x, x_before), f"{alg} modified its input x"


def test_the_process_denormal_setting_is_left_as_it_was():
    """The online loop flushes subnormal floats while it runs (for speed), then restores the
    caller's setting: off stays off, on stays on."""
    _, sequence_gradients = _prod()
    flushed = lambda: float(torch.tensor([1e-39]).mul_(1.0)) == 0.0  # noqa: E731
    x, y = make_x(4, 2, 5, "spikes", seed=3), make_y(2, 3, seed=3)
    model = build_active_model([5, 4, 3], x)
    try:
        for setting in (False, True):
            if not torch.set_flush_denormal(setting):
                pytest.skip("this CPU cannot flush subnormal floats")
            for alg, kwargs in VARIANTS:
                sequence_gradients(alg, model, x, y, **kwargs)
                assert flushed() == setting, (alg, setting)
    finally:
        torch.set_flush_denormal(False)


@pytest.mark.parametrize("sizes,kind", [([6, 5, 4, 3], "spikes"), ([8, 7, 3], "counts")])
def test_T1_every_rule_equals_bptt(sizes, kind):
    """SPEC 5.1 on production: every rule equals production BPTT and reference BPTT."""
    _, sequence_gradients = _prod()
    L = len(sizes) - 1
    x = make_x(1, 4, sizes[0], kind, seed=51)
    y = make_y(4, sizes[-1], seed=51)
    model = build_active_model(sizes, x)
    assert_active(model, x, L)
    P = model_params(model, L)
    bptt_prod = as_list(sequence_gradients("bptt", model, x, y), L)
    bptt_ref = ref.ref_bptt(P, x, y, BETA)
    assert_nontrivial(bptt_ref)
    assert_grads_close(bptt_prod, bptt_ref, "bptt vs reference at T=1")
    for alg in RULES:
        for kwargs in ({}, {"bias_trace": True}) if alg in ("ottt", "approx_otpe") else ({},):
            got = as_list(sequence_gradients(alg, model, x, y, **kwargs), L)
            assert_grads_close(got, bptt_prod, f"{alg} {kwargs} vs production bptt at T=1")
            assert_grads_close(got, bptt_ref, f"{alg} {kwargs} vs reference bptt at T=1")


@pytest.mark.parametrize("sizes,kind", [([7, 4], "spikes"), ([9, 3], "counts")])
def test_depth1_exactness(sizes, kind):
    """SPEC 5.2 on production."""
    _, sequence_gradients = _prod()
    T, B = 12, 4
    x = make_x(T, B, sizes[0], kind, seed=61)
    y = make_y(B, sizes[-1], seed=61)
    model = build_active_model(sizes, x)
    assert_active(model, x, 1)
    P = model_params(model, 1)
    bptt = as_list(sequence_gradients("bptt", model, x, y), 1)
    bptt_trace = as_list(sequence_gradients("bptt", model, x, y, readout="trace"), 1)
    assert_grads_close(bptt, ref.ref_bptt(P, x, y, BETA), "bptt vs reference (depth 1)")
    assert_grads_close(bptt_trace, ref.ref_bptt(P, x, y, BETA, readout="trace"),
                       "bptt[trace] vs reference (depth 1)")
    for alg in ("ostl", "otpe"):
        got = as_list(sequence_gradients(alg, model, x, y), 1)
        assert_grads_close(got, bptt, f"{alg} vs bptt (depth 1)")
    got = as_list(sequence_gradients("f_otpe", model, x, y), 1)
    assert_grads_close(got, bptt_trace, "f_otpe vs bptt of the leaky-trace loss (depth 1)")


def test_gbar_is_leaky_average():
    """SPEC 5.3 in production: the ḡ the online rules keep (``GBar``), fed one step at a time
    or in blocks of steps, equals the recursion ḡ_t = r_t·ḡ_{t−1} + (1 − r_t)·ψ_t run by hand
    and the closed-form normalised leaky average Σ_k β^{t−k} ψ_k / Σ_k β^{t−k} at every step."""
    from otpe_cli.rules.base import GBar

    rng = np.random.default_rng(1)
    for beta in (BETA, 0.5, 0.99, 0.0):
        psis = rng.random((30, 4, 3))
        want = ref.ref_leaky_average(psis, beta)
        recursion, c, g = [], 0.0, None
        for p in psis:
            c_prev, c = c, beta * c + 1.0
            r = beta * c_prev / c
            g = p.copy() if g is None else r * g + (1 - r) * p
            recursion.append(g)
        assert np.allclose(want, np.stack(recursion), rtol=1e-12, atol=1e-15)
        for blocks in ([1] * 30, [7, 1, 13, 9], [30]):
            gbar, got, t = GBar(beta), [], 0
            for k in blocks:
                got.append(gbar.update(torch.from_numpy(psis[t:t + k])).numpy().copy())
                t += k
            got = np.concatenate(got)
            assert np.allclose(got, want, rtol=1e-12, atol=1e-15), (beta, blocks)
            assert np.allclose(got[0], psis[0], rtol=1e-15, atol=0)  # ḡ_1 = ψ_1


def test_deep_alignment_ordering():
    """SPEC 5.4: depth 3, T = 50, 5-30 % hidden rates: hidden-kernel cosine to BPTT orders
    OTPE > A-OTPE > max(OSTL, OTTT), averaged over seeds.  The first seed is also compared
    element-wise with the reference at T = 50."""
    SNN, sequence_gradients = _prod()
    sizes, T, B = [20, 16, 16, 6], 50, 16
    L = len(sizes) - 1
    cos = {a: [] for a in ("otpe", "approx_otpe", "ostl", "ottt")}
    accepted = 0
    for seed in range(12):
        if accepted == 4:
            break
        x = make_x(T, B, sizes[0], "spikes", seed=200 + seed, p=0.15)
        y = make_y(B, sizes[-1], seed=200 + seed)
        torch.manual_seed(seed)
        model = SNN(sizes, beta=BETA).double()
        orig = [(W.detach().clone(), b.detach().clone()) for W, b in model_params(model, L)]
        found = False
        for scale in (1.0, 1.5, 2.0, 2.5, 3.0):
            with torch.no_grad():
                for (W, b), (W0, b0) in zip(model_params(model, L), orig):
                    W.copy_(W0 * scale)
                    b.copy_(b0)
            fracs, _ = spike_fractions(model_params(model, L), x, BETA, 1.0, 25.0)
            if all(0.05 <= f <= 0.30 for f in fracs[:-1]) and 0 < fracs[-1] < 1:
                found = True
                break
        if not found:
            continue
        accepted += 1
        assert all(0.05 <= f <= 0.30 for f in fracs[:-1]), fracs
        bptt = as_list(sequence_gradients("bptt", model, x, y), L)
        bk = flat_hidden_kernels(bptt)
        grads = {a: as_list(sequence_gradients(a, model, x, y), L) for a in cos}
        for a in cos:
            cos[a].append(ref.cosine(flat_hidden_kernels(grads[a]), bk))
        if accepted == 1:  # long-sequence element-wise check against the reference
            P = model_params(model, L)
            assert_grads_close(bptt, ref.ref_bptt(P, x, y, BETA), "bptt vs reference (T=50)",
                               rtol=1e-8, atol=1e-12)
            for a in cos:
                assert_grads_close(grads[a], ref.ref_rule_gradients(a, P, x, y, BETA),
                                   f"{a} vs reference (T=50)", rtol=1e-8, atol=1e-12)
    assert accepted >= 3, "too few seeds with 5-30 % hidden spike rates"
    m = {a: float(np.mean(v)) for a, v in cos.items()}
    assert m["otpe"] > m["approx_otpe"] > max(m["ostl"], m["ottt"]), m


def test_float32_close_to_float64():
    SNN, sequence_gradients = _prod()
    sizes, T, B = [6, 5, 4, 3], 10, 4
    L = len(sizes) - 1
    x = make_x(T, B, sizes[0], "counts", seed=71)
    y = make_y(B, sizes[-1], seed=71)
    # a margin of 1e-3 around the threshold keeps float32 spikes identical to float64 ones
    m64 = build_active_model(sizes, x, margin_min=1e-3)
    assert_active(m64, x, L)
    m32 = SNN(list(sizes), beta=BETA, threshold=1.0, slope=25.0)
    m32.load_state_dict({k: v.float() for k, v in m64.state_dict().items()})
    assert all(p.dtype == torch.float32 for p in m32.parameters())
    x32 = x.float()
    for alg, kwargs in VARIANTS:
        g64 = as_list(sequence_gradients(alg, m64, x, y, **kwargs), L)
        g32 = as_list(sequence_gradients(alg, m32, x32, y, **kwargs), L)
        for i, (p64, p32) in enumerate(zip(g64, g32)):
            for kind, a, b in zip(("weight", "bias"), p64, p32):
                a = a.detach().double()
                b = b.detach().double()
                err = float((a - b).norm())
                scale = float(a.norm())
                assert err <= 1e-4 * scale + 1e-9, (
                    f"{_variant_id((alg, kwargs))}: layers.{i}.{kind} float32 rel err "
                    f"{err / max(scale, 1e-30):.2e}")


def test_spike_at_exact_threshold():
    """SPEC 1: H(0) = 1, i.e. v_t == theta spikes.  Weights and inputs are chosen so that the
    membrane hits the threshold exactly (all values are exact binary fractions)."""
    SNN, sequence_gradients = _prod()
    sizes = [2, 3]
    model = SNN(sizes, beta=0.5, threshold=1.0, slope=25.0).double()
    W, b = model_params(model, 1)[0]
    with torch.no_grad():
        W.copy_(torch.tensor([[0.5, 0.0], [0.0, 0.25], [0.25, 0.25]], dtype=torch.float64))
        b.zero_()
    # T = 3, B = 2; v hits exactly 1.0 at several (t, unit) positions
    x = torch.tensor([[[2.0, 0.0], [0.0, 2.0]],
                      [[1.0, 3.0], [2.0, 2.0]],
                      [[2.0, 2.0], [0.0, 1.0]]], dtype=torch.float64)
    y = torch.tensor([1, 2])
    P = model_params(model, 1)
    fw = ref.ref_forward(P, x, 0.5, 1.0, 25.0)
    at_threshold = fw["v"][0] == 1.0
    assert at_threshold.any() and np.all(fw["s"][0][at_threshold] == 1.0)
    assert 0 < fw["s"][0].mean() < 1
    for alg, kwargs in VARIANTS:
        got = as_list(sequence_gradients(alg, model, x, y, **kwargs), 1)
        want = reference_for(alg, kwargs, P, x, y, 0.5, 1.0, 25.0)
        assert_grads_close(got, want, f"{_variant_id((alg, kwargs))} with v == theta")


@pytest.mark.parametrize("alg", ["otpe", "f_otpe"])
def test_post_synaptic_trace_renormalisation_matches_reference(monkeypatch, alg):
    """OTPE stores R̂ as β^t·R̃ and folds the scale back in when it gets small; force that fold
    (with blocks of 4 steps, at every other block) and hold the result to the reference."""
    import otpe_cli.rules.otpe as otpe_rule
    import otpe_cli.snn as snn
    monkeypatch.setattr(otpe_rule, "_RENORMALISE_BELOW", 0.8)
    monkeypatch.setattr(snn, "BLOCK_STEPS", 4)  # β^4 ≈ 0.82 ≥ 0.8 > β^8 ≈ 0.68
    _, sequence_gradients = _prod()
    sizes, T, B = [6, 5, 4, 3], 23, 3
    x = make_x(T, B, sizes[0], "spikes", seed=11)
    y = make_y(B, sizes[-1], seed=11)
    model = build_active_model(sizes, x)
    P = model_params(model, 3)
    got = as_list(sequence_gradients(alg, model, x, y), 3)
    assert_grads_close(got, reference_for(alg, {}, P, x, y), f"{alg} with renormalisation")


# Offline, the online loop runs BLOCK_STEPS steps at a time and every rule advances its state
# over a block in closed form (rules.base). Whatever the block — one step, a divisor of T,
# blocks that leave a shorter last one, longer than T — the gradient is the reference's.
@pytest.mark.parametrize("block", [1, 2, 4, 5, 64])
@pytest.mark.parametrize("variant", VARIANTS[2:], ids=[_variant_id(v) for v in VARIANTS[2:]])
def test_every_trace_block_matches_reference(monkeypatch, variant, block):
    import otpe_cli.snn as snn
    monkeypatch.setattr(snn, "BLOCK_STEPS", block)
    _, sequence_gradients = _prod()
    alg, kwargs = variant
    sizes, T, B = [6, 5, 4, 3], 13, 3
    x = make_x(T, B, sizes[0], "counts", seed=5)
    y = make_y(B, sizes[-1], seed=5)
    model = build_active_model(sizes, x)
    assert_active(model, x, 3)
    P = model_params(model, 3)
    got = as_list(sequence_gradients(alg, model, x, y, **kwargs), 3)
    assert_grads_close(got, reference_for(alg, kwargs, P, x, y),
                       f"{_variant_id(variant)} with blocks of {block}")


# An Algorithm keeps the per-sample traces of its last pass for its next (rules.base.TracePool).
# Whatever they hold then (here NaN), the next pass, offline in blocks of any size or online
# step by step, starts its traces from zero.
@pytest.mark.parametrize("block", [1, 4, 64])
@pytest.mark.parametrize("alg", ["ostl", "otpe", "f_otpe"])
def test_traces_kept_from_the_last_pass_are_not_read(monkeypatch, alg, block):
    import otpe_cli.snn as snn
    from otpe_cli import build_algorithm
    monkeypatch.setattr(snn, "BLOCK_STEPS", block)
    _prod()
    sizes, T, B = [6, 5, 4, 3], 13, 3
    x1, x2 = (make_x(T, B, sizes[0], "counts", seed=s) for s in (5, 6))
    y1, y2 = (make_y(B, sizes[-1], seed=s) for s in (5, 6))
    model = build_active_model(sizes, x2)
    algorithm = build_algorithm(alg)
    algorithm.gradients(model, x1, y1)
    kept = list(algorithm.traces._given_back)
    # ε at every layer, R̂ at OTPE's (not at OTPE's OSTL output); none made in one block
    assert len(kept) == ({"ostl": 3, "otpe": 5, "f_otpe": 6}[alg] if block < T else 0)
    for trace in kept:
        trace.fill_(float("nan"))
    grads, _ = algorithm.gradients(model, x2, y2)
    assert {id(t) for t in algorithm.traces._given_back} == {id(t) for t in kept}  # reused
    got = [(grads[2 * i], grads[2 * i + 1]) for i in range(3)]
    assert_grads_close(got, reference_for(alg, {}, model_params(model, 3), x2, y2),
                       f"{alg} in blocks of {block} after a pass that left NaN traces")
    # online: every step's g_t as from an algorithm with no traces kept
    steps = {}
    for name, source in (("fresh", build_algorithm(alg)), ("kept", algorithm)):
        for trace in source.traces._given_back:
            trace.fill_(float("nan"))
        steps[name] = []
        source.train_online(model, x1, y1, lambda g: steps[name].append([t.clone() for t in g]))
    assert len(steps["kept"]) == T and all(
        torch.equal(a, b) for sa, sb in zip(steps["fresh"], steps["kept"]) for a, b in zip(sa, sb))
    assert all(torch.isfinite(t).all() for g in steps["kept"] for t in g)


def test_kept_traces_a_pass_cannot_use_are_dropped(monkeypatch):
    """Traces made under torch.inference_mode() cannot be written outside it, and traces of
    another batch size or dtype do not fit: the next pass starts without them (it used to
    fail on the first, and to hold the others beside its own)."""
    import otpe_cli.snn as snn
    from otpe_cli import build_algorithm
    monkeypatch.setattr(snn, "BLOCK_STEPS", 4)
    _, sequence_gradients = _prod()
    sizes, T = [6, 5, 4, 3], 13
    x, y = make_x(T, 3, sizes[0], "counts", seed=5), make_y(3, sizes[-1], seed=5)
    model = build_active_model(sizes, x)
    want = as_list(sequence_gradients("otpe", model, x, y), 3)
    algorithm = build_algorithm("otpe")
    with torch.inference_mode():
        algorithm.gradients(model, x, y)
    assert len(algorithm.traces._given_back) == 5
    got, _ = algorithm.gradients(model, x, y)
    assert_grads_close([(got[2 * i], got[2 * i + 1]) for i in range(3)], want,
                       "otpe after a pass under inference_mode")
    kept = list(algorithm.traces._given_back)
    algorithm.traces.new_pass(4, torch.float64, kept[0].device)   # another batch size
    assert algorithm.traces._free == []
    algorithm.traces._given_back = kept
    algorithm.traces.new_pass(3, torch.float32, kept[0].device)   # another dtype
    assert algorithm.traces._free == []
    algorithm.traces._given_back = kept
    algorithm.traces.new_pass(3, torch.float64, kept[0].device)   # this pass's
    assert len(algorithm.traces._free) == 5


@pytest.mark.parametrize("beta", [0.0, 0.05])
@pytest.mark.parametrize("alg", RULES)
def test_leak_zero_or_tiny_matches_reference(alg, beta):
    """β = 0 (no memory), and a β whose decay over the block (β^20 = 1e-26: T = 20 is one
    block) falls below OTPE's rescaling bound of 1e-20."""
    _, sequence_gradients = _prod()
    sizes, T, B = [6, 5, 4, 3], 20, 3
    x = make_x(T, B, sizes[0], "counts", seed=8)
    y = make_y(B, sizes[-1], seed=8)
    model = build_active_model(sizes, x, beta=beta)
    assert_active(model, x, 3, beta)
    P = model_params(model, 3)
    got = as_list(sequence_gradients(alg, model, x, y), 3)
    assert_grads_close(got, reference_for(alg, {}, P, x, y, beta), f"{alg} with beta={beta}")


def test_block_helpers_against_plain_loops():
    """reverse_scan, suffix_products, advance_trace, contract_batch and leaky_sum against
    step-by-step float64 loops, with decays that are exactly 0 (a spike at exactly θ) and
    negative (θ·ψ > 1)."""
    from otpe_cli.compute import leaky_sum, reverse_scan, suffix_products
    from otpe_cli.ops import advance_trace, contract_batch
    g = torch.Generator().manual_seed(0)
    K, B, O, I = 5, 3, 4, 6
    decays = torch.rand(K, B, O, generator=g, dtype=torch.float64) * 2 - 0.5
    decays[2, 1, 3] = 0.0
    direct = torch.randn(K, B, O, generator=g, dtype=torch.float64)
    inputs = torch.randn(K, B, I, generator=g, dtype=torch.float64)
    trace0 = torch.randn(B, O, I, generator=g, dtype=torch.float64)
    row = lambda v: v.unsqueeze(2)  # noqa: E731  (B, O) → scales each row of a (B, O, I) trace
    # the recurrence x_k = decay_k ⊙row x_{k−1} + 1·inputs_kᵀ, run step by step
    states, x = [], trace0.clone()
    for k in range(K):
        x = row(decays[k]) * x + inputs[k].unsqueeze(1)
        states.append(x)
    # reverse_scan: Σ_k direct_k ⊙row x_k = (decay_0 λ_0) ⊙row x_{−1} + Σ_k λ_k ⊗ inputs_k
    lam = reverse_scan(direct, decays)
    want = sum(row(direct[k]) * states[k] for k in range(K))
    got = row(decays[0] * lam[0]) * trace0 + sum(
        row(lam[k]) * inputs[k].unsqueeze(1) for k in range(K))
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)
    assert torch.equal(reverse_scan(direct, 0.5)[-1], direct[-1])
    # contract_batch sums a trace's rows over the batch, weighted
    grad = torch.ones(O, I, dtype=torch.float64)
    contract_batch(direct[0], trace0, grad)
    assert torch.allclose(grad, 1 + (row(direct[0]) * trace0).sum(0), rtol=1e-12, atol=1e-12)
    # suffix_products + advance_trace: the block's end state
    products = suffix_products(decays)
    assert torch.equal(products[-1], torch.ones(B, O, dtype=torch.float64))
    assert torch.equal(products[3], decays[3] * decays[4])  # row k + 1: Π_{n > k}, k = 2
    trace = trace0.clone()
    advance_trace(trace, products[0], products[1:], inputs)
    assert torch.allclose(trace, states[-1], rtol=1e-12, atol=1e-12)
    # no keep (the trace's own decay applied elsewhere): a plain sum is added
    trace = trace0.clone()
    advance_trace(trace, None, direct[:2], inputs[:2])
    assert torch.allclose(trace, trace0 + sum(row(direct[k]) * inputs[k].unsqueeze(1)
                                              for k in range(2)), rtol=1e-12, atol=1e-12)
    # from zero: what the trace's memory holds (NaN) is not read, keep or not
    for keep in (None, products[0]):
        trace = torch.full_like(trace0, float("nan"))
        advance_trace(trace, keep, direct[:2], inputs[:2], from_zero=True)
        assert torch.allclose(trace, sum(row(direct[k]) * inputs[k].unsqueeze(1)
                                         for k in range(2)), rtol=1e-12, atol=1e-12)
    # leaky_sum: every step of x_k = β·x_{k−1} + inputs_k, and the state left at the last
    start = torch.randn(B, O, generator=g, dtype=torch.float64)
    state = start.clone()
    out = leaky_sum(state, direct, 0.9)
    x = start
    for k in range(K):
        x = 0.9 * x + direct[k]
        assert torch.allclose(out[k], x, rtol=1e-12, atol=1e-12)
    assert torch.equal(state, out[-1])


def test_online_pass_and_bptt_see_the_same_spikes():
    """Both passes compute a block's input currents with one matrix product over the same rows,
    so their membranes agree to the last bit. A matrix product over other rows (one step's) may
    round differently: tune a bias so that a membrane lies between those two roundings of θ,
    in float32 on one thread, and the online pass must still spike where BPTT does, report the
    same loss and, at depth 1, the same gradient (SPEC §5.2)."""
    from otpe_cli import SNN, sequence_gradients
    from otpe_cli.algorithms import build_algorithm
    from otpe_cli.snn import block_steps

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(11)
        n_in, n_out, B, T = 101, 13, 1, 25
        model = SNN([n_in, n_out], generator=g)
        x = (torch.rand(T, B, n_in, generator=g) < 0.3).float()
        W, b = model.layers[0].weight, model.layers[0].bias
        K = block_steps(T)
        with torch.no_grad():
            step = torch.addmm(b, x[0], W.t())
            block = torch.addmm(b, x[:K].flatten(0, 1), W.t())[:B]
            for i in (step != block).nonzero()[:, 1].tolist():  # units the two round apart
                bias = 1.0 - step[0, i]
                for _ in range(8):
                    b[i] = bias
                    v_step = torch.addmm(b, x[0], W.t())[0, i]
                    v_block = torch.addmm(b, x[:K].flatten(0, 1), W.t())[0, i]
                    if (v_step >= 1.0) != (v_block >= 1.0):
                        break
                    bias = torch.nextafter(bias, torch.tensor(-1e9 if v_step >= 1.0 else 1e9))
                else:
                    b[i] = 0.0
                    continue
                break
        y = torch.tensor([3])
        _, bptt = build_algorithm("bptt").gradients(model, x, y)
        _, ostl = build_algorithm("ostl").gradients(model, x, y)
        assert torch.equal(bptt.counts, ostl.counts)
        assert bptt.loss == pytest.approx(ostl.loss, rel=1e-6)
        want, got = sequence_gradients("bptt", model, x, y), sequence_gradients("ostl", model, x, y)
        for name in want:
            assert torch.allclose(got[name], want[name], rtol=1e-4, atol=1e-7), name
    finally:
        torch.set_num_threads(threads)
