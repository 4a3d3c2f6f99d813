"""Where gradients are made: exact BPTT and the one online loop every learning rule runs through.

``sequence_gradients(name, model, x, y)`` is the public entry point (SPEC §2–§3).
"""
from __future__ import annotations

import math
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from .bptt import sequence_logits
from .rules import RULES
from .compute import leaky_sum
from .rules.base import TracePool
from .snn import SNN, SequenceStats, StepCrossEntropy, block_steps
from .spec import ALGORITHMS, COMPOSITES, algorithm_problem, readout_of


def _zeros_like_params(model: SNN) -> list[torch.Tensor]:
    return [torch.zeros_like(p) for p in model.parameters()]


@contextmanager
def _flushing_denormals():
    """Traces decay by β(1 − θψ) every step and reach subnormal floats within a few hundred
    steps; subnormal arithmetic is ~100× slower on CPUs, so flush them to zero while the online
    loop runs, and leave the process's setting as it was afterwards."""
    was_on = float(torch.tensor([1e-39]).mul_(1.0)) == 0.0  # a float32 subnormal, flushed?
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if not was_on:
            torch.set_flush_denormal(False)


@_flushing_denormals()
def online_pass(
    model: SNN,
    rule_names: list[str],
    x: torch.Tensor,
    y: torch.Tensor,
    readout: str,
    bias_trace: bool = False,
    on_step: Callable[[list[torch.Tensor]], None] | None = None,
    traces: TracePool | None = None,
):
    """Run the network forward once over x (T, B, N_in), driving one rule per layer.

    At every step t: each layer's LIF step and rule update, the output error, one spatial sweep
    down the layers (e^{l−1}_t = Wᵀ(e_t ⊙ m_t)); nothing flows back in time and no graph is
    kept. Nothing at step t depends on a later step, and nothing on an earlier one but the
    membranes and the rules' linear traces, so offline the loop runs blocks of up to
    ``snn.BLOCK_STEPS`` steps (the blocks of BPTT's forward): each layer's K steps (one matrix
    product for the input currents, the membrane step by step), the K output errors, the sweep
    of the K errors, and each rule's state over the block in closed form (`rules.base`). The
    memory it adds is the block's, whatever T. Online (``on_step`` given) the block is one
    step: ``on_step(g_t)`` applies the optimizer at every step and the buffers are cleared
    after it. Offline returns G = (1/T)·Σ_t g_t. Returns (gradients aligned with
    ``model.parameters()``, SequenceStats). ``traces``: a pool of per-sample traces kept
    from earlier passes (`rules.base.TracePool`).
    """
    T, B, _ = x.shape
    layers = model.layers
    block = 1 if on_step is not None else block_steps(T)
    grads = _zeros_like_params(model)
    grad_w, grad_b = grads[0::2], grads[1::2]
    traces = traces if traces is not None else TracePool()
    traces.new_pass(B, layers[0].weight.dtype, layers[0].weight.device)
    with torch.no_grad():
        rules = [RULES[name](layer, B, model.beta, model.threshold, bias_trace, traces)
                 for name, layer in zip(rule_names, layers)]
        us = [x.new_zeros(B, layer.n_out) for layer in layers]
        spike_counts = [x.new_zeros(B, layer.n_out) for layer in layers]
        o = x.new_zeros(B, model.sizes[-1])
        loss = StepCrossEntropy(y, model.sizes[-1], x.dtype)
        below = [None] + [layer.weight for layer in layers[1:]]  # what each sends down through
        for t in range(0, T, block):
            a = x[t:t + block]
            for i, (layer, rule) in enumerate(zip(layers, rules)):
                _, s, _, psi = model.lif_block(layer, us[i], a, True, spike_counts[i],
                                               in_place=True)
                rule.update(a, psi)
                a = s
            e = loss.error(leaky_sum(o, a, model.beta) if readout == "trace" else a)
            final = t + block >= T
            for i in range(len(layers) - 1, -1, -1):
                e = rules[i].accumulate(e, grad_w[i], grad_b[i], final, below[i])
            if on_step is not None:
                on_step(grads)
                torch._foreach_zero_(grads)
        if on_step is None:
            for g in grads:
                g.div_(T)
    rates = [float(c.sum()) / (T * B * layer.n_out) for c, layer in zip(spike_counts, layers)]
    return grads, SequenceStats(loss.mean_loss(), spike_counts[-1], rates)


