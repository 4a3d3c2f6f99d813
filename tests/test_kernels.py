"""The fused CPU kernels (otpe_cli.kernels) against the eager ops they stand in for, bit for bit.

The membranes of the online rules' pass must equal those of BPTT's eager forward to the last bit
(a rounding across θ flips a spike), and the scans feed every rule's gradient: each kernel is
held here to the eager ops written out step by step, and whole passes, offline and online, to
the same passes with the kernels turned off. One sum is in another order: the online step of
OSTL's and OTPE's traces (`ops.rule_step`) sums its gradients over the batch in order, where
the eager ops are a batched matrix product and a sum; those gradients are held to round-off,
and the traces, membranes and losses around them to the bit. Where no kernel can be built (no compiler), these
comparisons are skipped and the fallback is what runs.
"""
from __future__ import annotations

import logging

import pytest
import torch

from otpe_cli import SNN, build_algorithm, kernels
from otpe_cli import compute as base
from otpe_cli.ops import membrane_step, surrogate

ALGORITHMS = ["bptt", "ottt", "ostl", "otpe", "approx_otpe", "f_otpe", "f_approx_otpe"]


@pytest.fixture
def fused():
    kernels._ready(torch.zeros(1))  # loads them, once per process
    if kernels.status() != "used":
        pytest.skip(f"no fused kernels here: {kernels.status()}")


def test_the_kernels_are_built_and_used_where_a_compiler_and_ninja_are():
    """(Else every other test here would skip, and a kernel that failed its check at loading
    would go unnoticed.)"""
    import shutil
    import sys

    if not (sys.platform.startswith("linux") and shutil.which("c++") and shutil.which("ninja")):
        pytest.skip("no C++ compiler or ninja here")
    kernels._ready(torch.zeros(1))
    assert kernels.status() == "used"


def kernels_off(monkeypatch):
    monkeypatch.setattr(kernels, "_module", None)
    monkeypatch.setattr(kernels, "_unusable", "off in this test")


def eager_membrane(current, u, beta, theta, slope):
    v, s = current.clone(), torch.empty_like(current)
    for k in range(len(v)):
        _, _, u = membrane_step(u, v[k], beta, theta, slope, out=(v[k], s[k]))
    return v, s, u, surrogate(v, theta, slope)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(25, 128, 128), (25, 128, 10), (1, 200, 200), (3, 1, 7),
                                   (1, 5, 3)])  # (the first and third split across threads)
def test_membrane_kernel_equals_the_eager_steps_bit_for_bit(fused, shape, dtype):
    g = torch.Generator().manual_seed(1)
    current = (torch.randn(shape, generator=g) * 0.8 + 0.4).to(dtype)
    current[0, 0] = 1.0  # from u = 0: v = θ exactly, which spikes (H(0) = 1)
    for beta, theta, slope in [(0.95, 1.0, 25.0), (0.0, 0.3, 400.0), (0.5, 2.5, 0.5)]:
        u = torch.zeros(shape[1:], dtype=dtype)
        v = current.clone()
        s, psi, u_last = kernels.lif_block(v, u, beta, theta, slope)
        want = eager_membrane(current, u, beta, theta, slope)
        for name, a, b in zip(("v", "s", "u", "psi"), want, (v, s, u_last, psi)):
            assert torch.equal(a, b), (name, beta, theta, slope)
        assert torch.equal(u, torch.zeros_like(u))  # the caller's u is left as it was
        if theta == 1.0:
            assert bool((v[0, 0] == 1.0).all() and (s[0, 0] == 1.0).all())


