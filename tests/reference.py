"""Independent float64 reference for the learning rules of SPEC.md (sections 1, 2, 4, 5).

Written from SPEC.md alone, without looking at the production package, so that the tests can
hold ``otpe_cli`` to it.  Everything here is plain NumPy in float64 with explicit loops; clarity
matters more than speed.  Nothing here uses an automatic-differentiation engine: BPTT is a
hand-written reverse-time adjoint recursion.

Conventions
-----------
* ``params``: list of ``(W, b)`` per layer, ``W`` of shape (N_out, N_in), ``b`` of shape (N_out,).
  Torch tensors or NumPy arrays are accepted; they are converted to float64 NumPy arrays.
* ``x``: (T, B, N_in) inputs (0/1 spikes or event counts).
* ``y``: (B,) integer labels.
* Returned gradients: list of ``(dW, db)`` float64 NumPy arrays, same order as ``params``.

Network (SPEC 1), per layer and step t = 1..T:
    v_t = beta*u_{t-1} + W a_t + b ;  s_t = H(v_t - theta), H(0) = 1 ;  u_t = v_t - theta*s_t
    u_0 = 0.  Surrogate for every dH/dv: psi(v) = 1 / (slope*|v - theta| + 1)^2.
Loss: L_t = batch-mean softmax cross-entropy of z_t, J = (1/T) sum_t L_t, with z_t = s^L_t
("spikes" readout) or z_t = o_t, o_t = beta*o_{t-1} + s^L_t ("trace" readout).
"""

from __future__ import annotations

import math

import numpy as np

BETA_DEFAULT = 1.0 / (1.0 + math.exp(-3.0))  # sigmoid(3) ~= 0.952574
THETA_DEFAULT = 1.0
SLOPE_DEFAULT = 25.0

ALGORITHMS = ("ottt", "ostl", "otpe", "approx_otpe", "f_otpe", "f_approx_otpe")

# SPEC 2, composite table: algorithm -> (hidden-layer rule, output-layer rule, readout)
COMPOSITES = {
    "ottt": ("ottt", "ottt", "spikes"),
    "ostl": ("ostl", "ostl", "spikes"),
    "otpe": ("otpe", "ostl", "spikes"),
    "approx_otpe": ("aotpe", "ottt", "spikes"),
    # The *-front output rules are the OTPE / A-OTPE formulas applied with e = dL_t/do_t.
    "f_otpe": ("otpe", "otpe_front", "trace"),
    "f_approx_otpe": ("aotpe", "aotpe_front", "trace"),
}


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------
def to_np(a) -> np.ndarray:
    """Any tensor / array -> float64 NumPy array (a copy, detached)."""
    if hasattr(a, "detach"):
        a = a.detach().cpu().double().numpy()
    return np.array(a, dtype=np.float64, copy=True)


def params_to_np(params):
    return [(to_np(W), to_np(b)) for (W, b) in params]


def heaviside(v, theta):
    """H(v - theta) with H(0) = 1."""
    return (v - theta >= 0.0).astype(np.float64)


def surrogate(v, theta, slope):
    """Fast-sigmoid surrogate psi(v) = 1 / (slope*|v - theta| + 1)^2."""
    return 1.0 / (slope * np.abs(v - theta) + 1.0) ** 2


def softmax(z):
    """Row-wise softmax of a (B, C) or (C,) array."""
    z = np.asarray(z, dtype=np.float64)
    m = np.max(z, axis=-1, keepdims=True)
    e = np.exp(z - m)
    return e / np.sum(e, axis=-1, keepdims=True)


def onehot(y, C):
    y = np.asarray(to_np(y) if hasattr(y, "detach") else y).astype(np.int64)
    out = np.zeros((y.shape[0], C))
    out[np.arange(y.shape[0]), y] = 1.0
    return out


def labels_np(y):
    if hasattr(y, "detach"):
        y = y.detach().cpu().numpy()
    return np.asarray(y).astype(np.int64)


def cross_entropy(z, y):
    """Batch-mean softmax cross-entropy of logits z (B, C) against labels y (B,)."""
    z = np.asarray(z, dtype=np.float64)
    m = np.max(z, axis=-1, keepdims=True)
    logsumexp = (m + np.log(np.sum(np.exp(z - m), axis=-1, keepdims=True)))[:, 0]
    return float(np.mean(logsumexp - z[np.arange(z.shape[0]), y]))