def _differentiate(model: SNN, y: torch.Tensor, forward):
    """∇J at the model's parameters, frozen ones included, for ``forward()`` → (logits,
    output spike counts, rates); the parameters are left as they were."""
    params = list(model.parameters())
    frozen = [p for p in params if not p.requires_grad]  # (their gradient is asked for too)
    try:
        for p in frozen:
            p.requires_grad_(True)
        with torch.enable_grad():
            logits, counts, rates = forward()
            loss = model.sequence_loss(logits, y)
            grads = torch.autograd.grad(loss, params)
    finally:
        for p in frozen:
            p.requires_grad_(False)
    return list(grads), SequenceStats(float(loss.detach()), counts.detach(), rates)


def bptt_pass(model: SNN, x: torch.Tensor, y: torch.Tensor, readout: str,
              checkpoint_blocks: bool = False):
    """Exact reverse-mode gradient of J through time (reset path included; SPEC §1): per
    layer the forward blocks, a reverse scan for ∂J/∂v and two matrix products per block
    (`bptt`). ``checkpoint_blocks``: keep only each block's start state and recompute the
    block in the backward pass (the same gradient, in less memory)."""
    return _differentiate(model, y, lambda: sequence_logits(model, x, readout,
                                                            checkpoint_blocks))


def autograd_bptt_pass(model: SNN, x: torch.Tensor, y: torch.Tensor, readout: str):
    """The same gradient as `bptt_pass` by autograd through `SNN.forward` (every membrane
    step recorded): its definition, kept as the reference that tests hold it to."""
    def forward():
        logits, spikes, rates = model(x, readout)
        return logits, spikes.detach().sum(0), rates

    return _differentiate(model, y, forward)