def test_the_membrane_kernels_threads_flush_subnormals_as_the_caller_does(fused):
    """The block is split across torch's threads; each runs in the caller's float modes
    (torch.set_flush_denormal sets them in the calling thread only)."""
    if torch.get_num_threads() < 2:
        pytest.skip("one thread: nothing is split")
    current = torch.full((1, 200, 200), 1e-39)  # a float32 subnormal: v = I from u = 0
    grad_s = torch.full((2, 200, 200), 1e-39)
    psi, after = torch.ones(2, 200, 200), torch.zeros(200, 200)
    try:
        for flush in (False, True):
            if not torch.set_flush_denormal(flush):
                pytest.skip("this CPU cannot flush subnormal floats")
            v = current.clone()
            kernels.lif_block(v, torch.zeros(200, 200), 0.95, 1.0, 25.0)
            lam = kernels.membrane_adjoint(grad_s, psi, 0.95, 1.0, after)
            want = 0.0 if flush else float(torch.tensor(1e-39))  # (the float32 subnormal)
            for got in (v, lam):  # every unit, in both threads' halves, as the caller rounds
                assert bool((got == want).all()), flush
    finally:
        torch.set_flush_denormal(False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scan_kernels_equal_the_eager_loops_bit_for_bit(fused, monkeypatch, dtype):
    g = torch.Generator().manual_seed(2)
    rand = lambda *size: torch.randn(*size, generator=g).to(dtype)  # noqa: E731
    K, B, N = 9, 4, 6
    direct, decays, start = rand(K, B, N), rand(K, B, N), rand(B, N)
    decays[3, 1, 2] = 0.0
    stacked = rand(K, 2, B, N)
    calls = {
        "leaky_sum": lambda: (lambda st: (base.leaky_sum(st, direct, 0.9), st))(start.clone()),
        "leaky_sum one step": lambda: (lambda st: (base.leaky_sum(st, direct[:1], 0.9), st))(
            start.clone()),
        "reverse_scan": lambda: base.reverse_scan(direct, decays),
        "reverse_scan stacked": lambda: base.reverse_scan(stacked, decays.unsqueeze(1)),
        "reverse_scan scalar": lambda: base.reverse_scan(direct, 0.9),
        "suffix_products": lambda: base.suffix_products(decays),
    }
    got = {name: call() for name, call in calls.items()}
    kernels_off(monkeypatch)
    for name, call in calls.items():
        want = call()
        pairs = zip(want, got[name]) if isinstance(want, tuple) else [(want, got[name])]
        assert all(torch.equal(a, b) for a, b in pairs), name


def test_every_algorithm_is_the_same_to_the_bit_without_the_kernels(fused, monkeypatch):
    """Offline gradients, the loss, and every online step's gradient, kernels on and off."""
    g = torch.Generator().manual_seed(3)
    model = SNN([20, 16, 16, 5], generator=g)
    with torch.no_grad():
        for layer in model.layers:
            layer.weight.mul_(2.0)
    x = (torch.rand(60, 8, 20, generator=g) < 0.3).float()  # blocks of 20, 20, 20
    y = torch.randint(0, 5, (8,), generator=g)

    def run_all():
        out = {}
        for name in ALGORITHMS:
            algorithm = build_algorithm(name)
            grads, stats = algorithm.gradients(model, x, y)
            steps = []
            if name != "bptt":
                algorithm.train_online(model, x[:6], y,
                                       lambda gs: steps.append([t.clone() for t in gs]))
            out[name] = (grads, stats.loss, stats.rates, steps)
        return out

    with_kernels = run_all()
    assert 0.02 < min(with_kernels["ottt"][2]) and max(with_kernels["ottt"][2]) < 0.9
    kernels_off(monkeypatch)
    without = run_all()
    for name in ALGORITHMS:
        (g1, l1, r1, s1), (g2, l2, r2, s2) = with_kernels[name], without[name]
        assert all(torch.equal(a, b) for a, b in zip(g1, g2)), name
        assert l1 == l2 and r1 == r2, name
        assert len(s1) == len(s2) == (0 if name == "bptt" else 6), name
        pairs = [(a, b) for sa, sb in zip(s1, s2) for a, b in zip(sa, sb)]
        if name in ("ottt", "approx_otpe", "f_approx_otpe"):  # no per-sample trace
            assert all(torch.equal(a, b) for a, b in pairs), name
        else:  # (the parameters do not change here, so the steps cannot drift apart)
            assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7 * float(b.abs().max()))
                       for a, b in pairs), name


@pytest.mark.parametrize("in_place", [False, True])
def test_a_layer_block_in_one_call_is_the_eager_layer_and_leaves_u_as_asked(fused, in_place):
    """`compute.lif_layer` fused against `ops.lif_layer` and against the steps written out:
    the last u written into u only when asked, the spikes added into the counts."""
    from otpe_cli import ops

    g = torch.Generator().manual_seed(5)
    a = (torch.rand(4, 6, 9, generator=g) < 0.5).float()
    weight, bias = torch.randn(7, 9, generator=g), torch.randn(7, generator=g)
    start = torch.rand(6, 7, generator=g)
    runs = []
    for run in (kernels.lif_layer, ops.lif_layer):
        u, counts = start.clone(), torch.ones(6, 7)
        with torch.no_grad():
            runs.append((*run(a, weight, bias, u, counts, in_place, 0.9, 1.0, 25.0), u, counts))
    u_want = start.clone()
    spikes = []
    for k in range(4):
        _, s, u_want = membrane_step(u_want, a[k] @ weight.t() + bias, 0.9, 1.0, 25.0)
        spikes.append(s)
    for (v, s, last, psi, u, counts) in runs:
        assert torch.equal(s, torch.stack(spikes)) and torch.allclose(last, u_want, atol=1e-6)
        assert torch.equal(psi, surrogate(v, 1.0, 25.0))
        assert torch.equal(counts, 1 + torch.stack(spikes).sum(0))
        assert torch.equal(u, last if in_place else start)
    assert all(torch.equal(x, y) for x, y in zip(*runs))


