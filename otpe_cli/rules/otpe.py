"""OTPE (SPEC §2): OSTL's eligibility plus the post-synaptic trace R̂, the leaky sum of ∂s/∂θ.

    R̂_t = β·R̂_{t−1} + ψ_t ⊙row ε_t,   gradient e ⊙row R̂_t,   sends ḡ_t down.

Used at the output too (OTPE-front), where e = ∂L_t/∂o_t.

One step is the recurrence as written: ε, R̃ and the contraction in one pass, R̂^b with them
(`rule_step`).
A block of K ≥ 2 steps (see `base` and `ostl`) is summed with the reverse scans
μ_k = e_k + β·μ_{k+1} (what R̂_k is worth to the block's gradient) and
ρ_k = β^{K−k}ψ_k + δ_{k+1}·ρ_{k+1} (what ε_k is worth to R̂_K):

    Σ_k e_k ⊙row R̂_k = β μ_1 ⊙row R̂_0 + Σ_k (ψ_k μ_k) ⊙row ε_k      (the second as in OSTL)
    R̂_K = β^K R̂_0 + (δ_1 ρ_1) ⊙row ε_0 + Σ_k ρ_k a_kᵀ.

R̂ is stored as R̂ = scale·R̃ with scale = β^t (a Python float), so the β^K decay costs no pass
over R̃; the scale is folded back into R̃ before 1/scale could overflow. As ε in OSTL,
R̃ is made by the first block that ends before the sequence does, and the last block does
not advance it but gives it back.
"""
import torch

from ..compute import reverse_scan
from ..ops import advance_trace, contract_batch
from .base import GBar, send_down
from .ostl import OSTL

_RENORMALISE_BELOW = 1e-20  # 1/scale stays far from float32's 3e38 over any sequence


class OTPE(OSTL):
    trace_attributes = ("eligibility", "post_synaptic_trace")  # ε and R̃

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.post_synaptic_trace = None                       # R̃ = R̂/scale (0 until made)
        self.bias_post_synaptic_trace = self._zeros(self.batch, self.n_out)  # R̂^b
        self.scale = 1.0
        self.g_bar = GBar(self.beta)

    def update(self, a, psi):
        super().update(a, psi)
        self.g_bar.update(psi)

    def _decay_post_synaptic(self, decay: float) -> None:
        """R̂ ← decay·R̂, as a change of scale; when the scale gets small it is folded into R̃
        instead (so R̃ must not be read as the R̂ before this)."""
        if self.scale * decay < _RENORMALISE_BELOW:  # (β = 0 included)
            if self.post_synaptic_trace is not None:
                self.post_synaptic_trace.mul_(self.scale * decay)
            self.scale = 1.0
        else:
            self.scale *= decay

    def accumulate(self, e, grad_w, grad_b, final=False, weight=None):
        if len(e) == 1:
            psi = self.psi[0]
            self._decay_post_synaptic(self.beta)
            if self.post_synaptic_trace is None:  # (made with ε, at the first step)
                self.post_synaptic_trace = self._new_trace()
            self._step(e[0] * self.scale, grad_w, grad_b, e[0], self.post_synaptic_trace,
                       psi / self.scale, self.bias_post_synaptic_trace)
        else:
            self._block(e, grad_w, grad_b, final)
        if final:
            self._give_back_traces()
        return send_down(e * self.g_bar.value, weight)

    def _block(self, e, grad_w, grad_b, final):
        decays = self._block_decays()
        K, beta, psi, trace = len(e), self.beta, self.psi, self.post_synaptic_trace
        worth = reverse_scan(e, beta)                                        # μ
        if trace is not None:
            contract_batch(worth[0] * (beta * self.scale), trace, grad_w)
        grad_b.add_((worth[0] * self.bias_post_synaptic_trace).sum(0), alpha=beta)
        if final:  # R̂ after the block is never read: only λ is needed
            lam = reverse_scan(psi * worth, decays)
            self._block_eligibility(lam, decays, grad_w, grad_b, final)
            return
        self._decay_post_synaptic(beta ** K)  # (after the contraction of R̂_0)
        # one scan through ε's decays for two things: ρ/scale, what ε_k is worth to R̃ at
        # the block's end, and λ, what it is worth to the block's gradient
        powers = psi.new_tensor([beta ** (K - 1 - k) / self.scale for k in range(K)])
        direct = psi.new_empty((K, 2) + psi.shape[1:])
        torch.mul(psi, powers.view(K, 1, 1), out=direct[:, 0])
        torch.mul(psi, worth, out=direct[:, 1])
        reach, lam = reverse_scan(direct, decays.unsqueeze(1)).unbind(1)
        first = decays[0] * reach[0]
        fresh = trace is None  # (then so is ε_0: both are made by the same block)
        if fresh:
            trace = self.post_synaptic_trace = self._new_trace()
        else:
            trace.addcmul_(first.unsqueeze(2), self.eligibility)  # reads ε_0
        advance_trace(trace, None, reach, self.inputs, from_zero=fresh)
        self.bias_post_synaptic_trace.mul_(beta ** K)
        self.bias_post_synaptic_trace.addcmul_(first, self.bias_eligibility, value=self.scale)
        self.bias_post_synaptic_trace.add_(reach.sum(0), alpha=self.scale)
        self._block_eligibility(lam, decays, grad_w, grad_b, final)
