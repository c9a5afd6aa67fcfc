"""Run the escape corpus outside pytest and write a findings report (red-team tool).

Usage: python tests/escapes/run_corpus.py [--mode inprocess|process] [--out /tmp/redteam-findings.txt]
       [--only ID ...] [--verbose]

For every payload: where it was refused (load/init/call), by which exception and rule, and
whether any side effect was seen. A payload ESCAPES when a side effect was seen or when it
was not refused by a PipewardenError. The report lists the escapes first, one line each.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "src"))


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
    parser.add_argument("--mode", default="inprocess", choices=["inprocess", "process"])
    parser.add_argument("--out")
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    for key, value in {
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "DIFFUSERS_VERBOSITY": "error",
        "TRANSFORMERS_VERBOSITY": "error",
    }.items():
        os.environ.setdefault(key, value)

    from pipewarden._fixtures import build_weights
    from pipewarden.errors import PipewardenError

    harness = load_sibling("harness")
    payloads = load_sibling("payloads")
    root = Path(tempfile.mkdtemp(prefix="pw-redteam-"))
    weights = build_weights(root / "weights")
    world = harness.build_world(root / "world", weights)
    world.start_acceptor()
    harness.observe(world, payloads.BENIGN_SOURCE, "plain")
    try:
        harness.observe(world, payloads.BENIGN_SOURCE, args.mode)
    except Exception:  # noqa: BLE001
        pass

    escapes, refused = [], []
    for payload in payloads.PAYLOADS:
        if args.only and payload.id not in args.only:
            continue
        obs = harness.observe(world, world.render(payload.template), args.mode)
        exc = obs.exception
        rule = getattr(exc, "rule", "")
        brief = "" if exc is None else f"{type(exc).__name__}: {str(exc)[:160]}"
        if obs.violations:
            escapes.append(
                f"{payload.id} [{payload.technique}]: SIDE EFFECT {obs.violations} ({brief or 'no exception'})"
            )
        elif not isinstance(exc, PipewardenError) or type(exc) is PipewardenError:
            what = "returned normally" if exc is None else f"not a PipewardenError: {brief}"
            escapes.append(f"{payload.id} [{payload.technique}]: NOT REFUSED ({what}) at stage {obs.stage}")
        elif getattr(exc, "obj", None) is not None:
            escapes.append(f"{payload.id} [{payload.technique}]: refusal carries .obj")
        else:
            refused.append(
                f"{payload.id}: {obs.stage}: {type(exc).__name__} rule={rule!r} :: {str(exc)[:140]}"
            )

    benign = []
    import torch

    from pipewarden._fixtures import EXAMPLE_PIPELINE_SOURCE

    for name, src in (("example", EXAMPLE_PIPELINE_SOURCE), ("idioms", payloads.BENIGN_SOURCE)):
        kw = {"generator": torch.Generator().manual_seed(1234), "num_inference_steps": 2}
        plain = harness.observe(world, src, "plain", call_kwargs=dict(kw))
        kw = {"generator": torch.Generator().manual_seed(1234), "num_inference_steps": 2}
        obs = harness.observe(world, src, args.mode, call_kwargs=kw)
        if obs.exception is not None or obs.violations:
            benign.append(f"benign {name}: FAILS: {obs.describe()[:400]}")
        elif not (isinstance(obs.result, torch.Tensor) and torch.equal(obs.result, plain.result)):
            benign.append(f"benign {name}: output differs from plain Python")
        else:
            benign.append(f"benign {name}: ok (bit-identical)")

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines = [
        f"# pipewarden red-team findings ({args.mode} mode) - {now}",
        f"# corpus: {len(payloads.PAYLOADS)} payloads (tests/escapes/payloads.py); escapes: {len(escapes)}",
        "# Rerun: .venv/bin/python tests/escapes/run_corpus.py --mode " + args.mode + " --only ID --verbose",
        "",
        "## ESCAPES (side effect seen, or not refused with a PipewardenError)",
        *(escapes or ["(none)"]),
        "",
        "## Positive controls (must run and match plain Python)",
        *benign,
    ]
    if args.verbose:
        lines += ["", "## Refused (stage: exception rule :: message)", *refused]
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    print(text)
    world.close()
    return 1 if escapes else 0


if __name__ == "__main__":
    sys.exit(main())
