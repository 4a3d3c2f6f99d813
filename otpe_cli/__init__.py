"""otpe-cli: online learning rules for feed-forward spiking networks, aligned to BPTT."""
from .algorithms import ALGORITHMS, Algorithm, build_algorithm, sequence_gradients
from .alignment import alignment
from .snn import SNN

__all__ = ["SNN", "sequence_gradients", "build_algorithm", "Algorithm", "ALGORITHMS", "alignment"]
__version__ = "0.1.0"
