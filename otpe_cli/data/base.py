"""The interface the trainer sees of every data set."""
from __future__ import annotations

import torch


from ..errors import DataError  # noqa: F401  (the data sets' error, raised by each of them)


class SpikeDataset:
    """Spike rasters as (T, N, num_inputs) tensors (uint8 counts or 0/1) with labels (N,).

    ``splits`` maps evaluation split names ("val", "test") to fixed (x, y) pairs;
    ``train_batch`` draws a training batch with the trainer's generator, so a checkpointed
    generator state replays the same batches.
    """

    num_inputs: int
    num_classes: int
    num_steps: int
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]]

    def train_batch(self, batch_size: int, generator: torch.Generator):
        raise NotImplementedError

    def prepare(self) -> None:
        """Make whatever is drawn or loaded on first use now (training calls it before its
        clock starts, so the first iteration's time is the iteration's)."""

    @property
    def train_size(self) -> int | None:
        """Number of training samples, or None for a generator with unlimited fresh samples."""
        return None
