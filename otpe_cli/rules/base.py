"""What every per-layer online rule shares (SPEC §2).

A rule owns one layer's state for a batch. Each time step the driver calls, in order,
``update(a_t, ψ_t)`` after the layer's forward step, then ``accumulate(e_t, grad_w, grad_b)``
with the error e_t = ∂L_t/∂s_t arriving at this step; it returns e_t ⊙ m_t, the modulated
error the driver sends down: e^{l−1}_t = (W^l)ᵀ (e^l_t ⊙ m_t). By the time the driver calls
``flush(grad_w, grad_b)`` — after every step online, after every block of steps offline — g_t
of every step so far is in the buffers.

Rules with O(n) state (OTTT, A-OTPE) add g_t at once. The rules with per-sample N_out × N_in
traces (OSTL, OTPE) keep the step's a_t, ψ_t and e_t and advance their traces at ``flush``,
over the whole block at once (`BlockRecurrence`): the traces are linear recurrences whose
decays and inputs do not depend on the traces, and the m_t they send down does not either,
so a block of K steps is evaluated exactly with one pass over each trace instead of K.
"""
from __future__ import annotations

import torch


class LayerRule:
    #: per-sample N_out × N_in traces the rule keeps (the memory model of SPEC §2)
    full_traces = 0

    def __init__(self, layer, batch: int, beta: float, threshold: float, bias_trace: bool = False,
                 block: int = 1, scratch: torch.Tensor | None = None):
        w = layer.weight
        self.block = block      # the most steps the driver lets pass between flushes
        self.scratch = scratch  # 1-d work space that layers flushed one after another may share
        self.beta, self.threshold, self.bias_trace = beta, threshold, bias_trace
        self.n_out, self.n_in = w.shape
        self.batch = batch
        self._zeros = lambda *shape: torch.zeros(*shape, dtype=w.dtype, device=w.device)

    def update(self, a: torch.Tensor, psi: torch.Tensor) -> None:
        raise NotImplementedError

    def accumulate(self, e: torch.Tensor, grad_w: torch.Tensor, grad_b: torch.Tensor
                   ) -> torch.Tensor:
        raise NotImplementedError

    def flush(self, grad_w: torch.Tensor, grad_b: torch.Tensor) -> None:
        """Add the g_t of steps still held back (none, for rules that add them at once)."""


class GBar:
    """Normalised leaky average of ψ (SPEC §2): c_t = β·c_{t−1} + 1, r_t = β·c_{t−1}/c_t,
    ḡ_t = r_t·ḡ_{t−1} + (1 − r_t)·ψ_t, so ḡ_t = Σ_k β^{t−k} ψ_k / Σ_k β^{t−k} and ḡ_1 = ψ_1."""

    def __init__(self, beta: float):
        self.beta, self.c, self.value = beta, 0.0, None

    def update(self, psi: torch.Tensor) -> torch.Tensor:
        c_prev, self.c = self.c, self.beta * self.c + 1.0
        r = self.beta * c_prev / self.c
        if self.value is None:
            self.value = psi.clone()
        else:
            self.value.mul_(r).add_(psi, alpha=1.0 - r)
        return self.value


class FactorisedRule(LayerRule):
    """Rules whose weight gradient is an outer product (e ⊙ post_t) pre_tᵀ: OTTT and A-OTPE.

    The bias gradient is e ⊙ post_t — no temporal factor, as in the paper — unless
    ``bias_trace`` is set, which multiplies it by the same trace a constant input of 1 would
    carry through ``pre`` (a scalar shared by every sample and unit).
    """

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.presynaptic_trace = self._zeros(self.batch, self.n_in)  # â_t = β â_{t−1} + a_t
        self.bias_presynaptic_trace = 0.0                            # â for the input 1

    def _advance_presynaptic(self, a: torch.Tensor) -> None:
        self.presynaptic_trace.mul_(self.beta).add_(a)
        self.bias_presynaptic_trace = self.beta * self.bias_presynaptic_trace + 1.0

    # pre: (B, N_in) trace paired with the weight; bias_pre: its scalar twin; post: (B, N_out)
    pre: torch.Tensor
    bias_pre: float
    post: torch.Tensor

    def accumulate(self, e, grad_w, grad_b):
        d = e * self.post  # post is also m_t: OTTT sends ψ_t, A-OTPE ḡ_t
        grad_w.addmm_(d.t(), self.pre)
        grad_b.add_(d.sum(0), alpha=self.bias_pre if self.bias_trace else 1.0)
        return d


def reverse_scan(direct: torch.Tensor, decay) -> torch.Tensor:
    """λ_k = direct_k + decay_{k+1}·λ_{k+1} over k = K−1..0 (λ_{K−1} = direct_{K−1}) for
    direct (K, B, N) and decay (K, B, N) or a float: how much a unit at step k of a block feeds
    into everything the block later sums, through a recurrence x_k = decay_k·x_{k−1} + ….
    (A scan of products and sums only: no division, so exact when a decay is 0.)"""
    out = torch.empty_like(direct)
    out[-1] = direct[-1]
    for k in range(direct.shape[0] - 2, -1, -1):
        if isinstance(decay, float):
            torch.add(direct[k], out[k + 1], alpha=decay, out=out[k])
        else:
            torch.addcmul(direct[k], decay[k + 1], out[k + 1], out=out[k])
    return out


def advance_trace(trace: torch.Tensor, keep: torch.Tensor | None, coef: torch.Tensor,
                  inputs: torch.Tensor, work: torch.Tensor) -> None:
    """trace[i, b, :] ← keep[b, i]·trace[i, b, :] + Σ_k coef[k, b, i]·inputs[k, b, :]
    for a trace (N_out, B, N_in), keep (B, N_out) or None for 1, coef (K, B, N_out) and
    inputs (K, B, N_in): one pass over the trace however many steps K the block holds. The
    block's sum is made in ``work``, a (B, N_out, N_in) tensor kept from block to block (a
    fresh trace-sized allocation per block costs page faults)."""
    new = torch.bmm(coef.permute(1, 2, 0), inputs.transpose(0, 1), out=work).transpose(0, 1)
    if keep is None:
        trace.add_(new)
    else:
        torch.addcmul(new, trace, keep.t().unsqueeze(2), out=trace)


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
    """grad_w[i, j] += Σ_b d[b, i]·trace[i, b, j] — traces are stored (N_out, B, N_in) so that
    this per-step contraction is one batched matmul with no copy of the trace. (``d`` is made
    contiguous and the result added afterwards: CPU ``baddbmm_`` into a view falls back to a
    per-row loop that is ~5× slower.)"""
    grad_w.add_(torch.bmm(d.t().contiguous().unsqueeze(1), trace).squeeze(1))
