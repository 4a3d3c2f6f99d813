#!/usr/bin/env python
"""How hard Randman and T-Randman are: a nearest-centroid probe on the spike steps (SPEC §6).

    python scripts/randman_probe.py                    # both encodings, both normalisations
    python scripts/randman_probe.py --pool 1 7 50      # centroids from 1, 7 and 50 draws

Each class's centroid is the mean of its samples' features over a pool of training draws (every
sample of each draw); the probe classifies the test set by the nearest centroid (Euclidean).
Features: the spike step of each unit (T-Randman) or its spike count (Randman, k + 1 spikes for
step k). With ``per_draw`` every draw is normalised on itself, so the centroids move from one
draw to the next and the probe's accuracy depends on how many draws the pool holds; with
``fixed`` the classes are separable. No network is trained.
"""
from __future__ import annotations

import argparse
import time

import torch

from otpe_cli.data.randman import Randman


def features(x: torch.Tensor, encoding: str) -> torch.Tensor:
    """(T, n, M) rasters → (n, M): the spike count (rate) or the spike step (time)."""
    return x.float().sum(0) if encoding == "rate" else x.argmax(0).float()


def probe(data: Randman, pools: list[int], seed: int = 0, batch: int | None = None) -> dict:
    """Test accuracy of the nearest-centroid probe with centroids from the first n training
    draws, for each n in ``pools``. ``batch``: samples per draw (default: all of a per-draw
    draw, or 10 000 fresh samples per ``fixed`` batch)."""
    x_test, y_test = data.splits["test"]
    f_test = features(x_test, data.encoding)
    C = data.num_classes
    if batch is None:
        batch = C * data.draw_samples_per_class if data.normalisation == "per_draw" else 10000
    gen = torch.Generator().manual_seed(seed)
    sums, counts, out = torch.zeros(C, data.num_inputs), torch.zeros(C), {}
    for n in range(1, max(pools) + 1):
        x, y = data.train_batch(batch, gen)
        sums.index_add_(0, y, features(x, data.encoding))
        counts.index_add_(0, y, torch.ones(len(y)))
        if n in pools:
            centroids = sums / counts.clamp_min(1)[:, None]
            guess = torch.cdist(f_test, centroids).argmin(1)
            out[n] = float((guess == y_test).double().mean())
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pool", type=int, nargs="+", default=[1, 3, 7, 20, 50],
                   help="numbers of training draws the centroids are averaged over")
    p.add_argument("--encodings", nargs="+", default=["time", "rate"], choices=["time", "rate"])
    p.add_argument("--normalisations", nargs="+", default=["per_draw", "fixed"],
                   choices=["per_draw", "fixed"])
    p.add_argument("--seed", type=int, default=0, help="seed of the training draws")
    p.add_argument("--fixed-batch", type=int, default=2000,
                   help="fresh samples per training batch under the fixed normalisation (each "
                        "is evaluated directly, ~0.5 s per 2 000)")
    args = p.parse_args()
    print("nearest-centroid probe, test accuracy with centroids from n training draws")
    print(f"{'data set':<10} {'normalisation':<14}" + "".join(f"{f'n={n}':>9}" for n in args.pool))
    for normalisation in args.normalisations:
        for encoding in args.encodings:
            tic = time.perf_counter()
            data = Randman(encoding=encoding, normalisation=normalisation)
            batch = args.fixed_batch if normalisation == "fixed" else None
            acc = probe(data, args.pool, args.seed, batch)
            name = "T-Randman" if encoding == "time" else "Randman"
            print(f"{name:<10} {normalisation:<14}" + "".join(f"{acc[n]:>9.3f}" for n in args.pool)
                  + f"   ({time.perf_counter() - tic:.1f} s)")


if __name__ == "__main__":
    main()
