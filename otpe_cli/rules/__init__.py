"""Per-layer online learning rules (SPEC §2), by name; the composites are `spec.COMPOSITES`."""
from .approx_otpe import ApproxOTPE
from .base import GBar, LayerRule
from .ostl import OSTL
from .otpe import OTPE
from .ottt import OTTT

RULES = {"ottt": OTTT, "ostl": OSTL, "otpe": OTPE, "approx_otpe": ApproxOTPE}

__all__ = ["RULES", "LayerRule", "GBar", "OTTT", "OSTL", "OTPE", "ApproxOTPE"]
