"""Regenerate ``transformers_names.toml``: the transformers classes sandboxed code may import.

``[modules.transformers] classes_from`` used to admit every public class defined in transformers
(thousands, by rule). It now admits only the classes listed in generated, versioned data, restricted
to what a pipeline needs for the components pipewarden builds (``loader/policy/components.toml``):

- each transformers model class the component policy allowlists, the transformers classes in its MRO
  up to ``PreTrainedModel``, its config class (and the config's sub-configs) and the output classes
  (``ModelOutput`` subclasses) its modeling module uses;
- each tokenizer / image processor class the component policy allowlists, with the backend variants
  transformers defines next to it under the same name (``CLIPImageProcessor``/``CLIPImageProcessorPil``),
  their transformers MRO up to ``PreTrainedTokenizerBase`` / ``ImageProcessingMixin``, and what they
  return (``BatchEncoding``, ``BatchFeature``);
- the config class of every other model the component policy builds (the safety checker's ``CLIPConfig``);
- the transformers classes the sandbox policy's per-type rules name (``ModelOutput``, ``PreTrainedConfig``, ...).

A transformers upgrade (or a new component in components.toml) shows up as a diff to review::

    python -m pipewarden.sandbox.policy._gen_transformers_names > src/pipewarden/sandbox/policy/transformers_names.toml

``tests/sandbox/test_policy_strict.py`` checks that the shipped file matches the installed
transformers. Trusted code (imports transformers); never run on the audit path.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import warnings

from pipewarden.sandbox.policy._gen_common import document, name_list, preamble

#: The transformers class families a component belongs to: MRO classes up to the root are listed.
_ROOTS = (
    "transformers.PreTrainedModel", "transformers.PreTrainedConfig", "transformers.PreTrainedTokenizerBase",
    "transformers.image_processing_utils.ImageProcessingMixin", "transformers.utils.ModelOutput",
)
#: What tokenizers and image processors return.
_RESULTS = ("transformers.BatchEncoding", "transformers.feature_extraction_utils.BatchFeature")


def _path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def collect() -> tuple[str, list[str]]:
    """(transformers version, sorted ``module.qualname`` of every admitted class)."""
    warnings.simplefilter("ignore")
    import logging

    logging.getLogger("transformers").setLevel(logging.ERROR)
    import transformers

    from pipewarden.loader.component_policy import component_policy
    from pipewarden.sandbox.policy import default_policy
    from pipewarden.sandbox.policy.resolve import resolve_class_path

    roots = tuple(resolve_class_path(path) for path in _ROOTS)
    admitted: set[type] = set()

    def family(cls: type) -> None:
        """cls and the transformers classes in its MRO that belong to one of the root families."""
        for klass in cls.__mro__:
            if klass.__module__.split(".")[0] == "transformers" and issubclass(klass, roots):
                admitted.add(klass)

    def variants(cls: type, name: str) -> None:
        """Classes defined in cls's model package whose name starts with ``name`` (backends)."""
        package = cls.__module__.rsplit(".", 1)[0]
        pkg = importlib.import_module(package)
        for info in pkgutil.iter_modules(getattr(pkg, "__path__", [])):
            try:
                module = importlib.import_module(f"{package}.{info.name}")
            except Exception:  # noqa: BLE001 - an optional backend missing here
                continue
            for obj in vars(module).values():
                if isinstance(obj, type) and obj.__module__ == module.__name__ and obj.__name__.startswith(name):
                    family(obj)

    def config(name: str) -> None:
        cfg = getattr(transformers, name)
        family(cfg)
        for sub in (getattr(cfg, "sub_configs", None) or {}).values():
            if isinstance(sub, type):
                family(sub)

    policy = component_policy()
    for rule in policy.models:
        config(rule.config_class)
        if rule.library != "transformers":
            continue
        cls = getattr(transformers, rule.class_name)
        family(cls)
        if isinstance(getattr(cls, "config_class", None), type):
            config(cls.config_class.__name__)
        modeling = sys.modules[cls.__module__]
        for obj in vars(modeling).values():
            if isinstance(obj, type) and issubclass(obj, roots[-1]):
                family(obj)
    for tok in policy.tokenizers:
        if tok.library == "transformers":
            cls = getattr(transformers, tok.class_name)
            family(cls)
            variants(cls, tok.class_name)
    for proc in policy.processors:
        if proc.library == "transformers":
            for name in {proc.class_name, proc.build_as}:
                cls = getattr(transformers, name, None)
                if isinstance(cls, type):
                    family(cls)
                    variants(cls, name)
    for path in _RESULTS:
        admitted.add(resolve_class_path(path))
    for type_rule in default_policy().types:
        if type_rule.type_path.split(".")[0] == "transformers":
            admitted.add(resolve_class_path(type_rule.type_path))
    return transformers.__version__, sorted({_path(c) for c in admitted if not c.__name__.startswith("_")})


def render(version: str, classes: list[str]) -> str:
    comments = (
        "classes: the transformers classes ([modules.transformers] classes_from admits only these, by",
        "module.qualname): the components loader/policy/components.toml allowlists, their configs,",
        "outputs and base classes, and the classes the sandbox policy's per-type rules name.",
    )
    return document([
        *preamble("_gen_transformers_names", comments, "transformers_version", version),
        *name_list("classes", classes),
    ])


def main() -> int:
    sys.stdout.write(render(*collect()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
