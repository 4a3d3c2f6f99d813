"""SHD and SSC, the Heidelberg spiking data sets (SPEC §6), through tonic, binned in bulk, cached.

Files: ``<root>/SHD/shd_train.h5``, ``shd_test.h5`` (and ``<root>/SSC/ssc_{train,valid,test}.h5``),
each with ``spikes/times`` (per-sample float16 seconds, sorted), ``spikes/units``, ``labels``,
``extra/keys`` and ``extra/speaker``.

- Locating, verifying and downloading go through ``tonic.datasets.SHD`` / ``SSC``. tonic treats
  a file as present only when its ``.zip`` lies beside it; the subclass made by `_tonic_class`
  accepts the ``.h5`` alone, so placing the files is enough. Any download attempt runs under a
  socket timeout and a failure becomes one `DataError` naming the folder, the files and where to
  get them.
- Binning is defined by tonic's ``ToFrame`` (`tonic_transform` builds the equivalent transform),
  but done in bulk with numpy by `bin_spikes`: tonic's windows (integer microseconds, contiguous,
  of equal width) computed for every spike of many samples in one vector pass, many times faster
  than tonic's per-sample path. The tests hold the two equal on every sample of a fixture.
- Binned counts are cached per source file under ``<root>/cache/`` (atomic writes), keyed by
  every binning parameter and the source file's path, size and mtime.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import write_torch_atomic
from .base import DataError, SpikeDataset

log = logging.getLogger(__name__)

DOWNLOAD_PAGE = "https://zenkelab.org/datasets"
ABOUT_PAGE = "https://zenkelab.org/resources/spiking-heidelberg-datasets-shd/"
TONIC_DOCS = "https://tonic.readthedocs.io"
CACHE_VERSION = 1
_US = 1e6  # tonic's HSD reader turns seconds into integer microseconds


@dataclass(frozen=True)
class Source:
    """One of the Heidelberg data sets: where its files live and how tonic names its splits."""

    name: str                 # config name: shd | ssc
    folder: str               # tonic's folder under root (the tonic class name)
    files: dict               # split -> file name; splits "train", "test" and maybe "valid"

    def tonic_kwargs(self, split: str) -> dict:
        if self.name == "shd":
            return {"train": split == "train"}
        return {"split": split}


SOURCES = {
    "shd": Source("shd", "SHD", {"train": "shd_train.h5", "test": "shd_test.h5"}),
    "ssc": Source("ssc", "SSC", {"train": "ssc_train.h5", "valid": "ssc_valid.h5",
                                 "test": "ssc_test.h5"}),
}


# ------------------------------------------------------------------------------- locations
def default_root() -> Path:
    """``$OTPE_DATA`` if set, else ``~/.cache/otpe-cli/data``."""
    env = os.environ.get("OTPE_DATA")
    return Path(env) if env else Path.home() / ".cache" / "otpe-cli" / "data"


def resolve_root(root) -> Path:
    if root is None or str(root) == "":
        return default_root().expanduser()
    return Path(os.path.expandvars(str(root))).expanduser()


def _tonic_class(name: str):
    """tonic's SHD / SSC class, accepting the ``.h5`` file without its ``.zip`` beside it."""
    import tonic.datasets

    base = {"shd": tonic.datasets.SHD, "ssc": tonic.datasets.SSC}[name]

    class Located(base):
        def _check_exists(self):  # tonic: zip present and some .h5 in the folder
            return os.path.isfile(os.path.join(self.location_on_system, self.data_filename))

    # tonic puts the files under <save_to>/<class name>/: keep the name
    Located.__name__ = Located.__qualname__ = base.__name__
    return Located


@contextlib.contextmanager
def socket_timeout(seconds: float):
    """A default socket timeout for the block: tonic's urlopen calls pass none of their own."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _not_found(source: Source, folder: Path, missing, reason: str) -> str:
    def listed(names):
        names = list(names)
        return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]

    cls = source.folder
    return (f"{cls} data not found in {folder}: expected {listed(source.files.values())} "
            f"(missing: {', '.join(p.name for p in missing)}), and {reason}. Download "
            f"{listed(f + '.zip' for f in source.files.values())} from {DOWNLOAD_PAGE} (see "
            f"{ABOUT_PAGE}, or the tonic docs for tonic.datasets.{cls}: {TONIC_DOCS}) and unzip "
            f"them into {folder}, or set dataset.root=DIR (or the OTPE_DATA environment "
            f"variable) to a folder that holds {cls}/.")


def _remove_empty(folders: list[Path]) -> None:
    """Remove those of ``folders`` (deepest first) that are empty; anything with a file stays."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            pass


