"""Approximate OTPE (SPEC §2): R̂ ≈ ḡ ⊗ ẑ, O(n) state.

ẑ_t = β ẑ_{t−1} + â_t (doubly filtered presynaptic trace); weight gradient (e ⊙ ḡ_t) ẑ_tᵀ;
sends ḡ_t down. Used at the output too (A-OTPE-front), where e = ∂L_t/∂o_t.
"""
from .base import FactorisedRule, GBar


class ApproxOTPE(FactorisedRule):
    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.filtered_presynaptic_trace = self._zeros(self.batch, self.n_in)  # ẑ
        self.bias_filtered_trace = 0.0
        self.g_bar = GBar(self.beta)

    def update(self, a, psi):
        self._advance_presynaptic(a)
        self.filtered_presynaptic_trace.mul_(self.beta).add_(self.presynaptic_trace)
        self.bias_filtered_trace = self.beta * self.bias_filtered_trace + self.bias_presynaptic_trace
        self.pre, self.bias_pre = self.filtered_presynaptic_trace, self.bias_filtered_trace
        self.post = self.g_bar.update(psi)
