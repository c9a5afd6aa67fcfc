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
        raise FileNotFoundError(f"no *.py files under {corpus} (set PIPEWARDEN_CORPUS to a copy of "
                                "diffusers' examples/community)")
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


def run(corpus: Path | None = None, *, repeats: int = 5, jobs: tuple[int, ...] = (1, 2), quick: bool = False) -> dict:
    """Measure and return the figures (no printing). ``corpus`` defaults to $PIPEWARDEN_CORPUS.

    ``audit_jobsN`` are cold audits (``--no-cache``); ``audit_cached`` is the same serial command
    with a per-run result cache that a first (untimed) run filled: what CI or a pre-commit hook
    sees when most files are unchanged (results are reused only for identical bytes and an
    identical audit fingerprint).
    """
    if quick:
        repeats = 3
    corpus = Path(corpus or os.environ.get("PIPEWARDEN_CORPUS", DEFAULT_CORPUS))
    files = _corpus_files(corpus)
    names = [str(p.relative_to(corpus)) for p in files]
    n = len(files)
    total_bytes = sum(p.stat().st_size for p in files)
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="pw-audit-bench-") as tmp:
        env = dict(os.environ, PYTHONPYCACHEPREFIX=str(Path(tmp, "pycache")), PYTHONDONTWRITEBYTECODE="",
                   PIPEWARDEN_AUDIT_CACHE=str(Path(tmp, "cache", "audit-results.json")))
        commands = {
            "py_compile": [py, "-m", "py_compile", *names],
            **{
                f"audit_jobs{j}": [py, "-m", "pipewarden", "audit", "--no-cache", "--format", "json", "--jobs", str(j), *names]
                for j in jobs
            },
            "audit_cached": [py, "-m", "pipewarden", "audit", "--format", "json", "--jobs", "1", *names],
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
            if key == "audit_cached" and json.loads(out) != report:
                raise RuntimeError("the cached audit's report differs from the cold audit's")
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
    result["cached"] = {
        "wall_s": med["audit_cached"],
        "cpu_s": med_cpu["audit_cached"],
        "files_per_s": n / med["audit_cached"],
        "files_per_cpu_s": n / med_cpu["audit_cached"] if med_cpu["audit_cached"] else None,
        "files_per_s_per_core": n / med["audit_cached"],
        "ratio_vs_py_compile": med["audit_cached"] / med["py_compile"],
    }
    serial = result["audit"][str(jobs[0])]
    # headline figures (benchmarks/run.py reads these keys): the serial whole command
    result["files_per_s"] = serial["files_per_s"]
    result["files_per_s_per_core"] = serial["files_per_s_per_core"]
    result["files_per_cpu_s"] = serial["files_per_cpu_s"]
    result["ratio_vs_py_compile"] = serial["ratio_vs_py_compile"]
    result["met"] = serial["files_per_s_per_core"] >= TARGET_FILES_PER_S_PER_CORE
    return result


# --- class detection vs diffusers' own rule --------------------------------------------------------
#
# diffusers' rule is ``find_pipeline_class`` applied to the *imported* module, so measuring it means
# importing (executing) each corpus file: this runs in a separate process, offline, never in the
# audit. Files whose imports are missing here (cv2, einops, onnx, modules that moved between diffusers
# versions, ...) are imported with stand-ins for exactly the modules/names the file itself imports
# that do not exist: missing names resolve to diffusers' top-level object of the same name when there
# is one (moved modules, copies of diffusers' own tree with relative imports), else to a placeholder
# class that is not a DiffusionPipeline. That is "what the rule would give" with the file's deps
# installed. The comparison is with the rule as it runs in this environment; a class whose diffusers
# base is a DummyObject (optional backend such as onnxruntime missing) is listed in the notes, since
# with the backend installed diffusers' rule would find it.

_PROBE = r"""
import builtins, importlib.abc, importlib.machinery, importlib.util, json, os, sys, types, warnings
os.environ["HF_HUB_OFFLINE"] = "1"
warnings.filterwarnings("ignore")
import diffusers
from diffusers.utils.dynamic_modules_utils import find_pipeline_class
from diffusers.utils.import_utils import DummyObject

PKG = "pw_probe_pkg.a.b"
STUBBED = set()

class _StubMeta(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _stub_class(name)
    def __or__(cls, other): return cls
    def __ror__(cls, other): return cls
    def __getitem__(cls, item): return cls

class _StubBase(metaclass=_StubMeta):
    def __init__(self, *a, **k): pass
    def __call__(self, *a, **k):
        return a[0] if len(a) == 1 and callable(a[0]) and not k else _StubBase()
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _StubBase()

def _stub_class(name):
    return _StubMeta(name, (_StubBase,), {"__module__": "pw_stub"})

def _stand_in(module_name, name):
    if (module_name.startswith("diffusers.") or module_name.startswith("pw_probe_pkg")) and hasattr(diffusers, name):
        return getattr(diffusers, name)
    return _stub_class(name)

class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name == "__version__":
            return "999.0.0"
        if name.startswith("__"):
            raise AttributeError(name)
        value = _stand_in(self.__name__, name)
        setattr(self, name, value)
        return value

class _Loader(importlib.abc.Loader):
    def create_module(self, spec): return _StubModule(spec.name)
    def exec_module(self, module): module.__path__ = []

def _from_corpus_file(frame):
    while frame is not None and (frame.f_globals.get("__name__", "").startswith("importlib")
                                 or frame.f_code.co_filename.startswith("<frozen")
                                 or frame.f_code.co_name == "_import"):
        frame = frame.f_back
    return frame is not None and str(frame.f_globals.get("__name__", "")).startswith("pw_probe_pkg")

class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if not (fullname.startswith("pw_probe_pkg") or _from_corpus_file(sys._getframe(1))):
            return None
        if not fullname.startswith("pw_probe_pkg"):
            STUBBED.add(fullname)
        return importlib.machinery.ModuleSpec(fullname, _Loader(), is_package=True)

_real_import = builtins.__import__
def _import(name, globals=None, locals=None, fromlist=(), level=0):
    module = _real_import(name, globals, locals, fromlist, level)
    if fromlist and globals and str(globals.get("__name__", "")).startswith("pw_probe_pkg"):
        for attr in fromlist:
            if attr != "*" and not hasattr(module, attr):
                STUBBED.add(f"{getattr(module, '__name__', name)}.{attr}")
                setattr(module, attr, _stand_in(getattr(module, "__name__", name), attr))
    return module

stub = sys.argv[2] == "stub"
if stub:
    sys.meta_path.append(_Finder())
    builtins.__import__ = _import
corpus = sys.argv[1]
out = {}
for rel in json.loads(sys.argv[3]):
    modname = PKG + "." + "m_" + "".join(c if c.isalnum() else "_" for c in rel[:-3])
    spec = importlib.util.spec_from_file_location(modname, os.path.join(corpus, rel))
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    STUBBED.clear()
    entry = {}
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        out[rel] = {"import_error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        continue
    try:
        cls = find_pipeline_class(module)
        entry["classes"] = [cls.__name__] if cls is not None else []
    except ValueError as exc:
        import re
        entry["classes"] = sorted(re.findall(r"found: (\w+), and (\w+)", str(exc))[0])
        entry["multiple"] = True
    entry["dummy_based"] = sorted(
        name for name, obj in vars(module).items()
        if isinstance(obj, type) and obj.__module__ == modname
        and any(isinstance(base, DummyObject) and base.__name__.endswith("Pipeline") for base in obj.__mro__[1:])
    )
    entry["stubbed"] = sorted(STUBBED)
    out[rel] = entry
print(json.dumps(out))
"""


def _diffusers_rule(corpus: Path, names: list[str], mode: str) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(corpus), mode, json.dumps(names)],
                          capture_output=True, text=True, env=env, cwd=tempfile.gettempdir(), timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"diffusers probe failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def class_agreement(corpus: Path | None = None) -> dict:
    """Compare the audit's pipeline class (the sandbox's scanner) with diffusers' ``find_pipeline_class``.

    Imports (executes) every corpus file in a child process, first as is, then, for files that
    fail to import here, with stand-ins for their missing imports (see above).
    """
    corpus = Path(corpus or os.environ.get("PIPEWARDEN_CORPUS", DEFAULT_CORPUS))
    files = _corpus_files(corpus)
    names = [str(p.relative_to(corpus)) for p in files]
    proc = subprocess.run([sys.executable, "-m", "pipewarden", "audit", "--format", "json", *names],
                          capture_output=True, text=True, cwd=corpus)
    audit = {f["path"]: f for f in json.loads(proc.stdout)["files"]}
    plain = _diffusers_rule(corpus, names, "plain")
    failed = [n for n in names if "import_error" in plain[n]]
    stubbed = _diffusers_rule(corpus, failed, "stub") if failed else {}
    rows = []
    for name in names:
        rule = plain[name] if name not in stubbed else stubbed[name]
        how = "import" if name not in stubbed else "import with stand-ins"
        ours = audit[name]["candidates"]
        if "import_error" in rule:
            rows.append({"file": name, "how": "not importable", "diffusers": None, "audit": ours,
                         "agree": None, "note": rule["import_error"]})
            continue
        expected = rule["classes"]
        note = ""
        if not expected and rule["dummy_based"]:
            note = (f"{rule['dummy_based']} subclass a diffusers DummyObject (optional backend not installed "
                    "here), so diffusers' rule finds no class; with the backend installed it would")
        rows.append({"file": name, "how": how, "diffusers": expected, "audit": ours,
                     "agree": sorted(expected) == sorted(ours), "note": note,
                     "stand_ins": rule.get("stubbed", [])})
    checked = [r for r in rows if r["agree"] is not None]
    return {
        "files": len(names),
        "checked_by_plain_import": sum(1 for r in rows if r["how"] == "import"),
        "checked_with_stand_ins": sum(1 for r in rows if r["how"] == "import with stand-ins"),
        "not_checked": [r["file"] for r in rows if r["agree"] is None],
        "agree": sum(1 for r in checked if r["agree"]),
        "checked": len(checked),
        "disagreements": [r for r in checked if not r["agree"]],
        "notes": [r for r in checked if r["note"]],
    }


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
    parser.add_argument("--classes", action="store_true",
                        help="also compare class detection with diffusers' find_pipeline_class (imports the corpus)")
    args = parser.parse_args(argv)
    result = run(args.corpus, repeats=args.repeats)
    if args.classes:
        result["class_agreement"] = class_agreement(args.corpus)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(_table(result))
        if args.classes:
            a = result["class_agreement"]
            print(f"class detection agrees with diffusers' find_pipeline_class on {a['agree']}/{a['checked']} "
                  f"files ({a['checked_by_plain_import']} by plain import, {a['checked_with_stand_ins']} with "
                  f"stand-ins for missing imports; not checkable: {len(a['not_checked'])})")
            for d in a["disagreements"]:
                print(f"  DISAGREE {d['file']}: diffusers {d['diffusers']} audit {d['audit']}")
            for d in a["notes"]:
                print(f"  note {d['file']}: {d['note']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