# --------------------------------------------------------------------------------------------
# forward pass (SPEC 1)
# --------------------------------------------------------------------------------------------
def ref_forward(params, x, beta=BETA_DEFAULT, theta=THETA_DEFAULT, slope=SLOPE_DEFAULT,
                readout="spikes"):
    """Run the LIF network.

    Returns a dict of float64 arrays:
      a[l]: (T, B, N_{l-1}) input of layer l at every step (a[0] = x),
      v[l]: (T, B, N_l)     pre-reset membrane,
      s[l]: (T, B, N_l)     spikes,
      u[l]: (T, B, N_l)     post-reset membrane,
      o:    (T, B, C)       leaky trace of the output spikes (always computed),
      z:    (T, B, C)       logits per step (s^L for "spikes", o for "trace"),
      loss: J = (1/T) sum_t L_t.
    """
    if readout not in ("spikes", "trace"):
        raise ValueError(readout)
    P = params_to_np(params)
    x = to_np(x)
    T, B, _ = x.shape
    L = len(P)
    a_all = [np.zeros((T, B, W.shape[1])) for (W, _) in P]
    v_all = [np.zeros((T, B, W.shape[0])) for (W, _) in P]
    s_all = [np.zeros((T, B, W.shape[0])) for (W, _) in P]
    u_all = [np.zeros((T, B, W.shape[0])) for (W, _) in P]
    C = P[-1][0].shape[0]
    o_all = np.zeros((T, B, C))

    u_prev = [np.zeros((B, W.shape[0])) for (W, _) in P]  # u_0 = 0
    o_prev = np.zeros((B, C))
    for t in range(T):
        a = x[t]
        for l, (W, b) in enumerate(P):
            v = beta * u_prev[l] + a @ W.T + b
            s = heaviside(v, theta)
            u = v - theta * s
            a_all[l][t], v_all[l][t], s_all[l][t], u_all[l][t] = a, v, s, u
            u_prev[l] = u
            a = s
        o = beta * o_prev + s_all[L - 1][t]
        o_all[t] = o
        o_prev = o
    z = s_all[L - 1] if readout == "spikes" else o_all
    return {"a": a_all, "v": v_all, "s": s_all, "u": u_all, "o": o_all, "z": z.copy()}


def ref_loss(params, x, y, beta=BETA_DEFAULT, theta=THETA_DEFAULT, slope=SLOPE_DEFAULT,
             readout="spikes"):
    """J = (1/T) sum_t L_t (value only)."""
    fw = ref_forward(params, x, beta, theta, slope, readout)
    y = labels_np(y)
    T = fw["z"].shape[0]
    return sum(cross_entropy(fw["z"][t], y) for t in range(T)) / T


