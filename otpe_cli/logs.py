"""The one place that writes a run's logs: metrics.jsonl, summary.json, the console, W&B."""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from .errors import OutputError

METRICS_NAME = "metrics.jsonl"
SUMMARY_NAME = "summary.json"
CHECKPOINT_NAME = "checkpoint.pt"


def write_failure(path: Path, exc: Exception) -> str:
    """Why ``path`` could not be written, with the space left on its disk (a full disk's
    error alone says little: torch's writer reports it as "unexpected pos")."""
    why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    try:
        why += f"; {shutil.disk_usage(Path(path).parent).free / 2**20:.1f} MiB free on its disk"
    except OSError:
        pass
    return why


@contextmanager
def writing(path: Path):
    """Writes to the run file ``path`` inside: an OSError becomes the one sentence for a run
    file that cannot be written."""
    try:
        yield
    except OSError as exc:
        raise OutputError(f"{path} cannot be written ({write_failure(path, exc)}); the last "
                          "checkpoint, if any, is kept: free some space and run the same "
                          "command again to resume.") from None


def ensure_writable(run_dir: Path) -> None:
    """Make the run directory, or say in one sentence why it cannot be written."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise PermissionError(f"the run directory {run_dir} cannot be written "
                              f"({exc.strerror}); choose another with hydra.run.dir=DIR.")


def _clean(value):
    """JSON has no NaN/inf: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_text_atomic(path: Path, text: str) -> None:
    """Write beside ``path``, then rename over it: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def _parse_rows(text: str) -> tuple[list[dict], int]:
    """The rows of metrics.jsonl text, and how many lines could not be read (a torn last line
    of a killed writer, or damage); those are left out, the rows after them kept."""
    rows, bad = [], 0
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad += 1
    return rows, bad


def read_metrics(path: Path) -> list[dict]:
    """Rows of a metrics.jsonl; lines that cannot be read are left out."""
    try:
        return _parse_rows(Path(path).read_text(errors="replace"))[0]
    except OSError:
        return []


class MetricsFile:
    """Append-only metrics.jsonl. It also keeps the lines it has written since the run started
    (``lines``): a checkpoint carries them, so that a resumed run puts back any row up to its
    checkpoint that damage or a kill took from the file."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / METRICS_NAME
        self.lines: list[str] = []

    def resume(self, iteration: int, saved: str | None) -> str | None:
        """Make the file hold exactly the rows up to ``iteration`` (those after it are made
        again): from the checkpoint's copy ``saved`` where it has one, else from the file.
        Returns what was repaired, in words, or None."""
        try:
            text = self.path.read_text(errors="replace") if self.path.exists() else ""
        except OSError as exc:
            raise OutputError(f"{self.path} cannot be read ({exc.strerror}); move it away to "
                              "have it made again from the checkpoint.") from None
        rows, bad = _parse_rows(text)
        kept = [json.dumps(r) for r in rows if r.get("iter", 0) <= iteration]
        repaired = None
        if saved is not None:
            restored = saved.splitlines()
            lost = len(set(restored) - set(kept))
            if lost or len(kept) != len(restored):
                repaired = (f"{self.path.name}: {lost} row(s) up to iteration {iteration} were "
                            f"missing or unreadable ({bad} unreadable line(s)); written again "
                            "from the checkpoint")
            kept = restored
        elif bad:
            repaired = (f"{self.path.name}: {bad} unreadable line(s) left out (this checkpoint "
                        "holds no copy of the rows to put back)")
        self.lines = kept
        with writing(self.path):
            write_text_atomic(self.path, "".join(line + "\n" for line in kept))
        return repaired

    def append(self, row: dict) -> None:
        line = json.dumps({k: _clean(v) for k, v in row.items()})
        with writing(self.path), open(self.path, "a") as f:
            f.write(line + "\n")
        self.lines.append(line)

    def saved_copy(self) -> str:
        """The rows written so far, for a checkpoint."""
        return "".join(line + "\n" for line in self.lines)


