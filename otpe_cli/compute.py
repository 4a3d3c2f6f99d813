"""The block operations of the passes, each run by its fused CPU kernel where one is usable
(`kernels`: CPU tensors without a graph, the kernels built and checked), else by its plain
torch op (`ops`, the definition). Both give the same bits, but for `trace_step`'s gradient,
a sum over the batch in another order (equal to round-off)."""
from __future__ import annotations

import torch

from . import kernels, ops


def membrane_block(current: torch.Tensor, u: torch.Tensor, beta: float, threshold: float,
                   slope: float, with_surrogate: bool):
    """A layer's K membrane steps without autograd, v written over ``current`` (K, B, N):
    returns (spikes, the last u, ψ or None)."""
    fused = kernels.lif_block(current, u, beta, threshold, slope)
    if fused is not None:
        s, psi, u = fused
        return s, u, psi
    s, u = ops.membrane_steps_(current, u, beta, threshold, slope)
    return s, u, ops.surrogate(current, threshold, slope) if with_surrogate else None


def leaky_sum(state: torch.Tensor, inputs: torch.Tensor, decay: float) -> torch.Tensor:
    """`ops.leaky_sum`."""
    fused = kernels.leaky_sum(state, inputs, decay)
    return fused if fused is not None else ops.leaky_sum(state, inputs, decay)


def reverse_scan(direct: torch.Tensor, decay) -> torch.Tensor:
    """`ops.reverse_scan`."""
    fused = kernels.reverse_scan(direct, decay)
    return fused if fused is not None else ops.reverse_scan(direct, decay)


def membrane_adjoint(grad_s: torch.Tensor, psi: torch.Tensor, beta: float, threshold: float,
                     after: torch.Tensor | None = None) -> torch.Tensor:
    """`ops.membrane_adjoint`."""
    fused = kernels.membrane_adjoint(grad_s, psi, beta, threshold, after)
    return fused if fused is not None else ops.membrane_adjoint(grad_s, psi, beta, threshold,
                                                                after)


def suffix_products(decays: torch.Tensor) -> torch.Tensor:
    """`ops.suffix_products`."""
    fused = kernels.suffix_products(decays)
    return fused if fused is not None else ops.suffix_products(decays)


def rate_spikes(keys: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """`ops.rate_spikes`."""
    fused = kernels.rate_spikes(keys, counts)
    return fused if fused is not None else ops.rate_spikes(keys, counts)


def trace_step(eligibility, post, decay, inputs, coef, weight, grad_w, fresh: bool) -> None:
    """`ops.trace_step`."""
    if not kernels.trace_step(eligibility, post, decay, inputs, coef, weight, grad_w, fresh):
        ops.trace_step(eligibility, post, decay, inputs, coef, weight, grad_w, fresh)
