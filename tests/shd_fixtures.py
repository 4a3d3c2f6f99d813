"""Tiny files in the exact SHD / SSC HDF5 format, written for tests and benchmarks.

Layout of the real files: ``spikes/times`` (one float16 array of seconds per sample, sorted),
``spikes/units`` (one uint16 array per sample, 0..699), ``labels`` (uint8), ``extra/keys``
(class names), ``extra/speaker`` (one speaker id per sample).
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

CHANNELS = 700


def random_samples(n: int, rng: np.random.Generator, max_spikes: int = 300,
                   max_time: float = 1.4, edge_cases: bool = True):
    """Per-sample (times float16 sorted, units uint16); with edge cases at the start."""
    times, units = [], []
    for i in range(n):
        k = int(rng.integers(1, max_spikes + 1))
        duration = float(rng.uniform(0.2, max_time))
        t = np.sort(rng.uniform(0.0, duration, k).astype(np.float16))
        if edge_cases and i == 1:
            t = np.array([], np.float16)                              # empty sample
        elif edge_cases and i == 2:
            t = np.array([0.5], np.float16)                           # one spike
        elif edge_cases and i == 3:
            t = np.sort(np.full(7, 0.3, np.float16) + np.float16(rng.integers(0, 3, 7) * 1e-5))
        elif edge_cases and i == 4:
            t = np.arange(0, 1.25, 0.01).astype(np.float16)          # spikes on grid edges
        elif edge_cases and i == 5:
            t = np.sort(rng.uniform(0.9, 1.4, k)).astype(np.float16)  # late spikes, past t_max
        u = rng.integers(0, CHANNELS, len(t)).astype(np.uint16)
        if edge_cases and i == 6:
            u[:] = 3                                                   # counts above 1
        times.append(t)
        units.append(u)
    return times, units


def write_hsd_file(path: Path, times, units, labels, num_classes: int = 20,
                   drop: tuple = ()) -> Path:
    """Write one SHD-format file; keys named in ``drop`` are left out (for corrupt files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        if "spikes/times" not in drop:
            d = f.create_dataset("spikes/times", (len(times),),
                                 dtype=h5py.vlen_dtype(np.dtype("float16")))
            for i, t in enumerate(times):
                d[i] = t
        if "spikes/units" not in drop:
            d = f.create_dataset("spikes/units", (len(units),),
                                 dtype=h5py.vlen_dtype(np.dtype("uint16")))
            for i, u in enumerate(units):
                d[i] = u
        if "labels" not in drop:
            f.create_dataset("labels", data=np.asarray(labels, np.uint8))
        if "extra/keys" not in drop:
            f.create_dataset("extra/keys", data=np.array(
                [f"class-{c}".encode() for c in range(num_classes)]))
        if "extra/speaker" not in drop:
            f.create_dataset("extra/speaker", data=np.arange(len(labels), dtype=np.uint8) % 10)
    return path


def make_hsd(root: Path, name: str = "shd", sizes: dict | None = None, seed: int = 0,
             max_spikes: int = 300, max_time: float = 1.4) -> dict:
    """Write every split of ``name`` (shd | ssc) under ``root/<SHD|SSC>/``; returns split → path.

    Labels cycle through the classes in file order, so every split holds every class.
    """
    num_classes = {"shd": 20, "ssc": 35}[name]
    folder = Path(root) / name.upper()
    if sizes is None:
        sizes = {"train": 40, "test": 12} if name == "shd" else \
            {"train": 40, "valid": 10, "test": 12}
    rng = np.random.default_rng(seed)
    paths = {}
    for split, n in sizes.items():
        times, units = random_samples(n, rng, max_spikes, max_time, edge_cases=split == "train")
        labels = (np.arange(n) + rng.integers(num_classes)) % num_classes
        paths[split] = write_hsd_file(folder / f"{name}_{split}.h5", times, units, labels,
                                      num_classes)
    return paths
