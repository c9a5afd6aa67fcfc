"""Regenerate ``diffusers_pipelines.toml``: the DiffusionPipeline subclasses of the installed diffusers.

The scanner must know which names imported from ``diffusers`` are pipeline classes without importing
diffusers (``pipewarden audit`` starts fast and never executes the file). This script is the only
place that imports every diffusers pipeline module; run it after upgrading diffusers::

    python -m pipewarden.sandbox.policy._gen_diffusers_pipelines > src/pipewarden/sandbox/policy/diffusers_pipelines.toml

``tests/test_sandbox_policy.py`` checks that the shipped list still matches the installed diffusers.
Trusted code (imports diffusers); never run on the audit path.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import warnings

from pipewarden.sandbox.policy._gen_common import document, name_list, preamble


def collect() -> tuple[str, list[str], list[str], list[str]]:
    """Return (diffusers version, pipeline class names, unavailable pipelines, non-pipelines).

    A name whose optional dependency is missing here resolves to one of diffusers' dummy objects: it is
    not a DiffusionPipeline subclass in this environment (diffusers' ``find_pipeline_class`` would not
    count a class deriving from it), so it is listed apart as "unavailable".
    """
    warnings.simplefilter("ignore")
    import diffusers
    from diffusers import DiffusionPipeline

    names: set[str] = set()
    not_pipelines: set[str] = set()
    dummies: set[str] = set()

    def consider(obj: object, public_name: str | None = None) -> None:
        if not isinstance(obj, type):
            return
        if type(obj).__name__ == "DummyObject":
            if public_name and public_name.endswith("Pipeline"):
                dummies.add(public_name)
            return
        if issubclass(obj, DiffusionPipeline) and obj.__module__.split(".")[0] == "diffusers":
            names.add(obj.__name__)
        elif obj.__name__.endswith("Pipeline"):
            not_pipelines.add(obj.__name__)

    for mod in (diffusers, importlib.import_module("diffusers.pipelines")):
        for name in dir(mod):
            if name.startswith("_"):
                continue
            try:
                consider(getattr(mod, name), name)
            except Exception:  # noqa: BLE001 - optional dependency missing: not a pipeline here
                continue
    pkg = importlib.import_module("diffusers.pipelines")
    for info in pkgutil.walk_packages(pkg.__path__, prefix="diffusers.pipelines."):
        try:
            module = importlib.import_module(info.name)
        except Exception:  # noqa: BLE001
            continue
        for obj in list(vars(module).values()):
            consider(obj)
    # The public name decides: what `from diffusers import X` gives in this environment.
    names -= dummies
    return diffusers.__version__, sorted(names), sorted(dummies), sorted(not_pipelines - names - dummies)


def render(version: str, names: list[str], unavailable: list[str], not_pipelines: list[str]) -> str:
    comments = (
        "Names of the DiffusionPipeline subclasses that the installed diffusers defines; the scanner",
        "uses them to recognise `class X(StableDiffusionPipeline)` without importing diffusers.",
    )
    return document([
        *preamble("_gen_diffusers_pipelines", comments, "diffusers_version", version),
        *name_list("pipelines", names),
        "# Pipelines whose optional dependencies are missing where this list was generated (dummy objects).",
        *name_list("unavailable_pipelines", unavailable),
        "# Classes named like pipelines that are not DiffusionPipeline subclasses (e.g. modular pipelines).",
        *name_list("not_pipelines", not_pipelines),
    ])


def main() -> int:
    sys.stdout.write(render(*collect()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