def test_the_layer_calls_decline_what_they_do_not_take(fused):
    """With autograd on, other shapes or strides, or another dtype: None (the eager ops run),
    nothing written."""
    a, w, b, u = torch.ones(2, 3, 4), torch.ones(5, 4), torch.ones(5), torch.zeros(3, 5)
    e, pre = torch.ones(2, 3, 5), torch.ones(2, 3, 4)
    gw, gb, target, logp = torch.zeros(5, 4), torch.zeros(5), torch.zeros(3, 5), torch.zeros(3, 5)
    with torch.no_grad():
        assert kernels.lif_layer(a, w, b, u, None, True, 0.9, 1.0, 25.0) is not None
        for bad in (dict(a=a.transpose(0, 1)), dict(w=torch.ones(5, 3)), dict(u=torch.zeros(3, 4)),
                    dict(b=torch.ones(4)), dict(a=a.double())):
            args = {"a": a, "w": w, "b": b, "u": u, **bad}
            assert kernels.lif_layer(args["a"], args["w"], args["b"], args["u"], None, True, 0.9,
                                     1.0, 25.0) is None, bad
        assert kernels.lif_layer(a, w, b, u, torch.zeros(3, 4), True, 0.9, 1.0, 25.0) is None
        assert torch.equal(kernels.outer_accumulate(e, e, pre, gw, gb, None, None), e * e)
        below = torch.ones(5, 2)
        assert torch.equal(kernels.outer_accumulate(e, e, pre, gw, gb, None, below),
                           (e * e) @ below)
        assert kernels.outer_accumulate(e, e, pre, gw.t(), gb, None, None) is None
        assert kernels.outer_accumulate(e, e, pre, gw, gb, torch.ones(3), None) is None
        assert kernels.outer_accumulate(e, e, pre, gw, gb, None, torch.ones(4, 2)) is None
        assert kernels.step_error(e, target, logp, 1 / 3) is not None
        assert kernels.step_error(e, target[:2], logp[:2], 1 / 3) is None
    gw.zero_(), gb.zero_(), logp.zero_()
    assert kernels.lif_layer(a, w, b, u, None, True, 0.9, 1.0, 25.0) is None  # (autograd on)
    assert kernels.outer_accumulate(e, e, pre, gw, gb, None, None) is None
    assert kernels.step_error(e, target, logp, 1 / 3) is None
    assert not gw.any() and not gb.any() and not logp.any()


def test_without_a_compiler_the_eager_ops_run_and_say_why(monkeypatch, caplog):
    import torch.utils.cpp_extension as cpp

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setattr(cpp, "load_inline", no_compiler)
    monkeypatch.setattr(kernels, "_module", None)
    monkeypatch.setattr(kernels, "_unusable", None)
    model = SNN([6, 5, 3], generator=torch.Generator().manual_seed(0))
    x = (torch.rand(9, 2, 6, generator=torch.Generator().manual_seed(1)) < 0.4).float()
    y = torch.tensor([0, 2])
    with caplog.at_level(logging.WARNING, logger="otpe_cli.kernels"):
        grads, _ = build_algorithm("otpe").gradients(model, x, y)
        build_algorithm("ostl").gradients(model, x, y)
    warnings = [r.getMessage() for r in caplog.records if r.name == "otpe_cli.kernels"]
    assert len(warnings) == 1  # once per process
    assert "Ninja is required" in warnings[0] and "eager ops" in warnings[0]
    assert "could not be built (RuntimeError" in kernels.status()
    assert all(torch.isfinite(t).all() for t in grads)


def test_otpe_cli_fused_0_turns_them_off_quietly(monkeypatch, caplog):
    monkeypatch.setenv("OTPE_CLI_FUSED", "0")
    monkeypatch.setattr(kernels, "_module", None)
    monkeypatch.setattr(kernels, "_unusable", None)
    with caplog.at_level(logging.WARNING, logger="otpe_cli.kernels"):
        assert kernels.lif_block(torch.zeros(2, 3, 4), torch.zeros(3, 4), 0.9, 1.0, 25.0) is None
    assert kernels.status() == "OTPE_CLI_FUSED=0" and not caplog.records


