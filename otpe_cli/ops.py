"""The plain-torch maths of the passes: the LIF step and its surrogate (SPEC §1), and the
linear scans and trace products the rules' block updates are made of (SPEC §2, `rules.base`).

These are the definitions. On CPU some of them also exist as fused C++ loops (`kernels`),
checked against these to the last bit when loaded; `compute` picks one or the other.
"""
from __future__ import annotations

import torch

from .products import add_weight_gradient_, errors_down


def surrogate(v: torch.Tensor, threshold: float, slope: float) -> torch.Tensor:
    """Fast-sigmoid surrogate of dH/dv: ψ(v) = 1 / (k·|v − θ| + 1)²."""
    return (v - threshold).abs_().mul_(slope).add_(1.0).reciprocal_().square_()


def heaviside(v: torch.Tensor, threshold: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """H(v − θ) in v's dtype, H(0) = 1. Written straight into a float tensor (``out``, or a new
    one): on CPU, a bool comparison followed by a cast costs ~10× more, and this runs every
    layer and step."""
    return torch.ge(v, threshold, out=torch.empty_like(v) if out is None else out)


class _Spike(torch.autograd.Function):
    """Heaviside spike H(v − θ) with H(0) = 1, differentiated through the surrogate ψ."""

    @staticmethod
    def forward(ctx, v, threshold: float, slope: float):
        ctx.save_for_backward(v)
        ctx.threshold, ctx.slope = threshold, slope
        return heaviside(v, threshold)

    @staticmethod
    def backward(ctx, grad_s):
        (v,) = ctx.saved_tensors
        return grad_s * surrogate(v, ctx.threshold, ctx.slope), None, None


def spike(v: torch.Tensor, threshold: float, slope: float) -> torch.Tensor:
    if torch.is_grad_enabled() and v.requires_grad:
        return _Spike.apply(v, threshold, slope)
    return heaviside(v, threshold)


def membrane_step(u, current, beta: float, threshold: float, slope: float, out=None):
    """One LIF step of one layer given its input current I_t = W a_t + b (SPEC §1).

    v_t = β·u_{t−1} + I_t;  s_t = H(v_t − θ);  u_t = v_t − θ·s_t  (reset differentiated).
    Returns (v_t, s_t, u_t). ``out``, a pair of tensors, receives v_t and s_t (no autograd).
    """
    if out is None:
        v = torch.add(current, u, alpha=beta)
        s = spike(v, threshold, slope)
    else:
        v = torch.add(current, u, alpha=beta, out=out[0])
        s = heaviside(v, threshold, out=out[1])
    return v, s, torch.sub(v, s, alpha=threshold)


def membrane_steps_(current, u, beta: float, threshold: float, slope: float):
    """`membrane_step` over the K steps of a block without autograd: v is written over
    ``current`` (K, …); returns the spikes (K, …) and the last u."""
    s = torch.empty_like(current)
    for k in range(len(current)):
        _, _, u = membrane_step(u, current[k], beta, threshold, slope, out=(current[k], s[k]))
    return s, u


def lif_layer(a, weight, bias, u, counts, in_place: bool, beta: float, threshold: float,
              slope: float, with_surrogate: bool = True, current=None):
    """A layer's K steps without autograd on its inputs a (K, B, N_in): the input currents of
    the K steps in one matrix product (or ``current`` (K·B, N_out), made with its bits), then
    `membrane_step` at each step, v written over the currents. Returns (v, s, the last u, ψ
    or None), each (K, B, N_out) but u (B, N_out). The last u is written into u itself if
    ``in_place``, else u is left as it was; ``counts`` (B, N_out), if given, gets the spikes
    added."""
    if current is None:
        current = torch.addmm(bias, a.flatten(0, 1), weight.t())
    v = current.view(*a.shape[:2], -1)
    s, last = membrane_steps_(v, u, beta, threshold, slope)
    if in_place:
        last = u.copy_(last)
    if counts is not None:
        counts.add_(s[0] if len(s) == 1 else s.sum(0))
    return v, s, last, surrogate(v, threshold, slope) if with_surrogate else None


def outer_accumulate(e, post, pre, grad_w, grad_b, bias_pre=None, weight=None) -> torch.Tensor:
    """The gradients of a rule whose weight gradient is an outer product (SPEC §2,
    `rules.base.FactorisedRule`) over a block of K steps: d = e ⊙ post (K, B, N_out),
    grad_w += Σ_{k,b} d_k[b]ᵀ pre_k[b] for pre (K, B, N_in), and grad_b += Σ_{k,b} d_k[b], or
    Σ_k bias_pre_k Σ_b d_k[b] given the bias input's traces ``bias_pre`` (K). Returns the
    errors sent down, d W given the layer's ``weight``, else d."""
    d = e * post
    add_weight_gradient_(grad_w, d.flatten(0, 1), pre.flatten(0, 1))
    if bias_pre is not None:
        grad_b.addmv_(d.sum(1).t(), bias_pre)
    else:
        grad_b.add_(d.sum((0, 1)))
    return d if weight is None else errors_down(d, weight)


def step_error(z, neg_target, logp_sum, inv_batch: float) -> torch.Tensor:
    """∂L_t/∂z_t = softmax(z_t)·inv_batch + neg_target for the logits z (K, B, C) of a block's
    steps (`snn.StepCrossEntropy`: neg_target = −onehot(y)/B, inv_batch = 1/B), with
    Σ_k log softmax(z_k) added into logp_sum (B, C)."""
    logp = torch.log_softmax(z, dim=-1)
    logp_sum.add_(logp.sum(0))
    return torch.add(neg_target, logp.exp_(), alpha=inv_batch)


def membrane_adjoint(grad_s: torch.Tensor, psi: torch.Tensor, beta: float, threshold: float,
                     after: torch.Tensor | None = None) -> torch.Tensor:
    """BPTT's reverse scan through one layer's K steps of a block (SPEC §1): λ_k = ∂J/∂v_k
    from the surrogates ψ_k = ψ(v_k) (K, …) and g_k = ∂J/∂s_k (K, …), the error that reaches
    the spikes from the layer above and the loss at the same step (everything but the reset).

    u_k = v_k − θ·s_k feeds only v_{k+1} = β·u_k + I_{k+1}, so ∂J/∂u_k = β·λ_{k+1}; v_k reaches
    J through u_k directly and through s_k = H(v_k − θ) (dH/dv taken as ψ_k), which moves u_k
    by −θ and everything above by g_k:

        λ_k = β·λ_{k+1} + ψ_k·(g_k − θ·β·λ_{k+1}),   λ_K = ``after`` (the first λ of the next
                                                        block; 0 at the end of the sequence)

    Per step three ops, each rounded once: ∂J/∂u_k = β·λ_{k+1}, then g_k − θ·∂J/∂u_k and the
    multiply-add with ψ_k (as ATen's ``sub(alpha=)`` and ``addcmul`` round them). Returns λ,
    (K, …)."""
    out = torch.empty_like(grad_s)
    grad_u = torch.empty_like(grad_s[0])
    following = torch.zeros_like(grad_s[0]) if after is None else after
    for k in range(grad_s.shape[0] - 1, -1, -1):
        torch.mul(following, beta, out=grad_u)
        torch.sub(grad_s[k], grad_u, alpha=threshold, out=out[k])
        torch.addcmul(grad_u, psi[k], out[k], out=out[k])
        following = out[k]
    return out


def leaky_scalars(state: float, decay: float, inputs) -> list[float]:
    """`leaky_sum` for a scalar state and K scalar inputs: the K values."""
    out = []
    for value in inputs:
        state = decay * state + value
        out.append(state)
    return out


def leaky_sum(state: torch.Tensor, inputs: torch.Tensor, decay: float) -> torch.Tensor:
    """x_k = decay·x_{k−1} + inputs_k over the K steps of a block (inputs (K, …)), from
    x_{−1} = ``state``, which is left at x_{K−1}; returns every x_k, (K, …)."""
    if len(inputs) == 1:
        out = torch.add(inputs, state, alpha=decay)
    else:
        out = torch.empty_like(inputs)
        previous = state
        for k in range(len(inputs)):
            previous = torch.add(inputs[k], previous, alpha=decay, out=out[k])
    state.copy_(out[-1])
    return out


def reverse_scan(direct: torch.Tensor, decay) -> torch.Tensor:
    """λ_k = direct_k + decay_{k+1}·λ_{k+1} over k = K−1..0 (λ_{K−1} = direct_{K−1}) for
    direct (K, B, N) and decay (K, B, N) or a float: how much a unit at step k of a block feeds
    into everything the block later sums, through a recurrence x_k = decay_k·x_{k−1} + ….
    (A scan of products and sums only: no division, so exact when a decay is 0.)"""
    out = torch.empty_like(direct)
    out[-1] = direct[-1]
    scalar = not isinstance(decay, torch.Tensor)
    for k in range(direct.shape[0] - 2, -1, -1):
        if scalar:
            torch.add(direct[k], out[k + 1], alpha=decay, out=out[k])
        else:
            torch.addcmul(direct[k], decay[k + 1], out[k + 1], out=out[k])
    return out


def advance_trace(trace: torch.Tensor, keep: torch.Tensor | None, coef: torch.Tensor,
                  inputs: torch.Tensor, from_zero: bool = False) -> None:
    """trace[b, i, :] ← keep[b, i]·trace[b, i, :] + Σ_k coef[k, b, i]·inputs[k, b, :]
    for a trace (B, N_out, N_in), keep (B, N_out) or None for 1, coef (K, B, N_out) and
    inputs (K, B, N_in), however many steps K the block holds: a multiply and one batched
    matrix product that adds into the trace in place. ``from_zero``: the trace before is 0,
    and its memory is not read (it may be uninitialised)."""
    if not from_zero and keep is not None:
        trace.mul_(keep.unsqueeze(2))
    trace.baddbmm_(coef.permute(1, 2, 0), inputs.transpose(0, 1), beta=0.0 if from_zero else 1.0)


def suffix_products(decays: torch.Tensor) -> torch.Tensor:
    """P_k = Π_{n > k} decays_n for k = −1..K−1 (K + 1 rows; P_{K−1} = 1): what a unit added
    at step k of a block is worth at its end, and P_{−1} what the block keeps of the start."""
    out = torch.empty((decays.shape[0] + 1,) + decays.shape[1:], dtype=decays.dtype,
                      device=decays.device)
    out[-1] = 1.0
    for k in range(decays.shape[0] - 1, -1, -1):
        torch.mul(out[k + 1], decays[k], out=out[k])
    return out


def contract_batch(d: torch.Tensor, trace: torch.Tensor, grad_w: torch.Tensor) -> None:
    """grad_w[i, j] += Σ_b d[b, i]·trace[b, i, j] for a trace (B, N_out, N_in): one batched
    matrix–vector product over the output units, reading the trace in place."""
    grad_w.add_(torch.bmm(d.t().contiguous().unsqueeze(1), trace.transpose(0, 1)).squeeze(1))


def trace_step(eligibility: torch.Tensor, post: torch.Tensor | None, decay: torch.Tensor,
               inputs: torch.Tensor, coef: torch.Tensor | None, weight: torch.Tensor,
               grad_w: torch.Tensor, fresh: bool = False) -> None:
    """One time step of a layer's per-sample traces (B, N_out, N_in) and the gradient they
    give (`rules.ostl`, `rules.otpe`): ε ← δ ⊙row ε + 1·aᵀ for decay δ (B, N_out) and inputs
    a (B, N_in); with a post-synaptic trace R, R ← R + coef ⊙row ε; then grad_w[i, j] +=
    Σ_b weight[b, i]·X[b, i, j] for X = R, else ε. ``fresh``: ε and R are 0 before the step,
    and their memory is not read (it may be uninitialised)."""
    if fresh:
        eligibility.copy_(inputs.unsqueeze(1).expand_as(eligibility))
    else:
        torch.addcmul(inputs.unsqueeze(1), eligibility, decay.unsqueeze(2), out=eligibility)
    if post is None:
        contract_batch(weight, eligibility, grad_w)
        return
    if fresh:
        torch.mul(eligibility, coef.unsqueeze(2), out=post)
    else:
        post.addcmul_(coef.unsqueeze(2), eligibility)
    contract_batch(weight, post, grad_w)


def eligibility_decay(psi: torch.Tensor, beta: float, threshold: float,
                      out: torch.Tensor) -> torch.Tensor:
    """δ = β(1 − θψ) into ``out``: how much of OSTL's eligibility ε a step keeps, from the
    surrogate ψ of the step before (the reset's path, SPEC §2)."""
    return torch.mul(psi, -beta * threshold, out=out).add_(beta)


def rule_step(eligibility, post, decay, inputs, coef, weight, grad_w, fresh: bool, psi,
              bias_eligibility, bias_post, bias_weight, grad_b, beta: float,
              threshold: float) -> None:
    """One online step of OSTL's or OTPE's traces and the gradients they give (`rules.ostl`,
    `rules.otpe`): `trace_step` with decay δ; then the bias's traces, those of an input that
    is always 1 (ε^b ← δ ⊙ ε^b + 1 and, with a post-synaptic trace, R^b ← β·R^b + ψ ⊙ ε^b),
    grad_b += Σ_b bias_weight ⊙ (R^b, else ε^b), and δ ← β(1 − θψ) for the next step, all
    (B, N_out) but grad_b (N_out)."""
    trace_step(eligibility, post, decay, inputs, coef, weight, grad_w, fresh)
    bias_eligibility.mul_(decay).add_(1.0)
    eligibility_decay(psi, beta, threshold, out=decay)
    if bias_post is not None:
        bias_post.mul_(beta).addcmul_(psi, bias_eligibility)
    grad_b.add_((bias_weight * (bias_eligibility if bias_post is None else bias_post)).sum(0))


def rate_spikes(keys: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Randman's rate code (SPEC §6): each row of ``keys`` (R, T) ranks the T steps at random,
    and the row's ``counts`` + 1 steps of lowest key (ties in step order) spike: (R, T) bool."""
    order = torch.argsort(keys, dim=-1, stable=True)
    steps = torch.arange(keys.shape[-1], device=keys.device)
    return torch.zeros(keys.shape, dtype=torch.bool, device=keys.device).scatter_(
        -1, order, steps <= counts.unsqueeze(-1))
