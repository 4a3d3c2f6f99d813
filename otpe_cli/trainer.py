"""The one training loop every algorithm goes through.

``Trainer`` owns a run: ``__init__`` builds everything from the config and resumes from the run
directory's checkpoint when there is one; ``train()`` is the loop — draw batch, compute gradient
(by the algorithm), optimizer step, log every ``log_every``, evaluate every ``eval_every``,
checkpoint every ``checkpoint_every`` and on SIGTERM / SIGINT / SIGUSR1 / SIGHUP.
"""
from __future__ import annotations

import json
import math
import signal
import threading
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError

from . import checkpoint as ckpt
from .algorithms import build_algorithm, uses_bias_trace
from .alignment import alignment
from .data import build_dataset
from .logs import RunLogger, SUMMARY_NAME, read_metrics
from .snn import SNN

#: the signals that stop a run with a checkpoint, those this platform has (SIGHUP: the
#: terminal or ssh session went away)
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGUSR1", "SIGHUP")
                     if hasattr(signal, name))


def stop_signals() -> list[int]:
    """The stop signals this process answers: those it does not ignore (``nohup`` ignores
    SIGHUP, and a run started under it must train on through a hangup)."""
    return [s for s in STOP_SIGNALS if signal.getsignal(s) is not signal.SIG_IGN]


#: stop signals that reached this process outside a training loop (a parallel sweep's worker
#: between jobs, or while a job builds its data): the next loop stops at once, checkpointed
PENDING_STOP: list[int] = []


class NonFiniteError(RuntimeError):
    """The loss or a gradient became NaN or infinite."""


class Interrupted(Exception):
    """A stop signal arrived; the run was checkpointed and can be resumed."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("trainer.device=cuda was asked for, but no CUDA device is available; "
                         "use trainer.device=cpu or auto.")
    return torch.device(name)


def available_memory(device: torch.device) -> int | None:
    """Bytes free for new tensors on ``device`` now (Linux MemAvailable on the CPU), or None
    where that cannot be read."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def build_optimizer(cfg, params):
    if cfg.name == "adamax":
        return torch.optim.Adamax(params, lr=cfg.lr, betas=tuple(cfg.betas),
                                  weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas),
                                weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay)


def config_choices(cfg) -> dict:
    """The key choices that identify a run (used in summaries, reports and W&B). Also called
    for a config that failed validation: an lr that cannot resolve is kept as written."""
    try:
        lr = cfg.optimizer.lr
    except InterpolationResolutionError:  # e.g. ${dataset.adamax_lr.${trainer.update}}
        lr = OmegaConf.to_container(cfg.optimizer, resolve=False)["lr"]
    return {
        "dataset": cfg.dataset.name, "encoding": cfg.encoding.name,
        "algorithm": cfg.algorithm.name, "depth": cfg.model.depth, "width": cfg.model.width,
        "optimizer": cfg.optimizer.name, "lr": lr,
        "batch_size": cfg.trainer.batch_size, "update": cfg.trainer["update"],
        "seed": cfg.trainer.seed, "iterations": cfg.trainer.iterations,
        "bias_trace": cfg.algorithm.bias_trace,
    }


#: dataset keys left out of the fingerprint: where the data lives or how it is fetched, not
#: what it is (a resumed run may find its data elsewhere); and the paper's learning rates, of
#: which only the optimizer's resolved ``lr`` counts (the fingerprint holds it)
NOT_FINGERPRINTED = ("root", "cache", "cache_dir", "download", "download_timeout", "adamax_lr")


def fingerprint(cfg) -> dict:
    """What a checkpoint must match to be resumed: model, algorithm, optimizer, data, update
    mode, batch size, seed and dtype (plain data, so that a refusal can name the key).

    Free to change on resume: the number of iterations (to train a finished run further), how
    often to log, evaluate, align and checkpoint, the device, ``on_nan``, progress and logger.
    """
    def plain(node):
        return OmegaConf.to_container(node, resolve=True)

    dataset = {k: v for k, v in plain(cfg.dataset).items() if k not in NOT_FINGERPRINTED}
    return {
        "model": plain(cfg.model), "algorithm": plain(cfg.algorithm),
        "optimizer": plain(cfg.optimizer), "dataset": dataset,
        "encoding": cfg.encoding.name,
        "trainer": {"update": cfg.trainer["update"], "batch_size": cfg.trainer.batch_size,
                    "seed": cfg.trainer.seed, "dtype": cfg.trainer.dtype},
    }


