"""The host reads the worker's log as a hostile path (red team round 7, G3).

The worker owns its scratch directory (Landlock grants it every right there), so after code
execution in the worker its ``worker.log`` may be a link to a host file (the host would put that
file's text into the WorkerError) or a FIFO (the host would block for ever when the worker
crashed). The host's crash report reads the log without following links, without blocking, and
only a regular file."""

from __future__ import annotations

import os
import threading
import types

from pipewarden.isolation._client import WorkerProcess

SECRET = "pwsecret-log-tail-3b1d"


def _tail(scratch) -> str:
    return WorkerProcess._log_tail(types.SimpleNamespace(scratch=str(scratch)))  # type: ignore[arg-type]


def test_the_log_tail_is_read(tmp_path):
    (tmp_path / "worker.log").write_text("x" * 1000 + "\nTraceback: boom\n")
    assert _tail(tmp_path).endswith("Traceback: boom")


def test_a_log_linked_to_a_host_file_is_not_read(tmp_path):
    secret = tmp_path / "host-secret.txt"
    secret.write_text(SECRET)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    os.symlink(secret, scratch / "worker.log")
    assert open(scratch / "worker.log").read() == SECRET  # live: a plain open follows the link
    assert SECRET not in _tail(scratch)
    assert _tail(scratch) == ""


def test_a_log_replaced_by_a_fifo_never_blocks(tmp_path):
    os.mkfifo(tmp_path / "worker.log")
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(_tail(tmp_path)), daemon=True)
    reader.start()
    reader.join(timeout=20)
    blocked = reader.is_alive()
    if blocked:  # unblock the reader so the test run can end
        fd = os.open(tmp_path / "worker.log", os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
    assert not blocked
    assert result == [""]
