"""BPTT's own backward (otpe_cli.bptt: the forward blocks, a reverse scan for ∂J/∂v, matrix
products per block) against autograd through the forward (`autograd_bptt_pass`), against the
float64 reference's hand-written adjoint (tests/reference.py), and its fused reverse loop against
the plain op it stands in for, bit for bit.

Small float64 networks whose every layer spikes at some but not all steps (`helpers`), so that
ψ, the reset path and every layer's error are all exercised: a test here shows that dropping
the reset path or mis-scaling ψ moves the gradient far beyond the tolerance.
"""
from __future__ import annotations

import pytest
import torch

import reference as ref
from helpers import BETA, build_active_model, make_x, make_y, model_params
from otpe_cli import SNN, build_algorithm, kernels, sequence_gradients, snn
from otpe_cli import compute, ops
from otpe_cli.algorithms import Algorithm, autograd_bptt_pass, bptt_pass

#: (sizes, T, input kind, (β, θ, slope), BLOCK_STEPS): depths 1–3, T = 1, T a multiple of the
#: block length or not, counts as inputs, other constants
CASES = [
    ([6, 5], 1, "spikes", (BETA, 1.0, 25.0), 25),
    ([6, 5], 9, "counts", (BETA, 1.0, 25.0), 4),             # blocks 3 + 3 + 3
    ([6, 7, 4], 11, "counts", (0.8, 0.7, 5.0), 4),           # 4 + 4 + 3
    ([6, 7, 5, 4], 1, "counts", (BETA, 1.0, 25.0), 25),
    ([6, 7, 5, 4], 13, "spikes", (BETA, 1.0, 25.0), 5),      # 5 + 5 + 3
    ([6, 7, 5, 4], 31, "counts", (0.9, 1.3, 40.0), 25),      # 16 + 15
]
IDS = [f"{'-'.join(map(str, c[0]))}_T{c[1]}_{c[2]}_K{c[4]}" for c in CASES]


def problem(sizes, T, kind, constants, seed=0):
    beta, theta, slope = constants
    x = make_x(T, 4, sizes[0], kind, seed=T + seed)
    y = make_y(4, sizes[-1], seed=T + seed)
    model = build_active_model(sizes, x, beta=beta, theta=theta, slope=slope)
    return model, x, y


def assert_close(got, want, rtol=1e-12, what=""):
    for i, (a, b) in enumerate(zip(got, want)):
        a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
        scale = float(b.abs().max())
        assert scale > 0, f"{what} parameter {i}: a zero gradient, the test would be vacuous"
        err = float((a - b).abs().max())
        assert err <= rtol * scale, f"{what} parameter {i}: |Δ| {err:.3g} > {rtol} × {scale:.3g}"


@pytest.fixture
def fused():
    kernels._ready(torch.zeros(1))  # loads them, once per process
    if kernels.status() != "used":
        pytest.skip(f"no fused kernels here: {kernels.status()}")


@pytest.mark.parametrize("checkpoint", [False, True], ids=["stored", "checkpointed"])
@pytest.mark.parametrize("readout", ["spikes", "trace"])
@pytest.mark.parametrize("sizes, T, kind, constants, block", CASES, ids=IDS)
def test_bptt_equals_autograd_through_the_forward_and_the_reference(
        monkeypatch, sizes, T, kind, constants, block, readout, checkpoint):
    monkeypatch.setattr(snn, "BLOCK_STEPS", block)
    model, x, y = problem(sizes, T, kind, constants)
    got, stats = bptt_pass(model, x, y, readout, checkpoint)
    want, want_stats = autograd_bptt_pass(model, x, y, readout)
    assert_close(got, want, what="bptt vs autograd")
    assert stats.rates == want_stats.rates and torch.equal(stats.counts, want_stats.counts)
    assert stats.loss == pytest.approx(want_stats.loss, rel=1e-13)
    beta, theta, slope = constants
    reference = ref.ref_bptt(model_params(model, len(sizes) - 1), x, y, beta, theta, slope,
                             readout)
    assert_close(got, [g for pair in reference for g in pair], what="bptt vs reference")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("readout", ["spikes", "trace"])
def test_checkpointed_blocks_give_the_same_gradient_to_the_bit(monkeypatch, dtype, readout):
    monkeypatch.setattr(snn, "BLOCK_STEPS", 6)
    model, x, y = problem([6, 7, 5, 4], 23, "counts", (BETA, 1.0, 25.0))  # 6 + 6 + 6 + 5
    model, x = model.to(dtype), x.to(dtype)
    stored, s1 = bptt_pass(model, x, y, readout)
    again, s2 = bptt_pass(model, x, y, readout, checkpoint_blocks=True)
    assert all(torch.equal(a, b) for a, b in zip(stored, again))
    assert s1.loss == s2.loss and s1.rates == s2.rates and torch.equal(s1.counts, s2.counts)


