"""``make bench``: every figure of the performance issue, as ratios against in-run baselines.

Prints a table and writes ``benchmarks/results.json``. Figures whose module is missing or whose
prerequisites are absent (e.g. the community corpus for the audit figure) are reported as such,
never invented.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

TARGETS = [
    ("a", "vetted/plain, one step", ("a", "one_step", "ratio"), "<= 1.005x", lambda v: v <= 1.005),
    ("a", "vetted/plain, 50-step loop", ("a", "loop_50", "ratio"), "<= 1.005x", lambda v: v <= 1.005),
    ("b", "verified load (record hit) / diffusers load", ("b", "load", "ratio"), "<= 1.3x", lambda v: v <= 1.3),
    ("b", "verified load+first step / diffusers", ("b", "load_plus_first_step", "ratio"), "<= 1.1x", lambda v: v <= 1.1),
    ("b", "verified load, reverify='always' / diffusers", ("b", "load_reverify_always", "ratio"), "(info)", None),
    ("c", "first worker start / python -c 'import torch, diffusers, transformers'", ("c", "first_start_ratio"), "<= 1.2x", lambda v: v <= 1.2),
    ("c", "later worker start (ms)", ("c", "later_start_ms"), "<= 50 ms", lambda v: v <= 50),
    ("c", "50-step loop process/in-process", ("c", "loop_50_ratio"), "<= 1.03x", lambda v: v <= 1.03),
    ("d", "audit files/s per core, cold (no reuse)", ("d", "files_per_s_per_core"), "(info)", None),
    ("d", "audit files/s per core, unchanged files reused", ("d", "cached", "files_per_s_per_core"), ">= 100", lambda v: v >= 100),
    ("d", "audit time / py_compile time", ("d", "ratio_vs_py_compile"), "(info)", None),
    ("e", "read+hash throughput / raw hashlib", ("e", "throughput_ratio"), ">= 0.95x", lambda v: v >= 0.95),
    ("f", "SD-shaped: verified load (record hit) / diffusers", ("f", "load_hit_ratio"), "<= 1.3x", lambda v: v <= 1.3),
    ("f", "SD-shaped: load + first call / diffusers", ("f", "load_first_call_ratio"), "<= 1.1x", lambda v: v <= 1.1),
    ("f", "SD-shaped: record miss / raw hashlib, all cores", ("f", "miss_vs_hashlib_ratio"), "<= 0.6x", lambda v: v <= 0.6),
    ("f", "SD-shaped: record hit / record miss", ("f", "hit_vs_miss", "ratio"), "(info)", None),
    ("f", "SD-shaped: vetted/plain call, in-process", ("f", "call_inprocess_ratio"), "<= 1.02x", lambda v: v <= 1.02),
    ("f", "SD-shaped: vetted/plain call, process", ("f", "call_process_ratio"), "<= 1.02x", lambda v: v <= 1.02),
]


def _get(results: dict[str, Any], path: tuple[str, ...]) -> Any:
    cur: Any = results
    for key in path:
        if not isinstance(cur, dict) or key not in cur:
            return None
        cur = cur[key]
    return cur


def _machine() -> dict[str, Any]:
    import torch

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


ALL = {"core", "isolation", "audit", "sd"}


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.run [core] [isolation] [audit] [sd] [--quick]``

    ``--quick``: fewer repeats (a whole run fits a few minutes on a 2-core machine); the figures
    are then noisier, and results.json says so (``"quick": true``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    quick = "--quick" in argv
    argv = [a for a in argv if a != "--quick"]
    unknown = set(argv) - ALL
    if unknown:
        raise SystemExit(f"unknown figure groups {sorted(unknown)}; choose from {sorted(ALL)} and --quick")
    only = set(argv) or ALL
    results: dict[str, Any] = {}
    out = HERE / "results.json"
    if only != ALL and out.is_file():
        # A partial run updates its figures and keeps the others (each keeps its own date).
        results = {k: v for k, v in json.loads(out.read_text()).items() if k != "table"}
    results["machine"] = {**_machine(), "quick": quick, "load_average": os.getloadavg()}
    if "core" in only:
        from benchmarks import core_bench

        for name, fn in (("a", core_bench.figure_a), ("b", core_bench.figure_b), ("e", core_bench.figure_e)):
            print(f"running figure ({name}) ...", flush=True)
            try:
                kwargs: dict[str, Any] = {}
                if quick:
                    kwargs = {"a": {"repeats": 7, "loop_repeats": 3}, "b": {"repeats": 5}, "e": {"repeats": 5}}[name]
                results[name] = {**fn(core_bench.DEFAULT_CACHE, **kwargs), "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
            except Exception as exc:  # a benchmark failure is reported, not hidden
                traceback.print_exc()
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
    for key, group, modname in (
        ("c", "isolation", "benchmarks.isolation_bench"),
        ("d", "audit", "benchmarks.audit_bench"),
        ("f", "sd", "benchmarks.sd_bench"),
    ):
        if group not in only:
            continue
        print(f"running figure ({key}) ...", flush=True)
        try:
            results[key] = {**importlib.import_module(modname).run(quick=quick), "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        except Exception as exc:
            traceback.print_exc()
            results[key] = {"error": f"{type(exc).__name__}: {exc}"}
    rows = []
    for fig, label, path, target, ok in TARGETS:
        value = _get(results, path)
        if isinstance(value, (int, float)):
            shown = f"{value:.3f}" if isinstance(value, float) else str(value)
            verdict = "-" if ok is None else ("met" if ok(value) else "MISSED")
        else:
            shown, verdict = "n/a", "not measured"
        rows.append({"figure": fig, "what": label, "value": shown, "target": target, "verdict": verdict})
    results["machine"]["load_average_after"] = os.getloadavg()
    results["table"] = rows
    (HERE / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    width = max(len(r["what"]) for r in rows)
    print(f"\nmachine: {results['machine']}")
    print(f"{'fig':<4}{'what':<{width + 2}}{'value':>10}  {'target':<10} verdict")
    for r in rows:
        print(f"({r['figure']}) {r['what']:<{width + 2}}{r['value']:>10}  {r['target']:<10} {r['verdict']}")
    print(f"\nwritten: {HERE / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