def _unpack(archive: Path, target: Path) -> None:
    """Unpack ``target`` from ``archive`` when the archive lies there; a broken archive gets a
    DataError naming it. Atomic and safe for jobs starting together: each process (and
    thread) unpacks to a file of its own and renames it into place, so a reader never meets a
    half file."""
    import zipfile

    if not archive.is_file():
        return
    log.info("unpacking %s", archive)
    tmp = target.with_name(f"{target.name}.unpacking-{os.getpid()}-{threading.get_ident()}")
    try:
        with zipfile.ZipFile(archive) as z:
            members = [m for m in z.namelist() if Path(m).name == target.name]
            if not members:
                raise DataError(f"{archive} does not hold {target.name}; replace it with the "
                                "file as downloaded, or place the unpacked .h5 beside it.")
            with z.open(members[0]) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(tmp, target)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(f"{archive} cannot be unpacked ({exc}); replace it with the file as "
                        "downloaded, or place the unpacked .h5 beside it.") from None


def locate(source: Source, root: Path, download: bool = True,
           timeout: float = 15.0) -> dict[str, Path]:
    """Paths of every split's ``.h5`` file, downloading them through tonic when absent."""
    folder = root / source.folder
    paths = {split: folder / name for split, name in source.files.items()}
    missing = [p for p in paths.values() if not p.is_file()]
    for path in missing:  # archives placed by hand (as downloaded), not yet unpacked
        _unpack(path.with_name(path.name + ".zip"), path)
    missing = [p for p in paths.values() if not p.is_file()]
    if missing and not download:
        raise DataError(_not_found(source, folder, missing,
                                   "downloading is off (dataset.download=false)"))
    if missing:
        log.info("%s: %s missing in %s; downloading through tonic (timeout %g s per "
                 "connection)", source.folder, ", ".join(p.name for p in missing), folder, timeout)
    absent = [d for d in (folder, *folder.parents) if not d.exists()]  # tonic may create them
    cls = None
    for split, path in paths.items():
        existed = path.is_file()
        if existed:
            inspect_file(path)
        if cls is None:
            cls = _tonic_class(source.name)
        try:
            with socket_timeout(timeout):
                cls(str(root), **source.tonic_kwargs(split))
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 -- one sentence, whatever tonic raised
            if existed:
                raise DataError(f"{path}: tonic could not read it ({type(exc).__name__}: "
                                f"{exc}).") from None
            _remove_empty(absent)  # a failed download leaves no empty folders behind
            raise DataError(_not_found(source, folder, missing,
                                       f"downloading them failed ({type(exc).__name__}: {exc})")
                            ) from None
        if not existed:
            inspect_file(path)
    return paths


# ------------------------------------------------------------------------------- reading
REQUIRED_KEYS = ("spikes/times", "spikes/units", "labels", "extra/keys", "extra/speaker")


def _open(path: Path):
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path} is not a readable HDF5 file ({exc}); replace it with the "
                        f"original from {DOWNLOAD_PAGE}.") from None


def inspect_file(path: Path) -> int:
    """Check that ``path`` is an SHD-format HDF5 file (keys and shapes); returns its length."""
    import h5py

    with _open(path) as f:
        for key in REQUIRED_KEYS:
            if key not in f or not isinstance(f[key], h5py.Dataset):
                raise DataError(f"{path} is not an SHD/SSC file: it has no data set {key!r} "
                                f"(expected {', '.join(REQUIRED_KEYS)}).")
        shapes = {k: f[k].shape for k in ("spikes/times", "spikes/units", "labels")}
        n = shapes["labels"][0] if len(shapes["labels"]) == 1 else -1
        if any(len(s) != 1 or s[0] != n for s in shapes.values()):
            raise DataError(f"{path} has inconsistent shapes {shapes}: spikes/times, "
                            "spikes/units and labels need one entry per sample.")
        return n


def read_file(path: Path, num_channels: int, num_classes: int):
    """All samples of one file: (times list of float16 arrays, units list, labels int64)."""
    inspect_file(path)
    with _open(path) as f:
        try:
            times, units = f["spikes/times"][()], f["spikes/units"][()]
            labels = np.asarray(f["labels"][()])
        except (OSError, ValueError, TypeError) as exc:
            raise DataError(f"{path}: could not read the spikes ({exc}).") from None
    if times.dtype != object or units.dtype != object:
        raise DataError(f"{path}: spikes/times and spikes/units must hold one variable-length "
                        f"array per sample (found {times.dtype} and {units.dtype}).")
    lt = np.fromiter((len(a) for a in times), np.int64, len(times))
    lu = np.fromiter((len(a) for a in units), np.int64, len(units))
    if (lt != lu).any():
        i = int(np.argmax(lt != lu))
        raise DataError(f"{path}: sample {i} has {lt[i]} spike times but {lu[i]} units.")
    if len(labels) == 0:
        raise DataError(f"{path} holds no samples.")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 \
            or labels.max() >= num_classes:
        raise DataError(f"{path}: labels must be integers in 0..{num_classes - 1} "
                        f"(found {labels.dtype}, range {labels.min()}..{labels.max()}); is it "
                        "the right data set for this dataset choice?")
    return times, units, labels.astype(np.int64)


