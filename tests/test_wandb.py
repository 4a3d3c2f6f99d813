"""W&B logging, offline (wandb 0.31): files in the run directory, the logged history read back
from W&B's own ``.wandb`` file, one W&B run per job, resume, and fallbacks that never stop
training. Nothing here touches the network or the real home directory."""
from __future__ import annotations

import json
import math
import http.server
import os
import socket
import signal
import struct
import threading
import time
from pathlib import Path

import pytest

from helpers import compose_cfg, crash_at
from otpe_cli.logs import read_metrics

#: a few seconds per run: the real trainer at tiny sizes
SMALL = ["debug=quick", "dataset.num_units=10",
         "logger=wandb", "logger.name=wandb", "trainer.iterations=3",
         "trainer.eval_every=2", "trainer.align_every=2", "trainer.log_every=1",
         "dataset.num_steps=10", "model.width=8", "trainer.batch_size=8",
         "dataset.test_samples_per_class=5", "trainer.progress=lines",
         "model.threshold=0.3"]  # (an output layer that spikes: no warning that it is silent)


@pytest.fixture(autouse=True)
def isolated_wandb(tmp_path, monkeypatch):
    """No key, no network, no real home: every W&B path points into tmp_path."""
    for key in list(os.environ):
        if key.startswith("WANDB_"):
            monkeypatch.delenv(key)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NETRC", str(home / ".netrc"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var, sub in (("WANDB_DIR", "wandb_dir"), ("WANDB_CONFIG_DIR", "wandb_config"),
                     ("WANDB_CACHE_DIR", "wandb_cache"), ("WANDB_DATA_DIR", "wandb_data")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    return tmp_path


def offline(**extra) -> dict:
    return {"WANDB_MODE": "offline", **extra}


# ------------------------------------------------------------------ reading a .wandb file
def wandb_records(path: Path):
    """Protobuf records of an offline ``.wandb`` file: a 7-byte header (":W&B", magic 0xBEE1,
    version), then LevelDB-log framing (32 KiB blocks; chunks with a 7-byte header: crc32,
    length, type FULL=1 / FIRST=2 / MIDDLE=3 / LAST=4)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1, "not a W&B data file"
    block, header = 32768, 7
    pos, pending = 7, b""
    while pos + header <= len(data):
        left = block - pos % block
        if left < header:  # block trailer
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + header])
        if kind == 0 and length == 0:  # zero padding up to the next block
            pos += left
            continue
        if pos + header + length > len(data):  # still being written: what is there so far
            return
        chunk = data[pos + header:pos + header + length]
        pos += header + length
        if kind == 1:
            payload = chunk
        elif kind == 2:
            pending = chunk
            continue
        elif kind == 3:
            pending += chunk
            continue
        else:
            payload, pending = pending + chunk, b""
        record = pb.Record()
        record.ParseFromString(payload)
        yield record


def _items(items) -> dict:
    return {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in items}


def read_offline_run(run_file: Path) -> dict:
    """What W&B will upload for one offline run: run info, config, history, summary, exit."""
    out = {"history": [], "summary": {}, "metrics": [], "exit_code": None, "preempting": False}
    for record in wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            out.update(id=r.run_id, group=r.run_group, job_type=r.job_type,
                       name=r.display_name, project=r.project, tags=list(r.tags),
                       config=_items(r.config.update))
        elif kind == "history":
            out["history"].append(_items(record.history.item))
        elif kind == "summary":
            out["summary"].update(_items(record.summary.update))
        elif kind == "metric":
            out["metrics"].append(record.metric)
        elif kind == "exit":
            out["exit_code"] = record.exit.exit_code
        elif kind == "preempting":
            out["preempting"] = True
    return out


def offline_runs(run_dir: Path, timeout: float = 30.0) -> list[dict]:
    """Every offline run in the run directory, once W&B's service has written each one out:
    ``finish()`` can return before the service has flushed the file (seen under load), so a
    file without its run and exit records yet is read again until the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        files = sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))
        runs = [read_offline_run(f) for f in files]
        if all("id" in r and r["exit_code"] is not None for r in runs) or \
                time.monotonic() > deadline:
            return runs
        time.sleep(0.2)


