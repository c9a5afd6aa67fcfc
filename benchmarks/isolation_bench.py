"""Figure (c) of the performance issue: the cost of process isolation, against in-run baselines.

* first worker start: a fresh interpreter that starts the fork server and one confined worker
  (until the worker reports "ready", every layer applied), vs a fresh
  ``python -c "import torch, diffusers"`` (until its import is done); alternating A/B, medians.
  Target <= 1.2x.
* later worker starts: fork + every layer + "ready" handshake, from the warm fork server;
  median in ms. Target <= 50 ms.
* per-call overhead: a 50-step DDPM loop with google/ddpm-cifar10-32's UNet architecture
  (35.7 M parameters, random weights) through ``load_pipeline(isolation="process")`` vs
  ``isolation="inprocess"`` in the same run; alternating A/B, medians. Target <= 1.03x.
  Outputs are also compared (bit-identical expected). Run in a fresh interpreter with one torch
  thread on both sides (the official figure) and with the default thread count (information).

``run() -> dict`` is called by ``benchmarks/run.py``; ``python -m benchmarks.isolation_bench``
prints the dict.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._harness import ab

DEFAULT_CACHE = Path(__file__).resolve().parent / ".cache"
_ROOT = Path(__file__).resolve().parents[1]

#: What the fork server imports before "ready" (transformers too: text encoders run in workers).
_BASELINE_IMPORTS = "torch, diffusers, transformers"

_FIRST_START = r"""
import time
t0 = time.perf_counter()
from pipewarden.limits import Limits
from pipewarden.isolation._client import WorkerProcess
w = WorkerProcess(Limits(), read_paths=())
t1 = time.perf_counter()
print("READY", t1 - t0, sum(s.active for s in w.layers), len(w.layers), flush=True)
w.close()
"""


def _python_env() -> dict[str, str]:
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT / "src"), env.get("PYTHONPATH", "")) if p)
    return env


def _timed_subprocess(code: str) -> float:
    """Wall time of a fresh interpreter running ``code`` (interpreter start included)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=_python_env(), stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _until_ready(code: str) -> float:
    """Interpreter start -> the line "READY" on stdout (interpreter shutdown not counted)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], env=_python_env(), stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    t_ready = time.perf_counter() - t0
    proc.communicate(timeout=120)
    if not line.startswith("READY"):
        raise RuntimeError(f"first-start probe failed: {line!r}")
    return t_ready


def first_start(repeats: int = 5) -> dict[str, Any]:
    """Both sides are timed to a READY line, so neither pays for torch's interpreter teardown
    (about 0.4 s, which ``time python -c "import torch, diffusers"`` would include)."""
    base: list[float] = []
    cand: list[float] = []
    base_exit: list[float] = []
    for i in range(repeats):
        order = [
            (lambda: _until_ready(f"import {_BASELINE_IMPORTS}; print('READY', flush=True)"), base),
            (lambda: _until_ready(_FIRST_START), cand),
        ]
        if i % 2:
            order.reverse()
        for fn, sink in order:
            sink.append(fn())
        base_exit.append(_timed_subprocess(f"import {_BASELINE_IMPORTS}"))
    b, c = statistics.median(base), statistics.median(cand)
    return {
        "baseline": f"python -c 'import {_BASELINE_IMPORTS}'",
        "import_torch_diffusers_s": b,
        "import_torch_diffusers_with_exit_s": statistics.median(base_exit),
        "first_worker_ready_s": c,
        "ratio": c / b,
        "repeats": repeats,
    }


def later_starts(n: int = 15) -> dict[str, Any]:
    from pipewarden.isolation._client import WorkerProcess, fork_server
    from pipewarden.limits import Limits

    server = fork_server()
    # let the fork server finish its idle warm-up imports (what a long-lived host would see)
    deadline = time.monotonic() + 60
    while server.ping().get("warm_left") and time.monotonic() < deadline:
        time.sleep(0.2)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        w = WorkerProcess(Limits(), read_paths=())
        times.append(time.perf_counter() - t0)
        w.close()
    return {"median_ms": statistics.median(times) * 1000, "min_ms": min(times) * 1000, "n": n}


def _weights(cache: Path) -> Path:
    from pipewarden._fixtures import DDPM_CIFAR10_UNET_CONFIG, build_weights

    target = cache / "ddpm-cifar10-32-random"
    if not (target / "model_index.json").is_file():
        build_weights(target, unet_config=DDPM_CIFAR10_UNET_CONFIG, seed=0)
    return target


def loop_overhead(cache: Path = DEFAULT_CACHE, *, steps: int = 50, repeats: int = 5) -> dict[str, Any]:
    import torch

    import pipewarden
    from pipewarden._fixtures import write_example_pipeline
    from pipewarden.loader.digests import sha256_file

    weights = _weights(cache)
    code = write_example_pipeline(cache / "example-pipeline")
    pin = sha256_file(code)
    common = {"custom_pipeline": str(code), "trust_remote_code": True, "pipeline_sha256": pin}
    t0 = time.perf_counter()
    inproc = pipewarden.load_pipeline(str(weights), isolation="inprocess", **common)
    t_load_in = time.perf_counter() - t0
    t0 = time.perf_counter()
    proc = pipewarden.load_pipeline(str(weights), isolation="process", **common)
    t_load_proc = time.perf_counter() - t0
    outs: dict[str, Any] = {}

    def run_in() -> None:
        outs["in"] = inproc(generator=torch.Generator().manual_seed(0), num_inference_steps=steps)

    def run_proc() -> None:
        outs["proc"] = proc(generator=torch.Generator().manual_seed(0), num_inference_steps=steps)

    try:
        res = ab(run_in, run_proc, repeats=repeats, warmup=1)
    finally:
        proc.close()
    identical = bool(torch.equal(outs["in"], outs["proc"]))
    return {
        "inprocess_s": res["baseline_s"],
        "process_s": res["candidate_s"],
        "ratio": res["ratio"],
        "repeats": repeats,
        "steps": steps,
        "bit_identical": identical,
        "load_inprocess_s": t_load_in,
        "load_process_s": t_load_proc,
        "torch_threads": torch.get_num_threads(),
    }


def loop_overhead_isolated(threads: int | None, *, repeats: int = 5) -> dict[str, Any]:
    """``loop_overhead`` in a fresh interpreter (its own fork server) with ``threads`` torch threads.

    One thread on both sides makes the figure robust on a shared machine: with several OpenMP
    threads a busy neighbour stretches every parallel region's barrier, and that noise (seen as
    0.4x-1.4x swings between runs on a loaded 2-core box) drowns a per-call overhead of a
    millisecond. The thread count is the same for host and worker (OMP_NUM_THREADS is passed
    through to the worker).
    """
    import os

    env = _python_env()
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    code = (
        "import json, sys\n"
        "from benchmarks.isolation_bench import loop_overhead\n"
        f"print('RESULT', json.dumps(loop_overhead(repeats={repeats})), flush=True)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=str(_ROOT), capture_output=True, text=True, timeout=3600
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"loop benchmark failed (rc {proc.returncode}): {proc.stderr[-2000:]}{os.linesep}")


def run(cache: Path = DEFAULT_CACHE, *, quick: bool = False) -> dict[str, Any]:
    first = first_start(repeats=3 if quick else 5)
    later = later_starts(n=7 if quick else 15)
    _weights(cache)
    loop_1 = loop_overhead_isolated(1, repeats=3 if quick else 5)
    loop_default = loop_overhead_isolated(None, repeats=3) if not quick else {"skipped": "--quick"}
    return {
        "first_start": first,
        "first_start_ratio": first["ratio"],
        "later_start": later,
        "later_start_ms": later["median_ms"],
        "loop_50": loop_1,
        "loop_50_ratio": loop_1["ratio"],
        "loop_50_default_threads": loop_default,
    }


if __name__ == "__main__":
    what = sys.argv[1:] or ["all"]
    out: dict[str, Any]
    if what == ["first"]:
        out = first_start()
    elif what == ["later"]:
        out = later_starts()
    elif what == ["loop"]:
        out = loop_overhead_isolated(1)
    elif what == ["loop-default"]:
        out = loop_overhead_isolated(None, repeats=3)
    else:
        out = run()
    print(json.dumps(out, indent=2))
