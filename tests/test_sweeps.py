"""Real ``otpe-train -m`` sweeps in a subprocess (basic, joblib and submitit_local launchers),
a failing job that keeps the others' results, the experiment presets and the launcher configs."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import otpe_cli.config  # noqa: F401  (registers the schemas)
from otpe_cli.logs import read_metrics

#: seconds per job: the real trainer at tiny sizes
TINY_SWEEP = ["debug=quick", "dataset.num_units=10",
              "trainer.iterations=2", "dataset.num_steps=10", "model.width=8",
              "trainer.batch_size=8", "dataset.test_samples_per_class=5",
              "trainer.progress=lines"]
#: bptt has no online mode: validation refuses that job, deterministically, before training
FAILING_PAIR = ["trainer.update=online", "algorithm=bptt,otpe"]


def summary(job_dir: Path) -> dict:
    return json.loads((job_dir / "summary.json").read_text())


def assert_one_failed_one_kept(res, sweep: Path) -> None:
    assert res.returncode == 1  # the sweep reports the failure, once, at its end ...
    assert "Traceback" not in res.stderr
    assert ("otpe-train: error: 1 job(s) of the sweep in " f"{sweep} failed") in res.stderr
    assert f"  {sweep / '0_bptt_d3_s0'}: trainer.update=online is not defined" in res.stderr
    failed, good = sweep / "0_bptt_d3_s0", sweep / "1_otpe_d3_s0"
    bad = summary(failed)
    assert bad["status"] == "failed"
    assert "trainer.update=online is not defined for algorithm=bptt" in bad["error"]
    assert bad["config"]["algorithm"] == "bptt" and bad["config"]["update"] == "online"
    kept = summary(good)  # ... and the good job's results are all there
    assert kept["status"] == "finished" and kept["iter"] == 2
    assert [r["iter"] for r in read_metrics(good / "metrics.jsonl")] == [1, 2]
    assert (good / ".hydra" / "overrides.yaml").exists()
    assert (sweep / "multirun.yaml").exists()


@pytest.mark.slow
def test_basic_launcher_sweep_keeps_the_good_job_when_one_fails(tmp_path, cli):
    sweep = tmp_path / "sweep"
    res = cli(["-m", *TINY_SWEEP, *FAILING_PAIR, f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert_one_failed_one_kept(res, sweep)
    assert "trainer.update=online is not defined" in res.stderr


def test_a_sweep_job_whose_directory_is_in_use_is_named_and_the_sweep_exits_1(tmp_path, cli):
    """A sweep run again while its first run still trains one of its jobs: that job is
    refused (its directory is the other process's), the others run, and the sweep ends with
    exit 1 naming it; no mark is left behind."""
    from otpe_cli.launch.rundir import run_dir_lock
    from otpe_cli.launch.sweep import FAILED_MARK

    sweep = tmp_path / "sweep"
    busy = sweep / "0_ottt_d3_s0"
    with run_dir_lock(busy):  # as the earlier sweep's process holds it
        res = cli(["-m", *TINY_SWEEP, "algorithm=ottt,otpe", f"hydra.sweep.dir={sweep}"],
                  cwd=tmp_path)
    assert res.returncode == 1, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    assert f"otpe-train: error: 1 job(s) of the sweep in {sweep} failed" in res.stderr
    assert f"  {busy}: the run directory {busy} is in use by another otpe-train" in res.stderr
    assert not (busy / "summary.json").exists() and not (busy / FAILED_MARK).exists()
    assert summary(sweep / "1_otpe_d3_s0")["status"] == "finished"


@pytest.mark.slow
def test_a_resumed_sweep_job_refused_beside_its_checkpoint_is_counted_as_failed(tmp_path,
                                                                                 cli):
    """A sweep run again with a changed setting: its job's checkpoint (another config) is
    kept and the job refused; its summary.json stays the earlier run's, so a mark carries the
    failure to the sweep's end, which exits 1 naming it (it used to exit 0)."""
    from otpe_cli.launch.sweep import FAILED_MARK

    sweep = tmp_path / "sweep"
    job = sweep / "0_otpe_d3_s0"
    args = ["-m", *TINY_SWEEP, "trainer.seed=0", f"hydra.sweep.dir={sweep}"]
    assert cli(args, cwd=tmp_path).returncode == 0
    before = (job / "summary.json").read_bytes(), (job / "checkpoint.pt").read_bytes()
    res = cli([*args, "optimizer.lr=0.5", "trainer.iterations=4"], cwd=tmp_path)
    assert res.returncode == 1, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    assert f"otpe-train: error: 1 job(s) of the sweep in {sweep} failed" in res.stderr
    assert f"  {job}: checkpoint {job / 'checkpoint.pt'} was made with a different " \
           "configuration (optimizer.lr is 0.001 in the checkpoint but 0.5 now)" in res.stderr
    assert ((job / "summary.json").read_bytes(), (job / "checkpoint.pt").read_bytes()) == before
    assert not (job / FAILED_MARK).exists()


# a full disk for a real otpe-train sweep (loaded through PYTHONPATH): every run file fails
FULL_DISK_SITE = """
import builtins, io, os
_open = io.open
def _open_on_full_disk(file, mode="r", *args, **kwargs):
    name = os.path.basename(str(file))
    if ("w" in mode or "a" in mode) and (name.endswith(("metrics.jsonl", ".tmp"))
                                         or name == ".otpe-train.failed"):
        return _open("/dev/full", "w", *args, **kwargs)  # every write: ENOSPC
    return _open(file, mode, *args, **kwargs)
builtins.open = io.open = _open_on_full_disk  # (pathlib writes through io.open)
"""


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_a_sweep_on_a_full_disk_does_not_end_as_a_success(tmp_path, cli):
    """Where not even the job's failure can be recorded, the job's error is left to Hydra,
    which ends the sweep with it (exit 1) once the other jobs have been tried, rather than the
    sweep exiting 0."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(FULL_DISK_SITE)
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    sweep = tmp_path / "sweep"
    res = cli(["-m", *TINY_SWEEP, "trainer.seed=0,1", f"hydra.sweep.dir={sweep}"],
              cwd=tmp_path, env={"PYTHONPATH": path})
    assert res.returncode == 1, res.stderr[-3000:]
    for job in (sweep / "0_otpe_d3_s0", sweep / "1_otpe_d3_s1"):
        assert f"otpe-train: error: {job}: {job / 'metrics.jsonl'} cannot be written (" \
            in res.stderr
        assert not (job / "summary.json").exists()


def test_joblib_sweep_runs_parallel_jobs_and_survives_a_failure(tmp_path, cli):
    sweep = tmp_path / "sweep"
    res = cli(["-m", *TINY_SWEEP, *FAILING_PAIR, "hydra/launcher=local_parallel",
               "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert "Joblib.Parallel" in res.stdout + res.stderr
    assert_one_failed_one_kept(res, sweep)


def test_submitit_local_sweep(tmp_path, cli):
    sweep = tmp_path / "sweep"
    res = cli(["-m", *TINY_SWEEP, "algorithm=ottt,otpe", "model.depth=2",
               "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    for job in ("0_ottt_d2_s0", "1_otpe_d2_s0"):
        assert summary(sweep / job)["status"] == "finished"
    assert list((sweep / ".submitit").glob("*/*_log.out"))  # submitit's own logs


@pytest.mark.slow
def test_submitit_local_sweep_names_its_failed_job(tmp_path, cli):
    sweep = tmp_path / "sweep"
    res = cli(["-m", *TINY_SWEEP, *FAILING_PAIR, "hydra/launcher=submitit_local",
               f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert_one_failed_one_kept(res, sweep)


@pytest.mark.slow
def test_a_failed_job_of_an_earlier_sweep_is_not_named_again(tmp_path, cli):
    sweep = tmp_path / "sweep"
    cli(["-m", *TINY_SWEEP, *FAILING_PAIR, f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    res = cli(["-m", *TINY_SWEEP, "trainer.update=online", "algorithm=otpe",
               f"hydra.sweep.dir={sweep}"], cwd=tmp_path)  # only the good job, again
    assert res.returncode == 0 and "otpe-train: error" not in res.stderr, res.stderr[-3000:]


def _submitit_task_pid(sweep: Path) -> int | None:
    """The process running a submitit_local job of this sweep (its command names the folder)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "submitit.core._submit" in cmd and str(sweep) in cmd:
            return int(proc.name)
    return None


@pytest.mark.slow  # about 20 s: a job that is signalled, requeued and resumed (pytest -m slow)
@pytest.mark.skipif(not Path("/proc").exists(), reason="finds the job process through /proc")
def test_submitit_requeue_checkpoints_and_resumes(tmp_path):
    """submitit's time-limit / preemption signal (USR2) makes the trainer checkpoint; submitit
    requeues the job, which resumes from the checkpoint and finishes."""
    sweep = tmp_path / "sweep"
    args = ["-m", *TINY_SWEEP, "trainer.iterations=600", "trainer.eval_every=0",
            "trainer.align_every=0", "trainer.log_every=1", "trainer.checkpoint_every=0",
            "algorithm=ottt", "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep}"]
    exe = Path(sys.executable).with_name("otpe-train")
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.Popen([str(exe) if exe.exists() else "otpe-train", *args], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    job = sweep / "0_ottt_d3_s0"
    try:
        deadline = time.time() + 120
        while len(read_metrics(job / "metrics.jsonl")) < 10:
            assert proc.poll() is None and time.time() < deadline, "the job did not start"
            time.sleep(0.1)
        pid = _submitit_task_pid(sweep)
        assert pid is not None
        os.kill(pid, signal.SIGUSR2)
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    logs = "".join(p.read_text() for p in (sweep / ".submitit").glob("*/*_log.*"))
    assert "submitit requeues the job" in logs and "Requeued job" in logs
    assert "resuming" in logs
    done = summary(job)
    assert done["status"] == "finished" and done["iter"] == 600
    assert [r["iter"] for r in read_metrics(job / "metrics.jsonl")] == list(range(1, 601))


def test_a_preset_runs_as_one_command_and_command_line_narrows_its_sweep(tmp_path, cli):
    sweep = tmp_path / "sweep"
    res = cli(["-m", "experiment=trandman_compare", *TINY_SWEEP, "algorithm=otpe,bptt",
               "trainer.seed=0", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = sorted(p.name for p in sweep.iterdir() if (p / "summary.json").exists())
    assert jobs == ["0_otpe_d3_s0", "1_bptt_d3_s0"]
    config = summary(sweep / jobs[0])["config"]
    assert (config["dataset"], config["encoding"], config["depth"]) == ("trandman", "time", 3)


# ------------------------------------------------------------------ configs (compose API)
def compose_with_hydra(overrides):
    with initialize_config_module(config_module="otpe_cli.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides),
                       return_hydra_config=True)


def _values(text) -> list[str]:
    return [v.strip() for v in str(text).split(",")]


@pytest.mark.parametrize("preset, dataset, encoding", [
    ("randman_compare", "randman", "rate"), ("trandman_compare", "trandman", "time")])
def test_comparison_presets_hold_the_paper_protocol(preset, dataset, encoding):
    from otpe_cli.algorithms import ALGORITHMS

    cfg = compose_with_hydra([f"experiment={preset}"])
    assert (cfg.dataset.name, cfg.encoding.name) == (dataset, encoding)
    assert (cfg.model.depth, cfg.model.width, cfg.trainer.iterations) == (3, 128, 5000)
    params = cfg.hydra.sweeper.params
    assert sorted(_values(params.algorithm)) == sorted(ALGORITHMS)
    assert _values(params["trainer.seed"]) == ["0", "1", "2"]
    assert preset in str(cfg.hydra.sweep.dir)


def test_depth_sweep_preset():
    from otpe_cli.algorithms import ALGORITHMS

    cfg = compose_with_hydra(["experiment=depth_sweep"])
    params = cfg.hydra.sweeper.params
    assert _values(params["model.depth"]) == ["2", "3", "4", "5"]
    assert set(_values(params.algorithm)) <= set(ALGORITHMS) and "bptt" in params.algorithm
    assert _values(params["trainer.seed"]) == ["0", "1", "2"]
    assert (cfg.model.width, cfg.trainer.iterations) == (128, 5000)
    # a dataset override on the command line still wins over the preset
    assert compose_with_hydra(["experiment=depth_sweep", "dataset=trandman"]).dataset.name \
        == "trandman"


def test_launcher_configs():
    from otpe_cli.launch.sweep import threads_per_job as _threads_per_job

    slurm = compose_with_hydra(["hydra/launcher=slurm"]).hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher")
    for key in ("partition", "gpus_per_node", "timeout_min", "array_parallelism",
                "cpus_per_task", "max_num_timeout"):
        assert key in slurm
    assert slurm.max_num_timeout > 0 and slurm.additional_parameters.requeue is True
    over = compose_with_hydra(["hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                               "hydra.launcher.gpus_per_node=2",
                               "hydra.launcher.timeout_min=30"]).hydra.launcher
    assert (over.partition, over.gpus_per_node, over.timeout_min) == ("gpu", 2, 30)
    local = compose_with_hydra(["hydra/launcher=local_parallel"]).hydra.launcher
    assert local._target_.endswith("JoblibLauncher") and "n_jobs" in local
    # one torch thread per parallel local job; a SLURM job uses its CPU allocation
    assert _threads_per_job(local) == 1
    assert _threads_per_job(slurm) == slurm.cpus_per_task
    submitit_local = compose_with_hydra(["hydra/launcher=submitit_local"]).hydra.launcher
    assert _threads_per_job(submitit_local) == 1
    basic = compose_with_hydra([]).hydra.launcher
    assert _threads_per_job(basic) is None
    assert OmegaConf.to_container(slurm, resolve=False)  # a plain, complete node


@pytest.mark.parametrize("stub, missing", [(None, "'sbatch' and 'srun' are"),
                                           ("srun", "'sbatch' is")])
def test_slurm_launcher_without_slurm_is_one_sentence_and_no_sweep_dir(tmp_path, cli, stub,
                                                                       missing):
    """No SLURM here (PATH holds only Python's folder, and a stub ``srun`` in one case):
    submitit would fail with a traceback when it calls sbatch."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if stub:
        (bin_dir / stub).write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / stub).chmod(0o755)
    sweep = tmp_path / "sweep"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}"}
    res = cli(["-m", *TINY_SWEEP, "hydra/launcher=slurm", f"hydra.sweep.dir={sweep}"],
              cwd=tmp_path, env=env)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [
        f"otpe-train: error: hydra/launcher=slurm needs SLURM, and {missing} not on PATH here: "
        "launch the sweep from a node of the cluster, or run it on this machine with "
        "hydra/launcher=local_parallel or the basic launcher."]
    assert not sweep.exists()


# hides one installed Hydra launcher plugin from a real otpe-train process (via PYTHONPATH)
NO_PLUGIN_SITE = """
import sys
class _Hidden:
    def find_spec(self, name, path=None, target=None):
        if name.startswith("hydra_plugins.{module}"):
            raise ModuleNotFoundError(name)
        return None
sys.meta_path.insert(0, _Hidden())
"""


@pytest.mark.parametrize("launcher, module, pip_name", [
    ("local_parallel", "hydra_joblib_launcher", "hydra-joblib-launcher"),
    ("submitit_local", "hydra_submitit_launcher", "hydra-submitit-launcher")])
def test_a_launcher_whose_plugin_is_missing_is_named_with_its_install(tmp_path, cli, launcher,
                                                                      module, pip_name):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NO_PLUGIN_SITE.replace("{module}", module))
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    sweep = tmp_path / "sweep"
    res = cli(["-m", *TINY_SWEEP, f"hydra/launcher={launcher}", f"hydra.sweep.dir={sweep}"],
              cwd=tmp_path, env={"PYTHONPATH": path})
    assert res.returncode == 2, res.stderr[-3000:]
    assert res.stderr.strip().splitlines() == [
        f"otpe-train: error: hydra/launcher={launcher} needs the Hydra plugin {pip_name}, which "
        f"is not installed here: pip install {pip_name} (or install otpe-cli with its launchers "
        "extra, e.g. pip install -e '.[launchers]' in the clone)."]
    assert not sweep.exists()


def test_a_stopped_sweep_says_how_to_resume_it(tmp_path):
    """Ctrl-C in a sweep: the job checkpoints, and the hint names the sweep, not the job."""
    sweep = tmp_path / "sweep"
    exe = Path(sys.executable).with_name("otpe-train")
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [str(exe) if exe.exists() else "otpe-train", "-m", *TINY_SWEEP, "trainer.iterations=400",
         "trainer.log_every=1", "model.depth=2,3", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = sweep / "0_otpe_d2_s0" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert (f"run the same sweep command with hydra.sweep.dir={sweep} to resume") in err
    assert summary(sweep / "0_otpe_d2_s0")["status"] == "interrupted"
    assert not (sweep / "1_otpe_d3_s0").exists()  # the sweep stopped with its job


def test_a_parallel_sweep_stopped_by_a_signal_checkpoints_its_jobs_and_resumes(tmp_path):
    """SIGTERM to a joblib sweep's parent alone (as a scheduler or ``kill`` sends it): the
    running jobs checkpoint and stop instead of training on as orphans, the queued job is not
    started, the sweep exits 143 naming how to resume, and the resumed sweep finishes every job
    with each iteration logged once."""
    sweep = tmp_path / "sweep"
    exe = Path(sys.executable).with_name("otpe-train")
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": "1"}
    # two jobs of about the same speed run first, each long enough to be running still when
    # the other has started, however busy the machine (one finished alone cannot be stopped)
    iterations = 1500
    command = [str(exe) if exe.exists() else "otpe-train", "-m", *TINY_SWEEP,
               f"trainer.iterations={iterations}", "trainer.log_every=1",
               "trainer.progress=none", "hydra/launcher=local_parallel",
               "hydra.launcher.n_jobs=2", "algorithm=otpe,ostl,ottt", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    running = [sweep / "0_otpe_d3_s0", sweep / "1_ostl_d3_s0"]
    deadline = time.monotonic() + 120
    while not all((d / "metrics.jsonl").exists()
                  and (d / "metrics.jsonl").read_text().count("\n") >= 2 for d in running):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err
    assert (f"sweep stopped by SIGTERM; run the same sweep command with hydra.sweep.dir={sweep} "
            "to resume.") in err
    for job in running:
        stopped = summary(job)
        assert stopped["status"] == "interrupted" and stopped["iter"] < iterations, stopped
        assert (job / "checkpoint.pt").exists()
    assert not (sweep / "2_ottt_d3_s0" / "metrics.jsonl").exists()  # skipped, not started

    res = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    for job in [*running, sweep / "2_ottt_d3_s0"]:
        assert summary(job)["status"] == "finished"
        assert [r["iter"] for r in read_metrics(job / "metrics.jsonl")] == list(
            range(1, iterations + 1))


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").glob("[0-9]*/status"):
        try:
            if f"\nPPid:\t{pid}\n" in entry.read_text():
                found.add(int(entry.parent.name))
        except OSError:
            continue
    return found


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_ctrl_c_while_a_parallel_sweep_starts_stops_it_with_a_hint(tmp_path):
    """Ctrl-C reaches the whole process group; while joblib's workers are still starting,
    those unpickling their first job die of it. No job has started, so the sweep stops at once
    with exit 130 and the command to start it again, not with joblib's traceback, and leaves
    no worker behind."""
    sweep, log = tmp_path / "sweep", tmp_path / "sweep.log"
    exe = Path(sys.executable).with_name("otpe-train")
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(exe) if exe.exists() else "otpe-train", "-m", *TINY_SWEEP,
             "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2", "algorithm=ottt,otpe",
             f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=env, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True)  # its own group, as in a terminal
    deadline = time.monotonic() + 120
    while not len(_children(proc.pid)) >= 2:  # workers spawned (they take seconds to import)
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.02)
    workers = _children(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=60) == 130, log.read_text()[-3000:]
    text = log.read_text()
    # (a worker interpreter still starting up may print Python's own "Fatal Python error ...
    # KeyboardInterrupt" as it dies: that is CPython's, before any code of ours or joblib's)
    assert "BrokenProcessPool" not in text and "joblib/parallel.py" not in text, text[-3000:]
    assert (f"SIGINT before any job of the sweep started; run the same sweep command with "
            f"hydra.sweep.dir={sweep} to start it again.") in text
    assert not list(sweep.glob("*/metrics.jsonl"))
    deadline = time.monotonic() + 20
    while any(Path(f"/proc/{pid}").exists() for pid in workers):
        assert time.monotonic() < deadline, "workers left behind"
        time.sleep(0.1)


def test_a_sweep_preset_without_multirun_says_only_one_job_runs(tmp_path, cli):
    """... and W&B keys given with W&B off are named; both warnings go to the run's log too."""
    run_dir = tmp_path / "run"
    res = cli(["experiment=depth_sweep", *TINY_SWEEP, f"hydra.run.dir={run_dir}",
               "logger.group=g"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    sweep_warning = ("this config sweeps over algorithm, model.depth, trainer.seed, but without "
                     "-m only one job runs (algorithm=otpe, model.depth=3, trainer.seed=0); add "
                     "-m to run the whole sweep")
    wandb_warning = "logger.group set, but W&B is off: add logger=wandb to log to W&B"
    log_text = (run_dir / "otpe-train.log").read_text()
    for warning in (sweep_warning, wandb_warning):
        assert warning in res.stderr and warning in log_text
    assert summary(run_dir)["status"] == "finished"
    plain = cli([*TINY_SWEEP, f"hydra.run.dir={tmp_path / 'plain'}"], cwd=tmp_path)
    assert plain.returncode == 0 and "sweeps over" not in plain.stderr
