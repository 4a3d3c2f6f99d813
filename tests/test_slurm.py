"""Sweeps through a real SLURM cluster (``hydra/launcher=slurm``): every job of a sweep finishes,
and a job preempted with submitit's signal checkpoints, is requeued and resumes to the same
result as an uninterrupted run.

Needs a cluster whose jobs see this machine's files; on one machine: ``scripts/slurm_local.sh
up`` (as root). Without one (no ``sbatch``, or ``sinfo`` shows no idle node) the tests skip.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import compose_cfg, run_cli, strip_time
from otpe_cli.cli import run
from otpe_cli.logs import read_metrics

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("one_thread")]

#: seconds per job: the real trainer at tiny sizes
TINY = ["debug=quick", "trainer.iterations=6", "dataset.num_steps=10", "model.width=8",
        "trainer.batch_size=8", "dataset.test_samples_per_class=5", "trainer.progress=none"]
#: small allocations, so that the jobs fit any node (and run side by side on a small one).
#: One CPU per job is also one torch thread per job (launch.sweep.threads_per_job): the same
#: numerics as the in-process baseline under the one_thread fixture.
SLURM = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
         "hydra.launcher.timeout_min=10"]
#: a job long enough to be preempted mid-run, with a checkpoint every 20 iterations
LONG = [*(o for o in TINY if not o.startswith("trainer.iterations=")),
        "trainer.iterations=600", "trainer.checkpoint_every=20", "trainer.log_every=1",
        "algorithm=ottt", "trainer.seed=0"]
SWEEP_TIMEOUT = 600  # s; the node may be shared, and SLURM schedules every few seconds
REQUEUE_TIMEOUT = 420  # s; SLURM holds a requeued job ~2 minutes before it runs again


def idle_node() -> str | None:
    """Why there is no cluster to run on, or None when a node is idle or mixed."""
    if shutil.which("sbatch") is None:
        return "no SLURM here (sbatch is not on PATH; scripts/slurm_local.sh up starts one)"
    try:
        res = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "sinfo did not answer within 5 s (is slurmctld running?)"
    states = res.stdout.split()
    if res.returncode != 0 or not {"idle", "mixed"} & set(states):
        return f"no idle SLURM node (sinfo: {' '.join(states) or res.stderr.strip()[:100]})"
    return None


@pytest.fixture(scope="module", autouse=True)
def cluster():
    reason = idle_node()
    if reason:
        pytest.skip(reason)


def summary(job_dir: Path) -> dict | None:
    try:
        return json.loads((job_dir / "summary.json").read_text())
    except (OSError, ValueError):  # not written yet (or being replaced)
        return None


def comparable_summary(job_dir: Path) -> dict:
    return {k: v for k, v in summary(job_dir).items()
            if k != "wall_time_s" and not k.startswith(("time/", "memory/"))}


def submitit_logs(sweep: Path) -> str:
    return "".join(p.read_text(errors="replace")
                   for p in sorted((sweep / ".submitit").glob("*/*_log.*")))


def poll(what: str, ready, deadline_s: float, proc: subprocess.Popen, sweep: Path):
    """Wait until ``ready()`` is true; fail (with submitit's logs) at the deadline or when the
    sweep's process ends first."""
    deadline = time.monotonic() + deadline_s
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"otpe-train ended (rc {proc.returncode}) before {what}:\n"
                        + submitit_logs(sweep)[-3000:])
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {deadline_s} s:\n" + submitit_logs(sweep)[-3000:])
        time.sleep(0.05)


def slurm_jobs(sweep: Path, states: str = "all") -> list[str]:
    """SLURM's ids of this sweep's jobs (their batch script is submitit's, under the sweep)."""
    res = subprocess.run(["squeue", "-h", "-t", states, "-o", "%i %o"], capture_output=True,
                         text=True, timeout=30, check=True)
    return [line.split()[0] for line in res.stdout.splitlines()
            if str(sweep / ".submitit") in line]


def test_a_sweep_runs_every_job_through_slurm(tmp_path):
    sweep = tmp_path / "sweep"
    res = run_cli(["-m", *SLURM, "algorithm=ottt,otpe", "trainer.seed=0,1", *TINY,
                   f"hydra.sweep.dir={sweep}"], cwd=tmp_path, timeout=SWEEP_TIMEOUT)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    jobs = sorted(p.name for p in sweep.iterdir() if (p / ".hydra").is_dir())
    assert jobs == ["0_ottt_d3_s0", "1_ottt_d3_s1", "2_otpe_d3_s0", "3_otpe_d3_s1"]
    for job in jobs:
        done = summary(sweep / job)
        assert done and done["status"] == "finished" and done["iter"] == 6, (job, done)
    assert list((sweep / ".submitit").glob("*/*_log.out"))  # they ran as SLURM jobs


def test_a_preempted_job_is_requeued_and_resumes_to_the_uninterrupted_result(tmp_path):
    sweep, job = tmp_path / "sweep", tmp_path / "sweep" / "0_ottt_d3_s0"
    baseline = tmp_path / "baseline"  # the same run, uninterrupted and in-process (seconds)
    run(compose_cfg(LONG), baseline)
    exe = Path(sys.executable).with_name("otpe-train")
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    with open(tmp_path / "otpe-train.out", "w") as out:
        # a time limit long enough that submitit takes the signal for a preemption, not for
        # the time limit (under 10 minutes it counts every signal as a time-out)
        proc = subprocess.Popen([str(exe) if exe.exists() else "otpe-train", "-m", *SLURM,
                                 "hydra.launcher.timeout_min=20", *LONG,
                                 f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=env,
                                stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        # in the training loop (its signal handlers in place), a checkpoint behind it
        poll("iteration 30", lambda: (read_metrics(job / "metrics.jsonl") or [{}])[-1]
             .get("iter", 0) >= 30, SWEEP_TIMEOUT, proc, sweep)
        running = slurm_jobs(sweep, "RUNNING")
        assert len(running) == 1, running
        # as SLURM preempts a job, or warns of its time limit: submitit's signal, to its steps
        subprocess.run(["scancel", "--signal=USR2", running[0]], check=True, timeout=30)
        poll("finished summary", lambda: (summary(job) or {}).get("status") == "finished",
             REQUEUE_TIMEOUT, proc, sweep)
        assert proc.wait(timeout=120) == 0, (tmp_path / "otpe-train.out").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            for job_id in slurm_jobs(sweep):  # leave the cluster as it was
                subprocess.run(["scancel", job_id], timeout=30)
    logs = submitit_logs(sweep)
    # the handover (launch.job): the trainer checkpointed, then submitit requeued the job ...
    assert "SIGUSR2 from submitit (time limit or preemption): checkpoint saved in" in logs, logs
    assert "this job is preempted" in logs and "Requeued job" in logs, logs
    # ... which resumed from that checkpoint, not from the start
    resumed = re.search(r"resuming \S+ from iteration (\d+)",
                        (job / "otpe-train.log").read_text())
    assert resumed and int(resumed[1]) >= 30
    rows = read_metrics(job / "metrics.jsonl")
    assert [r["iter"] for r in rows] == list(range(1, 601))  # none lost, none twice
    assert strip_time(rows) == strip_time(read_metrics(baseline / "metrics.jsonl"))
    assert comparable_summary(job) == comparable_summary(baseline)
