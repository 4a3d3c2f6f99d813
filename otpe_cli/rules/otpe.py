"""OTPE (SPEC §2): OSTL's eligibility plus the post-synaptic trace R̂, the leaky sum of ∂s/∂θ.

    R̂_t = β·R̂_{t−1} + ψ_t ⊙row ε_t,   gradient e ⊙row R̂_t,   sends ḡ_t down.

Used at the output too (OTPE-front), where e = ∂L_t/∂o_t.

One step is the recurrence as written. A block of K ≥ 2 steps (see `base` and `ostl`) is
summed with the reverse scans μ_k = e_k + β·μ_{k+1} (what
R̂_k is worth to the block's gradient) and ρ_k = β^{K−k}ψ_k + δ_{k+1}·ρ_{k+1} (what ε_k is
worth to R̂_K):

    Σ_k e_k ⊙row R̂_k = β μ_1 ⊙row R̂_0 + Σ_k (ψ_k μ_k) ⊙row ε_k      (the second as in OSTL)
    R̂_K = β^K R̂_0 + (δ_1 ρ_1) ⊙row ε_0 + Σ_k ρ_k a_kᵀ.

R̂ is stored as R̂ = scale·R̃ with scale = β^t (a Python float), so the β^K decay costs no pass
over R̃; the scale is folded back into R̃ before 1/scale could overflow.
"""
import torch

from .base import GBar, advance_trace, contract_batch, reverse_scan
from .ostl import OSTL

_RENORMALISE_BELOW = 1e-20  # 1/scale stays far from float32's 3e38 over any sequence


class OTPE(OSTL):
    full_traces = 2  # ε and R̃

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.post_synaptic_trace = self._zeros(self.n_out, self.batch, self.n_in)  # R̃ = R̂/scale
        self.bias_post_synaptic_trace = self._zeros(self.batch, self.n_out)         # R̂^b
        self.scale = 1.0
        self.g_bar = GBar(self.beta)

    def update(self, a, psi):
        super().update(a, psi)
        self.g_bar.update(psi)

    def accumulate(self, e, grad_w, grad_b):
        self._errors.append(e)
        return e * self.g_bar.value

    def _decay_post_synaptic(self, decay: float) -> None:
        """R̂ ← decay·R̂, as a change of scale; folded into R̃ when the scale gets small."""
        if self.scale * decay < _RENORMALISE_BELOW:  # (β = 0 included)
            self.post_synaptic_trace.mul_(self.scale * decay)
            self.scale = 1.0
        else:
            self.scale *= decay

    def flush(self, grad_w, grad_b):
        if len(self._psis) == 1:
            psi, e = self._psis[0], self._errors[0]
            self._step_eligibility()
            self._decay_post_synaptic(self.beta)
            self.post_synaptic_trace.addcmul_(psi.t().unsqueeze(2) / self.scale, self.eligibility)
            self.bias_post_synaptic_trace.mul_(self.beta).addcmul_(psi, self.bias_eligibility)
            contract_batch(e * self.scale, self.post_synaptic_trace, grad_w)
            grad_b.add_((e * self.bias_post_synaptic_trace).sum(0))
        elif self._psis:
            self._flush_block(grad_w, grad_b)
        self._inputs.clear(), self._psis.clear(), self._errors.clear()

    def _flush_block(self, grad_w, grad_b):
        psis, decays, inputs = self._block()
        K, beta = len(psis), self.beta
        worth = reverse_scan(self._stack("errors"), beta)                   # μ
        contract_batch(worth[0] * (beta * self.scale), self.post_synaptic_trace, grad_w)
        grad_b.add_((worth[0] * self.bias_post_synaptic_trace).sum(0), alpha=beta)
        powers = psis.new_tensor([beta ** (K - 1 - k) for k in range(K)]).view(K, 1, 1)
        reach = reverse_scan(psis * powers, decays)                          # ρ
        first = decays[0] * reach[0]
        self._decay_post_synaptic(beta ** K)
        self.post_synaptic_trace.addcmul_((first / self.scale).t().unsqueeze(2), self.eligibility)
        advance_trace(self.post_synaptic_trace, None, reach / self.scale, inputs, self._work())
        self.bias_post_synaptic_trace.mul_(beta ** K).addcmul_(first, self.bias_eligibility)
        self.bias_post_synaptic_trace.add_(reach.sum(0))
        self._flush_eligibility(psis * worth, decays, inputs, grad_w, grad_b)