def settings(cfg) -> dict:
    """The fingerprint flattened to dotted keys (``model.beta``, ``dataset.num_steps``, ...):
    every setting that makes runs different experiments, for reports to tell them apart."""
    def flat(node, prefix: str) -> dict:
        if isinstance(node, dict):
            return {k: v for key, value in node.items()
                    for k, v in flat(value, f"{prefix}.{key}" if prefix else key).items()}
        return {prefix: node}

    fp = fingerprint(cfg)
    fp["encoding"] = {"name": fp["encoding"]}
    a = fp["algorithm"]
    if a.get("readout") is None:  # the algorithm's own logits: the same run as naming them
        try:
            a["readout"] = build_algorithm(a["name"]).readout
        except (KeyError, ValueError):
            pass
    return flat(fp, "")


class Trainer:
    def __init__(self, cfg, run_dir: Path):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        t = cfg.trainer
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            probe = self.run_dir / ".write_test"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise PermissionError(f"the run directory {self.run_dir} cannot be written "
                                  f"({exc.strerror}); choose another with hydra.run.dir=DIR.")
        self.device = resolve_device(t.device)
        self.dtype = getattr(torch, t.dtype)
        self.data = build_dataset(cfg.dataset, cfg.encoding.name)
        if self.data.train_size is not None and t.batch_size > self.data.train_size:
            raise ValueError(f"trainer.batch_size={t.batch_size} is larger than the training set "
                             f"({self.data.train_size} samples): choose trainer.batch_size="
                             f"{self.data.train_size} or less.")
        m = cfg.model
        sizes = [self.data.num_inputs] + [m.width] * (m.depth - 1) + [self.data.num_classes]
        a = cfg.algorithm
        self.algorithm = build_algorithm(a.name, a.readout, a.bias_trace)
        #: the authors' protocol: more rules' gradients aligned at this run's parameters
        self.aligned = [build_algorithm(name) for name in t.align_with]
        self._check_memory(sizes)  # before the model: its weights alone may not fit
        init_gen = torch.Generator().manual_seed(t.seed)  # same init for every algorithm
        self.model = SNN(sizes, m.beta, m.threshold, m.slope, generator=init_gen).to(
            self.device, self.dtype)
        self.optimizer = build_optimizer(cfg.optimizer, self.model.parameters())
        self.param_names = [n for n, _ in self.model.named_parameters()]
        self.batch_gen = torch.Generator().manual_seed(t.seed + 1)
        self.iteration = 0
        self.best: dict = {}
        self.window: dict = {}
        self.align_sums: dict = {}
        self.align_count = 0
        self.skipped = 0
        self.elapsed = 0.0
        self.wandb_run_id = None
        self.checkpoint_path = self.run_dir / ckpt.CHECKPOINT_NAME
        self.checkpoint_iteration: int | None = None  # the iteration checkpoint.pt holds
        if self.checkpoint_path.exists():
            self._load_checkpoint()
        self._signal = None

    # ----------------------------------------------------------------- checkpoints
    def _state(self) -> dict:
        return {
            "fingerprint": fingerprint(self.cfg),
            "iteration": self.iteration,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "batch_gen": self.batch_gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "numpy_rng": ckpt.numpy_rng_state(),
            "python_rng": ckpt.python_rng_state(),
            "best": self.best, "window": self.window, "align_sums": self.align_sums,
            "align_count": self.align_count, "skipped": self.skipped,
            "elapsed": self._wall(),
            "wandb_run_id": self.logger.wandb_run_id if hasattr(self, "logger")
            else self.wandb_run_id,
        }

    def _wall(self) -> float:
        return self.elapsed + (time.time() - self._t0 if hasattr(self, "_t0") else 0.0)

    def save_checkpoint(self) -> None:
        ckpt.save_atomic(self._state(), self.checkpoint_path)
        self.checkpoint_iteration = self.iteration

    def _load_checkpoint(self) -> None:
        """Restore everything a checkpoint holds, or refuse it with one sentence (the file is
        never changed here)."""
        path = self.checkpoint_path
        state = ckpt.load(path)
        saved = dict(state["fingerprint"])
        algorithm = dict(saved.get("algorithm") or {})
        if algorithm.get("bias_trace") and not uses_bias_trace(algorithm.get("name")):
            # made before bias_trace was refused where it changes nothing: it changed nothing
            saved["algorithm"] = {**algorithm, "bias_trace": False}
        dataset = dict(saved.get("dataset") or {})
        if dataset.get("name") in ("randman", "trandman") and "normalisation" not in dataset:
            # made before the per-draw normalisation existed: the fixed one, where the size
            # of a training draw changes nothing
            current = fingerprint(self.cfg)["dataset"]
            saved["dataset"] = {**dataset, "normalisation": "fixed",
                                "draw_samples_per_class": current.get("draw_samples_per_class")}
        ckpt.compare_fingerprints(saved, fingerprint(self.cfg), path)
        try:
            iteration = int(state["iteration"])
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.batch_gen.set_state(state["batch_gen"])
            torch.set_rng_state(state["torch_rng"])
            if state.get("cuda_rng") and self.device.type == "cuda":
                torch.cuda.set_rng_state_all(state["cuda_rng"])
            ckpt.set_numpy_rng_state(state["numpy_rng"])
            if "python_rng" in state:
                ckpt.set_python_rng_state(state["python_rng"])
            best, window = dict(state.get("best", {})), dict(state.get("window", {}))
            align_sums = dict(state.get("align_sums", {}))
            align_count, skipped = int(state.get("align_count", 0)), int(state.get("skipped", 0))
            elapsed = float(state.get("elapsed", 0.0))
        except (KeyError, RuntimeError, ValueError, TypeError, IndexError,
                AttributeError) as exc:
            detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ckpt.CheckpointError(f"checkpoint {path} does not fit this run ({detail}); "
                                       "it is kept as it is — use another run directory "
                                       "(hydra.run.dir=DIR) for this config.") from None
        self.iteration = self.checkpoint_iteration = iteration
        self.best, self.window = best, window
        self.align_sums, self.align_count = align_sums, align_count
        self.skipped, self.elapsed = skipped, elapsed
        self.wandb_run_id = state.get("wandb_run_id")

    # ----------------------------------------------------------------- one iteration
    def _check_finite(self, loss: float, grads, count: bool = True) -> bool:
        """True when the loss and every gradient are finite. Otherwise ``on_nan=stop`` raises
        NonFiniteError (nothing is saved: checkpoint.pt keeps the last good state) and
        ``on_nan=skip`` counts the skipped update (when ``count``) and returns False."""
        # one device sync for all tensors (this runs every time step in online mode)
        if math.isfinite(loss) and (not grads or bool(
                torch.stack([torch.isfinite(g).all() for g in grads]).all())):
            return True
        bad = [n for n, g in zip(self.param_names, grads) if not bool(torch.isfinite(g).all())]
        if self.cfg.trainer.on_nan == "stop":
            what = f"loss {loss}" if not math.isfinite(loss) else \
                f"gradient of {', '.join(bad)}"
            if self.checkpoint_iteration is not None:
                kept = (f"the last good checkpoint ({self.checkpoint_path}, iteration "
                        f"{self.checkpoint_iteration}) is kept")
            else:
                kept = "no checkpoint had been written yet (trainer.checkpoint_every)"
            raise NonFiniteError(
                f"non-finite {what} at iteration {self.iteration + 1}, so the run stopped and "
                f"{kept}; lower optimizer.lr in a new run directory, or rerun the same command "
                "with trainer.on_nan=skip to skip such updates.")
        if count:
            self.skipped += 1
        return False

    def _check_memory(self, sizes: list[int]) -> None:
        """Refuse, before any work, a network or batch whose parameters, traces (or BPTT graph)
        cannot fit in the memory free now: such a run would otherwise swap or be killed."""
        t, steps = self.cfg.trainer, self.data.num_steps
        aligned = t.align_every > 0

        def floor(batch: int, steps: int = steps, aligned: bool = aligned) -> int:
            rules = sum(rule.trace_bytes(sizes, batch, self.dtype.itemsize)
                        for rule in self.aligned) if aligned else 0
            return rules + self.algorithm.memory_floor(sizes, batch, steps, self.dtype.itemsize,
                                                       aligned)

        need, free = floor(t.batch_size), available_memory(self.device)
        if free is None or need <= free:
            return
        what = "BPTT's graph" if self.algorithm.is_bptt else "its traces" + \
            (" and BPTT's graph for alignment" if aligned else "")
        where = (f"algorithm={self.algorithm.name} ({what}, T={steps}, layers "
                 f"{'-'.join(map(str, sizes))}), but only {free / 2**30:.1f} GiB of "
                 f"{self.device.type} memory is free")
        # an online rule's memory does not grow with T: only the alignment's BPTT graph does
        unaligned = (" or turn the alignment to BPTT off with trainer.align_every=0"
                     if aligned and not self.algorithm.is_bptt else "")
        if t.batch_size > 1 and floor(1) <= free:
            also = unaligned if floor(t.batch_size, aligned=False) <= free else ""
            raise ValueError(
                f"trainer.batch_size={t.batch_size} needs at least {need / 2**30:.1f} GiB for "
                f"{where}: lower trainer.batch_size{also} (that bound is a floor; a run needs "
                "more).")
        if floor(1, steps=1) <= free:  # the time steps are what does not fit
            also = unaligned if floor(1, aligned=False) <= free else ""
            if OmegaConf.select(self.cfg, "dataset.binning") == "fixed":  # T = t_max / dt
                key, lower = f"T={steps} (dataset.t_max / dataset.dt)", \
                    "raise dataset.dt or lower dataset.t_max"
            else:
                key, lower = f"dataset.num_steps={steps}", "lower dataset.num_steps"
            raise ValueError(
                f"{key} needs at least {floor(1) / 2**30:.1f} GiB even at batch size 1 for "
                f"{where}: {lower}{also}.")
        raise ValueError(
            f"model.width={self.cfg.model.width} needs at least {floor(1) / 2**30:.1f} GiB even "
            f"at batch size 1 for {where}: lower model.width or model.depth.")

    def _apply(self, grads) -> None:
        for p, g in zip(self.model.parameters(), grads):
            p.grad = g
        self.optimizer.step()

    def _as_dict(self, grads) -> dict:
        return dict(zip(self.param_names, grads))

    def _alignment(self, x, y, grads) -> dict:
        """SPEC §4 at the current parameters on this batch: this run's sequence gradient
        ``grads`` against BPTT of the same objective (``align/…``), and each rule of
        ``trainer.align_with`` likewise (``align/<rule>/…``)."""
        references = {}  # readout → BPTT's gradient (the run's own when it trains BPTT)
        if self.algorithm.is_bptt:
            references[self.algorithm.readout] = grads

        def reference(algorithm):
            if algorithm.readout not in references:
                references[algorithm.readout] = \
                    algorithm.reference().gradients(self.model, x, y)[0]
            return self._as_dict(references[algorithm.readout])

        row = alignment(self._as_dict(grads), reference(self.algorithm))
        for rule in self.aligned:
            row.update(alignment(self._as_dict(rule.gradients(self.model, x, y)[0]),
                                 reference(rule), prefix=f"align/{rule.name}"))
        return row

    def train_step(self, x, y, align: bool) -> dict:
        row = {}
        if self.cfg.trainer["update"] == "offline":
            grads, stats = self.algorithm.gradients(self.model, x, y)
            if align:
                row.update(self._alignment(x, y, grads))
            if self._check_finite(stats.loss, grads):
                self._apply(grads)
        else:
            if align:  # on the sequence gradient at the parameters the batch starts with (§4)
                row.update(self._alignment(x, y, self.algorithm.gradients(self.model, x, y)[0]))

            def on_step(step_grads):  # one optimizer step per time step: skip / count each
                if self._check_finite(0.0, step_grads):
                    self._apply(step_grads)

            stats = self.algorithm.train_online(self.model, x, y, on_step)
            # a non-finite loss stops the run (on_nan=stop); with skip, the steps whose
            # gradients were not finite were skipped and counted above already
            self._check_finite(stats.loss, [], count=False)
        row["train/loss"] = stats.loss
        row["train/acc"] = float(stats.correct(y).double().mean())
        for name, rate in zip(self.model.layer_names(), stats.rates):
            row[f"spikes/{name}"] = rate
        return row

    # ----------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self) -> dict:
        out = {}
        n = self.cfg.trainer.eval_batch_size
        readout = self.algorithm.readout
        for split, (xs, ys) in self.data.splits.items():
            loss_sum, correct = 0.0, 0
            for start in range(0, len(ys), n):
                x = xs[:, start:start + n].to(self.device, self.dtype)
                y = ys[start:start + n].to(self.device)
                stats = self.model.evaluate(x, y, readout)
                loss_sum += stats.loss * len(y)
                correct += int(stats.correct(y).sum())
            out[f"{split}/loss"] = loss_sum / len(ys)
            out[f"{split}/acc"] = correct / len(ys)
        self._track_best(out)
        return out

    def _track_best(self, ev: dict) -> None:
        it = self.iteration
        if "test/acc" in ev and ev["test/acc"] > self.best.get("best/test_acc", -1.0):
            self.best["best/test_acc"], self.best["best/test_acc_iter"] = ev["test/acc"], it
        if "val/acc" in ev and ev["val/acc"] > self.best.get("best/val_acc", -1.0):
            self.best["best/val_acc"], self.best["best/val_acc_iter"] = ev["val/acc"], it
            if "test/acc" in ev:  # the paper's model selection: test at the best validation
                self.best["best/test_acc_at_best_val"] = ev["test/acc"]

    # ----------------------------------------------------------------- the loop
    def _window_add(self, row: dict) -> None:
        for k, v in row.items():
            if not k.startswith("align/"):
                s, c = self.window.get(k, (0.0, 0))
                self.window[k] = (s + v, c + 1)

    def _window_flush(self) -> dict:
        out = {k: s / c for k, (s, c) in self.window.items()}
        self.window = {}
        return out

    def _on_signal(self, signum, frame) -> None:
        if self._signal is None:  # the first stop signal is the one reported
            self._signal = signum

    def finished_summary(self) -> dict | None:
        """The summary of this run if it already trained all its iterations, else None.

        Without a checkpoint (moved away to save space), a finished summary.json of the same
        config choices still counts as finished; one of other choices is refused rather than
        overwritten."""
        path = self.run_dir / SUMMARY_NAME
        try:
            summary = json.loads(path.read_text()) if path.exists() else None
        except (OSError, ValueError):
            summary = None  # torn or unreadable: a resumed run writes it anew
        if not isinstance(summary, dict) or summary.get("status") != "finished":
            return None
        if self.checkpoint_iteration is not None:
            return summary if self.iteration >= self.cfg.trainer.iterations else None
        choices = json.loads(json.dumps(config_choices(self.cfg), default=str))
        if summary.get("config") == choices:
            return summary
        shown = ckpt.describe_differences(summary.get("config"), choices, "in summary.json")
        raise ValueError(f"the run directory {self.run_dir} holds the finished results of a "
                         f"different run ({shown or 'other settings'}) and no "
                         "checkpoint; they are left as they are — give this config its own run "
                         "directory with hydra.run.dir=DIR.")

    def train(self) -> dict:
        t = self.cfg.trainer
        self.logger = RunLogger(self.run_dir, self.cfg, t.iterations, self.iteration,
                                f"{self.algorithm.name}", self.wandb_run_id)
        self.logger.metrics.truncate_after(self.iteration)  # rows after the checkpoint go
        self.logger.drop_stale_summary()  # this run is under way again
        ckpt.remove_stale_temporaries(self.checkpoint_path)
        self.data.prepare()  # a test set drawn on first use is not the first iteration's time
        previous = {}
        if threading.current_thread() is threading.main_thread():  # (signals need it)
            previous = {s: signal.signal(s, self._on_signal) for s in stop_signals()}
        if PENDING_STOP:
            self._signal = PENDING_STOP[0]
        self._t0 = time.time()
        try:
            return self._finish(self._loop())
        except BaseException as exc:
            preempted = isinstance(exc, Interrupted)
            if not preempted and isinstance(exc, Exception):  # the run failed: say so there
                self._record_failed(exc)
            self.logger.abort(preempted=preempted)
            raise
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def _loop(self) -> dict:
        t = self.cfg.trainer
        last_eval: dict = {}
        while self.iteration < t.iterations:
            if self._signal is not None:
                self.save_checkpoint()
                self.logger.write_summary(self._summary("interrupted"))
                raise Interrupted(self._signal)
            tic = time.perf_counter()
            x, y = self.data.train_batch(t.batch_size, self.batch_gen)
            x, y = x.to(self.device, self.dtype), y.to(self.device)
            step = self.iteration + 1  # the iteration this batch makes, as logged
            align = t.align_every > 0 and (step == 1 or step % t.align_every == 0
                                          or step == t.iterations)
            row = self.train_step(x, y, align)
            self.iteration += 1
            row["time/iter_s"] = time.perf_counter() - tic
            self._window_add(row)
            aligned = {k: v for k, v in row.items() if k.startswith("align/")}
            if aligned:
                self.align_count += 1
                for k, v in aligned.items():
                    self.align_sums[k] = self.align_sums.get(k, 0.0) + v
            last = self.iteration == t.iterations
            evaluate = last or (t.eval_every > 0 and self.iteration % t.eval_every == 0)
            if evaluate or aligned or last or (t.log_every > 0 and self.iteration % t.log_every == 0):
                out = {"iter": self.iteration, **self._window_flush(), **aligned}
                if evaluate:
                    last_eval = self.evaluate()
                    out.update(last_eval)
                    out.update(self.best)
                if self.skipped:
                    out["train/skipped_updates"] = self.skipped
                self.logger.log(out, line=evaluate)
            if t.checkpoint_every > 0 and self.iteration % t.checkpoint_every == 0 and not last:
                self.save_checkpoint()
        return last_eval

    def _record_failed(self, exc: Exception) -> None:
        """summary.json of a run that stopped on an error: its values so far, ``failed`` and
        the error (a finished summary from before a continuation is replaced: the metrics run
        on past it). Best effort: the error may be the disk itself."""
        try:
            self.logger.write_summary({**self._summary("failed"), "error": str(exc)})
        except Exception:
            pass

    def _summary(self, status: str, last_eval: dict | None = None) -> dict:
        """The run so far: the latest value of every logged metric (None where it was not
        finite), ``last_eval`` on top, the best values, the alignment means and the config."""
        summary = {}
        for row in read_metrics(self.logger.metrics.path):
            summary.update(row)
        summary.update(last_eval or {})
        summary = {k: v for k, v in summary.items() if not k.startswith("time/")}
        summary.update(self.best)
        summary.update({f"align_mean/{k[len('align/'):]}": s / self.align_count
                        for k, s in self.align_sums.items()})
        summary.update({"iter": self.iteration, "status": status,
                        "skipped_updates": self.skipped, "wall_time_s": self._wall(),
                        "config": config_choices(self.cfg), "settings": settings(self.cfg)})
        return summary

    def _finish(self, last_eval: dict) -> dict:
        summary = self._summary("finished", last_eval or self.evaluate())
        self.save_checkpoint()
        table = {k: summary[k] for k in ("train/loss", "train/acc", "val/acc", "test/acc",
                                         "best/test_acc", "best/val_acc",
                                         "best/test_acc_at_best_val", "align/cos/global",
                                         "align_mean/cos/global", "wall_time_s")
                 if k in summary}
        self.logger.finish(summary, table)
        return summary
