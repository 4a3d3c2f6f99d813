"""Hold the production *online* update mode (SPEC §3) to an independent float64 reference.

SPEC §3 online: an optimizer step with g_t at every time step, while the membranes and every
trace of SPEC §2 carry on across the steps.  ``tests/reference.py`` covers the offline mode only
(G = (1/T)·Σ_t g_t at fixed parameters); here a per-step reference loop is written from SPEC §1–§3
alone, reusing the reference's per-sample trace state (``_LayerState``) and per-rule step
(``_rule_step``), and is run both at fixed parameters and with plain SGD applied every step.

Production contract used here:
    alg = build_algorithm(name)
    stats = alg.train_online(model, x, y, on_step)
    on_step(grads) is called once per time step; grads is aligned with list(model.parameters())
    (layers.0.weight, layers.0.bias, layers.1.weight, ...) and holds g_t, the gradient of that
    step only.  stats.loss is J = (1/T)·Σ_t L_t over the pass.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import reference as ref
from helpers import assert_active, build_active_model, make_x, make_y, model_params

BETA = ref.BETA_DEFAULT
THETA, SLOPE = 1.0, 25.0
ALGORITHMS = ("ottt", "ostl", "otpe", "approx_otpe", "f_otpe", "f_approx_otpe")

SIZES = [6, 5, 4, 3]      # input, two hidden layers, output: depth 3
L = len(SIZES) - 1
B = 3


# =============================================================================================
# the per-step reference (SPEC §1, §2, §3 online)
# =============================================================================================
def ref_online(algorithm, params, x, y, lr=0.0, beta=BETA, theta=THETA, slope=SLOPE):
    """Online pass of a composite algorithm, written from SPEC alone (float64, per sample).

    At every step t, for every sample: the LIF step of every layer with the CURRENT parameters,
    the trace update of SPEC §2 (``_LayerState.step``), the output error
    e^L_t = (softmax(z_t) − onehot(y))/B and the spatial sweep e^{l−1}_t = (W^l)ᵀ(e^l_t ⊙ m^l_t)
    with the current W.  The per-sample gradients are summed into g_t; then (SPEC §3 online,
    plain SGD) W ← W − lr·g_t before the next step.  lr = 0 keeps the parameters fixed.

    Returns a dict:
      steps:  [g_1, ..., g_T], each a list of (dW, db) per layer (at the parameters of step t),
      params: the final parameters [(W, b)],
      loss:   J = (1/T)·Σ_t L_t, L_t taken at the parameters in force at step t,
      spikes: (T, B, N_l) spikes per layer,
      margin: min |v − θ| over every membrane (how far the run is from a spike flip).
    """
    hidden_rule, out_rule, readout = ref.COMPOSITES[algorithm]
    P = [(W.copy(), b.copy()) for (W, b) in ref.params_to_np(params)]
    x = ref.to_np(x)
    y = ref.labels_np(y)
    T, nB, _ = x.shape
    nL = len(P)
    C = P[-1][0].shape[0]
    Y = ref.onehot(y, C)

    # state that carries on over the whole sequence, per sample: membranes, traces, output trace
    u = [[np.zeros(W.shape[0]) for (W, _) in P] for _ in range(nB)]
    states = [[ref._LayerState(W.shape[0], W.shape[1]) for (W, _) in P] for _ in range(nB)]
    o = [np.zeros(C) for _ in range(nB)]

    steps, loss_sum, margin = [], 0.0, np.inf
    spikes = [np.zeros((T, nB, W.shape[0])) for (W, _) in P]
    for t in range(T):
        g = [(np.zeros_like(W), np.zeros_like(b)) for (W, b) in P]
        z_batch = np.zeros((nB, C))
        for n in range(nB):
            # forward through the layers at this step, with the current parameters
            a = x[t, n]
            for l, (W, b) in enumerate(P):
                v = beta * u[n][l] + W @ a + b
                s = ref.heaviside(v, theta)
                u[n][l] = v - theta * s
                states[n][l].step(a, v, beta, theta, slope)
                margin = min(margin, float(np.min(np.abs(v - theta))))
                spikes[l][t, n] = s
                a = s
            o[n] = beta * o[n] + a
            z = a if readout == "spikes" else o[n]
            z_batch[n] = z
            # error at this step only, swept down the layers (nothing flows back in time)
            e = (ref.softmax(z) - Y[n]) / nB
            for l in reversed(range(nL)):
                rule = out_rule if l == nL - 1 else hidden_rule
                gW, gb, m = ref._rule_step(rule, states[n][l], e, False)
                g[l][0][...] += gW
                g[l][1][...] += gb
                e = P[l][0].T @ (e * m)
        loss_sum += ref.cross_entropy(z_batch, y)
        steps.append(g)
        # SPEC §3 online: one optimizer step with g_t, before step t + 1
        P = [(W - lr * gW, b - lr * gb) for (W, b), (gW, gb) in zip(P, g)]
    return {"steps": steps, "params": P, "loss": loss_sum / T, "spikes": spikes,
            "margin": margin}


# =============================================================================================
# helpers
# =============================================================================================
def setup(T, kind, seed):
    """x, y and an active float64 production model (every layer spikes, not everywhere)."""
    x = make_x(T, B, SIZES[0], kind, seed=seed)
    y = make_y(B, SIZES[-1], seed=seed)
    model = build_active_model(SIZES, x)
    assert_active(model, x, L)
    return model, x, y


def as_pairs(flat):
    """[W0, b0, W1, b1, ...] (aligned with model.parameters()) -> [(W0, b0), (W1, b1), ...]."""
    assert len(flat) == 2 * L, f"on_step got {len(flat)} tensors, expected {2 * L}"
    return [(flat[2 * i], flat[2 * i + 1]) for i in range(L)]


def assert_pairs_close(got, want, what, rtol, atol):
    """got / want: [(dW, db)] of tensors or arrays; element-wise allclose per tensor."""
    for i, (g_pair, w_pair) in enumerate(zip(got, want)):
        for kind, g, w in zip(("weight", "bias"), g_pair, w_pair):
            g, w = ref.to_np(g), ref.to_np(w)
            name = f"layers.{i}.{kind}"
            assert g.shape == w.shape, f"{what}: {name} shape {g.shape} != {w.shape}"
            diff = float(np.max(np.abs(g - w))) if g.size else 0.0
            assert np.allclose(g, w, rtol=rtol, atol=atol), (
                f"{what}: {name} differs, max abs diff {diff:.3e} "
                f"(max |want| {float(np.max(np.abs(w))):.3e})"
            )


def flat_norm(pairs):
    return float(np.sqrt(sum(np.sum(ref.to_np(W) ** 2) + np.sum(ref.to_np(b) ** 2)
                             for W, b in pairs)))


# =============================================================================================
# 1. per-step gradients at fixed parameters
# =============================================================================================
@pytest.mark.parametrize("kind", ["counts", "spikes"])
@pytest.mark.parametrize("alg", ALGORITHMS)
def test_online_per_step_gradients_match_reference(alg, kind):
    from otpe_cli.algorithms import build_algorithm

    T = 8
    model, x, y = setup(T, kind, seed=T + B)
    P0 = ref.params_to_np(model_params(model, L))
    before = [p.detach().clone() for p in model.parameters()]

    # on_step only records clones of g_t; the parameters stay where they are
    recorded = []

    def on_step(grads):
        recorded.append([g.detach().clone() for g in grads])

    stats = build_algorithm(alg).train_online(model, x, y, on_step)

    assert len(recorded) == T, f"on_step called {len(recorded)} times, expected T = {T}"
    for p, p0 in zip(model.parameters(), before):
        assert torch.equal(p.detach(), p0), "train_online changed parameters on its own"

    want = ref_online(alg, P0, x, y, lr=0.0)
    # self-check of the per-step reference against the offline reference: the first t steps
    # summed equal t·G(t), G(t) = ref_rule_gradients over x[:t] (same traces, truncated input)
    for t in (1, T // 2, T):
        G = ref.ref_rule_gradients(alg, P0, x[:t], y)
        cum = [(sum(s[l][0] for s in want["steps"][:t]), sum(s[l][1] for s in want["steps"][:t]))
               for l in range(L)]
        assert_pairs_close(cum, [(t * W, t * b) for W, b in G], f"reference self-check t={t}",
                           rtol=1e-11, atol=1e-14)

    # every step's gradient, not only their sum
    for t in range(T):
        got = as_pairs(recorded[t])
        assert_pairs_close(got, want["steps"][t], f"{alg}/{kind} g_t at step {t + 1}",
                           rtol=1e-10, atol=1e-13)
    # the steps must not all be alike (otherwise a per-step mix-up could hide)
    assert flat_norm(want["steps"][-1]) > 1e-6, "last step's gradient is zero: vacuous"
    diff = [(a[0] - b[0], a[1] - b[1]) for a, b in zip(want["steps"][0], want["steps"][-1])]
    assert flat_norm(diff) > 1e-6, "first and last step gradients equal: vacuous"

    # J = (1/T)·Σ_t L_t with this algorithm's own logits (F-variants: leaky trace o_t)
    readout = ref.COMPOSITES[alg][2]
    J = ref.ref_loss(P0, x, y, readout=readout)
    assert stats.loss == pytest.approx(J, rel=1e-10, abs=1e-13)
    assert stats.loss == pytest.approx(want["loss"], rel=1e-10, abs=1e-13)


# =============================================================================================
# 2. plain SGD every step: the parameters move under the running traces
# =============================================================================================
LR = 2.0  # large on purpose: parameters move visibly and output spikes change within T


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_online_sgd_matches_reference_with_moving_parameters(alg):
    from otpe_cli.algorithms import build_algorithm

    T = 10
    model, x, y = setup(T, "spikes", seed=7)
    P0 = ref.params_to_np(model_params(model, L))
    params = list(model.parameters())
    calls = []

    # on_step applies plain SGD in place: p ← p − lr·g_t
    def on_step(grads):
        calls.append(1)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(LR * g)

    stats = build_algorithm(alg).train_online(model, x, y, on_step)
    assert len(calls) == T

    want = ref_online(alg, P0, x, y, lr=LR)
    # the reference run keeps clear of spike flips caused by round-off, and stays active
    assert want["margin"] > 1e-7, f"a membrane sits {want['margin']:.1e} from threshold"
    for l, s in enumerate(want["spikes"]):
        assert 0.0 < s.mean() < 1.0, f"layer {l} silent or saturated during the run: vacuous"

    # non-vacuity: with the same traces but fixed parameters, T steps of SGD would give
    # P0 − lr·T·G(P0); moving parameters must end visibly elsewhere, and must change spikes
    fixed = ref_online(alg, P0, x, y, lr=0.0)
    G0 = ref.ref_rule_gradients(alg, P0, x, y)
    accumulated = [(W - LR * T * gW, b - LR * T * gb) for (W, b), (gW, gb) in zip(P0, G0)]
    gap = [(a[0] - c[0], a[1] - c[1]) for a, c in zip(want["params"], accumulated)]
    moved = [(a[0] - p[0], a[1] - p[1]) for a, p in zip(want["params"], P0)]
    assert flat_norm(gap) > 1e-2 * flat_norm(moved), (
        "moving parameters end where fixed-parameter accumulation would: vacuous"
    )
    n_flips = int(np.sum(want["spikes"][-1] != fixed["spikes"][-1]))
    assert n_flips > 0, "SGD never changed an output spike: the moving-parameter path is idle"

    # the production end point equals the reference end point, element by element
    got = model_params(model, L)
    assert_pairs_close(got, want["params"], f"{alg} parameters after online SGD",
                       rtol=1e-9, atol=1e-12)
    assert not any(np.allclose(ref.to_np(g[0]), a[0], rtol=1e-9, atol=1e-12)
                   for g, a in zip(got, accumulated)), "production equals fixed accumulation"

    # J over the pass: each L_t at the parameters in force at step t
    assert stats.loss == pytest.approx(want["loss"], rel=1e-10, abs=1e-13)
