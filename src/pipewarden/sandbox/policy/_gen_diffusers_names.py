"""Regenerate ``diffusers_names.toml``: the names the diffusers rules of the policy admit.

``[modules.diffusers] classes_from`` and ``[types.*] class_methods_from`` used to be rules evaluated
at run time ("any public class defined in diffusers", "any public name a class in
diffusers.pipelines defines"). They are now generated, versioned data, so a diffusers upgrade shows
up as a diff to review (a new class, a new method on a pipeline class)::

    python -m pipewarden.sandbox.policy._gen_diffusers_names > src/pipewarden/sandbox/policy/diffusers_names.toml

The sandbox admits a class or class attribute under these rules only if its name is listed (the
rules' module tests still apply on top). ``tests/sandbox/test_policy_strict.py`` checks that the
shipped file matches the installed diffusers. Trusted code (imports every diffusers module); never
run on the audit path.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import warnings

from pipewarden.sandbox.policy._gen_common import document, name_list, preamble, quote


def _under(module: object, prefixes: tuple[str, ...]) -> bool:
    return isinstance(module, str) and any(module == p or module.startswith(p + ".") for p in prefixes)


def collect() -> tuple[str, list[str], list[str], dict[str, list[str]]]:
    """(diffusers version, class_methods_from prefixes, public class names, {class name: public names})."""
    warnings.simplefilter("ignore")
    import diffusers

    from pipewarden.sandbox.policy import default_policy

    policy = default_policy()
    prefixes = tuple(sorted({p for rule in policy.types for p in rule.class_methods_from}))
    classes: set[str] = set()
    members: dict[str, set[str]] = {}
    seen: set[type] = set()

    def consider(obj: object) -> None:
        if not isinstance(obj, type) or obj in seen:
            return
        seen.add(obj)
        module = getattr(obj, "__module__", None)
        if not _under(module, ("diffusers",)) or obj.__name__.startswith("_") or issubclass(obj, type):
            return
        classes.add(obj.__name__)
        if _under(module, prefixes):
            names = members.setdefault(obj.__qualname__, set())
            # what [deny] refuses is left out: the list is what the policy admits, a true allowlist
            names.update(n for n in vars(obj) if not n.startswith("_") and not policy.deny.denies(n))

    for info in pkgutil.walk_packages(diffusers.__path__, prefix="diffusers."):
        try:
            module = importlib.import_module(info.name)
        except Exception:  # noqa: BLE001 - optional dependency missing: nothing reachable from it
            continue
        for obj in list(vars(module).values()):
            consider(obj)
    for name in dir(diffusers):  # the lazy top-level namespace (dummy objects included)
        try:
            consider(getattr(diffusers, name))
        except Exception:  # noqa: BLE001
            continue
    return (
        diffusers.__version__,
        list(prefixes),
        sorted(classes),
        {k: sorted(v) for k, v in sorted(members.items()) if v},
    )


def render(version: str, prefixes: list[str], classes: list[str], members: dict[str, list[str]]) -> str:
    comments = (
        "classes: the public classes defined in diffusers ([modules.diffusers] classes_from admits only these).",
        "members: per class defined under class_methods_from_prefixes, the public names its body defines,",
        "less those [deny] refuses ([types.*] class_methods_from admits only these).",
    )
    lines = [
        *preamble("_gen_diffusers_names", comments, "diffusers_version", version),
        "class_methods_from_prefixes = [" + ", ".join(quote(p) for p in prefixes) + "]",
        *name_list("classes", classes),
        "",
    ]
    lines.append("[members]")
    for cls, names in members.items():
        lines.append(f"{quote(cls)} = [" + ", ".join(quote(n) for n in names) + "]")
    return document(lines)


def main() -> int:
    sys.stdout.write(render(*collect()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