# ------------------------------------------------------------------------------- binning
@dataclass(frozen=True)
class Binning:
    """Every parameter that shapes the binned tensor (and so the cache key)."""

    binning: str = "stretch"      # stretch: num_steps bins over each sample's own duration
    num_steps: int = 50
    dt: float = 0.01              # fixed: bins of dt seconds from 0 to t_max
    t_max: float = 1.0
    num_channels: int = 700
    pool: int = 1

    def key(self) -> dict:
        d = asdict(self)
        if self.binning == "stretch":
            d.pop("dt"), d.pop("t_max")
        else:
            d.pop("num_steps")
        return d

    @property
    def window_us(self) -> int:
        """The fixed grid's bin width in whole microseconds (tonic's time unit)."""
        return max(int(round(float(self.dt) * _US)), 1)

    @property
    def steps(self) -> int:
        """Number of time bins: num_steps (stretch) or t_max / dt (fixed)."""
        if self.binning == "stretch":
            return self.num_steps
        return max(int(round(float(self.t_max) / float(self.dt))), 1)

    @property
    def channels(self) -> int:
        return self.num_channels // self.pool


def tonic_transform(b: Binning):
    """tonic's ``ToFrame`` that defines the binning `bin_spikes` does (before pooling)."""
    from tonic.transforms import ToFrame

    sensor = (b.num_channels, 1, 1)
    if b.binning == "stretch":
        return ToFrame(sensor_size=sensor, n_time_bins=b.num_steps)
    # integer µs bounds: tonic's slice count floor((end - w) / w) + 1 is exactly b.steps
    return ToFrame(sensor_size=sensor, time_window=float(b.window_us), start_time=0,
                   end_time=float(b.steps * b.window_us))


def _grid(b: Binning, t_us: np.ndarray, offsets: np.ndarray):
    """Per sample, tonic's windows as (first start, width) in integer µs: window i is
    [start + i·width, start + (i+1)·width), i < steps (a width of 0 holds nothing)."""
    n = len(offsets) - 1
    if b.binning == "stretch":
        # tonic (n_time_bins): width = (t[-1] - t[0]) // n_bins; starts = arange(n) * width + t[0]
        nonempty = offsets[1:] > offsets[:-1]
        t0 = np.zeros(n, np.int64)
        tl = np.zeros(n, np.int64)
        t0[nonempty] = t_us[offsets[:-1][nonempty]]
        tl[nonempty] = t_us[offsets[1:][nonempty] - 1]
        return t0, (tl - t0) // b.steps
    # tonic (time_window, start_time=0, end_time=steps·width): starts = arange(steps) * width
    return np.zeros(n, np.int64), np.full(n, b.window_us, np.int64)


def _bin_chunk(b: Binning, times, units):
    """Counts (n, T, C) as int64 of a few samples (every spike's window in one vector pass),
    and the flat cells that got spikes."""
    n, T, C = len(times), b.steps, b.channels
    lengths = np.fromiter((len(a) for a in times), np.int64, n)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] == 0:
        return np.zeros((n, T, C), np.int64), np.zeros(0, np.int64)
    seconds = np.concatenate(times).astype(np.float64)
    if not np.isfinite(seconds).all() or seconds.min() < 0 or seconds.max() > 1e6:
        raise ValueError("spike times must be finite seconds in [0, 1e6]")
    # tonic's HSD reader: float16 seconds -> float64 -> ×1e6 -> int (truncation)
    t_us = (seconds * _US).astype(np.int64)
    u = np.concatenate(units).astype(np.int64)
    if u.min() < 0 or u.max() >= b.num_channels:
        raise ValueError(f"spike units must lie in 0..{b.num_channels - 1} "
                         f"(found {u.min()}..{u.max()})")
    sample = np.repeat(np.arange(n, dtype=np.int64), lengths)
    if ((np.diff(t_us) < 0) & (sample[1:] == sample[:-1])).any():  # tonic assumes sorted
        order = np.lexsort((t_us, sample))
        t_us, u = t_us[order], u[order]
    start, width = _grid(b, t_us, offsets)
    # window index floor((t - start) / width): the float quotient of integers below 2^52 never
    # rounds up to the next integer, so this is exact; width 0 gives inf / nan, dropped below
    with np.errstate(divide="ignore", invalid="ignore"):
        step = np.floor((t_us - start[sample]) / width[sample])
        valid = (step >= 0) & (step < T)
        channel = u // b.pool if b.pool > 1 else u
        cell = ((sample * T + step.astype(np.int64)) * C + channel)[valid]
    return np.bincount(cell, minlength=n * T * C).reshape(n, T, C), cell