def test_what_the_kernels_do_not_take_goes_to_the_eager_ops(fused):
    """Empty blocks (the kernels' loops divide by the block's length) and lazily negated views
    (their memory holds the values before the sign): the eager ops, not a crash or a wrong
    sign."""
    assert torch.equal(base.suffix_products(torch.ones(0, 2, 3)), torch.ones(1, 2, 3))
    assert base.reverse_scan(torch.ones(4, 0, 3), torch.ones(4, 1, 3)).shape == (4, 0, 3)
    x = torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(4))
    negated = torch._neg_view(x)
    assert torch.equal(base.suffix_products(negated), base.suffix_products(-x))
    assert torch.equal(base.reverse_scan(negated, 0.5), base.reverse_scan(-x, 0.5))
    assert torch.equal(base.reverse_scan(x, 1), base.reverse_scan(x, 1.0))  # an int decay


def test_the_rate_code_kernel_equals_a_stable_sort_and_draws_the_same_batches(fused,
                                                                               monkeypatch):
    """Randman's rate code (SPEC §6: k + 1 distinct random steps, the first k + 1 of a random
    ranking of the T steps) by a per-row stable sort written here, ties included; and a
    Randman batch the same to the bit with the kernels off."""
    from otpe_cli.compute import rate_spikes
    from otpe_cli.data.randman import Randman

    g = torch.Generator().manual_seed(5)
    keys = torch.rand(300, 20, generator=g)
    keys[::4, 3] = keys[::4, 7]  # ties: the earlier step ranks first
    counts = torch.randint(0, 20, (300,), generator=g)
    want = torch.zeros(300, 20, dtype=torch.bool)
    for r in range(300):
        ranked = sorted(range(20), key=lambda t: (float(keys[r, t]), t))
        for t in ranked[:int(counts[r]) + 1]:
            want[r, t] = True
    assert torch.equal(rate_spikes(keys, counts), want)
    data = Randman(num_units=12, num_steps=30, test_samples_per_class=3)
    fast = data.train_batch(16, torch.Generator().manual_seed(1))
    kernels_off(monkeypatch)
    assert torch.equal(rate_spikes(keys, counts), want)
    plain = data.train_batch(16, torch.Generator().manual_seed(1))
    assert torch.equal(fast[0], plain[0]) and torch.equal(fast[1], plain[1])


@pytest.mark.parametrize("post", [False, True])
def test_the_online_trace_step_is_the_recurrence_in_float64(fused, post):
    """`kernels.trace_step` (OSTL's ε, OTPE's R̃ too) over a few steps, from zero, against the
    recurrences written out in float64: ε ← δ ⊙row ε + 1·aᵀ, R ← R + c ⊙row ε, grad_w +=
    Σ_b w ⊙row (R or ε); the traces also equal `ops.trace_step`'s to the bit."""
    from otpe_cli import ops

    g = torch.Generator().manual_seed(5)
    B, O, I = 5, 33, 21  # (more output units than one thread's share, a tail in I)
    eps, ref_eps = torch.empty(B, O, I), torch.zeros(B, O, I, dtype=torch.float64)
    eager = torch.empty(B, O, I)
    R = torch.empty(B, O, I) if post else None
    eager_R = torch.empty(B, O, I) if post else None
    ref_R = torch.zeros(B, O, I, dtype=torch.float64)
    grad, ref_grad = torch.zeros(O, I), torch.zeros(O, I, dtype=torch.float64)
    eager_grad = torch.zeros(O, I)
    for step in range(4):
        decay, coef, weight = (torch.rand(B, O, generator=g) for _ in range(3))
        a = (torch.rand(B, I, generator=g) < 0.5).float()
        assert kernels.trace_step(eps, R, decay, a, coef if post else None, weight, grad,
                                  step == 0)
        ops.trace_step(eager, eager_R, decay, a, coef if post else None, weight, eager_grad,
                       step == 0)
        ref_eps = decay.double().unsqueeze(2) * ref_eps + a.double().unsqueeze(1)
        ref_R = ref_R + coef.double().unsqueeze(2) * ref_eps
        ref_grad += torch.einsum("bo,boi->oi", weight.double(), ref_R if post else ref_eps)
        assert torch.equal(eps, eager) and (not post or torch.equal(R, eager_R))
        assert torch.allclose(eps.double(), ref_eps, rtol=1e-6, atol=1e-6)
        assert torch.allclose(grad.double(), ref_grad, rtol=1e-5, atol=1e-5)
        assert torch.allclose(eager_grad, grad, rtol=1e-5, atol=1e-6)
    # shapes it does not take: False, and nothing written
    kept = grad.clone()
    assert not kernels.trace_step(eps, R, decay[:, :-1], a, coef if post else None, weight,
                                  grad, False)
    assert torch.equal(grad, kept)
