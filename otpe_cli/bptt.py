"""Exact BPTT (SPEC §1, §2's ``bptt``) as the adjoint of the network's forward blocks.

The network is feed-forward and each layer's recursion is element-wise in time, so reverse mode
through the whole sequence comes apart into, per layer and block of steps:

- the forward block as every pass runs it (`SNN.lif_block`: one matrix product for the input
  currents, the membrane steps; without a graph, so on CPU the fused loop of `kernels`, and the
  same membranes, to the last bit, as the online rules' pass and as the autograd reference
  `algorithms.autograd_bptt_pass`);
- a reverse element-wise scan for λ_t = ∂J/∂v_t, the reset path included
  (`ops.membrane_adjoint`: λ_t = β·λ_{t+1} + ψ_t·(g_t − θ·β·λ_{t+1}), g_t = ∂J/∂s_t from
  the layer above or the loss);
- one matrix product over the block's K·B rows for the weight gradient, ∂J/∂W = Σ_t λ_t a_tᵀ
  (and ∂J/∂b = Σ_t λ_t), and one for the error sent down, ∂J/∂a_t = Wᵀλ_t, which is the layer
  below's g_t.

`_SequenceBPTT` is that as one autograd function over the whole sequence: its output is the
logits z_t (the output spikes, or the leaky trace o_t = β·o_{t−1} + s^L_t), and autograd
differentiates the loss J = (1/T)·Σ_t L_t (`SNN.sequence_loss`) down to them, then calls its
backward. The backward runs the blocks from the last to the first, and in each the layers from
the output down: a layer's block needs the λ of the step after it (the next block's first,
``after``) and the error from the layer above at the same steps, nothing else. The matrix
products run on the blocks as the forward made them (K·B rows each, large enough to run at
the matrix units' speed, and no copy of the blocks into one T·B-row tensor), so the stored and
the checkpointed variants make the same products in the same order.

The forward keeps, per block and layer, the layer's input a_t and ψ_t = ψ(v_t), which the
fused membrane loop makes as it goes: T·B·(N_{l−1} + N_l) values for layer l (SPEC §2's
table: BPTT O(T·Σ N_l)). With ``checkpoint_blocks`` it keeps only each block's start state
(every layer's u), and the backward recomputes a block's forward from it before
differentiating it: memory O(T/K + K) per unit instead of O(T), at the price of a second
forward. The recomputed blocks are the same computations on the same values, so the
gradient is the same to the last bit.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from . import compute, products
from .snn import SNN, block_steps


def _block_starts(steps: int) -> list[int]:
    return list(range(0, steps, block_steps(steps)))


class _SequenceBPTT(torch.autograd.Function):
    """logits = f(x, W¹, b¹, …, Wᴸ, bᴸ) over the whole sequence, with BPTT as its backward
    (see the module's docstring). ``info`` (a dict) receives what the pass reports: the output
    spike counts (B, C) and each layer's spike total."""

    @staticmethod
    def forward(ctx, model: SNN, readout: str, checkpoint: bool, info: dict, x, *params):
        T, B, _ = x.shape
        us = [x.new_zeros(B, layer.n_out) for layer in model.layers]
        o = x.new_zeros(B, model.sizes[-1]) if readout == "trace" else None
        counts = x.new_zeros(B, model.sizes[-1])
        spike_sums = [x.new_zeros(()) for _ in model.layers]
        saved, logits = [], []
        for t in _block_starts(T):
            a = x[t:t + block_steps(T)]
            kept = list(us) if checkpoint else []  # (lif_block leaves the u it is given as it is)
            for i, layer in enumerate(model.layers):
                _, s, us[i], psi = model.lif_block(layer, us[i], a, with_surrogate=True)
                if not checkpoint:
                    kept.append((a, psi))
                spike_sums[i].add_(s.sum())
                a = s
            saved.append(kept)
            counts.add_(a.sum(0))
            logits.append(compute.leaky_sum(o, a, model.beta) if readout == "trace" else a)
        info["counts"], info["spike_sums"] = counts, spike_sums
        ctx.model, ctx.readout, ctx.checkpoint, ctx.blocks = model, readout, checkpoint, saved
        ctx.save_for_backward(x, *params)
        return logits[0] if len(logits) == 1 else torch.cat(logits)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_logits):
        model, x, params = ctx.model, ctx.saved_tensors[0], ctx.saved_tensors[1:]
        beta, theta = model.beta, model.threshold
        weights = params[0::2]
        T, B, _ = x.shape
        grad = grad_logits.contiguous()
        if ctx.readout == "trace":  # ∂J/∂s^L_t = ∂J/∂o_t = ∂J/∂z_t + β·∂J/∂o_{t+1}
            grad = compute.reverse_scan(grad, beta)
        grad_w = [torch.zeros_like(w) for w in weights]
        grad_b = [torch.zeros_like(b) for b in params[1::2]]
        want_x = ctx.needs_input_grad[4]
        grad_x = torch.empty_like(x) if want_x else None
        after = [None] * model.depth  # λ at the first step of the block after, per layer
        starts = _block_starts(T)
        for j in range(len(starts) - 1, -1, -1):
            t = starts[j]
            block = ctx.blocks[j]
            if ctx.checkpoint:  # this block's forward again, from its start state
                a, block = x[t:t + block_steps(T)], []
                for layer, u in zip(model.layers, ctx.blocks[j]):
                    _, s, _, psi = model.lif_block(layer, u, a, with_surrogate=True)
                    block.append((a, psi))
                    a = s
            g = grad[t:t + len(block[0][0])]
            for i in range(model.depth - 1, -1, -1):
                a, psi = block[i]
                lam = compute.membrane_adjoint(g, psi, beta, theta, after[i])
                after[i] = lam[0]
                rows = lam.flatten(0, 1)
                products.add_weight_gradient_(grad_w[i], rows, a.flatten(0, 1))
                grad_b[i].add_(rows.sum(0))
                if i or want_x:
                    g = products.errors_down(rows, weights[i]).view(*a.shape)
            if want_x:
                grad_x[t:t + len(g)] = g
        grads = [g for pair in zip(grad_w, grad_b) for g in pair]
        return (None, None, None, None, grad_x, *grads)


def sequence_logits(model: SNN, x: torch.Tensor, readout: str = "spikes",
                    checkpoint_blocks: bool = False):
    """The logits z (T, B, C) of x (T, B, N_in), differentiable with respect to the parameters
    (and x) through `_SequenceBPTT`'s backward, the output spike counts (B, C) and each layer's
    firing rate (as `SNN.forward` returns them)."""
    info: dict = {}
    logits = _SequenceBPTT.apply(model, readout, bool(checkpoint_blocks), info, x,
                                 *model.parameters())
    T, B, _ = x.shape
    rates = [float(s) / (T * B * layer.n_out) for s, layer in zip(info["spike_sums"],
                                                                   model.layers)]
    return logits, info["counts"], rates
