#!/usr/bin/env python
"""How long SHD loading and batching take, against one OTPE training iteration.

Writes synthetic files of the real SHD size and format (8156 train / 2264 test samples, 700
channels, a few thousand spikes per sample, times up to 1.4 s, float16 sorted), then times:
tonic's per-sample path (on a subset, extrapolated), building the binned cache (read + bin +
write), loading it again, drawing a batch, and one offline OTPE iteration of
SNN([700, 128, 128, 20]) at batch 128, T 50.

    python scripts/bench_data.py                 # in a temporary folder, removed afterwards
    python scripts/bench_data.py --root DIR --keep
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch


def write_shd_like(path: Path, n: int, rng: np.random.Generator, spikes=(1000, 6000),
                   max_time: float = 1.4, num_classes: int = 20) -> int:
    """One file in the SHD layout; returns the number of spikes written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    counts = rng.integers(spikes[0], spikes[1] + 1, n)
    durations = rng.uniform(0.5, max_time, n)
    times = np.empty(n, object)
    units = np.empty(n, object)
    for i, (k, d) in enumerate(zip(counts, durations)):
        times[i] = np.sort(rng.uniform(0.0, d, k).astype(np.float16))
        units[i] = rng.integers(0, 700, k).astype(np.uint16)
    with h5py.File(path, "w") as f:
        f.create_dataset("spikes/times", data=times, dtype=h5py.vlen_dtype(np.dtype("float16")))
        f.create_dataset("spikes/units", data=units, dtype=h5py.vlen_dtype(np.dtype("uint16")))
        f.create_dataset("labels", data=(np.arange(n) % num_classes).astype(np.uint8))
        f.create_dataset("extra/keys", data=np.array([f"class-{c}".encode()
                                                      for c in range(num_classes)]))
        f.create_dataset("extra/speaker", data=(np.arange(n) % 12).astype(np.uint8))
    return int(counts.sum())


def clock(fn, repeat: int = 1):
    """(median seconds, last result) of ``repeat`` calls."""
    times, out = [], None
    for _ in range(repeat):
        tic = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - tic)
    return statistics.median(times), out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=None, help="folder for the files (default: tmp)")
    ap.add_argument("--train", type=int, default=8156)
    ap.add_argument("--test", type=int, default=2264)
    ap.add_argument("--tonic-samples", type=int, default=300,
                    help="samples timed through tonic's per-sample path")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--keep", action="store_true", help="keep the files and the cache")
    args = ap.parse_args(argv)

    from otpe_cli import SNN, sequence_gradients
    from otpe_cli.data.shd import (Binning, HeidelbergSpikes, _tonic_class, bin_spikes,
                                   read_file, tonic_transform)

    root = args.root or Path(tempfile.mkdtemp(prefix="otpe-bench-"))
    rows = []
    try:
        rng = np.random.default_rng(0)
        tic = time.perf_counter()
        n_spikes = write_shd_like(root / "SHD" / "shd_train.h5", args.train, rng)
        write_shd_like(root / "SHD" / "shd_test.h5", args.test, rng)
        print(f"synthetic SHD files in {root / 'SHD'}: {args.train} + {args.test} samples, "
              f"{n_spikes / args.train:.0f} spikes per training sample on average "
              f"(written in {time.perf_counter() - tic:.1f} s)")
        shutil.rmtree(root / "cache", ignore_errors=True)
        train = root / "SHD" / "shd_train.h5"
        b = Binning()

        # tonic's per-sample path, the definition of the binning
        ds = _tonic_class("shd")(str(root), train=True, transform=tonic_transform(b))
        k = min(args.tonic_samples, args.train)
        t_tonic, _ = clock(lambda: [ds[i] for i in range(k)])
        per = t_tonic / k
        rows.append(("tonic per-sample ToFrame (extrapolated to the train file)",
                     per * args.train, f"{per * 1e3:.2f} ms/sample"))

        t_read, (times, units, _) = clock(lambda: read_file(train, 700, 20))
        rows.append(("bulk h5py read of the train file", t_read, ""))
        t_bin, _ = clock(lambda: bin_spikes(times, units, b))
        rows.append(("numpy binning of the train file", t_bin,
                     f"{t_bin / args.train * 1e3:.3f} ms/sample, "
                     f"{per * args.train / t_bin:.0f}x tonic"))
        del times, units

        t_build, _ = clock(lambda: HeidelbergSpikes("shd", root))
        size = sum(p.stat().st_size for p in (root / "cache").glob("*.pt")) / 2**20
        rows.append(("first run: locate + read + bin + write cache (train + test)", t_build,
                     f"cache {size:.0f} MiB"))
        t_load, data = clock(lambda: HeidelbergSpikes("shd", root), repeat=3)
        rows.append(("next runs: locate + load cache (train + test)", t_load, ""))

        gen = torch.Generator().manual_seed(0)
        t_batch, (x, y) = clock(lambda: data.train_batch(args.batch, gen), repeat=200)
        rows.append((f"draw a batch of {args.batch} (T={data.num_steps})", t_batch,
                     f"{tuple(x.shape)} {x.dtype}"))
        t_conv, xf = clock(lambda: x.to(torch.float32), repeat=50)
        rows.append(("  its conversion to float32", t_conv, ""))

        model = SNN([700, 128, 128, 20], generator=torch.Generator().manual_seed(0))
        sequence_gradients("otpe", model, xf, y)  # warm-up
        t_iter, _ = clock(lambda: sequence_gradients("otpe", model, xf, y), repeat=5)
        rows.append((f"one OTPE iteration, SNN([700,128,128,20]), batch {args.batch}",
                     t_iter, f"{torch.get_num_threads()} torch threads"))
    finally:
        if not args.keep and args.root is None:
            shutil.rmtree(root, ignore_errors=True)

    width = max(len(r[0]) for r in rows)
    print()
    for name, seconds, note in rows:
        shown = f"{seconds * 1e3:10.2f} ms" if seconds < 1 else f"{seconds:10.2f} s "
        print(f"{name:<{width}}  {shown}  {note}")
    print(f"\nbatch draw / OTPE iteration: {t_batch / t_iter:.2%}; cache load = "
          f"{t_load / t_iter:.1f} iterations; first build = {t_build / t_iter:.1f} iterations")


if __name__ == "__main__":
    main()
