"""The fused kernels' build never hangs and never surprises: a lock that a killed build left is
taken over, a build by another process is waited for in words and only so long, a stop
signal ends that wait, the first build says so, and each environment keeps a build of its own.
(Whether the kernels compute the right bits is tests/test_kernels.py's.)"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.utils.cpp_extension as cpp

from otpe_cli import kernels


@pytest.fixture
def fresh(monkeypatch):
    """The kernels as a new process finds them: not loaded yet."""
    monkeypatch.setattr(kernels, "_module", None)
    monkeypatch.setattr(kernels, "_unusable", None)
    monkeypatch.delenv("OTPE_CLI_FUSED", raising=False)


def compiler_here() -> bool:
    return sys.platform.startswith("linux") and bool(shutil.which("c++") and shutil.which("ninja"))


def hold_lock(path) -> subprocess.Popen:
    """Another process holding the build's flock, as one that is building holds it."""
    code = ("import fcntl, sys, time\n"
            f"f = open({str(path)!r}, 'a+')\n"
            "fcntl.flock(f, fcntl.LOCK_EX)\n"
            "f.seek(0); f.truncate(); f.write('4242\\n'); f.flush()\n"
            "print('held', flush=True)\n"
            "time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_lock_left_by_a_killed_build_is_taken_over(fresh, monkeypatch, caplog):
    """torch's ``lock`` file, as a build killed mid-compile leaves it, made every later build
    wait forever: now the process that holds the build's flock removes it and builds."""
    if not compiler_here():
        pytest.skip("no C++ compiler or ninja here")
    name = kernels.extension_name()
    build_dir = kernels.build_directory(name)
    (build_dir / "lock").write_text("")
    real = cpp.load_inline
    seen = []

    def load_inline(*args, **kwargs):
        seen.append((build_dir / "lock").exists())
        return real(*args, **kwargs)

    monkeypatch.setattr(cpp, "load_inline", load_inline)
    with caplog.at_level(logging.WARNING, logger="otpe_cli.kernels"):
        assert kernels.load() == "used"
    assert seen == [False]
    assert any("removing the lock" in r.getMessage() for r in caplog.records)


def test_a_build_by_another_process_is_waited_for_in_words_and_only_so_long(fresh, monkeypatch,
                                                                            caplog):
    monkeypatch.setenv("OTPE_CLI_KERNEL_WAIT", "1")
    name = kernels.extension_name()
    lock = kernels._BuildLock(kernels.build_directory(name)).path
    holder = hold_lock(lock)
    try:
        with caplog.at_level(logging.WARNING, logger="otpe_cli.kernels"):
            status = kernels.load()
    finally:
        holder.kill()
        holder.wait()
    assert "another process (pid 4242) was still building them after 1 s" in status
    words = [r.getMessage() for r in caplog.records]
    assert any("waiting for the build of the fused CPU kernels by another process (pid 4242)"
               in w for w in words), words
    assert any("running the eager ops" in w for w in words)


def test_a_stop_signal_ends_the_wait_for_a_build(tmp_path):
    """``otpe-train`` waiting for another process's build: SIGTERM stops its start-up at once,
    in words, exit 143 (the wait is before the training loop)."""
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1",
           "OTPE_CLI_KERNEL_WAIT": "600", "OMP_NUM_THREADS": "1"}
    lock = kernels._BuildLock(kernels.build_directory(kernels.extension_name())).path
    holder = hold_lock(lock)
    run_dir, log = tmp_path / "run", tmp_path / "log"
    exe = os.path.join(os.path.dirname(sys.executable), "otpe-train")
    try:
        with open(log, "w") as out:
            proc = subprocess.Popen([exe, "debug=quick", "dataset.test_samples_per_class=5",
                                     f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=env,
                                    stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while "waiting for the build" not in log.read_text():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM, log.read_text()[-3000:]
    finally:
        holder.kill()
        holder.wait()
    text = log.read_text()
    assert "stopped by SIGTERM before training began" in text and "Traceback" not in text


def test_the_first_build_says_so_in_one_line(fresh, monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))

    def no_compiler(*args, **kwargs):
        raise RuntimeError("no compiler in this test")

    monkeypatch.setattr(cpp, "load_inline", no_compiler)
    with caplog.at_level(logging.INFO, logger="otpe_cli.kernels"):
        kernels.load()
    building = [r.getMessage() for r in caplog.records if "building the fused" in r.getMessage()]
    assert building == [f"building the fused CPU kernels, once per environment (~45 s; cached "
                        f"in {tmp_path / 'ext'})"]


def test_each_environment_keeps_a_build_of_its_own(monkeypatch):
    """Two virtualenvs or torch versions on one home used to rebuild one build for each other:
    the name carries what makes a build differ."""
    name = kernels.extension_name()
    assert name == kernels.extension_name() and name.startswith("otpe_cli_fused_")
    monkeypatch.setattr(torch, "__version__", "0.0.0+other")
    other_torch = kernels.extension_name()
    monkeypatch.undo()
    monkeypatch.setattr(cpp, "include_paths", lambda *a, **k: ["/another/venv/include"])
    other_env = kernels.extension_name()
    monkeypatch.undo()
    monkeypatch.setattr(kernels, "_FLAGS", [*kernels._FLAGS, "-g"])
    other_flags = kernels.extension_name()
    assert len({name, other_torch, other_env, other_flags}) == 4
