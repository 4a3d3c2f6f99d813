"""The one training loop every algorithm goes through.

``Trainer`` owns a run: ``__init__`` builds everything from the config and resumes from the run
directory's checkpoint when there is one; ``train()`` is the loop — draw a batch, compute the
gradient (by the algorithm), optimizer step, log every ``log_every``, evaluate every
``eval_every``, align to BPTT every ``align_every``, checkpoint every ``checkpoint_every`` and
on a stop signal (`launch.signals`).
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import torch

from . import checkpoint as ckpt
from . import kernels
from .algorithms import build_algorithm
from .align import alignment
from .data import build_dataset
from .errors import NonFiniteError
from .identity import config_choices, describe_differences, settings
from .launch.signals import Interrupted, StopRequest, recording
from .logs import (RunLogger, SUMMARY_NAME, ensure_writable, read_metrics,
                   silent_output_warning)
from .memory import check_memory
from .optim import Optimizer, all_finite
from .snn import SNN

log = logging.getLogger("otpe-train")


class Every:
    """A schedule: true at every ``n``-th step (never for n = 0)."""

    def __init__(self, n: int):
        self.n = n

    def __call__(self, step: int) -> bool:
        return self.n > 0 and step % self.n == 0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("trainer.device=cuda was asked for, but no CUDA device is available; "
                         "use trainer.device=cpu or auto.")
    return torch.device(str(name))


def build_optimizer(cfg, params) -> Optimizer:
    """The configured optimizer (`optim`: torch's update arithmetic, without torch.optim's
    per-step hooks; online mode steps at every time step)."""
    return Optimizer(str(cfg.name), params, lr=cfg.lr, betas=cfg.get("betas"),
                     weight_decay=cfg.weight_decay, momentum=cfg.get("momentum"))


def reset_peak_memory(device: torch.device) -> None:
    """Start the high-water mark of `peak_memory_mb` from what the process holds now, so that
    a run measures its own peak, not that of the runs before it in the same process (a sweep
    through Hydra's basic launcher): CUDA's peak statistics, and on Linux the peak resident set
    (writing 5 to /proc/self/clear_refs). Elsewhere the mark stays the process's."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_memory_mb(device: torch.device) -> float:
    """The memory high-water mark since `reset_peak_memory`: CUDA's maximum allocated on a GPU,
    else the peak resident set (Linux VmHWM; ru_maxrss, the process's, where there is none)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Profile:
    """``trainer.profile=N``: torch.profiler over iterations ``first`` … ``first`` + N − 1
    (the first iteration is left out: it warms caches), written to the run directory as
    ``profile.txt`` (the ops by self CPU time) and ``trace.json`` (for chrome://tracing or
    Perfetto)."""

    def __init__(self, run_dir: Path, first: int, count: int, device: torch.device):
        self.run_dir, self.first, self.last = run_dir, first, first + count - 1
        self.device, self.profiler = device, None
        self.on = count > 0

    def before(self, step: int) -> None:
        if self.on and step == self.first:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if self.device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.profiler = torch.profiler.profile(activities=activities)
            self.profiler.__enter__()

    def after(self, step: int) -> None:
        if self.profiler is None or step < self.last:
            return
        profiler, self.profiler, self.on = self.profiler, None, False
        profiler.__exit__(None, None, None)
        table = profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=40)
        (self.run_dir / "profile.txt").write_text(table + "\n")
        profiler.export_chrome_trace(str(self.run_dir / "trace.json"))
        log.info("profiled iterations %d-%d: %s (ops by self CPU time) and %s", self.first,
                 self.last, self.run_dir / "profile.txt", self.run_dir / "trace.json")


class Trainer:
    def __init__(self, cfg, run_dir: Path):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        t, m, a = cfg.trainer, cfg.model, cfg.algorithm
        ensure_writable(self.run_dir)
        self.device = resolve_device(t.device)
        self.dtype = getattr(torch, str(t.dtype))
        self.data = build_dataset(cfg.dataset, str(cfg.encoding.name))
        if self.data.train_size is not None and t.batch_size > self.data.train_size:
            raise ValueError(f"trainer.batch_size={t.batch_size} is larger than the training set "
                             f"({self.data.train_size} samples): choose trainer.batch_size="
                             f"{self.data.train_size} or less.")
        sizes = [self.data.num_inputs] + [m.width] * (m.depth - 1) + [self.data.num_classes]
        self.algorithm = build_algorithm(str(a.name), a.readout and str(a.readout), a.bias_trace,
                                         checkpoint_blocks=a.checkpoint_blocks)
        #: the authors' protocol: more rules' gradients aligned at this run's parameters
        self.aligned = [build_algorithm(str(name)) for name in t.align_with]
        # before the model: its weights alone may not fit
        check_memory(cfg, self.algorithm, self.aligned, sizes, self.data.num_steps, self.dtype,
                     self.device)
        init_gen = torch.Generator().manual_seed(t.seed)  # same init for every algorithm
        self.model = SNN(sizes, m.beta, m.threshold, m.slope, generator=init_gen).to(
            self.device, self.dtype)
        self.optimizer = build_optimizer(cfg.optimizer, self.model.parameters())
        self.param_names = [n for n, _ in self.model.named_parameters()]
        self.batch_gen = torch.Generator().manual_seed(t.seed + 1)
        self.fixed_batches = None  # trainer.overfit_batches: the batches trained on again
        self.log_now, self.eval_now = Every(t.log_every), Every(t.eval_every)
        self.align_now, self.checkpoint_now = Every(t.align_every), Every(t.checkpoint_every)
        self.stop = StopRequest()  # the stop signal that has arrived, if any (train() installs it)
        self.iteration = 0
        self.best: dict = {}
        self.window: dict = {}
        self.align_sums: dict = {}
        self.align_count = 0
        self.skipped = 0
        self.elapsed = 0.0
        self.time_sum, self.time_count = 0.0, 0  # iteration times, for the mean time/iter_s
        self.peak_mb = 0.0                        # memory/peak_mb over every start of the run
        self.wandb_run_id = None
        self.wandb_steps = 0      # rows W&B has been sent (its history steps)
        self.saved_metrics = None  # the checkpoint's copy of metrics.jsonl up to its iteration
        self.checkpoint_path = self.run_dir / ckpt.CHECKPOINT_NAME
        self.checkpoint_iteration: int | None = None  # the iteration checkpoint.pt holds
        if self.checkpoint_path.exists():
            ckpt.restore(self, self.checkpoint_path)

    def wall_time(self) -> float:
        return self.elapsed + (time.time() - self._t0 if hasattr(self, "_t0") else 0.0)

    def save_checkpoint(self) -> None:
        ckpt.save_atomic(ckpt.trainer_state(self), self.checkpoint_path)
        self.checkpoint_iteration = self.iteration

    # ----------------------------------------------------------------- one iteration
    def _batch(self):
        """A fresh training batch, or with ``trainer.overfit_batches=N`` the first N batches of
        the seed in turn (the same ones after a resume)."""
        t = self.cfg.trainer
        if not t.overfit_batches:
            return self.data.train_batch(t.batch_size, self.batch_gen)
        if self.fixed_batches is None:
            gen = torch.Generator().manual_seed(t.seed + 1)
            self.fixed_batches = [self.data.train_batch(t.batch_size, gen)
                                  for _ in range(t.overfit_batches)]
        return self.fixed_batches[self.iteration % t.overfit_batches]

    def _check_finite(self, loss: float, grads, count: bool = True) -> bool:
        """True when the loss and every gradient are finite. Otherwise ``on_nan=stop`` raises
        NonFiniteError (nothing is saved: checkpoint.pt keeps the last good state) and
        ``on_nan=skip`` counts the skipped update (when ``count``) and returns False."""
        if math.isfinite(loss) and all_finite(grads):
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

    def _apply(self, grads, if_finite: bool = False) -> bool:
        """One optimizer step; ``if_finite``: only if every gradient is finite (one call, fused
        on CPUs for Adamax). Returns whether it was taken."""
        if if_finite:
            return self.optimizer.step_if_finite(grads)
        self.optimizer.step(grads)
        return True

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
                if not self._apply(step_grads, if_finite=True):
                    self._check_finite(0.0, step_grads)  # (stops the run, or counts the skip)

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
            loss_sum, correct, silent = 0.0, 0, 0
            for start in range(0, len(ys), n):
                x = xs[:, start:start + n].to(self.device, self.dtype)
                y = ys[start:start + n].to(self.device)
                stats = self.model.evaluate(x, y, readout)
                loss_sum += stats.loss * len(y)
                correct += int(stats.correct(y).sum())
                silent += int((stats.counts.sum(1) == 0).sum())  # no output spike: wrong
            out[f"{split}/loss"] = loss_sum / len(ys)
            out[f"{split}/acc"] = correct / len(ys)
            out[f"{split}/silent"] = silent / len(ys)
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
        shown = describe_differences(summary.get("config"), choices, "in summary.json")
        raise ValueError(f"the run directory {self.run_dir} holds the finished results of a "
                         f"different run ({shown or 'other settings'}) and no "
                         "checkpoint; they are left as they are — give this config its own run "
                         "directory with hydra.run.dir=DIR.")

    def train(self) -> dict:
        t = self.cfg.trainer
        self.logger = RunLogger(self.run_dir, self.cfg, t.iterations, self.iteration,
                                f"{self.algorithm.name}", self.wandb_run_id,
                                wandb_steps=self.wandb_steps)
        self.wandb_run_id = self.logger.wandb_run_id
        repaired = self.logger.metrics.resume(self.iteration, self.saved_metrics)
        if repaired:
            log.warning(repaired)
        ckpt.remove_stale_temporaries(self.checkpoint_path)
        self.data.prepare()  # a test set drawn on first use is not the first iteration's time
        if self.device.type == "cpu":  # built (or waited for) before the loop, where a stop
            kernels.load()             # signal still stops the start-up at once
        self.logger.drop_stale_summary()  # under way again (a stop before this keeps it)
        reset_peak_memory(self.device)
        self._t0 = time.time()
        with recording(self.stop):
            try:
                return self._finish(self._loop())
            except BaseException as exc:
                preempted = isinstance(exc, Interrupted)
                if not preempted and isinstance(exc, Exception):  # the run failed: say so there
                    self._record_failed(exc)
                self.logger.abort(preempted=preempted)
                raise

    def _loop(self) -> dict:
        t = self.cfg.trainer
        last_eval: dict = {}
        profiler = Profile(self.run_dir, first=2, count=t.profile, device=self.device)
        while self.iteration < t.iterations:
            if self.stop.signum is not None:
                self.save_checkpoint()
                self.logger.write_summary(self._summary("interrupted"))
                raise Interrupted(self.stop.signum)
            step = self.iteration + 1  # the iteration this batch makes, as logged
            profiler.before(step)
            tic = time.perf_counter()
            x, y = self._batch()
            x, y = x.to(self.device, self.dtype), y.to(self.device)
            last = step == t.iterations
            align = t.align_every > 0 and (step == 1 or last or self.align_now(step))
            row = self.train_step(x, y, align)
            self.iteration = step
            row["time/iter_s"] = time.perf_counter() - tic
            profiler.after(step)
            aligned = self._record(row)
            evaluate = last or self.eval_now(step)
            if evaluate or aligned or self.log_now(step):
                out = {"iter": step, **self._window_flush(), **aligned,
                       "memory/peak_mb": self._peak_mb()}
                if evaluate:
                    last_eval = self.evaluate()
                    out.update(last_eval)
                    out.update(self.best)
                if self.skipped:
                    out["train/skipped_updates"] = self.skipped
                self.logger.log(out, line=evaluate)
            if self.checkpoint_now(step) and not last:
                self.save_checkpoint()
        return last_eval

    def _peak_mb(self) -> float:
        self.peak_mb = max(self.peak_mb, peak_memory_mb(self.device))
        return self.peak_mb

    def _record(self, row: dict) -> dict:
        """Add an iteration's row to the logging window, its time and its alignment to the
        run's sums; returns its alignment measures (empty if it made none)."""
        self.time_sum += row["time/iter_s"]
        self.time_count += 1
        aligned = {k: v for k, v in row.items() if k.startswith("align/")}
        for k, v in row.items():
            if k not in aligned:
                s, c = self.window.get(k, (0.0, 0))
                self.window[k] = (s + v, c + 1)
        if aligned:
            self.align_count += 1
            for k, v in aligned.items():
                self.align_sums[k] = self.align_sums.get(k, 0.0) + v
        return aligned

    def _window_flush(self) -> dict:
        out = {k: s / c for k, (s, c) in self.window.items()}
        self.window = {}
        return out

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
        summary.update(self.best)
        if self.time_count:  # the run's means and peaks, over every start of it
            summary["time/iter_s"] = self.time_sum / self.time_count
        summary["memory/peak_mb"] = self._peak_mb()
        summary.update({f"align_mean/{k[len('align/'):]}": s / self.align_count
                        for k, s in self.align_sums.items()})
        summary.update({"iter": self.iteration, "status": status,
                        "skipped_updates": self.skipped, "wall_time_s": self.wall_time(),
                        "config": config_choices(self.cfg), "settings": settings(self.cfg)})
        return summary

    def _finish(self, last_eval: dict) -> dict:
        summary = self._summary("finished", last_eval or self.evaluate())
        self.save_checkpoint()
        table = {k: summary[k] for k in ("train/loss", "train/acc", "val/acc", "test/acc",
                                         "test/silent", "best/test_acc", "best/val_acc",
                                         "best/test_acc_at_best_val", "align/cos/global",
                                         "align_mean/cos/global", "time/iter_s",
                                         "memory/peak_mb", "wall_time_s")
                 if k in summary}
        silent = silent_output_warning(summary)
        if silent:
            log.warning(silent)
        self.logger.finish(summary, table)
        return summary