# --------------------------------------------------------------------------------------------
# exact BPTT by a hand-written adjoint recursion (no autograd)
# --------------------------------------------------------------------------------------------
def ref_bptt(params, x, y, beta=BETA_DEFAULT, theta=THETA_DEFAULT, slope=SLOPE_DEFAULT,
             readout="spikes"):
    """Exact surrogate gradient of J = (1/T) sum_t L_t.

    Adjoint variables (all are total derivatives of J):
      gs^l_t = dJ/ds^l_t   through everything except s_t's own role in u_t
             = [l = L] * (direct loss term) + (W^{l+1})^T gv^{l+1}_t
      gu^l_t = dJ/du^l_t   = beta * gv^l_{t+1}              (0 at t = T)
      gv^l_t = dJ/dv^l_t   = psi_t * (gs^l_t - theta * gu^l_t) + gu^l_t
                            (v -> s with ds/dv = psi; v -> u = v - theta*s, du/dv = 1 - theta*psi)
    and dW^l = sum_t gv^l_t a^l_t^T, db^l = sum_t gv^l_t (summed over the batch).
    Output term: "spikes": dJ/ds^L_t = (1/T)(softmax(s^L_t) - onehot)/B;
                 "trace":  go_t = dJ/do_t = (1/T)(softmax(o_t) - onehot)/B + beta*go_{t+1},
                           dJ/ds^L_t = go_t.
    """
    P = params_to_np(params)
    fw = ref_forward(P, x, beta, theta, slope, readout)
    y = labels_np(y)
    T, B, C = fw["z"].shape
    L = len(P)
    Y = onehot(y, C)

    dW = [np.zeros_like(W) for (W, _) in P]
    db = [np.zeros_like(b) for (_, b) in P]
    gv_next = [np.zeros((B, W.shape[0])) for (W, _) in P]  # gv^l_{t+1}
    go_next = np.zeros((B, C))  # dJ/do_{t+1}
    for t in reversed(range(T)):
        # direct error of the loss at step t
        direct = (softmax(fw["z"][t]) - Y) / (B * T)
        if readout == "trace":
            go = direct + beta * go_next
            go_next = go
            gs_out = go
        else:
            gs_out = direct
        gs_from_above = None
        gv_now = [None] * L
        for l in reversed(range(L)):
            W, _ = P[l]
            gs = gs_out if l == L - 1 else gs_from_above
            gu = beta * gv_next[l]
            psi = surrogate(fw["v"][l][t], theta, slope)
            gv = psi * gs + gu * (1.0 - theta * psi)
            gv_now[l] = gv
            dW[l] += gv.T @ fw["a"][l][t]
            db[l] += gv.sum(axis=0)
            gs_from_above = gv @ W  # (W^l)^T gv^l for every sample: error on s^{l-1}_t
        gv_next = gv_now
    return list(zip(dW, db))


# --------------------------------------------------------------------------------------------
# the g-bar recursion (SPEC 2) and its closed form (SPEC 5.3)
# --------------------------------------------------------------------------------------------
def ref_gbar(psis, beta=BETA_DEFAULT):
    """c_t = beta*c_{t-1} + 1, r_t = beta*c_{t-1}/c_t, gbar_t = r_t*gbar_{t-1} + (1-r_t)*psi_t.

    psis: (T, ...) array; returns gbar of the same shape."""
    psis = to_np(psis)
    out = np.zeros_like(psis)
    c = 0.0
    g = np.zeros_like(psis[0])
    for t in range(psis.shape[0]):
        c_prev = c
        c = beta * c_prev + 1.0
        r = beta * c_prev / c
        g = r * g + (1.0 - r) * psis[t]
        out[t] = g
    return out


def ref_leaky_average(psis, beta=BETA_DEFAULT):
    """Closed form sum_{k<=t} beta^{t-k} psi_k / sum_{k<=t} beta^{t-k}, for every t."""
    psis = to_np(psis)
    out = np.zeros_like(psis)
    for t in range(psis.shape[0]):
        num = np.zeros_like(psis[0])
        den = 0.0
        for k in range(t + 1):
            w = beta ** (t - k)
            num = num + w * psis[k]
            den += w
        out[t] = num / den
    return out


# --------------------------------------------------------------------------------------------
# online rules (SPEC 2), offline sequence gradient G = (1/T) sum_t g_t
# --------------------------------------------------------------------------------------------
class _LayerState:
    """Every trace of SPEC 2 for one layer and one sample (all start at 0)."""

    def __init__(self, n_out, n_in):
        self.ahat = np.zeros(n_in)         # a-hat_t = beta a-hat_{t-1} + a_t
        self.zhat = np.zeros(n_in)         # z-hat_t = beta z-hat_{t-1} + a-hat_t
        self.bhat = 0.0                    # bias-input trace (constant input 1)
        self.zbhat = 0.0                   # doubly filtered bias-input trace
        self.E = np.zeros((n_out, n_in))   # E_t = du_t/dW (OSTL eligibility)
        self.Eb = np.zeros(n_out)
        self.eps = np.zeros((n_out, n_in))  # eps_t = beta E_{t-1} + 1 a_t^T
        self.epsb = np.zeros(n_out)
        self.R = np.zeros((n_out, n_in))   # R-hat_t = beta R-hat_{t-1} + psi_t (.)row eps_t
        self.Rb = np.zeros(n_out)
        self.c = 0.0
        self.gbar = np.zeros(n_out)
        self.psi = np.zeros(n_out)

    def step(self, a, v, beta, theta, slope):
        psi = surrogate(v, theta, slope)
        self.psi = psi
        self.ahat = beta * self.ahat + a
        self.zhat = beta * self.zhat + self.ahat
        self.bhat = beta * self.bhat + 1.0
        self.zbhat = beta * self.zbhat + self.bhat
        # OSTL eligibility
        self.eps = beta * self.E + a[None, :]          # every row i: beta E_{i,:} + a^T
        self.epsb = beta * self.Eb + 1.0
        self.E = (1.0 - theta * psi)[:, None] * self.eps
        self.Eb = (1.0 - theta * psi) * self.epsb
        # OTPE
        self.R = beta * self.R + psi[:, None] * self.eps
        self.Rb = beta * self.Rb + psi * self.epsb
        # g-bar
        c_prev = self.c
        self.c = beta * c_prev + 1.0
        r = beta * c_prev / self.c
        self.gbar = r * self.gbar + (1.0 - r) * psi


