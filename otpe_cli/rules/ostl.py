"""OSTL (SPEC §2): the exact per-layer eligibility E = ∂u/∂θ.

    ε_t = β·E_{t−1} + 1·a_tᵀ,   E_t = (1 − θ·ψ_t) ⊙row ε_t,   gradient e ⊙row (ψ_t ⊙row ε_t).

We store ε rather than E: ε_t = ε_{t−1} ⊙row β(1 − θψ_{t−1}) + 1·a_tᵀ is one fused pass over
the trace per step (E never has to be materialised). Layout (N_out, B, N_in), see
`contract_batch`.
"""
import torch

from .base import LayerRule, contract_batch


class OSTL(LayerRule):
    full_traces = 1  # ε

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.eligibility = self._zeros(self.n_out, self.batch, self.n_in)   # ε_t
        self.bias_eligibility = self._zeros(self.batch, self.n_out)          # ε^b_t
        self._decay = self._zeros(self.batch, self.n_out)                    # β(1 − θψ_{t−1})
        self._decay_slope = -self.beta * self.threshold

    def update(self, a, psi):
        torch.addcmul(a.unsqueeze(0), self.eligibility, self._decay.t().unsqueeze(2),
                      out=self.eligibility)
        self.bias_eligibility.mul_(self._decay).add_(1.0)
        torch.mul(psi, self._decay_slope, out=self._decay).add_(self.beta)
        self.psi = psi

    def accumulate(self, e, grad_w, grad_b):
        d = e * self.psi
        contract_batch(d, self.eligibility, grad_w)
        grad_b.add_((d * self.bias_eligibility).sum(0))
        return d  # m_t = ψ_t
