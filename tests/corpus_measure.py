"""Measure the sandbox on real community pipelines (a measurement, not a CI test).

Reads the corpus from $PIPEWARDEN_CORPUS (default /work/corpus/examples/community: a local copy of
huggingface/diffusers' examples/community; never commit those files). For every *.py file:

1. ground truth, in a subprocess with plain Python: does the module body execute in this venv, and
   what does diffusers' own ``find_pipeline_class`` answer? Files whose imports are missing (cv2,
   tensorrt, ...) are re-imported with stub modules for the missing packages, so diffusers' rule has
   an answer for all files;
2. ``pipewarden.sandbox.scan.scan_source``: same class as diffusers' rule?
3. ``pipewarden.sandbox.load_class`` under the default policy: loads, and returns the right class?

Prints a table and the summary numbers; ``--json PATH`` writes them. Exit 0 unless the corpus is
present and a target is missed (>= 95 % of plain-executable files load; detection matches on all).
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import re
import subprocess
import sys
import types
import warnings
from pathlib import Path

DEFAULT_CORPUS = "/work/corpus/examples/community"


# ----------------------------------------------------------------------------- ground truth (child)


def _stub_class(name: str, module: str):
    """A stand-in for a name this environment lacks. A diffusers name ending in ``Pipeline`` stands
    for a pipeline class (what it is in the diffusers version the file was written for)."""
    bases: tuple = ()
    if module.split(".")[0] == "diffusers" and name.endswith("Pipeline") and "Modular" not in name:
        from diffusers import DiffusionPipeline

        bases = (DiffusionPipeline,)
    ns = {"__module__": "diffusers.stub" if bases else module}
    if bases:
        return type(name, bases, ns)
    ns["__init__"] = lambda self, *a, **k: None
    ns["__call__"] = lambda self, *a, **k: _stub_class("result", module)()
    ns["__getattr__"] = lambda self, attr: _stub_class(attr, module)()
    return _StubMeta(name, (), ns)


class _StubMeta(type):
    def __getattr__(cls, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _stub_class(attr, cls.__module__)


class _StubModule(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        value = _stub_class(name, self.__name__)
        setattr(self, name, value)
        return value


_CANNOT_IMPORT = re.compile(r"cannot import name '(\w+)' from '([\w.]+)'")


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, tops: set[str]) -> None:
        self.tops = tops

    def find_spec(self, fullname, path, target=None):  # noqa: D401
        if fullname.split(".")[0] in self.tops or any(fullname == t or fullname.startswith(t + ".") for t in self.tops):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        mod = _StubModule(spec.name)
        mod.__path__ = []
        return mod

    def exec_module(self, module):
        return None


def _import_file(path: Path, name: str, package: str | None = None):
    if package:
        name = f"{package}.{name}"
    spec = importlib.util.spec_from_file_location(name, str(path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _ground_truth(files: list[str], stubbed: bool) -> dict:
    warnings.simplefilter("ignore")
    import logging

    logging.disable(logging.CRITICAL)
    from diffusers import DiffusionPipeline
    from diffusers.utils.dynamic_modules_utils import find_pipeline_class

    def rule_ignoring_module_prefix(mod):
        # diffusers' rule for a file that only imports as part of the diffusers tree (relative
        # imports): the same test without the __module__ prefix check, which the emulation trips.
        found = [
            c for n, c in vars(mod).items()
            if isinstance(c, type) and n != "DiffusionPipeline" and issubclass(c, DiffusionPipeline)
            and c.__module__ == mod.__name__
        ]
        if len(found) > 1:
            raise ValueError("multiple")
        return found[0] if found else None

    out = {}
    stub_tops: set[str] = set()
    finder = _StubFinder(stub_tops)
    if stubbed:
        sys.meta_path.append(finder)
    for i, f in enumerate(files):
        path = Path(f)
        entry: dict = {"executes": False, "class": None, "error": None}
        package = None
        for _attempt in range(40 if stubbed else 1):
            try:
                mod = _import_file(path, f"corpus_{i}_{path.stem}", package)
                entry["executes"] = True
                entry["emulated"] = stubbed
                try:
                    cls = (rule_ignoring_module_prefix if package else find_pipeline_class)(mod)
                    entry["class"] = cls.__name__ if cls is not None else None
                except ValueError as exc:
                    entry["class"] = "<multiple>"
                    entry["error"] = str(exc)[:200]
                break
            except ImportError as exc:
                if stubbed and "relative import" in str(exc) and package is None:
                    package = "diffusers.pipelines.stable_diffusion_3"  # deep enough for `...`
                    continue
                m = _CANNOT_IMPORT.search(str(exc))
                if stubbed and m:
                    target = sys.modules.get(m.group(2))
                    if target is not None and not hasattr(target, m.group(1)):
                        setattr(target, m.group(1), _stub_class(m.group(1), m.group(2)))
                        continue
                missing = exc if isinstance(exc, ModuleNotFoundError) else exc.__context__
                if not isinstance(missing, ModuleNotFoundError):
                    entry["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
                    break
                entry["error"] = f"ModuleNotFoundError: {missing.name}"
                top = (missing.name or "").split(".")[0]
                if stubbed and top and top not in stub_tops and top != "diffusers":
                    stub_tops.add(top)
                    continue
                if stubbed and top == "diffusers" and missing.name not in stub_tops:
                    stub_tops.add(missing.name)  # a diffusers module this version no longer has
                    continue
                break
            except BaseException as exc:  # noqa: BLE001
                entry["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
                break
        out[f] = entry
    return out


# ----------------------------------------------------------------------------- measurement (parent)


def _run_child(files: list[str], stubbed: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", "--stubbed" if stubbed else "--plain", *files]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    marker = "@@JSON@@"
    for line in proc.stdout.splitlines():
        if line.startswith(marker):
            return json.loads(line[len(marker) :])
    raise RuntimeError(f"ground-truth child failed: {proc.stderr[-2000:]}")


def measure(corpus: Path) -> dict:
    from pipewarden.errors import PipewardenError
    from pipewarden.sandbox import load_class
    from pipewarden.sandbox.scan import scan_source

    files = sorted(str(p) for p in corpus.glob("*.py"))
    plain = _run_child(files, stubbed=False)
    need_stub = [f for f in files if not plain[f]["executes"]]
    stubbed = _run_child(need_stub, stubbed=True) if need_stub else {}

    warnings.simplefilter("ignore")
    import logging

    logging.disable(logging.CRITICAL)
    rows = []
    for f in files:
        truth = plain[f] if plain[f]["executes"] else stubbed.get(f, plain[f])
        expected = truth["class"] if truth["executes"] else None
        src = Path(f).read_bytes()
        try:
            found = scan_source(src, filename=Path(f).name)
            scan_class = found.pipeline_class if len(found.candidates) == 1 else (
                "<multiple>" if found.candidates else None
            )
        except PipewardenError as exc:
            scan_class = f"<{exc.rule}>"
        row = {
            "file": Path(f).name,
            "plain_executes": plain[f]["executes"],
            "plain_error": plain[f]["error"],
            "diffusers_class": expected,
            "truth_known": truth["executes"],
            "scan_class": scan_class,
            "scan_matches": (scan_class == expected) if truth["executes"] else None,
        }
        try:
            cls = load_class(src, filename=Path(f).name)
            row["load"] = "ok"
            row["load_class"] = cls.__name__
            row["load_right_class"] = cls.__name__ == expected
        except PipewardenError as exc:
            row["load"] = "refused"
            row["rule"] = exc.rule
            row["reason"] = exc.what[:300]
        except Exception as exc:  # noqa: BLE001 - a raw exception is a bug: report it
            row["load"] = "RAW-EXCEPTION"
            row["rule"] = type(exc).__name__
            row["reason"] = str(exc)[:300]
        rows.append(row)

    executable = [r for r in rows if r["plain_executes"]]
    loaded_right = [r for r in executable if r["load"] == "ok" and r.get("load_right_class")]
    truth_known = [r for r in rows if r["truth_known"]]
    scan_ok = [r for r in truth_known if r["scan_matches"]]
    summary = {
        "files": len(rows),
        "plain_executable": len(executable),
        "loaded_right_class_of_executable": len(loaded_right),
        "load_rate_of_executable": round(len(loaded_right) / max(1, len(executable)), 4),
        "loaded_any": sum(1 for r in rows if r["load"] == "ok"),
        "detection_truth_known": len(truth_known),
        "detection_matches": len(scan_ok),
        "raw_exceptions": sum(1 for r in rows if r["load"] == "RAW-EXCEPTION"),
    }
    return {"summary": summary, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the full result here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stubbed", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("files", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = _ground_truth(args.files, stubbed=args.stubbed)
        print("@@JSON@@" + json.dumps(result))
        return 0
    corpus = Path(os.environ.get("PIPEWARDEN_CORPUS", DEFAULT_CORPUS))
    if not corpus.is_dir() or not any(corpus.glob("*.py")):
        print(f"corpus not found at {corpus} (set PIPEWARDEN_CORPUS); skipping the measurement")
        return 0
    result = measure(corpus)
    for r in result["rows"]:
        status = r["load"] if r["load"] == "ok" else f"{r['load']} [{r.get('rule')}] {r.get('reason', '')[:160]}"
        flag = "" if r["scan_matches"] in (True, None) else f"  SCAN MISMATCH scan={r['scan_class']} diffusers={r['diffusers_class']}"
        print(f"{'X' if r['plain_executes'] else '-'} {r['file']:60s} {status}{flag}")
    print(json.dumps(result["summary"], indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    s = result["summary"]
    ok = s["load_rate_of_executable"] >= 0.95 and s["detection_matches"] == s["detection_truth_known"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