@dataclass(frozen=True)
class Algorithm:
    """An ``algorithm=`` choice: BPTT, or a composite of per-layer rules (SPEC §2)."""

    name: str
    readout: str
    bias_trace: bool = False
    #: BPTT only: recompute each block's forward in the backward pass (`bptt`)
    checkpoint_blocks: bool = False
    #: the per-sample traces of its last pass, for the next (see `TracePool`)
    traces: TracePool = field(default_factory=TracePool, compare=False, repr=False)

    @property
    def is_bptt(self) -> bool:
        return self.name == "bptt"

    def rule_names(self, depth: int) -> list[str]:
        hidden, output, _ = COMPOSITES[self.name]
        return [hidden] * (depth - 1) + [output]

    def gradients(self, model: SNN, x, y) -> tuple[list[torch.Tensor], SequenceStats]:
        """Offline sequence gradient G at the current parameters, aligned with parameters()."""
        if self.is_bptt:
            return bptt_pass(model, x, y, self.readout, self.checkpoint_blocks)
        return online_pass(model, self.rule_names(model.depth), x, y, self.readout,
                           self.bias_trace, traces=self.traces)

    def train_online(self, model: SNN, x, y, on_step) -> SequenceStats:
        """Online mode: ``on_step(g_t)`` applies an optimizer step at every time step."""
        if self.is_bptt:
            raise ValueError("BPTT has no online mode: use trainer.update=offline")
        return online_pass(model, self.rule_names(model.depth), x, y, self.readout,
                           self.bias_trace, on_step, self.traces)[1]

    def memory_floor(self, sizes: list[int], batch: int, steps: int, itemsize: int,
                     with_reference: bool) -> int:
        """Bytes one training iteration must hold at once, at the least: the parameters and
        their gradients, the input batch, the rules' per-sample N_out × N_in traces and, for
        BPTT (or alignment to it), the membrane and spike of every unit at every step, kept
        for the backward pass. A lower bound (the offline blocks also hold their steps'
        activations, and the allocator its slack), so a refusal built on it never refuses a
        run that would fit. BPTT with ``checkpoint_blocks`` holds every layer's u at each
        block's start, and one block's surrogates and spikes (`bptt`)."""
        need = 2 * sum((n_in + 1) * n_out for n_in, n_out in zip(sizes, sizes[1:])) * itemsize
        need += steps * batch * sizes[0] * itemsize + self.trace_bytes(sizes, batch, itemsize)
        if with_reference or (self.is_bptt and not self.checkpoint_blocks):
            need += 2 * steps * batch * sum(sizes[1:]) * itemsize
        elif self.is_bptt:
            block = block_steps(steps)
            need += (-(-steps // block) + 2 * block) * batch * sum(sizes[1:]) * itemsize
        return need

    def trace_bytes(self, sizes: list[int], batch: int, itemsize: int) -> int:
        """Bytes of the per-sample N_out × N_in traces a pass makes (and the pool keeps)."""
        if self.is_bptt:
            return 0
        return sum(len(RULES[rule].trace_attributes) * batch * n_out * n_in * itemsize
                   for rule, n_in, n_out in zip(self.rule_names(len(sizes) - 1), sizes,
                                                sizes[1:]))

    def reference(self) -> "Algorithm":
        """BPTT of this algorithm's own objective (same logits), for alignment (SPEC §4)."""
        return Algorithm("bptt", self.readout)


def build_algorithm(name: str, readout: str | None = None, bias_trace: bool = False,
                    checkpoint_blocks: bool = False) -> Algorithm:
    problem = algorithm_problem(name, readout, bias_trace)
    if problem:
        raise ValueError(problem)
    if checkpoint_blocks and name != "bptt":
        raise ValueError(f"checkpoint_blocks recomputes BPTT's forward blocks; {name} is an "
                         "online algorithm and keeps no blocks to recompute")
    return Algorithm(name, readout or readout_of(name), bool(bias_trace), bool(checkpoint_blocks))


def checked_batch(model: SNN, x, y) -> tuple[torch.Tensor, torch.Tensor]:
    """x (T, B, N_in) as the model's dtype (spike counts or 0/1 may come as bool, integers or
    any float) and y (B,) class indices as int64, on the model's device; or a ValueError that
    says what is wrong."""
    w = model.layers[0].weight
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ValueError("x and y must be torch tensors: x (T, B, N_in) inputs, y (B,) labels")
    if x.dim() != 3:
        raise ValueError(f"x has shape {tuple(x.shape)}; it must be (T, B, N_in) = (time steps, "
                         f"batch, {model.sizes[0]} inputs)")
    T, B, n_in = x.shape
    if T < 1 or B < 1 or n_in != model.sizes[0]:
        raise ValueError(f"x has shape {tuple(x.shape)}; it must be (T, B, {model.sizes[0]}) "
                         "with T ≥ 1 time steps and B ≥ 1 samples")
    if x.is_complex():
        raise ValueError(f"x has dtype {x.dtype}; give real spike counts or 0/1 values")
    if y.shape != (B,):
        raise ValueError(f"y has shape {tuple(y.shape)}; it must be ({B},), one class index "
                         "per sample of x")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"y has dtype {y.dtype}; it must hold integer class indices")
    if x.device != w.device or y.device != w.device:
        raise ValueError(f"x is on {x.device} and y on {y.device}, but the model is on "
                         f"{w.device}; move them with .to({str(w.device)!r})")
    C = model.sizes[-1]
    if B and (int(y.min()) < 0 or int(y.max()) >= C):
        raise ValueError(f"y holds class indices from {int(y.min())} to {int(y.max())}; the "
                         f"model has {C} output units, so they must lie in 0..{C - 1}")
    x = x.to(w.dtype)
    # (checked in the model's dtype: 1e300 is inf in float32; the extremes are NaN if any
    # value is, and a tenth of the cost of an element-wise check)
    if not all(math.isfinite(float(v)) for v in torch.aminmax(x)):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"x holds {bad} value{'s' * (bad != 1)} that {'are' if bad != 1 else 'is'}"
                         f" NaN or infinite in the model's dtype ({w.dtype}); give finite spike "
                         "counts or 0/1 values")
    return x, y.long()


#: the algorithms `sequence_gradients` has run on each model, with their trace pools: a
#: model's go when the model does
_ALGORITHMS_OF: "weakref.WeakKeyDictionary[SNN, dict]" = weakref.WeakKeyDictionary()


def sequence_gradients(name: str, model: SNN, x: torch.Tensor, y: torch.Tensor,
                       readout: str | None = None, bias_trace: bool = False) -> dict:
    """The offline sequence gradient of algorithm ``name`` at the model's current parameters,
    as {parameter name: tensor}; the parameters and their ``.grad`` are left untouched.
    x: (T, B, N_in) spike counts or 0/1 (any real dtype; used as the model's), y: (B,) class
    indices. The per-sample traces of the last call on this model, whatever its algorithm,
    are kept for the next call (as an `Algorithm` keeps them), and freed with the model."""
    key = (name, readout, bool(bias_trace))
    kept = _ALGORITHMS_OF.setdefault(model, {})
    algorithm = kept.get(key)
    if algorithm is None:
        algorithm = build_algorithm(name, readout, bias_trace)
        if kept:  # one pool per model: it holds only the last call's traces
            algorithm = replace(algorithm, traces=next(iter(kept.values())).traces)
        kept[key] = algorithm
    x, y = checked_batch(model, x, y)
    grads, _ = algorithm.gradients(model, x, y)
    return {n: g for (n, _), g in zip(model.named_parameters(), grads)}