def test_the_checkpointed_forward_keeps_only_each_blocks_start_state(monkeypatch):
    from otpe_cli.bptt import sequence_logits

    monkeypatch.setattr(snn, "BLOCK_STEPS", 5)
    model, x, _ = problem([6, 7, 5, 4], 13, "spikes", (BETA, 1.0, 25.0))
    with torch.enable_grad():
        stored = sequence_logits(model, x)[0].grad_fn
        checkpointed = sequence_logits(model, x, checkpoint_blocks=True)[0].grad_fn
    assert len(stored.blocks) == len(checkpointed.blocks) == 3
    for block in checkpointed.blocks:  # every layer's u, (B, N_l)
        assert [tuple(u.shape) for u in block] == [(4, 7), (4, 5), (4, 4)]
    for block in stored.blocks:  # every layer's input and membranes, (K, B, ·)
        assert [tuple(v.shape[1:]) for _, v in block] == [(4, 7), (4, 5), (4, 4)]


@pytest.mark.parametrize("readout", ["spikes", "trace"])
def test_in_float32_the_same_spikes_and_a_close_gradient(readout):
    g = torch.Generator().manual_seed(5)
    model = SNN([20, 16, 16, 5], generator=g)
    with torch.no_grad():
        for layer in model.layers:
            layer.weight.mul_(2.0)
    x = (torch.rand(60, 8, 20, generator=g) < 0.3).float()  # blocks of 20
    y = torch.randint(0, 5, (8,), generator=g)
    got, stats = bptt_pass(model, x, y, readout)
    want, want_stats = autograd_bptt_pass(model, x, y, readout)
    assert 0.02 < min(stats.rates) and max(stats.rates) < 0.9
    assert stats.rates == want_stats.rates and torch.equal(stats.counts, want_stats.counts)
    assert_close(got, want, rtol=1e-5, what="float32")
    online = build_algorithm("ottt").gradients(model, x, y)[1]  # the online pass's membranes
    assert online.rates == stats.rates and torch.equal(online.counts, stats.counts)


def unrolled_bptt(model, x, y, readout, reset=True, psi_scale=1.0):
    """A plain per-step autograd BPTT of SPEC §1 written out here, with the reset path
    (``reset=False`` detaches it) and ψ (times ``psi_scale``) as knobs."""
    class Spike(torch.autograd.Function):
        @staticmethod
        def forward(ctx, v):
            ctx.save_for_backward(v)
            return (v >= model.threshold).to(v.dtype)

        @staticmethod
        def backward(ctx, grad):
            (v,) = ctx.saved_tensors
            return grad * psi_scale * ops.surrogate(v, model.threshold, model.slope)

    params = list(model.parameters())
    with torch.enable_grad():
        us = [x.new_zeros(x.shape[1], layer.n_out) for layer in model.layers]
        o, logits = 0.0, []
        for t in range(len(x)):
            a = x[t]
            for i, layer in enumerate(model.layers):
                v = model.beta * us[i] + a @ layer.weight.t() + layer.bias
                a = Spike.apply(v)
                us[i] = v - model.threshold * (a if reset else a.detach())
            o = model.beta * o + a
            logits.append(o if readout == "trace" else a)
        loss = model.sequence_loss(torch.stack(logits), y)
        return torch.autograd.grad(loss, params)


@pytest.mark.parametrize("readout", ["spikes", "trace"])
def test_a_dropped_reset_path_or_a_misscaled_surrogate_would_fail(readout):
    """The problems above are sensitive: the exact gradient equals a per-step unroll to
    round-off, and the unroll without the reset path, or with ψ doubled, is far from it."""
    model, x, y = problem([6, 7, 5, 4], 13, "spikes", (BETA, 1.0, 25.0))
    got, _ = bptt_pass(model, x, y, readout)
    assert_close(got, unrolled_bptt(model, x, y, readout), what="unrolled")
    for knobs in ({"reset": False}, {"psi_scale": 2.0}):
        wrong = unrolled_bptt(model, x, y, readout, **knobs)
        for a, b in zip(got, wrong):
            assert float((a - b).abs().max()) > 1e-3 * float(a.abs().max()), knobs


def test_the_membrane_adjoint_by_hand():
    """Two steps of one unit: λ_1 = ψ_1·g_1, λ_0 = β·λ_1 + ψ_0·(g_0 − θ·β·λ_1)."""
    beta, theta, slope = 0.9, 0.5, 4.0
    v = torch.tensor([[0.75], [0.25]], dtype=torch.float64)
    g = torch.tensor([[0.3], [-0.2]], dtype=torch.float64)
    psi = 1 / (slope * (v - theta).abs() + 1) ** 2  # 1/4 at both steps
    lam1 = float(psi[1, 0] * g[1, 0])
    lam0 = beta * lam1 + float(psi[0, 0]) * (0.3 - theta * beta * lam1)
    for run in (ops.membrane_adjoint, compute.membrane_adjoint):
        lam = run(g, psi, beta, theta)
        assert lam[1, 0] == pytest.approx(lam1, rel=1e-15)
        assert lam[0, 0] == pytest.approx(lam0, rel=1e-15)
        after = torch.tensor([2.0], dtype=torch.float64)  # the next block's first λ
        lam = run(g, psi, beta, theta, after)
        lam1_after = beta * 2.0 + 0.25 * (-0.2 - theta * beta * 2.0)
        assert lam[1, 0] == pytest.approx(lam1_after, rel=1e-15)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(25, 128, 128), (25, 128, 10), (1, 200, 200), (3, 1, 7),
                                   (1, 5, 3)])  # (the first and third split across threads)
