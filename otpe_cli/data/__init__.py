"""Data sets: Randman / T-Randman (generated locally) and SHD / SSC (through tonic)."""
from __future__ import annotations

from ..spec import DATASETS
from .base import DataError, SpikeDataset
from .randman import Randman


def build_dataset(dataset_cfg, encoding: str) -> SpikeDataset:
    """Build the data set a config names (``dataset.name``) with the chosen encoding."""
    name = dataset_cfg.name
    if name in ("randman", "trandman"):  # (spec.RANDMAN_DATASETS)
        return Randman(
            num_classes=dataset_cfg.num_classes, num_units=dataset_cfg.num_units,
            num_steps=dataset_cfg.num_steps, dim_manifold=dataset_cfg.dim_manifold,
            alpha=dataset_cfg.alpha, test_samples_per_class=dataset_cfg.test_samples_per_class,
            manifold_seed=dataset_cfg.manifold_seed, encoding=encoding,
            normalisation=dataset_cfg.normalisation,
            draw_samples_per_class=dataset_cfg.draw_samples_per_class)
    if name in ("shd", "ssc"):
        from .shd import HeidelbergSpikes  # h5py / tonic only when a Heidelberg set is chosen

        return HeidelbergSpikes.from_config(dataset_cfg, encoding)
    raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}.")


__all__ = ["build_dataset", "DataError", "SpikeDataset", "Randman"]
