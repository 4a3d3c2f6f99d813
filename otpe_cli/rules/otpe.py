"""OTPE (SPEC §2): OSTL's eligibility plus the post-synaptic trace R̂, the leaky sum of ∂s/∂θ.

    R̂_t = β·R̂_{t−1} + ψ_t ⊙row ε_t,   gradient e ⊙row R̂_t,   sends ḡ_t down.

Used at the output too (OTPE-front), where e = ∂L_t/∂o_t.
"""
from .base import GBar, contract_batch
from .ostl import OSTL


class OTPE(OSTL):
    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.post_synaptic_trace = self._zeros(self.n_out, self.batch, self.n_in)  # R̂
        self.bias_post_synaptic_trace = self._zeros(self.batch, self.n_out)         # R̂^b
        self.g_bar = GBar(self.beta)

    def update(self, a, psi):
        super().update(a, psi)
        self.post_synaptic_trace.mul_(self.beta).addcmul_(psi.t().unsqueeze(2), self.eligibility)
        self.bias_post_synaptic_trace.mul_(self.beta).addcmul_(psi, self.bias_eligibility)
        self.g_bar.update(psi)

    def accumulate(self, e, grad_w, grad_b):
        contract_batch(e, self.post_synaptic_trace, grad_w)
        grad_b.add_((e * self.bias_post_synaptic_trace).sum(0))

    def modulation(self):
        return self.g_bar.value
