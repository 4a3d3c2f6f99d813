"""OSTL (SPEC §2): the exact per-layer eligibility E = ∂u/∂θ.

    ε_t = β·E_{t−1} + 1·a_tᵀ,   E_t = (1 − θ·ψ_t) ⊙row ε_t,   gradient e ⊙row (ψ_t ⊙row ε_t).

We store ε rather than E: ε_t = δ_t ⊙row ε_{t−1} + 1·a_tᵀ with δ_t = β(1 − θψ_{t−1}), so E
never has to be materialised. Layout (N_out, B, N_in), see `contract_batch`.

One step (online, or the last of a sequence) is the recurrence as written. The K steps of a
block (see `base`) are summed exactly with one pass over ε: with λ_k the reverse scan
λ_k = d_k + δ_{k+1}·λ_{k+1} of d_k = e_k ⊙ ψ_k,

    Σ_k d_k ⊙row ε_k = (δ_1 λ_1) ⊙row ε_0 + Σ_k λ_k a_kᵀ        (contracted over the batch)
    ε_K = (Π_k δ_k) ⊙row ε_0 + Σ_k (Π_{n>k} δ_n) a_kᵀ,

where ε_0 is the trace before the block; the bias eligibility is the same with a_k = 1.
"""
import torch

from .base import LayerRule, advance_trace, contract_batch, reverse_scan, suffix_products


class OSTL(LayerRule):
    full_traces = 1  # ε

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.eligibility = self._zeros(self.n_out, self.batch, self.n_in)   # ε
        self.bias_eligibility = self._zeros(self.batch, self.n_out)          # ε^b
        self._decay = self._zeros(self.batch, self.n_out)                    # δ of the next step
        self._inputs, self._psis, self._errors = [], [], []  # a_k, ψ_k, the rule's error: the block
        self._stacks = {}

    def update(self, a, psi):
        self._inputs.append(a)
        self._psis.append(psi)

    def accumulate(self, e, grad_w, grad_b):
        d = e * self._psis[-1]
        self._errors.append(d)
        return d  # m_t = ψ_t

    def flush(self, grad_w, grad_b):
        if len(self._psis) == 1:
            self._step_eligibility()
            d = self._errors[0]
            contract_batch(d, self.eligibility, grad_w)
            grad_b.add_((d * self.bias_eligibility).sum(0))
        elif self._psis:
            _, decays, inputs = self._block()
            self._flush_eligibility(self._stack("errors"), decays, inputs, grad_w, grad_b)
        self._inputs.clear(), self._psis.clear(), self._errors.clear()

    def _step_eligibility(self):
        """One step: ε ← δ ⊙row ε + 1·aᵀ, ε^b ← δ·ε^b + 1, and the next step's δ."""
        decay = self._decay.t().unsqueeze(2)
        torch.addcmul(self._inputs[0].unsqueeze(0), self.eligibility, decay, out=self.eligibility)
        self.bias_eligibility.mul_(self._decay).add_(1.0)
        torch.mul(self._psis[0], -self.beta * self.threshold, out=self._decay).add_(self.beta)

    def _stack(self, name: str) -> torch.Tensor:
        """The block's list ``_<name>`` as one (K, …) tensor, in a buffer kept for the next block."""
        tensors = getattr(self, "_" + name)
        buffer = self._stacks.get(name)
        if buffer is None:
            buffer = self._stacks[name] = tensors[0].new_empty((self.block,) + tensors[0].shape)
        return torch.stack(tensors, out=buffer[:len(tensors)])

    def _block(self):
        """The block's ψ and decays δ (K, B, N_out) and inputs a (K, B, N_in); sets the next
        block's first δ."""
        psis = self._stack("psis")
        decays = torch.empty_like(psis)
        decays[0] = self._decay
        torch.mul(psis[:-1], -self.beta * self.threshold, out=decays[1:]).add_(self.beta)
        torch.mul(psis[-1], -self.beta * self.threshold, out=self._decay).add_(self.beta)
        return psis, decays, self._stack("inputs")

    def _work(self) -> torch.Tensor:
        """A (B, N_out, N_in) work tensor for `advance_trace`, in the shared scratch space."""
        size = self.batch * self.n_out * self.n_in
        if self.scratch is None or self.scratch.numel() < size:
            self.scratch = self.eligibility.new_empty(size)
        return self.scratch[:size].view(self.batch, self.n_out, self.n_in)

    def _flush_eligibility(self, direct, decays, inputs, grad_w, grad_b):
        """Add Σ_k direct_k ⊙row ε_k (contracted over the batch, and the bias twin) to the
        gradients, then advance ε and ε^b over the block (K ≥ 2 steps)."""
        lam = reverse_scan(direct, decays)
        first = decays[0] * lam[0]
        contract_batch(first, self.eligibility, grad_w)
        grad_w.addmm_(lam.flatten(0, 1).t(), inputs.flatten(0, 1))
        grad_b.add_((first * self.bias_eligibility).sum(0)).add_(lam.sum((0, 1)))
        products = suffix_products(decays)
        keep, coef = products[0], products[1:]
        self.bias_eligibility.mul_(keep).add_(coef.sum(0))
        advance_trace(self.eligibility, keep, coef, inputs, self._work())
