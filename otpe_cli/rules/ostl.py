"""OSTL (SPEC §2): the exact per-layer eligibility E = ∂u/∂θ.

    ε_t = β·E_{t−1} + 1·a_tᵀ,   E_t = (1 − θ·ψ_t) ⊙row ε_t,   gradient e ⊙row (ψ_t ⊙row ε_t).

We store ε rather than E: ε_t = δ_t ⊙row ε_{t−1} + 1·a_tᵀ with δ_t = β(1 − θψ_{t−1}), so E
never has to be materialised. Layout (B, N_out, N_in): a block adds into it with one batched
matrix product per sample (`advance_trace`).

One step (online, or a last block of one step) is the recurrence as written, the trace's
update and its contraction in one pass over ε, the bias's twin and the next δ in the same
call (`rule_step`). The K steps of a block (see
`base`) are summed exactly with three passes over ε (a contraction, a multiply and a batched
product added in place) instead of three per step: with λ_k the reverse scan
λ_k = d_k + δ_{k+1}·λ_{k+1} of d_k = e_k ⊙ ψ_k,

    Σ_k d_k ⊙row ε_k = (δ_1 λ_1) ⊙row ε_0 + Σ_k λ_k a_kᵀ        (contracted over the batch)
    ε_K = (Π_k δ_k) ⊙row ε_0 + Σ_k (Π_{n>k} δ_n) a_kᵀ,

where ε_0 is the trace before the block; the bias eligibility is the same with a_k = 1.
Offline, ε_0 = 0 at the first block, so ε is made by the first block that ends before the
sequence does (one batched product, no pass over zeros), and the last block, whose ε_K
nothing reads, does not advance it: at T = 2K, ε is written once and read once. The last
block gives ε back to the pass's `TracePool`.
"""
import torch

from ..compute import reverse_scan, rule_step, suffix_products
from ..ops import advance_trace, contract_batch, eligibility_decay
from ..products import add_weight_gradient_
from .base import LayerRule, send_down


class OSTL(LayerRule):
    trace_attributes = ("eligibility",)  # ε

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.eligibility = None                                              # ε (0 until made)
        self.bias_eligibility = self._zeros(self.batch, self.n_out)          # ε^b
        self._decay = self._zeros(self.batch, self.n_out)                    # δ of the next step

    def update(self, a, psi):
        self.inputs, self.psi = a, psi

    def accumulate(self, e, grad_w, grad_b, final=False, weight=None):
        d = e * self.psi
        if len(d) == 1:
            self._step(d[0], grad_w, grad_b, d[0])
        else:
            decays = self._block_decays()
            self._block_eligibility(reverse_scan(d, decays), decays, grad_w, grad_b, final)
        if final:
            self._give_back_traces()
        return send_down(d, weight)  # m_t = ψ_t

    def _step(self, weight, grad_w, grad_b, bias_weight, post=None, coef=None, bias_post=None):
        """One step (`rule_step`): ε ← δ ⊙row ε + 1·aᵀ (and OTPE's R̃ ← R̃ + coef ⊙row ε),
        grad_w += Σ_b weight ⊙row (R̃, else ε), in one pass over the traces; then the bias's
        ε^b ← δ·ε^b + 1 (and OTPE's R̂^b ← β·R̂^b + ψ·ε^b), grad_b += Σ_b bias_weight ⊙
        (R̂^b, else ε^b), and the next step's δ."""
        fresh = self.eligibility is None
        if fresh:
            self.eligibility = self._new_trace()
        rule_step(self.eligibility, post, self._decay, self.inputs[0], coef, weight, grad_w,
                  fresh, self.psi[0], self.bias_eligibility, bias_post, bias_weight, grad_b,
                  self.beta, self.threshold)

    def _decay_after(self, psi, out):
        """δ = β(1 − θψ), the decay of ε at the step after the one with surrogate ψ, in out."""
        eligibility_decay(psi, self.beta, self.threshold, out)

    def _block_decays(self) -> torch.Tensor:
        """δ_k = β(1 − θψ_{k−1}) for the block's K steps (K, B, N_out); sets the next block's."""
        decays = torch.empty_like(self.psi)
        decays[0] = self._decay
        self._decay_after(self.psi[:-1], decays[1:])
        self._decay_after(self.psi[-1], self._decay)
        return decays

    def _block_eligibility(self, lam, decays, grad_w, grad_b, final):
        """Add Σ_k direct_k ⊙row ε_k (contracted over the batch, and the bias twin) to the
        gradients, given λ = reverse_scan(direct, δ), then advance ε and ε^b over the block
        (K ≥ 2 steps), unless the block is ``final``."""
        first = decays[0] * lam[0]
        if self.eligibility is not None:
            contract_batch(first, self.eligibility, grad_w)
        add_weight_gradient_(grad_w, lam.flatten(0, 1), self.inputs.flatten(0, 1))
        grad_b.add_((first * self.bias_eligibility).sum(0)).add_(lam.sum((0, 1)))
        if final:
            return
        products = suffix_products(decays)
        keep, coef = products[0], products[1:]
        self.bias_eligibility.mul_(keep).add_(coef.sum(0))
        fresh = self.eligibility is None
        if fresh:
            self.eligibility = self._new_trace()
        advance_trace(self.eligibility, keep, coef, self.inputs, from_zero=fresh)
