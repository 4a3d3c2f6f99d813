"""Gradient alignment to BPTT (SPEC §4): cosine, sign agreement and norm ratio."""
from __future__ import annotations

import torch

SIGN_EPS = 1e-12


def _measures(g: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    g, ref = g.detach().double().flatten(), ref.detach().double().flatten()
    gn, rn = g.norm(), ref.norm()
    both = (g.abs() > SIGN_EPS) & (ref.abs() > SIGN_EPS)
    return {
        "cos": float(g @ ref / (gn * rn)) if gn > 0 and rn > 0 else float("nan"),
        "sign": float((g[both].sign() == ref[both].sign()).double().mean()) if both.any()
        else float("nan"),
        "norm_ratio": float(gn / rn) if rn > 0 else float("nan"),
    }


def alignment(grads: dict[str, torch.Tensor], reference: dict[str, torch.Tensor],
              prefix: str = "align") -> dict:
    """Per-parameter and global measures, keyed ``<prefix>/<measure>/<param or global>``."""
    out = {}
    for name, g in grads.items():
        for k, v in _measures(g, reference[name]).items():
            out[f"{prefix}/{k}/{name}"] = v
    flat = torch.cat([g.detach().double().flatten() for g in grads.values()])
    flat_ref = torch.cat([reference[n].detach().double().flatten() for n in grads])
    for k, v in _measures(flat, flat_ref).items():
        out[f"{prefix}/{k}/global"] = v
    return out
