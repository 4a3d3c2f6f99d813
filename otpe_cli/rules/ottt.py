"""OTTT (SPEC §2): presynaptic trace â, weight gradient (e ⊙ ψ_t) â_tᵀ, reset path ignored."""
from .base import FactorisedRule


class OTTT(FactorisedRule):
    def update(self, a, psi):
        self.pre, self.bias_pre = self._advance_presynaptic(a)
        self.post = psi
