"""otpe-cli: online learning rules for feed-forward spiking networks, aligned to BPTT.

    from otpe_cli import SNN, sequence_gradients

The names below are imported on first use, so that ``otpe-train --help`` and the command
line's refusals answer without loading torch.
"""
from importlib import import_module

_EXPORTS = {"SNN": "snn", "sequence_gradients": "algorithms", "build_algorithm": "algorithms",
            "Algorithm": "algorithms", "ALGORITHMS": "spec", "alignment": "align"}

__all__ = list(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
