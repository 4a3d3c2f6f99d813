"""What every per-layer online rule shares (SPEC §2).

A rule owns one layer's state for a batch. Each time step the driver calls, in order,
``update(a_t, ψ_t)`` after the layer's forward step, then ``accumulate(e_t, grad_w, grad_b)``
with the error e_t = ∂L_t/∂s_t arriving at this step; it adds g_t to the buffers and returns
e_t ⊙ m_t, the modulated error the driver sends down: e^{l−1}_t = (W^l)ᵀ (e^l_t ⊙ m_t).
"""
from __future__ import annotations

import torch


class LayerRule:
    #: per-sample N_out × N_in traces the rule keeps (the memory model of SPEC §2)
    full_traces = 0

    def __init__(self, layer, batch: int, beta: float, threshold: float, bias_trace: bool = False):
        w = layer.weight
        self.beta, self.threshold, self.bias_trace = beta, threshold, bias_trace
        self.n_out, self.n_in = w.shape
        self.batch = batch
        self._zeros = lambda *shape: torch.zeros(*shape, dtype=w.dtype, device=w.device)

    def update(self, a: torch.Tensor, psi: torch.Tensor) -> None:
        raise NotImplementedError

    def accumulate(self, e: torch.Tensor, grad_w: torch.Tensor, grad_b: torch.Tensor
                   ) -> torch.Tensor:
        raise NotImplementedError


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


def contract_batch(d: torch.Tensor, trace: torch.Tensor, grad_w: torch.Tensor) -> None:
    """grad_w[i, j] += Σ_b d[b, i]·trace[i, b, j] — traces are stored (N_out, B, N_in) so that
    this per-step contraction is one batched matmul with no copy of the trace. (``d`` is made
    contiguous and the result added afterwards: CPU ``baddbmm_`` into a view falls back to a
    per-row loop that is ~5× slower.)"""
    grad_w.add_(torch.bmm(d.t().contiguous().unsqueeze(1), trace).squeeze(1))