def test_the_fused_reverse_loop_equals_its_plain_op_bit_for_bit(fused, monkeypatch, shape,
                                                                 dtype):
    gen = torch.Generator().manual_seed(6)
    v = (torch.randn(shape, generator=gen) * 0.8 + 0.6).to(dtype)
    grad_s = (torch.randn(shape, generator=gen) * 0.01).to(dtype)
    after = torch.randn(shape[1:], generator=gen).to(dtype)
    for beta, theta, slope in [(0.95, 1.0, 25.0), (0.0, 0.3, 400.0), (0.5, 2.5, 0.5)]:
        psi = ops.surrogate(v, theta, slope)
        psi[0, 0] = 1.0  # (at v = θ)
        for following in (None, after):
            fused_out = kernels.membrane_adjoint(grad_s, psi, beta, theta, following)
            plain = ops.membrane_adjoint(grad_s, psi, beta, theta, following)
            assert fused_out is not None and torch.equal(fused_out, plain), (beta, theta, slope)
    assert kernels.membrane_adjoint(grad_s.requires_grad_(), psi, 0.9, 1.0) is None


def test_sequence_gradients_and_the_algorithm_use_the_new_path(monkeypatch):
    model, x, y = problem([6, 7, 4], 11, "counts", (BETA, 1.0, 25.0))
    want, _ = autograd_bptt_pass(model, x, y, "spikes")

    def no_forward(*args, **kwargs):
        raise AssertionError("BPTT ran autograd through SNN.forward")

    monkeypatch.setattr(SNN, "forward", no_forward)
    got = sequence_gradients("bptt", model, x, y)
    assert_close(list(got.values()), want)
    for algorithm in (Algorithm("bptt", "spikes"), build_algorithm("bptt", checkpoint_blocks=True)):
        assert_close(algorithm.gradients(model, x, y)[0], want)


@pytest.mark.parametrize("checkpoint", [False, True])
def test_frozen_parameters_get_their_gradient_and_stay_frozen(checkpoint):
    model, x, y = problem([6, 7, 4], 9, "spikes", (BETA, 1.0, 25.0))
    want, _ = bptt_pass(model, x, y, "spikes", checkpoint)
    model.requires_grad_(False)
    got, _ = bptt_pass(model, x, y, "spikes", checkpoint)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert not any(p.requires_grad for p in model.parameters())
    model.layers[0].requires_grad_(True)  # some frozen, some not
    got, _ = bptt_pass(model, x, y, "spikes", checkpoint)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert [p.requires_grad for p in model.parameters()] == [True, True, False, False]


@pytest.mark.parametrize("checkpoint", [False, True])
def test_the_gradient_of_the_inputs_too(monkeypatch, checkpoint):
    from otpe_cli.bptt import sequence_logits

    monkeypatch.setattr(snn, "BLOCK_STEPS", 4)
    model, x, y = problem([6, 7, 4], 10, "counts", (BETA, 1.0, 25.0))
    grads = []
    for forward in (lambda z: model(z, "trace")[0],
                    lambda z: sequence_logits(model, z, "trace", checkpoint)[0]):
        z = x.clone().requires_grad_()
        with torch.enable_grad():
            grads.append(torch.autograd.grad(model.sequence_loss(forward(z), y), z)[0])
    assert_close([grads[1]], [grads[0]])


def test_checkpoint_blocks_is_only_for_bptt(make_cfg):
    from otpe_cli.config import validate
    from otpe_cli.errors import ConfigError

    validate(make_cfg(["algorithm=bptt", "algorithm.checkpoint_blocks=true"]))
    for name in ("ottt", "otpe", "f_approx_otpe"):
        assert make_cfg([f"algorithm={name}"]).algorithm.checkpoint_blocks is False
        with pytest.raises(ConfigError, match="algorithm.checkpoint_blocks=true .* only to "
                                              "algorithm=bptt"):
            validate(make_cfg([f"algorithm={name}", "algorithm.checkpoint_blocks=true"]))
        with pytest.raises(ValueError, match="checkpoint_blocks"):
            build_algorithm(name, checkpoint_blocks=True)


def test_the_memory_floor_of_checkpointed_bptt_is_its_blocks():
    sizes, batch, steps = [50, 128, 128, 10], 128, 800
    full = Algorithm("bptt", "spikes").memory_floor(sizes, batch, steps, 4, False)
    light = Algorithm("bptt", "spikes", checkpoint_blocks=True).memory_floor(sizes, batch,
                                                                           steps, 4, False)
    assert light < full / 4
    assert Algorithm("bptt", "spikes", checkpoint_blocks=True).memory_floor(
        sizes, batch, steps, 4, True) == full  # (alignment to BPTT keeps every step)
