"""Figure (d) of the benchmarks: ``pipewarden audit`` throughput against ``python -m py_compile``.

Both sides run as whole commands (interpreter start-up included) on the same files in the same
run, alternating A/B, and the median of the repeats is reported. ``py_compile`` writes its .pyc
files under a temporary PYTHONPYCACHEPREFIX, so the corpus directory is never written to.

Corpus: ``$PIPEWARDEN_CORPUS`` (default ``/work/corpus/examples/community``, a local copy of
diffusers' examples/community; never committed). Target: >= 100 files/s per core.

    python benchmarks/audit_bench.py            # prints a table, JSON to stdout with --json
    from benchmarks.audit_bench import run      # run(corpus) -> dict, for benchmarks/run.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

DEFAULT_CORPUS = "/work/corpus/examples/community"
TARGET_FILES_PER_S_PER_CORE = 100.0


def _corpus_files(corpus: Path) -> list[Path]:
    files = sorted(p for p in corpus.rglob("*.py") if "__pycache__" not in p.parts)
    if not files:
        raise SystemExit(f"no *.py files under {corpus} (set PIPEWARDEN_CORPUS)")
    return files


def _timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, int, str]:
    """Wall seconds, child CPU seconds, exit status, stdout."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.returncode, proc.stdout


def run(corpus: Path | None = None, *, repeats: int = 5, jobs: tuple[int, ...] = (1, 2)) -> dict:
    """Measure and return the figures (no printing). ``corpus`` defaults to $PIPEWARDEN_CORPUS."""
    corpus = Path(corpus or os.environ.get("PIPEWARDEN_CORPUS", DEFAULT_CORPUS))
    files = _corpus_files(corpus)
    names = [str(p.relative_to(corpus)) for p in files]
    n = len(files)
    total_bytes = sum(p.stat().st_size for p in files)
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="pw-audit-bench-") as tmp:
        env = dict(os.environ, PYTHONPYCACHEPREFIX=str(Path(tmp, "pycache")), PYTHONDONTWRITEBYTECODE="")
        commands = {
            "py_compile": [py, "-m", "py_compile", *names],
            **{
                f"audit_jobs{j}": [py, "-m", "pipewarden", "audit", "--format", "json", "--jobs", str(j), *names]
                for j in jobs
            },
        }
        walls: dict[str, list[float]] = {k: [] for k in commands}
        cpus: dict[str, list[float]] = {k: [] for k in commands}
        report = None
        # warm-up (page cache, .pyc of pipewarden itself), then alternate A/B/... each repeat
        for key, cmd in commands.items():
            _, _, rc, out = _timed(cmd, env, corpus)
            if key == "py_compile" and rc != 0:
                raise RuntimeError("py_compile failed on the corpus")
            if key.startswith("audit") and rc not in (0, 1):
                raise RuntimeError(f"audit exited {rc}")
            if key == "audit_jobs1" or (report is None and key.startswith("audit")):
                report = json.loads(out)
        for i in range(repeats):
            order = list(commands) if i % 2 == 0 else list(reversed(commands))
            for key in order:
                wall, cpu, _, _ = _timed(commands[key], env, corpus)
                walls[key].append(wall)
                cpus[key].append(cpu)

    med = {k: statistics.median(v) for k, v in walls.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpus.items()}
    assert report is not None
    rule_counts = Counter(f["rule"] for file in report["files"] for f in file["findings"])
    files_with_rule = Counter(r for file in report["files"] for r in {f["rule"] for f in file["findings"]})
    result = {
        "figure": "d",
        "name": "audit files/s vs py_compile",
        "corpus": str(corpus),
        "files": n,
        "bytes": total_bytes,
        "repeats": repeats,
        "cpu_count": os.cpu_count(),
        "py_compile_s": med["py_compile"],
        "py_compile_files_per_s": n / med["py_compile"],
        "audit": {},
        "rule_counts": dict(sorted(rule_counts.items())),
        "files_with_rule": dict(sorted(files_with_rule.items())),
        "summary": report["summary"],
        "pipeline_classes_found": sum(1 for f in report["files"] if f["pipeline_class"]),
        "target_files_per_s_per_core": TARGET_FILES_PER_S_PER_CORE,
    }
    for j in jobs:
        key = f"audit_jobs{j}"
        cores = min(j, os.cpu_count() or 1)
        result["audit"][str(j)] = {
            "wall_s": med[key],
            "cpu_s": med_cpu[key],
            "files_per_s": n / med[key],
            "files_per_cpu_s": n / med_cpu[key] if med_cpu[key] else None,
            "files_per_s_per_core": n / med[key] / cores,
            "ratio_vs_py_compile": med[key] / med["py_compile"],
        }
    serial = result["audit"][str(jobs[0])]
    result["ratio"] = serial["ratio_vs_py_compile"]
    result["met"] = serial["files_per_s_per_core"] >= TARGET_FILES_PER_S_PER_CORE
    return result


def _table(r: dict) -> str:
    lines = [
        f"audit throughput on {r['files']} files ({r['bytes'] / 1e6:.1f} MB), median of {r['repeats']}, "
        f"{r['cpu_count']} CPUs",
        f"{'command':<22}{'wall s':>9}{'files/s':>10}{'per core':>10}{'x py_compile':>14}",
        f"{'python -m py_compile':<22}{r['py_compile_s']:>9.3f}{r['py_compile_files_per_s']:>10.1f}"
        f"{r['py_compile_files_per_s']:>10.1f}{1.0:>14.2f}",
    ]
    for j, a in r["audit"].items():
        lines.append(f"{'audit --jobs ' + j:<22}{a['wall_s']:>9.3f}{a['files_per_s']:>10.1f}"
                     f"{a['files_per_s_per_core']:>10.1f}{a['ratio_vs_py_compile']:>14.2f}")
    lines.append(f"target >= {r['target_files_per_s_per_core']:.0f} files/s per core: "
                 f"{'met' if r['met'] else 'MISSED'}")
    lines.append("findings per rule (findings / files): " + ", ".join(
        f"{k} {v}/{r['files_with_rule'].get(k, 0)}" for k, v in r["rule_counts"].items()))
    lines.append(f"pipeline class found in {r['pipeline_classes_found']}/{r['files']} files; summary {r['summary']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    result = run(args.corpus, repeats=args.repeats)
    print(json.dumps(result, indent=2) if args.json else _table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