def _rule_step(rule, st: _LayerState, e, bias_trace):
    """(dW_t, db_t, m_t) of one layer, one sample, one step; e is this layer's error."""
    if rule == "ottt":
        d = e * st.psi
        dW = np.outer(d, st.ahat)
        db = d * st.bhat if bias_trace else d.copy()
        m = st.psi
    elif rule == "ostl":
        d = e * st.psi
        dW = d[:, None] * st.eps
        db = d * st.epsb
        m = st.psi
    elif rule in ("otpe", "otpe_front"):
        dW = e[:, None] * st.R
        db = e * st.Rb
        m = st.gbar
    elif rule in ("aotpe", "aotpe_front"):
        d = e * st.gbar
        dW = np.outer(d, st.zhat)
        db = d * st.zbhat if bias_trace else d.copy()
        m = st.gbar
    else:
        raise ValueError(rule)
    return dW, db, m


def ref_rule_gradients(algorithm, params, x, y, beta=BETA_DEFAULT, theta=THETA_DEFAULT,
                       slope=SLOPE_DEFAULT, bias_trace=False):
    """Offline sequence gradient G = (1/T) sum_t g_t of a composite algorithm of SPEC 2.

    Per sample and step: update every layer's traces from its own input and membrane, then run
    the error top-down at the same step: e^L_t = (softmax(z_t) - onehot(y))/B (z_t = s^L_t, or
    o_t for the F-variants), e^{l-1}_t = (W^l)^T (e^l_t (.) m^l_t).
    """
    if algorithm == "bptt":
        return ref_bptt(params, x, y, beta, theta, slope, "spikes")
    hidden_rule, out_rule, readout = COMPOSITES[algorithm]
    P = params_to_np(params)
    fw = ref_forward(P, x, beta, theta, slope, readout)
    y = labels_np(y)
    T, B, C = fw["z"].shape
    L = len(P)
    Y = onehot(y, C)

    dW = [np.zeros_like(W) for (W, _) in P]
    db = [np.zeros_like(b) for (_, b) in P]
    for n in range(B):
        states = [_LayerState(W.shape[0], W.shape[1]) for (W, _) in P]
        for t in range(T):
            for l in range(L):
                states[l].step(fw["a"][l][t, n], fw["v"][l][t, n], beta, theta, slope)
            e = (softmax(fw["z"][t, n]) - Y[n]) / B
            for l in reversed(range(L)):
                rule = out_rule if l == L - 1 else hidden_rule
                gW, gb, m = _rule_step(rule, states[l], e, bias_trace)
                dW[l] += gW / T
                db[l] += gb / T
                e = P[l][0].T @ (e * m)
    return list(zip(dW, db))


# --------------------------------------------------------------------------------------------
# alignment metrics (SPEC 4)
# --------------------------------------------------------------------------------------------
def cosine(a, b):
    a = to_np(a).ravel()
    b = to_np(b).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def sign_agreement(a, b, tol=1e-12):
    a = to_np(a).ravel()
    b = to_np(b).ravel()
    mask = (np.abs(a) > tol) & (np.abs(b) > tol)
    if not mask.any():
        return float("nan")
    return float(np.mean(np.sign(a[mask]) == np.sign(b[mask])))


def norm_ratio(g, ref):
    return float(np.linalg.norm(to_np(g).ravel()) / np.linalg.norm(to_np(ref).ravel()))
