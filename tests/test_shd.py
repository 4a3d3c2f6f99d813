"""SHD / SSC through tonic on tiny files in the exact SHD format (no network, no real data).

Binning is held to a plain hand-written reference and to tonic's own ``ToFrame`` on every sample;
then pooling, encodings, the cache (reuse, invalidation, atomic files), the validation split,
offline behaviour with the network blocked, corrupt files, config checks, and short training
runs through the CLI code path.
"""
from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from otpe_cli.config import ConfigError, validate
from otpe_cli.data import DataError
from otpe_cli.data import shd as shdmod
from otpe_cli.data.shd import Binning, HeidelbergSpikes, bin_spikes, read_file, tonic_transform
from shd_fixtures import make_hsd, random_samples, write_hsd_file

C = 700


# ============================================================================ helpers
def hand_bin(times, units, binning, steps, dt=None):
    """The reference, plainly: tonic's HSD reader gives integer µs = int(float(t) · 1e6);
    stretch: width = (last - first) // steps, bin = (t - first) // width (nothing when the
    width is 0); fixed: bin = t // (dt in µs); spikes past the last bin are dropped."""
    out = np.zeros((len(times), steps, C), np.int64)
    for i, (ts, us) in enumerate(zip(times, units)):
        t_us = [int(float(t) * 1e6) for t in ts]
        if not t_us:
            continue
        if binning == "stretch":
            first, width = t_us[0], (t_us[-1] - t_us[0]) // steps
            if width == 0:
                continue
            bins = [(t - first) // width for t in t_us]
        else:
            width = round(dt * 1e6)
            bins = [t // width for t in t_us]
        for b, u in zip(bins, us):
            if b < steps:
                out[i, b, int(u)] += 1
    return out


@pytest.fixture
def shd_root(tmp_path):
    make_hsd(tmp_path / "data", "shd")
    return tmp_path / "data"


@pytest.fixture
def no_network(monkeypatch):
    """Every connection attempt fails at once; returns the list of attempts (with timeouts)."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(socket.getdefaulttimeout())
        raise OSError("network access is blocked in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


def load(root, **kw):
    return HeidelbergSpikes(kw.pop("name", "shd"), root, **kw)


# ============================================================================ binning
@pytest.mark.parametrize("binning, kw, steps", [
    ("stretch", {"num_steps": 50}, 50), ("stretch", {"num_steps": 7}, 7),
    ("fixed", {"dt": 0.01, "t_max": 1.0}, 100), ("fixed", {"dt": 0.025, "t_max": 0.5}, 20)])
def test_binning_matches_hand_reference(shd_root, binning, kw, steps):
    times, units, _ = read_file(shd_root / "SHD" / "shd_train.h5", C, 20)
    b = Binning(binning, **kw)
    x = bin_spikes(times, units, b)
    assert x.shape == (len(times), steps, C) and x.dtype == np.uint8
    np.testing.assert_array_equal(x, hand_bin(times, units, binning, steps, kw.get("dt")))
    assert x.max() > 1  # the fixture has real counts, not only 0/1


@pytest.mark.parametrize("b", [Binning("stretch", num_steps=50),
                               Binning("fixed", dt=0.01, t_max=1.0),
                               Binning("fixed", dt=0.003, t_max=0.6)], ids=str)
def test_binning_equals_tonic_toframe(shd_root, b):
    """tonic's per-sample path (tonic.datasets.SHD + ToFrame) defines the binning."""
    times, units, labels = read_file(shd_root / "SHD" / "shd_train.h5", C, 20)
    x = bin_spikes(times, units, b)
    ds = shdmod._tonic_class("shd")(str(shd_root), train=True, transform=tonic_transform(b))
    assert len(ds) == len(times)
    for i in range(len(ds)):
        if len(times[i]) == 0 and b.binning == "fixed":
            continue  # tonic returns a single empty frame for an empty sample here
        frames, label = ds[i]
        np.testing.assert_array_equal(np.asarray(frames).reshape(-1, C), x[i], err_msg=str(i))
        assert label == labels[i]


def test_unsorted_times_bin_as_sorted():
    rng = np.random.default_rng(1)
    times, units = random_samples(6, rng, edge_cases=False)
    shuffled_t, shuffled_u = [], []
    for t, u in zip(times, units):
        p = rng.permutation(len(t))
        shuffled_t.append(t[p]), shuffled_u.append(u[p])
    for b in (Binning(), Binning("fixed")):
        np.testing.assert_array_equal(bin_spikes(shuffled_t, shuffled_u, b),
                                      bin_spikes(times, units, b))


def test_counts_above_255_widen_to_int16():
    times = [np.full(300, 0.005, np.float16), np.array([0.1], np.float16)]
    units = [np.full(300, 9, np.uint16), np.array([1], np.uint16)]
    x = bin_spikes(times, units, Binning("fixed", dt=0.01, t_max=0.1), chunk=1)
    assert x.dtype == np.int16 and x[0, 0, 9] == 300 and x.sum() == 301
    xt = bin_spikes(times, units, Binning("fixed", dt=0.01, t_max=0.1), time_major=True)
    np.testing.assert_array_equal(xt, x.transpose(1, 0, 2))


def test_pooling_sums_neighbouring_channels(shd_root):
    times, units, _ = read_file(shd_root / "SHD" / "shd_train.h5", C, 20)
    full = bin_spikes(times, units, Binning())
    for pool, channels in ((5, 140), (10, 70)):
        pooled = bin_spikes(times, units, Binning(pool=pool))
        assert pooled.shape == (len(times), 50, channels)
        np.testing.assert_array_equal(pooled, full.reshape(len(times), 50, channels, pool)
                                      .sum(-1))
    data = load(shd_root, pool=5, cache=False)
    assert data.num_inputs == 140 and data.splits["test"][0].shape[-1] == 140


def test_counts_and_binary(shd_root):
    counts = load(shd_root, cache=False)
    binary = load(shd_root, cache=False, encoding="binary")
    for split in ("val", "test"):
        xc, xb = counts.splits[split][0], binary.splits[split][0]
        assert xb.dtype == torch.uint8 and set(xb.unique().tolist()) <= {0, 1}
        assert torch.equal(xb, (xc > 0).to(torch.uint8))
    assert counts.train_x.max() > 1
    assert torch.equal(binary.train_x, (counts.train_x > 0).to(torch.uint8))


# ============================================================================ cache
def test_cache_is_reused_without_binning(shd_root, monkeypatch):
    first = load(shd_root)
    caches = sorted((shd_root / "cache").glob("*.pt"))
    assert [p.name.split("-")[0] for p in caches] == ["shd_test", "shd_train"]
    assert not list((shd_root / "cache").glob(".*"))  # no temporary files left behind

    def must_not_bin(*a, **k):
        raise AssertionError("binned again despite a valid cache")

    monkeypatch.setattr(shdmod, "bin_spikes", must_not_bin)
    monkeypatch.setattr(shdmod, "read_file", must_not_bin)
    second = load(shd_root)
    assert torch.equal(first.train_x, second.train_x)
    assert torch.equal(first.train_y, second.train_y)
    for split in first.splits:
        assert torch.equal(first.splits[split][0], second.splits[split][0])


def test_cache_invalidated_by_parameters_and_source(shd_root, monkeypatch):
    calls = []
    real = shdmod.bin_spikes

    def counting(times, units, b, *a, **k):
        calls.append(b)
        return real(times, units, b, *a, **k)

    monkeypatch.setattr(shdmod, "bin_spikes", counting)
    load(shd_root)
    assert len(calls) == 2
    load(shd_root, val_fraction=0.2, encoding="binary")  # not binning parameters: reused
    assert len(calls) == 2
    for kw in ({"num_steps": 20}, {"pool": 10}, {"binning": "fixed"},
               {"binning": "fixed", "dt": 0.02}, {"binning": "fixed", "t_max": 0.5}):
        before = len(calls)
        data = load(shd_root, **kw)
        assert len(calls) == before + 2, kw
        assert data.num_steps == Binning(**kw).steps
    assert len(list((shd_root / "cache").glob("shd_train-*.pt"))) == 6
    # a changed source file (size / mtime) is binned again, and its stale caches are dropped
    train = shd_root / "SHD" / "shd_train.h5"
    st = train.stat()
    os.utime(train, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    before = len(calls)
    load(shd_root)
    assert len(calls) == before + 1  # only the training file
    assert len(list((shd_root / "cache").glob("shd_train-*.pt"))) == 1
    assert len(list((shd_root / "cache").glob("shd_test-*.pt"))) == 6


def test_broken_cache_is_rebuilt(shd_root, tmp_path):
    cache_dir = tmp_path / "elsewhere"
    first = load(shd_root, cache_dir=str(cache_dir))
    assert not (shd_root / "cache").exists()
    for p in cache_dir.glob("*.pt"):
        p.write_bytes(b"truncated")
    second = load(shd_root, cache_dir=str(cache_dir))
    assert torch.equal(first.train_x, second.train_x)
    assert all(p.stat().st_size > 100 for p in cache_dir.glob("*.pt"))


def test_default_root_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("OTPE_DATA", str(tmp_path / "d"))
    assert shdmod.resolve_root(None) == tmp_path / "d"
    monkeypatch.delenv("OTPE_DATA")
    assert shdmod.resolve_root(None) == Path.home() / ".cache" / "otpe-cli" / "data"


# ============================================================================ splits
def test_validation_is_the_first_tenth_of_the_training_file(shd_root):
    times, units, labels = read_file(shd_root / "SHD" / "shd_train.h5", C, 20)
    x = torch.from_numpy(bin_spikes(times, units, Binning()))
    data = load(shd_root)
    xv, yv = data.splits["val"]
    assert list(data.splits) == ["val", "test"]
    assert xv.shape == (50, 4, C) and torch.equal(yv, torch.from_numpy(labels[:4]))
    assert torch.equal(xv, x[:4].permute(1, 0, 2))
    assert data.train_size == 36 and torch.equal(data.train_x, x[4:].permute(1, 0, 2))
    _, ty, = read_file(shd_root / "SHD" / "shd_test.h5", C, 20)[1:]
    assert torch.equal(data.splits["test"][1], torch.from_numpy(ty))
    assert shdmod.validation_count(8156, 0.1) == 815
    assert load(shd_root, val_fraction=0.25).splits["val"][1].shape == (10,)
    assert list(load(shd_root, val_fraction=0.0).splits) == ["test"]


def test_train_batch_draws_distinct_training_samples(shd_root):
    data = load(shd_root)
    x, y = data.train_batch(36, torch.Generator().manual_seed(3))
    assert x.shape == (50, 36, C) and x.is_contiguous() and x.dtype == torch.uint8
    stored = {(data.train_x[:, i].numpy().tobytes(), int(data.train_y[i])) for i in range(36)}
    drawn = {(x[:, i].numpy().tobytes(), int(y[i])) for i in range(36)}
    assert drawn == stored  # the whole training set, each sample once, labels kept
    a = data.train_batch(8, torch.Generator().manual_seed(5))
    b = data.train_batch(8, torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # replayable from the generator


def test_ssc_uses_its_own_validation_file(tmp_path):
    paths = make_hsd(tmp_path, "ssc")
    data = load(tmp_path, name="ssc", val_fraction=0.0)
    _, _, valid = read_file(paths["valid"], C, 35)
    assert data.num_classes == 35 and data.train_size == 40
    assert torch.equal(data.splits["val"][1], torch.from_numpy(valid))
    assert data.splits["test"][1].shape == (12,)


# ============================================================================ offline
def test_offline_with_files_present(shd_root, no_network):
    data = load(shd_root)
    assert data.train_size == 36 and not no_network
    assert sorted(p.name for p in (shd_root / "SHD").iterdir()) == ["shd_test.h5",
                                                                     "shd_train.h5"]


def test_offline_without_files_fails_fast_and_clearly(tmp_path, no_network):
    default_timeout = socket.getdefaulttimeout()
    tic = time.monotonic()
    with pytest.raises(DataError) as err:
        load(tmp_path / "empty")
    assert time.monotonic() - tic < 5
    msg = str(err.value)
    for part in (str(tmp_path / "empty" / "SHD"), "shd_train.h5", "shd_test.h5",
                 "https://zenkelab.org/datasets", "tonic", "dataset.root", "failed"):
        assert part in msg, part
    assert no_network and all(t == 15.0 for t in no_network)  # attempted, under the timeout
    assert socket.getdefaulttimeout() == default_timeout  # restored afterwards
    assert list(tmp_path.iterdir()) == []  # the folders made for the download are gone again


def test_download_off_never_touches_the_network(tmp_path, no_network):
    make_hsd(tmp_path, "shd", sizes={"train": 10})  # test file missing
    with pytest.raises(DataError, match="shd_test.h5.*dataset.download=false"):
        load(tmp_path, download=False)
    assert not no_network


def test_download_through_tonic(tmp_path, monkeypatch):
    """With network and no files, tonic downloads the zips, verifies their MD5 and unzips."""
    import hashlib

    import tonic.datasets

    src = make_hsd(tmp_path / "server-src", "shd")
    served = tmp_path / "served"
    served.mkdir()
    for split, path in src.items():
        with zipfile.ZipFile(served / f"{path.name}.zip", "w") as z:
            z.write(path, path.name)
        md5 = hashlib.md5((served / f"{path.name}.zip").read_bytes()).hexdigest()
        monkeypatch.setattr(tonic.datasets.SHD, f"{split}_md5", md5)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(served), **k)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(tonic.datasets.SHD, "base_url", f"http://127.0.0.1:{server.server_port}/")
    monkeypatch.delenv("http_proxy", raising=False)
    monkeypatch.delenv("HTTP_PROXY", raising=False)
    try:
        data = load(tmp_path / "root")
    finally:
        server.shutdown()
    assert data.train_size == 36
    assert (tmp_path / "root" / "SHD" / "shd_train.h5").is_file()


# ============================================================================ corrupt files
def _corrupt(path: Path, kind: str):
    if kind == "not hdf5":
        path.write_bytes(b"PK\x03\x04 this is a zip header, not HDF5")
    elif kind == "missing key":
        times, units = random_samples(3, np.random.default_rng(0), edge_cases=False)
        write_hsd_file(path, times, units, [0, 1, 2], drop=("spikes/units",))
    elif kind == "no extra":
        times, units = random_samples(3, np.random.default_rng(0), edge_cases=False)
        write_hsd_file(path, times, units, [0, 1, 2], drop=("extra/speaker",))
    elif kind == "wrong shape":
        times, units = random_samples(3, np.random.default_rng(0), edge_cases=False)
        write_hsd_file(path, times, units, [0, 1])
    elif kind == "bad unit":
        times, units = random_samples(3, np.random.default_rng(0), edge_cases=False)
        units[1][0] = 700
        write_hsd_file(path, times, units, [0, 1, 2])
    elif kind == "ragged":
        times, units = random_samples(3, np.random.default_rng(0), edge_cases=False)
        units[2] = units[2][:-1]
        write_hsd_file(path, times, units, [0, 1, 2])
    elif kind == "bad label":
        times, units = random_samples(3, np.random.default_rng(0), edge_cases=False)
        write_hsd_file(path, times, units, [0, 1, 20])


@pytest.mark.parametrize("kind, words", [
    ("not hdf5", "not a readable HDF5 file"), ("missing key", "spikes/units"),
    ("no extra", "extra/speaker"), ("wrong shape", "inconsistent shapes"),
    ("bad unit", "0..699"), ("ragged", "sample 2"), ("bad label", "labels")])
def test_corrupt_files_name_the_file(shd_root, kind, words):
    path = shd_root / "SHD" / "shd_train.h5"
    path.unlink()
    _corrupt(path, kind)
    with pytest.raises(DataError) as err:
        load(shd_root)
    assert str(path) in str(err.value) and words in str(err.value)


# ============================================================================ config
@pytest.fixture
def compose_shd():
    from helpers import compose_cfg

    return compose_cfg


@pytest.mark.parametrize("overrides, words", [
    (["dataset=shd", "encoding=rate"], "encoding=counts"),
    (["dataset=shd", "encoding=time"], "does not apply to dataset=shd"),
    (["dataset=randman", "encoding=counts"], "does not apply to dataset=randman"),
    (["dataset=trandman", "encoding=binary"], "or encoding=time"),
    (["dataset=shd", "dataset.pool=3"], "dataset.pool=3 does not divide"),
    (["dataset=shd", "dataset.binning=log"], "dataset.binning"),
    (["dataset=shd", "dataset.binning=fixed", "dataset.t_max=1.005"], "whole number"),
    (["dataset=shd", "dataset.binning=fixed", "dataset.dt=0"], "dataset.dt"),
    (["dataset=shd", "dataset.num_steps=0"], "dataset.num_steps"),
    (["dataset=shd", "dataset.val_fraction=1.0"], "dataset.val_fraction"),
    (["dataset=ssc", "dataset.val_fraction=0.1"], "ssc_valid.h5"),
])
def test_config_refuses_nonsense(compose_shd, overrides, words):
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        validate(compose_shd(overrides))


def test_presets_compose(compose_shd):
    cfg = compose_shd(["experiment=shd_offline"])
    assert (cfg.dataset.name, cfg.encoding.name, cfg.model.depth, cfg.model.width) == \
        ("shd", "counts", 3, 512)
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.trainer.batch_size,
            cfg.trainer.iterations, cfg.trainer["update"]) == ("adamax", 1e-3, 128, 10000,
                                                               "offline")
    validate(cfg)
    cfg = compose_shd(["experiment=shd_online_f_otpe"])
    assert (cfg.algorithm.name, cfg.model.width, cfg.optimizer.lr, cfg.trainer["update"]) == \
        ("f_otpe", 128, 1e-4, "online")
    validate(cfg)
    assert compose_shd(["dataset=shd", "encoding=binary"]).encoding.name == "binary"
    cfg = compose_shd(["dataset=ssc"])
    assert (cfg.dataset.num_classes, cfg.encoding.name) == (35, "counts")
    validate(cfg)


# ============================================================================ CLI
@pytest.mark.parametrize("name", ["shd", "ssc"])
def test_short_training_run(compose_shd, tmp_path, name, no_network):
    from otpe_cli.cli import run

    make_hsd(tmp_path / "data", name)
    cfg = compose_shd([f"dataset={name}", f"dataset.root={tmp_path / 'data'}",
                       "trainer.iterations=3", "trainer.batch_size=8", "model.width=8",
                       "trainer.eval_every=3", "trainer.align_every=0", "trainer.log_every=1",
                       "trainer.checkpoint_every=0", "trainer.progress=none"])
    summary = run(cfg, tmp_path / "run")
    for key in ("val/acc", "test/acc", "best/val_acc", "best/val_acc_iter",
                "best/test_acc_at_best_val"):
        assert key in summary, key
    assert summary["status"] == "finished" and summary["iter"] == 3


def test_cli_without_data_exits_with_one_clear_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {**os.environ, "WANDB_MODE": "disabled",
           # any download attempt goes to a closed local port: refused at once, never online
           "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
           "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
           "no_proxy": "", "NO_PROXY": ""}
    exe = Path(sys.executable).with_name("otpe-train")
    tic = time.monotonic()
    proc = subprocess.run([str(exe) if exe.exists() else "otpe-train", "dataset=shd",
                           f"dataset.root={empty}", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out
    assert "otpe-train: error: SHD data not found" in proc.stderr
    assert str(empty / "SHD") in proc.stderr and "shd_train.h5" in proc.stderr
    assert "https://zenkelab.org/datasets" in proc.stderr
    assert time.monotonic() - tic < 60


def test_archives_placed_by_hand_are_unpacked_without_the_network(tmp_path, no_network):
    """shd_*.h5.zip as downloaded but not unpacked: unpacked in place, with download off; a
    broken archive is named."""
    import zipfile

    src = make_hsd(tmp_path / "src", "shd")
    folder = tmp_path / "data" / "SHD"
    folder.mkdir(parents=True)
    for path in src.values():
        with zipfile.ZipFile(folder / (path.name + ".zip"), "w") as z:
            z.write(path, path.name)
    data = load(tmp_path / "data", download=False)
    for path in src.values():
        assert (folder / path.name).read_bytes() == path.read_bytes()
    assert len(data.splits["test"][1]) == 12 and not no_network
    assert not list(folder.glob("*.unpacking*"))

    broken = tmp_path / "broken" / "SHD"
    broken.mkdir(parents=True)
    (broken / "shd_train.h5.zip").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"shd_train\.h5\.zip cannot be unpacked"):
        load(tmp_path / "broken", download=False)
    assert not list(broken.glob("*.unpacking*")) and not (broken / "shd_train.h5").exists()


def test_jobs_unpacking_the_same_archive_together_all_read_it_whole(tmp_path):
    """Parallel jobs may find the .h5 missing at once: each unpacks to a file of its own and
    renames it into place, so none reads a half-written file."""
    import threading
    import zipfile

    from otpe_cli.data.shd import _unpack

    src = tmp_path / "big.h5"
    src.write_bytes(np.random.default_rng(0).bytes(8 << 20))
    archive = tmp_path / "data" / "big.h5.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as z:
        z.write(src, "big.h5")
    target, errors = archive.with_name("big.h5"), []

    def job():
        try:
            _unpack(archive, target)
            assert target.read_bytes() == src.read_bytes()
        except Exception as exc:  # noqa: BLE001 -- reported below
            errors.append(exc)

    threads = [threading.Thread(target=job) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and target.read_bytes() == src.read_bytes()
    assert not list(archive.parent.glob("*.unpacking*"))
