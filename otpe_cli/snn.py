"""The LIF neuron and the feed-forward spiking network (SPEC §1).

One LIF step (`ops.membrane_step`) serves every algorithm: BPTT runs it with autograd on, the
online rules run it under ``torch.no_grad()`` and read the surrogate derivative
``ops.surrogate(v)`` (on CPU a layer's block of them as one call, `compute.lif_layer`).
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .compute import lif_layer, step_error
from .ops import membrane_step, surrogate
from .spec import DEFAULT_BETA, neuron_problem

#: Truncated-normal correction so that the truncated LeCun normal has variance 1/fan_in.
_TRUNC_STD_CORRECTION = 0.87962566103423978

#: The network is feed-forward, so a layer's steps t..t+K−1 need only the layer below's same
#: steps: both passes over a sequence (BPTT's forward and the online rules' offline pass) run
#: blocks of up to this many steps, layer by layer, with each layer's input currents for a block
#: in one matrix product. They use the same blocks, so they compute the same membranes to the
#: last bit (a matrix product over other rows may round differently).
BLOCK_STEPS = 25


def block_steps(steps: int) -> int:
    """The length of the blocks for a sequence of ``steps``: as few blocks of at most
    ``BLOCK_STEPS`` steps as will do, all of one length but the last (50 → 25 + 25)."""
    blocks = -(-steps // BLOCK_STEPS)
    return -(-steps // blocks)


def lecun_truncated_normal_(weight: torch.Tensor, generator: torch.Generator | None = None):
    """Truncated LeCun normal: std = sqrt(1/fan_in)/0.8796, cut at ±2·std (SPEC §1)."""
    std = math.sqrt(1.0 / weight.shape[1]) / _TRUNC_STD_CORRECTION
    with torch.no_grad():
        return nn.init.trunc_normal_(weight, 0.0, std, -2 * std, 2 * std, generator=generator)


class LIFLayer(nn.Module):
    """A fully connected LIF layer; ``weight`` is (out × in), ``bias`` is (out,)."""

    def __init__(self, n_in: int, n_out: int, generator: torch.Generator | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_out, n_in))
        self.bias = nn.Parameter(torch.zeros(n_out))
        lecun_truncated_normal_(self.weight, generator)

    @property
    def n_in(self) -> int:
        return self.weight.shape[1]

    @property
    def n_out(self) -> int:
        return self.weight.shape[0]


@dataclass
class SequenceStats:
    """What a pass over a sequence reports for logging (no graph attached)."""

    loss: float          # J = (1/T)·Σ_t L_t
    counts: torch.Tensor  # (B, C) output spike counts Σ_t s^L_t
    rates: list           # mean firing rate per layer

    def correct(self, y: torch.Tensor) -> torch.Tensor:
        return predict_correct(self.counts, y)


def predict_correct(counts: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SPEC §1 prediction: argmax of spike counts (ties → lowest index); no spike → wrong."""
    return (counts.argmax(dim=1) == y) & (counts.sum(dim=1) > 0)


class StepCrossEntropy:
    """The per-step loss L_t = batch-mean cross-entropy of logits z_t against y (SPEC §1), for
    the online loop. ``error(z)`` returns ∂L_t/∂z_t = (softmax(z_t) − onehot(y))/B for the steps
    of a block and keeps Σ_t log softmax(z_t), so that ``mean_loss()`` = J = (1/T)·Σ_t L_t.
    (BPTT differentiates the same J through ``SNN.sequence_loss``.)"""

    def __init__(self, y: torch.Tensor, num_classes: int, dtype: torch.dtype):
        self.batch = len(y)
        self.onehot = F.one_hot(y, num_classes).to(dtype)
        self._neg_target = self.onehot / -self.batch          # −onehot/B
        self._logp_sum = torch.zeros_like(self.onehot)
        self.steps = 0

    def error(self, z: torch.Tensor) -> torch.Tensor:
        """z: the logits of K steps, (K, B, C); returns ∂L_t/∂z_t for each, (K, B, C)."""
        self.steps += z.shape[0]
        return step_error(z, self._neg_target, self._logp_sum, 1.0 / self.batch)

    def mean_loss(self) -> float:
        return -float((self._logp_sum * self.onehot).sum()) / (self.batch * self.steps)


def _is_size(n) -> bool:
    """An integer ≥ 1 (Python's, NumPy's or a 0-d integer tensor's), not a bool."""
    try:
        return not isinstance(n, bool) and operator.index(n) >= 1
    except TypeError:
        return False


