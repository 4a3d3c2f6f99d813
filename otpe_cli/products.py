"""The large matrix products of the block passes: torch's, or oneDNN's where that is faster.

On CPUs torch's matrix products call MKL, which runs its AVX2 code on CPUs that are not Intel's
(such as AMD's, with AVX-512). oneDNN's linear-layer product
(``torch.ops.mkldnn._linear_pointwise``, what torch.compile's CPU backend emits for a linear
layer) runs the CPU's AVX-512 code: some 2× faster at the block passes' shapes on such a CPU
(docs/benchmarks.md). It is used for float32 CPU tensors without a graph, in products of at
least `MIN_ROWS` rows (a block of steps: a single online step of a batch of 128 is faster
through MKL), where ATen's CPU capability is AVX-512 and the op is there and gives the right
products when first used; ``OTPE_CLI_ONEDNN=0`` turns it off. Elsewhere torch's products run.

- The input currents of a block (`block_currents`) go to oneDNN only at shapes where it gives
  torch.addmm's bits, checked once per shape and thread count on random operands (aligned and
  not; at most 4·MIN_ROWS rows): the membranes must equal those of the autograd reference,
  which runs torch.addmm, to the last bit (`kernels`). On this project's CPU it does for inner
  dimensions up to 128 and at least 20 outputs (its sums then run in MKL's order); at other
  shapes torch.addmm runs.
- The backward sweeps' products (`errors_down`, `add_weight_gradient_`) may sum in another
  order, as a product on another thread count does: equal to round-off. The same shapes always
  take the same path, so a run repeats to the bit on the same machine.
"""
from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)

#: the fewest rows a product must have to go to oneDNN
MIN_ROWS = 1024

_usable: bool | None = None               # oneDNN's product is used, once decided
_same_bits: dict[tuple, bool] = {}        # (rows, N_in, N_out, threads): gives addmm's bits
_why_not = ""                             # why not used, once decided


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """bias + x weightᵀ by oneDNN, x (M, K), weight (N, K)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _decide() -> bool:
    """Whether oneDNN's product is used here; the reason why not in `_why_not`."""
    global _why_not
    if os.environ.get("OTPE_CLI_ONEDNN", "1") == "0":
        _why_not = "OTPE_CLI_ONEDNN=0"
        return False
    if not torch.backends.mkldnn.is_available() or \
            torch.backends.cpu.get_cpu_capability() != "AVX512":
        _why_not = "no AVX-512 or no oneDNN here"
        return False
    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*shape, generator=g, dtype=torch.float64)
               for shape in ((MIN_ROWS, 96), (40, 96), (40,)))
    try:
        got = _linear(x.float(), w.float(), b.float()).double()
    except (RuntimeError, AttributeError, TypeError) as err:  # (no such op in this torch)
        _why_not = f"oneDNN's product does not run here ({err})"
        log.info("torch's matrix products are used: %s", _why_not)
        return False
    want = torch.addmm(b, x, w.t())
    if got.shape != want.shape or not bool(((got - want).abs() <= 1e-4 * (1 + want.abs())).all()):
        _why_not = "oneDNN's product gives wrong values here"
        log.warning("torch's matrix products are used: %s", _why_not)
        return False
    return True


def status() -> str:
    """Which products the blocks get, in words."""
    global _usable
    if _usable is None:
        _usable = _decide()
    return (f"oneDNN's at {MIN_ROWS} rows or more (torch.addmm's bits for the currents)"
            if _usable else f"torch's ({_why_not})")


def takes(x: torch.Tensor, rows: int) -> bool:
    """Whether a product of ``rows`` rows on tensors like x goes to oneDNN."""
    global _usable
    if rows < MIN_ROWS or x.dtype != torch.float32 or x.device.type != "cpu" \
            or torch.is_grad_enabled():
        return False
    if _usable is None:
        _usable = _decide()
    return _usable


def _gives_addmm_bits(rows: int, n_in: int, n_out: int) -> bool:
    # (checked at no more than 4·MIN_ROWS rows: an evaluation's block of 10 000 samples is
    # not made twice at random; more rows only split the product further by rows, which
    # changes no element's sum)
    rows = min(rows, 4 * MIN_ROWS)
    key = (rows, n_in, n_out, torch.get_num_threads())
    if key not in _same_bits:
        g = torch.Generator().manual_seed(1)
        held = torch.randn(rows * n_in + 1, generator=g)
        w, b = torch.randn(n_out, n_in, generator=g), torch.randn(n_out, generator=g)
        _same_bits[key] = all(
            torch.equal(_linear(x, w, b), torch.addmm(b, x, w.t()))
            for x in (held[:-1].view(rows, n_in), held[1:].view(rows, n_in)))
    return _same_bits[key]


def block_currents(a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor):
    """A block's input currents bias + a Wᵀ, (K·B, N_out) for a (K, B, N_in), by oneDNN with
    torch.addmm's bits; None where that is not so (then torch.addmm makes them)."""
    rows = a.shape[0] * a.shape[1]
    if not takes(a, rows) or not _gives_addmm_bits(rows, *weight.shape[::-1]):
        return None
    return _linear(a.reshape(rows, -1), weight, bias)


def errors_down(d: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """d W for d (…, N_out) and W (N_out, N_in): the errors a layer sends down."""
    rows = d.numel() // d.shape[-1]
    if not takes(d, rows):
        return d @ weight
    return _linear(d.reshape(rows, -1), weight.t().contiguous(), None).view(
        *d.shape[:-1], weight.shape[1])


def add_weight_gradient_(grad_w: torch.Tensor, lam: torch.Tensor, a: torch.Tensor) -> None:
    """grad_w += lamᵀ a over the rows of lam (R, N_out) and a (R, N_in)."""
    if not takes(lam, lam.shape[0]):
        grad_w.addmm_(lam.t(), a)
    elif grad_w.shape[1] > grad_w.shape[0]:  # (oneDNN is faster with the longer side as N)
        grad_w.add_(_linear(lam.t(), a.t(), None))
    else:
        grad_w.add_(_linear(a.t(), lam.t(), None).t())
