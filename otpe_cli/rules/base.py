"""What every per-layer online rule shares (SPEC §2).

A rule owns one layer's state for a batch and is driven one block of K time steps at a time
(K = 1 online, where the parameters change every step; offline, `snn.block_steps`). The
driver calls ``update(a, ψ)`` with the layer's inputs a_t (K, B, N_in) and surrogates ψ_t
(K, B, N_out) after the layer's forward steps, then ``accumulate(e, grad_w, grad_b, final)``
with the errors e_t = ∂L_t/∂s_t arriving at this layer's output at the same steps
(K, B, N_out); ``final`` says that no step follows, so the state after the block is never
read and need not be computed (the rule is then done). It adds Σ_k g_t to the buffers and
returns the errors it sends down, e^{l−1}_t = (W^l)ᵀ (e^l_t ⊙ m_t), given the layer's
``weight`` W^l (else, at the first layer, the modulated errors e_t ⊙ m_t).
Nothing flows back in time: step t's error is used at step t only, so the K steps of a block
can be summed with the same result as one by one.

Every state a rule keeps is a linear recurrence x_t = decay_t·x_{t−1} + input_t whose decays
and inputs (a, ψ) and whose errors do not depend on the state, so a block is evaluated
whole: the small O(n) states step by step into one block tensor (`leaky_sum`), whose
gradients are then one matrix product over the block's K·B rows; the per-sample N_out × N_in
traces of OSTL and OTPE in closed form, with reverse scans over the block's steps and one pass
over each trace (`reverse_scan`, `advance_trace`). That is exact, not an approximation; it only
changes the order of the sums.
"""
from __future__ import annotations

import torch

from ..compute import leaky_sum, outer_accumulate
from ..ops import leaky_scalars
from ..products import errors_down


