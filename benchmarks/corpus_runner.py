"""Run real community pipelines end to end: plain diffusers vs pipewarden in-process vs process.

A measurement, not a CI test. The corpus is a local copy of diffusers' ``examples/community``
(``$PIPEWARDEN_CORPUS``, default /work/corpus/examples/community; never commit those files). For
every ``*.py`` file, each step in its own subprocess with a timeout:

1. **plain**: import the file, synthesise tiny random components from the pipeline's
   ``__init__`` (``pipewarden.audit.synth``), save them as a weights directory (safetensors +
   configs + ``model_index.json``), then ``DiffusionPipeline.from_pretrained(dir,
   custom_pipeline=file, trust_remote_code=True)`` and a minimal call (short prompt, 2 steps,
   smallest size, fixed generator, every global RNG seeded). Output: a sha256 over every array.
2. **inprocess** / **process**: ``pipewarden.load_pipeline(dir, custom_pipeline=file,
   trust_remote_code=True, pipeline_sha256=..., isolation=...)`` and the same call. Bit-identical
   means the same digest as plain.

Prints a per-file table, the summary and every refusal grouped by rule; ``--json PATH`` writes
everything, ``--markdown`` prints the README table.

    python -m benchmarks.corpus_runner [--jobs 2] [--timeout 300] [--only NAME ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

DEFAULT_CORPUS = "/work/corpus/examples/community"
MODES = ("plain", "inprocess", "process")
_MARK = "@@CORPUS@@"


# ----------------------------------------------------------------------------- child side


def _quiet() -> None:
    import logging
    import warnings

    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


def _import_pipeline_class(path: Path) -> type:
    import importlib.util

    from diffusers.utils.dynamic_modules_utils import find_pipeline_class

    name = f"corpus_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, str(path))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return find_pipeline_class(module)


def _error_entry(stage: str, exc: BaseException) -> dict[str, Any]:
    from pipewarden.errors import PipewardenError

    entry: dict[str, Any] = {"status": "error", "stage": stage, "error": type(exc).__name__, "message": str(exc)[:600]}
    if isinstance(exc, PipewardenError):
        entry["status"] = "refused"
        entry["rule"] = exc.rule
        entry["what"] = exc.what[:400]
    else:
        entry["trace"] = traceback.format_exc()[-1500:]
    return entry


def _child_plain(path: Path, work: Path) -> dict[str, Any]:
    import torch

    from pipewarden.audit import synth

    stage = "import"
    try:
        cls = _import_pipeline_class(path)
        stage = "synthesise"
        plan = synth.plan_components(cls)
        call = synth.minimal_call(cls)
        components = synth.build_components(cls, plan=plan)
        weights = synth.save_weights_dir(cls.__name__, components, work / "weights", pipeline_file=path,
                                         own_module=cls.__module__)
        # plain diffusers imports a class the file defines from <component>/<stem>.py; the copy
        # stays for the pipewarden runs too (a repository made for diffusers has it; pipewarden
        # never imports it, it builds the class from the vetted pipeline file)
        synth.add_own_code(weights, path)
        (work / "call.json").write_text(json.dumps(call))
        del components
        stage = "load"
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(str(weights), custom_pipeline=str(path), trust_remote_code=True)
        stage = "call"
        synth.seed_everything()
        with torch.no_grad():
            out = getattr(pipe, call["method"])(**synth.materialise_call(call))
        digest, n = synth.output_digest(out)
        return {"status": "ok", "class": cls.__name__, "digest": digest, "arrays": n, "plan": dict(plan.recipes)}
    except BaseException as exc:  # noqa: BLE001 - reported, not raised
        return _error_entry(stage, exc)


def _child_pipewarden(path: Path, work: Path, isolation: str) -> dict[str, Any]:
    import torch

    import pipewarden
    from pipewarden.audit import synth
    from pipewarden.errors import NotAllowedError

    stage = "load"
    try:
        call = json.loads((work / "call.json").read_text())
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        weights = str(work / "weights")
        via_objects = False
        try:
            pipe = pipewarden.load_pipeline(
                weights, custom_pipeline=str(path), trust_remote_code=True, pipeline_sha256=sha, isolation=isolation,
            )
        except NotAllowedError as exc:
            # A pipewarden without transformers components from verified bytes: do what its error
            # says (pass them as objects) and record that this run needed it.
            if "from library" not in exc.what or "'diffusers'" in exc.what:
                raise
            via_objects = True
            pipe = pipewarden.load_pipeline(
                weights, custom_pipeline=str(path), trust_remote_code=True, pipeline_sha256=sha, isolation=isolation,
                **_transformers_components(work / "weights"),
            )
        stage = "call"
        synth.seed_everything()
        with torch.no_grad():
            fn = pipe if call["method"] == "__call__" else getattr(pipe, call["method"])
            out = fn(**synth.materialise_call(call))
        digest, n = synth.output_digest(out)
        if hasattr(pipe, "close"):
            pipe.close()
        return {"status": "ok", "digest": digest, "arrays": n, "via_objects": via_objects}
    except BaseException as exc:  # noqa: BLE001
        entry = _error_entry(stage, exc)
        entry["via_objects"] = via_objects
        return entry


def _transformers_components(weights: Path) -> dict[str, Any]:
    """The components of a weights dir that are not diffusers models or schedulers (transformers
    classes, the safety checker), loaded by their own libraries (harness side)."""
    import importlib

    index = json.loads((weights / "model_index.json").read_text())
    out: dict[str, Any] = {}
    for name, entry in index.items():
        if not isinstance(entry, list) or len(entry) != 2 or entry[0] in (None, "diffusers"):
            continue
        module = "transformers" if entry[0] == "transformers" else f"diffusers.pipelines.{entry[0]}"
        out[name] = getattr(importlib.import_module(module), entry[1]).from_pretrained(str(weights / name))
    return out


def _child(mode: str, path: Path, work: Path) -> int:
    _quiet()
    import torch

    torch.set_num_threads(1)
    result = _child_plain(path, work) if mode == "plain" else _child_pipewarden(path, work, mode)
    sys.stdout.flush()
    print(_MARK + json.dumps(result), flush=True)
    return 0


# ----------------------------------------------------------------------------- parent side


def _run_child(mode: str, path: Path, work: Path, timeout: float) -> dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "benchmarks.corpus_runner", "--child", mode, str(path), str(work)]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True, cwd=Path(__file__).resolve().parent.parent)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"status": "timeout", "seconds": round(time.monotonic() - started, 1)}
    finally:
        try:  # a worker the child left behind
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for line in out.splitlines():
        if line.startswith(_MARK):
            result = json.loads(line[len(_MARK):])
            result["seconds"] = round(time.monotonic() - started, 1)
            return result
    return {"status": "crash", "rc": proc.returncode, "stderr": err[-1500:], "seconds": round(time.monotonic() - started, 1)}


def run_file(path: Path, scratch: Path, timeout: float, modes: tuple[str, ...] = MODES) -> dict[str, Any]:
    work = scratch / path.stem
    work.mkdir(parents=True, exist_ok=True)
    row: dict[str, Any] = {"file": path.name}
    row["plain"] = _run_child("plain", path, work, timeout)
    if row["plain"]["status"] != "ok":
        return row
    for mode in modes[1:]:
        res = _run_child(mode, path, work, timeout)
        if res["status"] == "ok":
            res["identical"] = res["digest"] == row["plain"]["digest"]
        row[mode] = res
    return row


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    plain_ok = [r for r in rows if r["plain"]["status"] == "ok"]
    summary: dict[str, Any] = {
        "files": len(rows),
        "plain_runs": len(plain_ok),
        "plain_not_run": dict(collections.Counter(
            f"{r['plain'].get('stage', r['plain']['status'])}" for r in rows if r["plain"]["status"] != "ok")),
    }
    refusals: dict[str, list[str]] = collections.defaultdict(list)
    for mode in MODES[1:]:
        ran = [r for r in plain_ok if r.get(mode, {}).get("status") == "ok"]
        same = [r for r in ran if r[mode].get("identical")]
        summary[mode] = {
            "ran": len(ran),
            "identical": len(same),
            "identical_rate": round(len(same) / max(1, len(plain_ok)), 4),
            "outcomes": dict(collections.Counter(r.get(mode, {}).get("status", "-") for r in plain_ok)),
            # transformers components passed as objects because the weights dir could not give them
            "via_objects": sum(1 for r in plain_ok if r.get(mode, {}).get("via_objects")),
        }
        for r in plain_ok:
            res = r.get(mode, {})
            if res.get("status") == "refused":
                key = f"{res['error']}: {res['rule']}"
            elif res.get("status") in ("error", "crash", "timeout"):
                key = f"[{res['status']}] {res.get('error', '')}: {res.get('message', res.get('stderr', ''))[:120]}"
            elif res.get("status") == "ok" and not res.get("identical"):
                key = "[not bit-identical]"
            else:
                continue
            refusals[key].append(f"{mode}:{r['file']}")
    summary["refusals"] = {k: v for k, v in sorted(refusals.items(), key=lambda kv: -len(kv[1]))}
    return summary


def markdown(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    n = summary["plain_runs"]
    lines = [
        f"Corpus: diffusers `examples/community` at {meta.get('corpus_commit', '?')[:12]} ({summary['files']} files), "
        f"diffusers {meta.get('diffusers')}, torch {meta.get('torch')}, tiny random components, CPU, {meta.get('date')}.",
        "",
        "| | runs | bit-identical to plain |",
        "| --- | ---: | ---: |",
        f"| plain diffusers | {n} of {summary['files']} | - |",
    ]
    for mode in MODES[1:]:
        s = summary[mode]
        lines.append(f"| pipewarden `{mode}` | {s['ran']} | {s['identical']} of {n} ({100 * s['identical_rate']:.0f} %) |")
    via = {m: summary[m]["via_objects"] for m in MODES[1:] if summary[m]["via_objects"]}
    if via:
        lines += ["", "Transformers components passed as objects (the weights dir could not supply them): "
                  + ", ".join(f"{m}: {k}" for m, k in via.items()) + "."]
    lines += ["", "| refusal / failure (mode:file count) | count |", "| --- | ---: |"]
    for key, where in summary["refusals"].items():
        lines.append(f"| {key.replace('|', '/')} | {len(where)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--child", nargs=3, metavar=("MODE", "FILE", "WORK"), help=argparse.SUPPRESS)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per file and mode")
    parser.add_argument("--only", nargs="*", help="file stems to run (default: all)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated: plain,inprocess,process")
    parser.add_argument("--json", help="write rows + summary here")
    parser.add_argument("--markdown", action="store_true", help="print the README table")
    parser.add_argument("--scratch", help="where weights dirs go (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.child:
        mode, file, work = args.child
        return _child(mode, Path(file), Path(work))

    corpus = Path(os.environ.get("PIPEWARDEN_CORPUS", DEFAULT_CORPUS))
    files = sorted(corpus.glob("*.py"))
    if args.only:
        files = [f for f in files if f.stem in set(args.only)]
    if not files:
        print(f"corpus not found at {corpus} (set PIPEWARDEN_CORPUS); nothing measured")
        return 0
    modes = tuple(m for m in args.modes.split(",") if m)
    scratch = Path(args.scratch) if args.scratch else Path(tempfile.mkdtemp(prefix="pw-corpus-"))
    rows: list[dict[str, Any]] = []
    t0 = time.monotonic()

    def one(f: Path) -> dict[str, Any]:
        row = run_file(f, scratch, args.timeout, modes)
        cells = [f"{m}={row[m]['status']}" + ("*" if row[m].get("identical") else "") for m in modes if m in row]
        print(f"{f.name:60s} {' '.join(cells)}", flush=True)
        return row

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        rows = list(pool.map(one, files))
    import diffusers
    import torch

    commit_file = corpus.parent.parent / "COMMIT"
    meta = {
        "corpus": str(corpus),
        "corpus_commit": commit_file.read_text().strip() if commit_file.is_file() else "?",
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "seconds": round(time.monotonic() - t0, 1),
        "jobs": args.jobs,
    }
    summary = summarise(rows)
    print(json.dumps({k: v for k, v in summary.items() if k != "refusals"}, indent=2))
    for key, where in summary["refusals"].items():
        print(f"{len(where):3d}  {key}\n       {', '.join(where[:12])}{' ...' if len(where) > 12 else ''}")
    if args.markdown:
        print(markdown(summary, meta))
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "summary": summary, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
