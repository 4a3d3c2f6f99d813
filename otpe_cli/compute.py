"""The block operations of the passes, each run by its fused CPU kernel where one is usable
(`kernels`: CPU tensors without a graph, the kernels built and checked), else by its plain
torch op (`ops`, the definition). Both give the same bits, but for the gradients of
`rule_step`, sums over the batch in another order (equal to round-off). The large matrix products go through `products`."""
from __future__ import annotations

import torch

from . import kernels, ops, products


def lif_layer(a, weight, bias, u, counts, in_place: bool, beta: float, threshold: float,
              slope: float, with_surrogate: bool):
    """`ops.lif_layer` (on CPU, ψ is made whatever ``with_surrogate``: it costs nothing), a
    block's currents by oneDNN where `products` takes them (torch.addmm's bits)."""
    current = products.block_currents(a, weight, bias)
    fused = kernels.lif_layer(a, weight, bias, u, counts, in_place, beta, threshold, slope,
                              current)
    if fused is not None:
        return fused
    return ops.lif_layer(a, weight, bias, u, counts, in_place, beta, threshold, slope,
                         with_surrogate, current)


def outer_accumulate(e, post, pre, grad_w, grad_b, bias_pre=None, weight=None) -> torch.Tensor:
    """`ops.outer_accumulate`: one call to the kernels, unless its products go to oneDNN
    (`products`; then they are the larger part, and the plain ops make them)."""
    if not products.takes(e, e.shape[0] * e.shape[1]):
        fused = kernels.outer_accumulate(e, post, pre, grad_w, grad_b, bias_pre, weight)
        if fused is not None:
            return fused
    return ops.outer_accumulate(e, post, pre, grad_w, grad_b, bias_pre, weight)


def step_error(z, neg_target, logp_sum, inv_batch: float) -> torch.Tensor:
    """`ops.step_error`."""
    fused = kernels.step_error(z, neg_target, logp_sum, inv_batch)
    return fused if fused is not None else ops.step_error(z, neg_target, logp_sum, inv_batch)


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


def rule_step(eligibility, post, decay, inputs, coef, weight, grad_w, fresh: bool, psi,
              bias_eligibility, bias_post, bias_weight, grad_b, beta: float,
              threshold: float) -> None:
    """`ops.rule_step`."""
    args = (eligibility, post, decay, inputs, coef, weight, grad_w, fresh, psi,
            bias_eligibility, bias_post, bias_weight, grad_b, beta, threshold)
    if not kernels.rule_step(*args):
        ops.rule_step(*args)