class TracePool:
    """Per-sample N_out × N_in traces kept from one pass to the next.

    Every pass needs its traces afresh, and a freed tensor of the process's largest size goes
    back to the OS, so allocating it again costs a page fault on each of its 4 KiB pages, a
    large share of an OTPE sequence gradient on a CPU. An `Algorithm` keeps one pool for
    all its passes: a pass calls ``new_pass(B, dtype, device)``, its rules ``take`` their
    traces (uninitialised) and ``give_back`` the ones they are done with, which the next pass
    may take. Only the last pass's traces are kept, and only those a pass can use: of its
    batch size, dtype and device, and not made under ``torch.inference_mode()`` unless it runs
    there too (such a tensor cannot be written outside it)."""

    def __init__(self):
        self._free: list[torch.Tensor] = []
        self._given_back: list[torch.Tensor] = []

    def new_pass(self, batch: int, dtype: torch.dtype, device: torch.device) -> None:
        inference = torch.is_inference_mode_enabled()
        self._free = [t for t in self._given_back
                      if t.shape[0] == batch and t.dtype == dtype and t.device == device
                      and (inference or not t.is_inference())]
        self._given_back = []

    def take(self, shape: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        for i, trace in enumerate(self._free):
            if trace.shape == shape and trace.dtype == dtype and trace.device == device:
                return self._free.pop(i)
        return torch.empty(shape, dtype=dtype, device=device)

    def give_back(self, trace: torch.Tensor) -> None:
        self._given_back.append(trace)


class LayerRule:
    #: the attributes that hold the rule's per-sample N_out × N_in traces (None until made;
    #: their number is the memory model of SPEC §2)
    trace_attributes: tuple[str, ...] = ()

    def __init__(self, layer, batch: int, beta: float, threshold: float, bias_trace: bool = False,
                 traces: TracePool | None = None):
        w = layer.weight
        self.beta, self.threshold, self.bias_trace = beta, threshold, bias_trace
        self.n_out, self.n_in = w.shape
        self.batch = batch
        self._dtype, self._device = w.dtype, w.device
        self._traces = traces if traces is not None else TracePool()

    def _zeros(self, *shape) -> torch.Tensor:
        return torch.zeros(*shape, dtype=self._dtype, device=self._device)

    def _new_trace(self) -> torch.Tensor:
        """An uninitialised per-sample trace (B, N_out, N_in), from the pool."""
        return self._traces.take((self.batch, self.n_out, self.n_in), self._dtype, self._device)

    def _give_back_traces(self) -> None:
        """The rule is done: its traces go back to the pool for the next pass."""
        for name in self.trace_attributes:
            trace = getattr(self, name)
            if trace is not None:
                self._traces.give_back(trace)
                setattr(self, name, None)

    def update(self, a: torch.Tensor, psi: torch.Tensor) -> None:
        raise NotImplementedError

    def accumulate(self, e: torch.Tensor, grad_w: torch.Tensor, grad_b: torch.Tensor,
                   final: bool = False, weight: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError


def send_down(modulated: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """The errors a layer sends down, (e ⊙ m) W, or e ⊙ m without a weight."""
    return modulated if weight is None else errors_down(modulated, weight)


class GBar:
    """Normalised leaky average of ψ (SPEC §2): ḡ_t = Σ_k β^{t−k} ψ_k / Σ_k β^{t−k}, the
    closed form of c_t = β·c_{t−1} + 1, r_t = β·c_{t−1}/c_t, ḡ_t = r_t·ḡ_{t−1} + (1 − r_t)·ψ_t
    (so ḡ_1 = ψ_1). Kept as the leaky sum Σ_k β^{t−k} ψ_k and its weight c_t."""

    def __init__(self, beta: float):
        self.beta, self.c, self.sum, self.value = beta, 0.0, None, None

    def update(self, psi: torch.Tensor) -> torch.Tensor:
        """ψ of a block (K, B, N); returns ḡ at each of its steps, (K, B, N)."""
        if self.sum is None:
            self.sum = torch.zeros_like(psi[0])
        weights = leaky_scalars(self.c, self.beta, [1.0] * len(psi))  # c_t at each step
        self.c = weights[-1]
        divisor = (weights[0] if len(weights) == 1 else
                   psi.new_tensor(weights).view(-1, *[1] * (psi.dim() - 1)))
        self.value = leaky_sum(self.sum, psi, self.beta).div_(divisor)
        return self.value


class FactorisedRule(LayerRule):
    """Rules whose weight gradient is an outer product (e ⊙ post_t) pre_tᵀ: OTTT and A-OTPE.

    The bias gradient is e ⊙ post_t — no temporal factor, as in the paper — unless
    ``bias_trace`` is set, which multiplies it by the same trace a constant input of 1 would
    carry through ``pre`` (a scalar shared by every sample and unit).
    """

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.presynaptic_trace = self._zeros(self.batch, self.n_in)  # â_t = β â_{t−1} + a_t
        self.bias_presynaptic_trace = 0.0                            # â for the input 1

    def _advance_presynaptic(self, a: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
        """â over the block (K, B, N_in), and the bias input's â at each step."""
        bias = leaky_scalars(self.bias_presynaptic_trace, self.beta, [1.0] * a.shape[0])
        self.bias_presynaptic_trace = bias[-1]
        return leaky_sum(self.presynaptic_trace, a, self.beta), bias

    # over the block: pre (K, B, N_in) paired with the weight; bias_pre its K scalar twins;
    # post (K, B, N_out)
    pre: torch.Tensor
    bias_pre: list
    post: torch.Tensor

    def accumulate(self, e, grad_w, grad_b, final=False, weight=None):
        # d = e ⊙ post, sent down: post is also m_t (OTTT sends ψ_t, A-OTPE ḡ_t)
        bias_pre = e.new_tensor(self.bias_pre) if self.bias_trace else None
        return outer_accumulate(e, self.post, self.pre, grad_w, grad_b, bias_pre, weight)