def bin_spikes(times, units, b: Binning, chunk: int | None = None,
               time_major: bool = False) -> np.ndarray:
    """Counts (N, T, C) — or (T, N, C) with ``time_major`` — of every sample at once, as uint8,
    or int16 when a count exceeds 255.

    Equal, sample by sample, to tonic's ``tonic_transform(b)`` applied to the HSD events
    (integer µs), summed over groups of ``pool`` neighbouring channels. Times are sorted first
    if a file's are not (tonic itself assumes sorted times).
    """
    n, T, C = len(times), b.steps, b.channels
    if chunk is None:  # ~16 MB of int64 counts per chunk: malloc reuses it, no fresh page faults
        chunk = max(1, min(256, (16 << 20) // (8 * T * C)))
    out = np.empty((T, n, C) if time_major else (n, T, C), np.uint8)
    for s in range(0, n, chunk):
        counts, cells = _bin_chunk(b, times[s:s + chunk], units[s:s + chunk])
        if len(cells) and counts.reshape(-1)[cells].max() > np.iinfo(out.dtype).max:
            out = out.astype(np.int16)
        if time_major:
            out[:, s:s + chunk] = counts.transpose(1, 0, 2)
        else:
            out[s:s + chunk] = counts
    return out


# ------------------------------------------------------------------------------- cache
def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def source_identity(path: Path) -> dict:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def cache_path(cache_dir: Path, path: Path, b: Binning) -> Path:
    """``<cache_dir>/<file stem>-<source digest>-<binning digest>.pt``."""
    src = _digest(source_identity(path))
    return cache_dir / f"{path.stem}-{src}-{_digest({'v': CACHE_VERSION, **b.key()})}.pt"


def _meta(path: Path, b: Binning) -> dict:
    return {"version": CACHE_VERSION, "source": source_identity(path), "binning": b.key()}


def _save_atomic(obj, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    write_torch_atomic(obj, target, prefix=f".{target.stem}-")


def _prune(cache_dir: Path, path: Path, keep: Path) -> None:
    """Remove caches of an older version of this source file (other binnings are kept) and
    temporary files a killed run left behind (older than an hour)."""
    src = keep.name.split("-")[-2]
    stale = [old for old in cache_dir.glob(f"{path.stem}-*-*.pt")
             if old.name.split("-")[-2] != src]
    with contextlib.suppress(OSError):
        stale += [tmp for tmp in cache_dir.glob(f".{path.stem}-*.tmp")
                  if time.time() - tmp.stat().st_mtime > 3600]
    for old in stale:
        with contextlib.suppress(OSError):
            old.unlink()


def load_binned(path: Path, b: Binning, num_classes: int, cache_dir: Path | None):
    """(x (T, N, C) uint8/int16 tensor, y (N,) int64) of one file, from the cache if it holds it.

    Time-major like the trainer's inputs: a batch is one ``index_select`` along dim 1.
    """
    meta = _meta(path, b)
    target = cache_path(cache_dir, path, b) if cache_dir is not None else None
    if target is not None and target.is_file():
        tic = time.perf_counter()
        try:
            obj = torch.load(target, weights_only=True)
            if obj.get("meta") == meta:
                log.info("%s: binned tensors from the cache %s (%.2f s)", path.name, target,
                         time.perf_counter() - tic)
                return obj["x"], obj["y"]
            log.warning("cache %s does not match %s; binning again", target, path)
        except Exception as exc:  # noqa: BLE001 -- a broken cache is rebuilt, never fatal
            why = (f"{type(exc).__name__}: {exc}".strip().splitlines() or ["?"])[0]
            log.warning("cache %s is unreadable (%s); binning again", target, why)
    tic = time.perf_counter()
    times, units, labels = read_file(path, b.num_channels, num_classes)
    try:
        x = bin_spikes(times, units, b, time_major=True)
    except ValueError as exc:
        raise DataError(f"{path}: {exc}.") from None
    x, y = torch.from_numpy(x), torch.from_numpy(labels)
    log.info("%s: binned %d samples into %d×%d in %.2f s", path.name, len(y), b.steps,
             b.channels, time.perf_counter() - tic)
    if target is not None:
        try:
            _save_atomic({"meta": meta, "x": x, "y": y}, target)
            _prune(cache_dir, path, target)
        except (OSError, RuntimeError) as exc:  # torch.save raises RuntimeError on a full disk
            log.warning("could not write the cache %s (%s); the next run bins again", target, exc)
    return x, y


# ------------------------------------------------------------------------------- data set
def validation_count(n: int, fraction: float) -> int:
    """Samples held out: floor(n · fraction), robust to float noise (8156 · 0.1 → 815)."""
    return int(math.floor(round(n * fraction, 6)))


class HeidelbergSpikes(SpikeDataset):
    """SHD or SSC as binned rasters: splits "val" and "test", training on the rest.

    SHD: "val" is the first ``val_fraction`` of the training file in file order (the paper's
    protocol). SSC: "val" is its own ``ssc_valid.h5``. ``encoding`` is ``counts`` (raw spike
    counts per bin, the paper's input) or ``binary`` (1 where a bin holds any spike).
    """

    def __init__(self, name: str = "shd", root=None, *, num_classes: int | None = None,
                 num_channels: int = 700, binning: str = "stretch", num_steps: int = 50,
                 dt: float = 0.01, t_max: float = 1.0, pool: int = 1, val_fraction: float = 0.1,
                 cache: bool = True, cache_dir=None, download: bool = True,
                 download_timeout: float = 15.0, encoding: str = "counts"):
        if name not in SOURCES:
            raise DataError(f"unknown Heidelberg data set {name!r}; use shd or ssc")
        if encoding not in ("counts", "binary"):
            raise DataError(f"encoding {encoding!r} does not apply to {name}; use counts or "
                            "binary")
        source = SOURCES[name]
        self.name, self.encoding = name, encoding
        self.root = resolve_root(root)
        self.num_classes = num_classes or {"shd": 20, "ssc": 35}[name]
        self.binning = Binning(binning, num_steps, dt, t_max, num_channels, pool)
        self.num_steps, self.num_inputs = self.binning.steps, self.binning.channels
        self.paths = locate(source, self.root, download, download_timeout)
        cdir = None
        if cache:
            cdir = Path(cache_dir).expanduser() if cache_dir else self.root / "cache"
        data = {split: load_binned(p, self.binning, self.num_classes, cdir)
                for split, p in self.paths.items()}
        if encoding == "binary":
            data = {k: (x.clamp(max=1).to(torch.uint8), y) for k, (x, y) in data.items()}
        x, y = data["train"]  # (T, N, C) in file order
        self._offset = 0      # training samples are x[:, offset:], kept in one contiguous tensor
        if "valid" in data:
            val = data["valid"]
        else:
            self._offset = validation_count(len(y), val_fraction)
            val = (x[:, :self._offset].contiguous(), y[:self._offset])
        self._x, self._y = x, y
        self.splits = {"val": val} if len(val[1]) else {}
        self.splits["test"] = data["test"]
        log.info("%s from %s: %d train, %d val, %d test samples; %d steps × %d inputs (%s)",
                 source.folder, self.root / source.folder, self.train_size, len(val[1]),
                 len(self.splits["test"][1]), self.num_steps, self.num_inputs, encoding)

    @classmethod
    def from_config(cls, d, encoding: str) -> "HeidelbergSpikes":
        return cls(d.name, d.root, num_classes=d.num_classes, num_channels=d.num_channels,
                   binning=d.binning, num_steps=d.num_steps, dt=d.dt, t_max=d.t_max,
                   pool=d.pool, val_fraction=d.val_fraction, cache=d.cache,
                   cache_dir=d.get("cache_dir"), download=d.download,
                   download_timeout=d.get("download_timeout", 15.0), encoding=encoding)

    @property
    def train_size(self) -> int:
        return len(self._y) - self._offset

    @property
    def train_x(self) -> torch.Tensor:
        """The training samples (T, N_train, C) (a view)."""
        return self._x[:, self._offset:]

    @property
    def train_y(self) -> torch.Tensor:
        return self._y[self._offset:]

    def train_batch(self, batch_size: int, generator: torch.Generator):
        """``batch_size`` distinct training samples: (x (T, B, C), y (B,)).

        Indexes the contiguous whole-file tensor (``index_select`` on a sliced view is ~100×
        slower), so a batch costs about a millisecond.
        """
        idx = torch.randperm(self.train_size, generator=generator)[:batch_size] + self._offset
        return self._x.index_select(1, idx), self._y[idx]