class SNN(nn.Module):
    """Feed-forward LIF network (SPEC §1). ``sizes = [N_in, N_1, …, N_L]``; layer L is the output.

    Parameters are named ``layers.<i>.weight`` / ``layers.<i>.bias``, i = 0 the first hidden layer.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        beta: float = DEFAULT_BETA,
        threshold: float = 1.0,
        slope: float = 25.0,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if len(sizes) < 2:
            raise ValueError("an SNN needs at least an input size and an output size")
        if not all(_is_size(n) for n in sizes):
            raise ValueError(f"sizes={list(sizes)}: every layer size must be an integer ≥ 1")
        sizes = [operator.index(n) for n in sizes]
        problem = neuron_problem(beta, threshold, slope)
        if problem:
            raise ValueError(problem)
        self.sizes = list(sizes)
        self.beta, self.threshold, self.slope = float(beta), float(threshold), float(slope)
        self.layers = nn.ModuleList(
            LIFLayer(n_in, n_out, generator) for n_in, n_out in zip(sizes[:-1], sizes[1:])
        )

    @property
    def depth(self) -> int:
        return len(self.layers)

    def layer_names(self) -> list[str]:
        return [f"layers.{i}" for i in range(self.depth)]

    def lif_block(self, layer: LIFLayer, u, a, with_surrogate: bool = False, counts=None,
                  in_place: bool = False):
        """K steps of one layer on its inputs a (K, B, N_in): the input currents of all K steps
        in one matrix product, then `membrane_step` at each step. Returns v and s as
        (K, B, N_out) and the last u, and ψ = surrogate(v) too if ``with_surrogate``.
        Without autograd, v is written over the currents (`compute.lif_layer`: on CPU, one
        call, its membranes in one fused loop that reproduces `ops` to the last bit), and two
        options serve the online rules' pass: ``counts`` (B, N_out) gets the spikes added, and
        ``in_place`` writes the last u into u itself (else u is left as it was)."""
        if not torch.is_grad_enabled():
            v, s, u, psi = lif_layer(a, layer.weight, layer.bias, u, counts, in_place,
                                     self.beta, self.threshold, self.slope, with_surrogate)
            return (v, s, u, psi) if with_surrogate else (v, s, u)
        if counts is not None or in_place:
            raise ValueError("lif_block: counts and in_place are for passes without autograd")
        current = torch.addmm(layer.bias, a.flatten(0, 1), layer.weight.t())
        vs, ss = [], []
        for v in current.view(*a.shape[:2], -1):
            v, s, u = membrane_step(u, v, self.beta, self.threshold, self.slope)
            vs.append(v)
            ss.append(s)
        out = torch.stack(vs), torch.stack(ss), u
        if with_surrogate:
            out += (surrogate(out[0], self.threshold, self.slope),)
        return out

    def forward(self, x: torch.Tensor, readout: str = "spikes"):
        """Unroll over x (T, B, N_in), in blocks of `block_steps` steps layer by layer.
        Returns (logits (T, B, C), output spikes (T, B, C), rates)."""
        T, B, _ = x.shape
        us = [x.new_zeros(B, layer.n_out) for layer in self.layers]
        o = x.new_zeros(B, self.sizes[-1])
        logits, out_spikes = [], []
        spike_sums = [x.new_zeros(()) for _ in self.layers]
        block = block_steps(T)
        for t in range(0, T, block):
            a = x[t:t + block]
            for i, layer in enumerate(self.layers):
                _, a, us[i] = self.lif_block(layer, us[i], a)
                spike_sums[i] = spike_sums[i] + a.detach().sum()
            out_spikes.append(a)
            if readout == "trace":
                for s in a:
                    o = self.beta * o + s
                    logits.append(o.unsqueeze(0))
            else:
                logits.append(a)
        rates = [float(s) / (T * B * layer.n_out) for s, layer in zip(spike_sums, self.layers)]
        return torch.cat(logits), torch.cat(out_spikes), rates

    def sequence_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """J = (1/T)·Σ_t L_t with L_t the batch-mean cross-entropy (SPEC §1): minus the mean over
        the T·B rows of log softmax(z)[y]. The log-softmax runs over the leading dim of the
        transposed (C, T·B) logits: ATen's kernel for a dim that is not the last vectorises
        across the rows, ~3× faster forward and backward than over a last dim of a few classes
        (the same values to round-off)."""
        T, B, C = logits.shape
        logp = torch.log_softmax(logits.reshape(T * B, C).t(), 0)
        return -logp.gather(0, y.repeat(T).unsqueeze(0)).mean()

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, readout: str = "spikes") -> SequenceStats:
        logits, spikes, rates = self(x, readout)
        return SequenceStats(float(self.sequence_loss(logits, y)), spikes.sum(0), rates)