class ConsoleProgress:
    """Progress on the console: a rich bar in a terminal, plain lines otherwise, on stderr;
    the final table, the run's result, on stdout (``otpe-train > result.txt`` keeps it).
    ``progress=none`` prints none of it: the run directory holds the results."""

    def __init__(self, total: int, start: int, mode: str, title: str):
        self.console = Console(stderr=True)
        interactive = self.console.is_terminal and not os.environ.get("OTPE_PARALLEL_JOB")
        self.mode = {"auto": "bar" if interactive else "lines"}.get(mode, mode)
        self.total, self.title = total, title
        self.progress = None
        if self.mode == "bar":
            self.progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"), TimeRemainingColumn(),
                console=self.console, transient=False)
            self.task = self.progress.add_task(title, total=total, completed=start, status="")
            self.progress.start()

    def say(self, line: str) -> None:
        """One plain line (not in ``progress=none``), above the bar when there is one."""
        if self.mode != "none":
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def update(self, iteration: int, status: str, force_line: bool = False) -> None:
        if self.mode == "bar":
            self.progress.update(self.task, completed=iteration, status=status)
        elif self.mode == "lines" or (force_line and self.mode != "none"):
            print(f"[{self.title}] iter {iteration}/{self.total}  {status}", file=sys.stderr,
                  flush=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def table(self, title: str, metrics: dict, run_dir: Path) -> None:
        """The final metrics, then the run directory on a line of its own (whole, to copy)."""
        if self.mode == "none":
            return
        table = Table(title=title)
        table.add_column("metric")
        table.add_column("value", justify="right")
        for k, v in metrics.items():
            v = _clean(v)  # NaN/inf → None, as in the files
            table.add_row(k, f"{v:.4f}" if isinstance(v, float)
                          else "not finite" if v is None else str(v))
        out = Console()  # stdout
        out.print(table)
        out.print(f"run directory: {run_dir}", markup=False, highlight=False, soft_wrap=True)


#: the share of test samples without an output spike from which the console line shows it,
#: and from which a run ends with a warning
SILENT_SHOWN, SILENT_WARNED = 0.1, 0.5


def status_line(row: dict) -> str:
    parts = []
    for key, label in (("train/loss", "loss"), ("train/acc", "acc"), ("val/acc", "val"),
                       ("test/acc", "test"), ("align/cos/global", "cos"),
                       ("time/iter_s", "s/it")):
        if row.get(key) is not None:
            parts.append(f"{label} {row[key]:.3f}")
        if key == "test/acc" and (row.get("test/silent") or 0) >= SILENT_SHOWN:
            parts[-1] += f" ({row['test/silent']:.0%} silent)"
    return "  ".join(parts)


def silent_output_warning(summary: dict) -> str | None:
    """A sentence when many test samples got no output spike (each counts as wrong)."""
    share = summary.get("test/silent")
    if share is None or share < SILENT_WARNED:
        return None
    return (f"{share:.0%} of the test samples got no output spike, and a sample without one "
            "counts as wrong (SPEC §1): the output layer is mostly silent at the end of this "
            "run — train longer, or raise optimizer.lr or lower model.threshold")


class RunLogger:
    """Fans every logged row out to metrics.jsonl, the console and (optionally) W&B."""

    def __init__(self, run_dir: Path, cfg, total: int, start: int, title: str,
                 wandb_run_id: str | None = None, wandb_steps: int = 0):
        self.run_dir = Path(run_dir)
        self.metrics = MetricsFile(self.run_dir)
        self.console = ConsoleProgress(total, start, cfg.trainer.progress, title)
        self.console.say(f"run directory: {self.run_dir}")
        self.wandb = None
        if cfg.logger.name == "wandb":
            from .wandb_logger import WandbLogger
            self.wandb = WandbLogger(cfg, self.run_dir, wandb_run_id, self.console.console,
                                     wandb_steps)
        self.started = time.time()

    @property
    def wandb_run_id(self) -> str | None:
        return self.wandb.run_id if self.wandb else None

    @property
    def wandb_steps(self) -> int:
        """Rows W&B has been sent in this run (its history steps), earlier starts included."""
        return self.wandb.steps if self.wandb else 0

    def log(self, row: dict, line: bool = False) -> None:
        self.metrics.append(row)
        if self.wandb:
            self.wandb.log(row)
        self.console.update(row["iter"], status_line(row), force_line=line)

    def write_summary(self, summary: dict) -> None:
        path = self.run_dir / SUMMARY_NAME
        with writing(path):
            write_json_atomic(path, {k: _clean(v) for k, v in summary.items()})

    def drop_stale_summary(self) -> None:
        """The run is under way again (resumed, or continued past a finished end): the summary
        of its last stop ("interrupted", "failed" or "finished") no longer holds. Removed, so
        that if this run ends before it writes its own, nothing reports the old one as its
        result (a rerun of a run whose final summary was lost finishes it again)."""
        path = self.run_dir / SUMMARY_NAME
        with writing(path):
            path.unlink(missing_ok=True)

    def finish(self, summary: dict, final_table: dict, failed: bool = False) -> None:
        self.console.close()
        self.write_summary(summary)
        if self.wandb:
            self.wandb.finish(summary, failed)
            self.wandb = None
        self.console.table("final metrics", final_table, self.run_dir)

    def abort(self, preempted: bool = False) -> None:
        """The run stopped early: failed, or (``preempted``) stopped by a signal after its
        checkpoint, to be resumed."""
        self.console.close()
        if self.wandb:
            self.wandb.finish({}, failed=not preempted, preempted=preempted)
            self.wandb = None
