"""OTPE (SPEC §2): OSTL's eligibility plus the post-synaptic trace R̂, the leaky sum of ∂s/∂θ.

    R̂_t = β·R̂_{t−1} + ψ_t ⊙row ε_t,   gradient e ⊙row R̂_t,   sends ḡ_t down.

Used at the output too (OTPE-front), where e = ∂L_t/∂o_t.

R̂ is stored as R̂_t = scale_t·R̃_t with scale_t = β^t (a Python float), so each step is one fused
pass R̃ += (ψ_t/scale_t) ⊙row ε_t instead of a decay pass plus an accumulate pass; the scale is
folded back into R̃ before 1/scale could overflow.
"""
from .base import GBar, contract_batch
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
        self.scale *= self.beta
        if self.scale < _RENORMALISE_BELOW:
            self.post_synaptic_trace.mul_(self.scale)
            self.scale = 1.0
        self.post_synaptic_trace.addcmul_(psi.t().unsqueeze(2) / self.scale, self.eligibility)
        self.bias_post_synaptic_trace.mul_(self.beta).addcmul_(psi, self.bias_eligibility)
        self.g_bar.update(psi)

    def accumulate(self, e, grad_w, grad_b):
        contract_batch(e * self.scale, self.post_synaptic_trace, grad_w)
        grad_b.add_((e * self.bias_post_synaptic_trace).sum(0))
        return e * self.g_bar.value