# ------------------------------------------------------------------ tests
def test_offline_run_lives_in_the_run_dir_holds_every_metric_and_resumes(tmp_path, cli):
    run_dir = tmp_path / "run"
    res = cli([*SMALL, f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=offline())
    assert res.returncode == 0, res.stderr[-3000:]
    runs = offline_runs(run_dir)
    assert len(runs) == 1
    assert not list((tmp_path / "wandb_dir").glob("**/*.wandb")), "W&B files left the run dir"
    run = runs[0]
    hint = f"wandb sync {run_dir / 'wandb'}/offline-run-*"
    assert hint in res.stderr + res.stdout
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1  # what the hint names
    assert (run["name"], run["job_type"], run["project"]) == ("otpe_d3_s0", "otpe", "otpe-cli")
    assert run["group"] == ""  # a single run has no sweep to share
    # the resolved config
    assert run["config"]["algorithm"]["name"] == "otpe"
    assert run["config"]["model"]["width"] == 8 and run["config"]["logger"]["mode"] == "offline"
    # every row of metrics.jsonl, value for value, on the "iter" axis
    rows = read_metrics(run_dir / "metrics.jsonl")
    history = {h["iter"]: h for h in run["history"]}
    assert sorted(history) == [r["iter"] for r in rows] == [1, 2, 3]
    for row in rows:
        for key, value in row.items():
            if value is not None:
                assert history[row["iter"]][key] == pytest.approx(value), key
    assert "align/cos/layers.0.weight" in history[2] and "test/acc" in history[2]
    globs = {m.glob_name: m.step_metric for m in run["metrics"] if m.glob_name}
    assert globs == {"*": "iter"}
    # the final summary: summary.json's names, the final accuracy under its key, the best one
    # under best/ (one name, one meaning, in W&B as in the files)
    summary = json.loads((run_dir / "summary.json").read_text())
    tests = [r["test/acc"] for r in rows if r.get("test/acc") is not None]
    assert run["summary"]["test/acc"] == pytest.approx(summary["test/acc"]) == \
        pytest.approx(tests[-1])
    assert run["summary"]["best/test_acc"] == pytest.approx(max(tests))
    assert run["summary"]["best/test_acc_iter"] == summary["best/test_acc_iter"]
    assert not any(k.startswith("final/") for k in run["summary"])
    assert run["summary"]["status"] == "finished"
    assert run["summary"]["align_mean/cos/layers.0.weight"] == pytest.approx(
        summary["align_mean/cos/layers.0.weight"])
    assert run["exit_code"] == 0
    import torch
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["wandb_run_id"] == run["id"]
    # more iterations in the same directory: the job resumes from its checkpoint at
    # iteration 3 and continues the same W&B run (a second offline fragment, same id);
    # progress=none keeps wandb's own lines off the console too
    quiet = [o for o in SMALL if not o.startswith("trainer.progress")] + ["trainer.progress=none"]
    again = cli([*quiet, "trainer.iterations=5", f"hydra.run.dir={run_dir}"], cwd=tmp_path,
                env=offline())
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout == again.stderr == ""
    runs = offline_runs(run_dir)
    assert len(runs) == 2 and runs[1]["id"] == run["id"]
    assert [h["iter"] for h in runs[1]["history"]] == [4, 5]
    assert runs[1]["exit_code"] == 0


def test_a_job_stopped_by_a_signal_is_marked_preempted_and_resumes_the_same_run(
        tmp_path, monkeypatch):
    from otpe_cli.trainer import Interrupted, Trainer

    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = tmp_path / "run"
    trainer = Trainer(compose_cfg([*SMALL, "trainer.progress=none"]), run_dir)
    trainer.stop.signum = signal.SIGTERM  # as the handler would, during the first iteration
    with pytest.raises(Interrupted):
        trainer.train()
    (stopped,) = offline_runs(run_dir)
    assert stopped["preempting"] and stopped["exit_code"] == 1
    assert stopped["summary"]["status"] == "interrupted"
    Trainer(compose_cfg([*SMALL, "trainer.progress=none"]), run_dir).train()
    stopped, resumed = offline_runs(run_dir)
    assert resumed["id"] == stopped["id"] and not resumed["preempting"]
    assert resumed["exit_code"] == 0 and resumed["summary"]["status"] == "finished"
    assert [h["iter"] for h in resumed["history"]] == [1, 2, 3]


def test_two_jobs_in_one_process_get_two_runs_in_the_sweep_group(tmp_path, cli):
    sweep = tmp_path / "sweeps" / "2026-01-02" / "03-04-05"  # the default layout: date/time
    res = cli(["-m", *SMALL, "trainer.iterations=2", "algorithm=ottt,otpe",
               f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=offline())
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = {"ottt": sweep / "0_ottt_d3_s0", "otpe": sweep / "1_otpe_d3_s0"}
    seen = {}
    for alg, job_dir in jobs.items():
        runs = offline_runs(job_dir)
        assert len(runs) == 1, job_dir
        run = runs[0]
        assert run["exit_code"] == 0  # finished when its job ended
        assert (run["job_type"], run["name"]) == (alg, f"{alg}_d3_s0")
        assert run["group"] == "2026-01-02_03-04-05"
        assert [h["iter"] for h in run["history"]] == [1, 2]  # its own rows only
        assert run["config"]["algorithm"]["name"] == alg
        seen[alg] = run["id"]
    assert seen["ottt"] != seen["otpe"]


@pytest.fixture
def not_wandb_server():
    """The URL of a local HTTP server that answers every request with 404: reachable (the
    server probe passes), but not a W&B server."""
    class NotFound(http.server.BaseHTTPRequestHandler):
        def _answer(self):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = do_PUT = do_HEAD = _answer

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_online_without_a_key_logs_offline_and_says_how_to_sync(tmp_path, cli, not_wandb_server):
    run_dir = tmp_path / "run"
    res = cli([*SMALL, "logger.mode=online", f"hydra.run.dir={run_dir}"], cwd=tmp_path,
              env={"WANDB_MODE": "online", "WANDB_BASE_URL": not_wandb_server})
    out = res.stderr + res.stdout
    assert res.returncode == 0, out[-3000:]
    assert "no API key" in out and "wandb sync" in out
    assert len(offline_runs(run_dir)) == 1


def test_online_with_an_unreachable_server_goes_offline_at_once(tmp_path, cli):
    """Nothing listens at the server's address: the probe says so before wandb.init would
    spend its timeout finding out."""
    run_dir = tmp_path / "run"
    env = {"WANDB_MODE": "online", "WANDB_API_KEY": "x" * 40,
           "WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_INIT_TIMEOUT": "900"}
    tic = time.time()
    res = cli([*SMALL, f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=env, timeout=600)
    out = res.stderr + res.stdout
    assert res.returncode == 0, out[-3000:]
    assert time.time() - tic < 450  # (wandb.init alone would wait 900 s)
    assert "W&B: cannot reach the server (127.0.0.1:9: Connection refused); logging offline" \
        in out and "wandb sync" in out
    assert "online init failed" not in out
    runs = offline_runs(run_dir)
    assert len(runs) == 1 and [h["iter"] for h in runs[0]["history"]] == [1, 2, 3]


@pytest.mark.slow
def test_online_with_a_server_that_is_not_wandb_falls_back_to_offline(
        tmp_path, cli, not_wandb_server):
    """The server is reachable, so the probe passes, but wandb.init fails there: the run
    logs offline."""
    run_dir = tmp_path / "run"
    env = {"WANDB_MODE": "online", "WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": not_wandb_server,
           "WANDB_INIT_TIMEOUT": "3"}
    tic = time.time()
    res = cli([*SMALL, f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=env, timeout=600)
    out = res.stderr + res.stdout
    assert res.returncode == 0, out[-3000:]
    assert time.time() - tic < 450  # (it never waits long for a server that is no W&B)
    assert "cannot reach" not in out
    assert "online init failed" in out and "wandb sync" in out
    runs = offline_runs(run_dir)
    assert len(runs) == 1 and [h["iter"] for h in runs[0]["history"]] == [1, 2, 3]


def test_the_server_probe_is_skipped_behind_a_proxy(monkeypatch):
    from otpe_cli.wandb_logger import WandbLogger

    attempts = []

    def refused(address, timeout=None):
        attempts.append(address)
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(socket, "create_connection", refused)
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                 "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert WandbLogger._unreachable().endswith(": Connection refused") and len(attempts) == 1
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert WandbLogger._unreachable() is None  # only wandb, through the proxy, can tell
    assert len(attempts) == 1


def test_wandb_mode_follows_the_environment(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert compose_cfg(["logger=wandb"]).logger.mode == "disabled"
    monkeypatch.delenv("WANDB_MODE")
    cfg = compose_cfg(["logger=wandb"])
    assert cfg.logger.name == "wandb" and cfg.logger.mode == "offline"
    assert compose_cfg(["logger=wandb", "logger.mode=online"]).logger.mode == "online"


def test_a_bad_wandb_mode_in_the_environment_is_named_as_such(monkeypatch):
    from otpe_cli.config import ConfigError, validate

    monkeypatch.setenv("WANDB_MODE", "foo")
    with pytest.raises(ConfigError, match=r"^WANDB_MODE='foo' in the environment"):
        validate(compose_cfg(["logger=wandb"]))
    with pytest.raises(ConfigError, match=r"^logger.mode='bar' is not one of"):
        validate(compose_cfg(["logger=wandb", "logger.mode=bar"]))
    validate(compose_cfg([]))  # W&B off: WANDB_MODE is not read


def test_wandb_settings_without_wandb_are_named():
    from otpe_cli.config import ignored_logger_keys

    given = ["logger.project=p", "logger.tags=[a]"]
    assert ignored_logger_keys(compose_cfg([]), []) == []
    assert ignored_logger_keys(compose_cfg(given), given) == ["logger.project", "logger.tags"]
    assert ignored_logger_keys(compose_cfg(["logger=wandb", *given]),
                               ["logger=wandb", *given]) == []
    preset = ["experiment=randman_compare"]  # sets logger.tags, for when W&B is chosen
    assert compose_cfg(preset).logger.tags and ignored_logger_keys(compose_cfg(preset),
                                                                    preset) == []


def test_run_name_and_group_defaults():
    from otpe_cli.wandb_logger import run_name, sweep_group

    cfg = compose_cfg(["logger=wandb", "algorithm=ostl", "model.depth=4", "trainer.seed=2"])
    assert run_name(cfg) == "ostl_d4_s2"
    assert sweep_group(cfg) is None  # composed outside a multirun
    named = compose_cfg(["logger=wandb", "logger.run_name=mine", "logger.group=study"])
    assert run_name(named) == "mine" and sweep_group(named) == "study"


class _BrokenRun:
    """A W&B run whose logging breaks mid-run."""

    def __init__(self):
        self.finished = []
        self.summary = {}

    def define_metric(self, *a, **k):
        pass

    def log(self, row):
        raise OSError("disk full")

    def finish(self, exit_code=0):
        self.finished.append(exit_code)


def test_wandb_that_cannot_start_or_breaks_never_stops_training(tmp_path, monkeypatch, capsys):
    import wandb

    from otpe_cli.cli import run
    from otpe_cli.wandb_logger import WandbLogger

    def refuse(*a, **k):
        raise RuntimeError("no wandb today")

    monkeypatch.setattr(wandb, "init", refuse)
    cfg = compose_cfg([*SMALL, "logger.mode=offline"])
    logger = WandbLogger(cfg, tmp_path / "unit")
    assert logger.run is None and logger.run_id
    logger.log({"iter": 1, "train/loss": 1.0})
    logger.finish({"test/acc": 0.5})
    err = capsys.readouterr().err
    assert "offline init failed (no wandb today)" in err and "without W&B" in err
    # the whole run still trains and writes its results
    summary = run(cfg, tmp_path / "run")
    assert summary["status"] == "finished" and summary["iter"] == 3
    # a run that breaks while logging is dropped, finished as failed, and training goes on
    broken = _BrokenRun()
    monkeypatch.setattr(wandb, "init", lambda *a, **k: broken)
    summary = run(cfg, tmp_path / "broken")
    assert summary["status"] == "finished" and broken.finished == [1]
    assert "logging failed (disk full)" in capsys.readouterr().err


def test_no_wandb_or_torch_dynamo_import_unless_chosen(tmp_path):
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from hydra import compose, initialize_config_module\n"
        "import otpe_cli.config\n"
        "from otpe_cli.cli import run\n"
        "with initialize_config_module(config_module='otpe_cli.conf', version_base='1.3'):\n"
        "    cfg = compose('config', overrides=sys.argv[2:])\n"
        "run(cfg, sys.argv[1])\n"
        "assert 'wandb' not in sys.modules, 'wandb was imported'\n"
        # torch.optim's classes import torch.compile's machinery at their first step (~2 s)
        "assert 'torch._dynamo' not in sys.modules, 'torch._dynamo was imported'\n")
    overrides = [o for o in SMALL if not o.startswith("logger")]
    res = subprocess.run([sys.executable, "-c", script, str(tmp_path / "run"), *overrides],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert math.isfinite(json.loads((tmp_path / "run" / "summary.json").read_text())["test/acc"])


def effective_history(runs: list[dict]) -> list[dict]:
    """The history W&B shows for one run made of offline segments, oldest first: a segment
    started with ``resume_from`` (its config's ``_wandb.branch_point``) first cuts the history
    after that step, then adds its own rows."""
    history = []
    for segment in runs:
        point = (segment["config"].get("_wandb") or {}).get("branch_point")
        if point:
            history = [h for h in history if h["_step"] <= point["step"]]
        history += segment["history"]
    return history


def test_rows_made_again_after_a_kill_are_in_w_and_b_once(tmp_path, monkeypatch):
    """Killed after its checkpoint at iteration 8 with rows 9 and 10 already sent, the resumed
    job rewinds the W&B run to the checkpoint's last row: W&B then holds each iteration once,
    and the rows of metrics.jsonl."""
    from otpe_cli.cli import run
    from otpe_cli.logs import read_metrics

    monkeypatch.setenv("WANDB_MODE", "offline")
    over = ["debug=quick", "logger=wandb", "trainer.iterations=14", "trainer.checkpoint_every=4",
            "trainer.log_every=1", "trainer.eval_every=5", "trainer.align_every=3",
            "dataset.num_steps=10", "model.width=8", "trainer.batch_size=8",
            "dataset.test_samples_per_class=5", "trainer.progress=none"]
    run_dir = tmp_path / "run"
    with monkeypatch.context() as m:
        crash_at(m, 11)
        with pytest.raises(SystemExit):
            run(compose_cfg(over), run_dir)
    (killed,) = offline_runs(run_dir)
    assert [h["iter"] for h in killed["history"]][-3:] == [8, 9, 10]  # sent beyond the checkpoint
    run(compose_cfg(over), run_dir)
    runs = offline_runs(run_dir)
    assert len(runs) == 2 and runs[0]["id"] == runs[1]["id"]
    history = effective_history(runs)
    iters = [h["iter"] for h in history]
    assert iters == list(range(1, 15)), iters
    assert [h["_step"] for h in history] == list(range(14))
    rows = read_metrics(run_dir / "metrics.jsonl")
    for h, row in zip(history, rows):
        assert h["train/loss"] == pytest.approx(row["train/loss"], rel=1e-12)
