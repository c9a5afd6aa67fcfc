"""Clean exits: Ctrl-C, closed pipes and early exits print no tracebacks but the one expected.

Each test runs a real subprocess (its own session, like a terminal's foreground job) and checks
what it wrote on stderr, not only its exit status.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, env.get("PYTHONPATH", "")) if p)
    return env


def _run_into_closed_pipe(*argv: str) -> subprocess.CompletedProcess:
    """Run ``python -m pipewarden ARGV`` with stdout a pipe whose reader has already gone."""
    r, w = os.pipe()
    os.close(r)
    try:
        return subprocess.run(
            [sys.executable, "-m", "pipewarden", *argv], stdout=w, stderr=subprocess.PIPE, env=_env(), timeout=120
        )
    finally:
        os.close(w)


@pytest.mark.parametrize(
    "argv",
    [
        ("doctor", "--json"),
        ("doctor",),
        ("audit", str(Path(__file__).resolve())),
        ("audit", "--format", "sarif", str(Path(__file__).resolve())),
    ],
)
def test_writing_to_a_closed_pipe_is_quiet(argv):
    proc = _run_into_closed_pipe(*argv)
    assert proc.stderr == b"", proc.stderr.decode()
    assert proc.returncode == 141


LOOP_PIPELINE = '''\
from diffusers import DiffusionPipeline


class LoopPipeline(DiffusionPipeline):
    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    def __call__(self, n=0):
        while True:
            n = n + 1
'''

SCRIPT = '''\
import sys
import pipewarden
from pipewarden.limits import Limits
from pipewarden.loader.digests import sha256_file

weights, src = sys.argv[1], sys.argv[2]
pipe = pipewarden.load_pipeline(weights, custom_pipeline=src, trust_remote_code=True,
                                pipeline_sha256=sha256_file(src), isolation="process",
                                limits=Limits(wall_s=120))
import torch  # so that the interrupt lands in the call, not in an import
print("calling", flush=True)
pipe()
'''


@pytest.mark.slow
def test_ctrl_c_during_a_process_mode_call_gives_one_keyboard_interrupt(tiny_weights, tmp_path):
    src = tmp_path / "pipeline.py"
    src.write_text(LOOP_PIPELINE)
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tiny_weights), str(src)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
        start_new_session=True,  # a process group of its own, like a terminal job
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"calling\n"
        # The call is in flight (its worker loops forever). Wait until the worker is busy, then
        # Ctrl-C: the terminal sends SIGINT to the whole foreground process group.
        _wait_for_busy_worker(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = err.decode()
    assert text.count("Traceback (most recent call last)") == 1, text
    assert text.rstrip().endswith("KeyboardInterrupt"), text
    assert "BrokenPipeError" not in text and "_forkserver" not in text and "_worker.py" not in text, text


def _wait_for_busy_worker(host_pid: int) -> None:
    """Block until a descendant of ``host_pid`` (the worker) has used some CPU in the call."""
    import time

    for _ in range(600):
        for pid in _descendants(host_pid):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] == "R" and int(fields[11]) > 50:  # running, > 0.5 s of user CPU
                return
        time.sleep(0.1)
    raise AssertionError("the worker never started looping")


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        out += [int(k) for k in kids]
        todo += [int(k) for k in kids]
    return out


def test_exit_right_after_prestart_prints_nothing():
    code = "from pipewarden.isolation import prestart\nprestart()\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, env=_env(), timeout=120)
    assert proc.returncode == 0
    assert proc.stderr == b"", proc.stderr.decode()


def test_fork_server_runs_in_its_own_process_group(tiny_weights):
    from pipewarden.isolation._client import fork_server

    server = fork_server()
    pgid = os.getpgid(server._proc.pid)
    assert pgid != os.getpgrp()
    assert pgid == server._proc.pid  # its own group, which its workers inherit


@pytest.mark.parametrize("quiet", [False, True])
def test_first_worker_start_shows_a_line_on_a_terminal(quiet):
    import pty

    env = _env()
    env.pop("PIPEWARDEN_QUIET", None)
    env.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
    if quiet:
        env["PIPEWARDEN_QUIET"] = "1"
    master, slave = pty.openpty()
    try:
        code = "from pipewarden.isolation._client import fork_server\nfork_server()\n"
        proc = subprocess.run([sys.executable, "-c", code], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=slave, env=env, timeout=120)
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the terminal's other side is closed
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    assert proc.returncode == 0
    text = b"".join(chunks).decode()
    if quiet:
        assert text == ""
    else:
        assert "starting the isolated worker" in text and "Traceback" not in text
