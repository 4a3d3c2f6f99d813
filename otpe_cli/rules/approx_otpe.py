"""Approximate OTPE (SPEC §2): R̂ ≈ ḡ ⊗ ẑ, O(n) state.

ẑ_t = β ẑ_{t−1} + â_t (doubly filtered presynaptic trace); weight gradient (e ⊙ ḡ_t) ẑ_tᵀ;
sends ḡ_t down. Used at the output too (A-OTPE-front), where e = ∂L_t/∂o_t.
"""
from ..compute import leaky_sum
from ..ops import leaky_scalars
from .base import FactorisedRule, GBar


class ApproxOTPE(FactorisedRule):
    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.filtered_presynaptic_trace = self._zeros(self.batch, self.n_in)  # ẑ
        self.bias_filtered_trace = 0.0
        self.g_bar = GBar(self.beta)

    def update(self, a, psi):
        presynaptic, bias = self._advance_presynaptic(a)
        self.pre = leaky_sum(self.filtered_presynaptic_trace, presynaptic, self.beta)
        self.bias_pre = leaky_scalars(self.bias_filtered_trace, self.beta, bias)
        self.bias_filtered_trace = self.bias_pre[-1]
        self.post = self.g_bar.update(psi)
