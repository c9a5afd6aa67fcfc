"""Run every payload UNSANDBOXED, one forked child each, and report which detectors fired.

Used by the escape suite's self-test (in a subprocess, so nothing touches the test process) to
prove that each payload is a live attack and that its detector can fail. Never run sandboxed
code's counterpart here: this script deliberately executes hostile code with plain ``exec``;
every payload aims at the throwaway world built under ``--root``.

Usage: python live_check.py --root DIR --weights DIR [--only ID ...]  -> JSON on stdout
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import select
import signal
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load_sibling(name: str):
    qual = f"_pw_escapes_{name}"
    if qual in sys.modules:
        return sys.modules[qual]
    spec = importlib.util.spec_from_file_location(qual, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[qual] = module
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)

    root = Path(args.root)
    os.environ["HF_MODULES_CACHE"] = str(root / "hf_modules")
    os.environ["HF_HOME"] = str(root / "hf_home")
    os.environ.pop("HF_HUB_OFFLINE", None)

    import torch

    torch.set_num_threads(1)  # the parent never starts a thread pool, so forked children don't hang
    import diffusers  # noqa: F401

    harness = load_sibling("harness")
    payloads = load_sibling("payloads")
    world = harness.build_world(root / "world", Path(args.weights))
    # Warm up once in the parent (lazy imports, a UNet forward) so each child starts warm.
    warm = harness.observe(world, payloads.BENIGN_SOURCE, "plain")
    if warm.exception is not None or warm.violations:
        print(json.dumps({"harness_error": "warm-up failed: " + warm.describe()}))
        return 1
    results: dict[str, dict] = {}
    gc.freeze()  # children would otherwise copy the whole heap when their GC first runs
    for payload in payloads.PAYLOADS:
        if args.only and payload.id not in args.only:
            continue
        if not payload.live:
            continue
        source = world.render(payload.template)
        started = time.monotonic()
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: run plain, report, exit without running any parent cleanup
            code = 0
            try:
                os.close(read_fd)
                gc.disable()  # no collection in the child (copy-on-write), but let payloads see every
                gc.unfreeze()  # object again: gc.get_objects() skips the frozen generation
                obs = harness.observe(world, source, "plain")
                exc = obs.exception
                report = {
                    "stage": obs.stage,
                    "exception": None if exc is None else f"{type(exc).__name__}: {exc}"[:500],
                    "violations": obs.violations,
                }
                os.write(write_fd, json.dumps(report).encode())
            except BaseException as e:  # noqa: BLE001
                os.write(write_fd, json.dumps({"harness_error": repr(e)[:500]}).encode())
                code = 1
            finally:
                os._exit(code)
        os.close(write_fd)
        chunks = []
        deadline = time.monotonic() + args.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                chunks = [json.dumps({"harness_error": "timeout"}).encode()]
                break
            ready, _, _ = select.select([read_fd], [], [], left)
            if not ready:
                continue
            data = os.read(read_fd, 1 << 20)
            if not data:
                break
            chunks.append(data)
        os.close(read_fd)
        os.waitpid(pid, 0)
        try:
            results[payload.id] = json.loads(b"".join(chunks) or b'{"harness_error": "no report"}')
        except ValueError:
            results[payload.id] = {"harness_error": "bad report"}
        results[payload.id]["seconds"] = round(time.monotonic() - started, 3)
        world.clear_canary()
        world.drain_connections()
    print(json.dumps({"have_shared_object": world.have_shared_object, "results": results}))
    world.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
