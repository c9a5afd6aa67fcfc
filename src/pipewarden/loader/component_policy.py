"""The reviewed component allowlist (``loader/policy/components.toml``), parsed into frozen objects.

Decides which ``model_index.json`` entries besides diffusers models and schedulers the loader may
build, and from which files. Fails closed: an unknown key, a missing field or a wrong type in the
policy file raises ``PolicyError`` at load time, and a class not listed is refused by the loader.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

from pipewarden.errors import InputError

POLICY_VERSION = 1
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_FILE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")


@dataclass(frozen=True)
class ModelRule:
    library: str
    class_name: str
    module: str
    config_class: str
    weights_prefix: str = "model"


@dataclass(frozen=True)
class TokenizerRule:
    library: str
    class_name: str
    files: tuple[str, ...]


@dataclass(frozen=True)
class ProcessorRule:
    library: str
    class_name: str
    build_as: str
    config_file: str


@dataclass(frozen=True)
class ComponentPolicy:
    version: int
    max_json_bytes: int
    max_data_file_bytes: int
    models: tuple[ModelRule, ...]
    tokenizers: tuple[TokenizerRule, ...]
    processors: tuple[ProcessorRule, ...]

    def find(self, library: str, class_name: str) -> ModelRule | TokenizerRule | ProcessorRule | None:
        rules: tuple[ModelRule | TokenizerRule | ProcessorRule, ...] = (*self.models, *self.tokenizers, *self.processors)
        for rule in rules:
            if rule.library == library and rule.class_name == class_name:
                return rule
        return None

    def describe(self) -> str:
        rules: tuple[ModelRule | TokenizerRule | ProcessorRule, ...] = (*self.models, *self.tokenizers, *self.processors)
        names = [f"{r.library}.{r.class_name}" for r in rules]
        return ", ".join(names)


def _bad(why: str) -> InputError:
    return InputError(
        f"the component policy (loader/policy/components.toml) is invalid: {why}",
        rule="policy.invalid",
        fix="reinstall pipewarden; the shipped policy file was changed",
    )


def _str(entry: dict, key: str, pattern: re.Pattern[str], where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise _bad(f"{where}: {key!r} must be a name, got {value!r}")
    return value


def _keys(entry: Any, allowed: set[str], where: str) -> dict:
    if not isinstance(entry, dict):
        raise _bad(f"{where} must be a table")
    extra = set(entry) - allowed
    if extra:
        raise _bad(f"{where}: unknown keys {sorted(extra)}")
    return entry


def parse_policy(data: dict[str, Any]) -> ComponentPolicy:
    _keys(data, {"version", "limits", "model", "tokenizer", "image_processor"}, "the policy")
    if data.get("version") != POLICY_VERSION:
        raise _bad(f"version must be {POLICY_VERSION}, got {data.get('version')!r}")
    limits = _keys(data.get("limits", {}), {"max_json_bytes", "max_data_file_bytes"}, "[limits]")
    bounds = []
    for key in ("max_json_bytes", "max_data_file_bytes"):
        value = limits.get(key)
        if type(value) is not int or value <= 0:
            raise _bad(f"[limits] {key} must be a positive integer")
        bounds.append(value)
    models = []
    for i, entry in enumerate(data.get("model", [])):
        where = f"[[model]] #{i + 1}"
        entry = _keys(entry, {"library", "class", "module", "config_class", "weights_prefix"}, where)
        models.append(
            ModelRule(
                library=_str(entry, "library", _IDENT, where),
                class_name=_str(entry, "class", _IDENT, where),
                module=_str(entry, "module", _MODULE, where),
                config_class=_str(entry, "config_class", _IDENT, where),
                weights_prefix=_str(entry, "weights_prefix", _FILE, where) if "weights_prefix" in entry else "model",
            )
        )
    tokenizers = []
    for i, entry in enumerate(data.get("tokenizer", [])):
        where = f"[[tokenizer]] #{i + 1}"
        entry = _keys(entry, {"library", "class", "files"}, where)
        files = entry.get("files")
        if not isinstance(files, list) or not files or not all(isinstance(f, str) and _FILE.fullmatch(f) for f in files):
            raise _bad(f"{where}: files must be a list of file names")
        if any(f.endswith((".py", ".pyc", ".so")) for f in files):
            raise _bad(f"{where}: code files are never tokenizer data")
        tokenizers.append(
            TokenizerRule(
                library=_str(entry, "library", _IDENT, where),
                class_name=_str(entry, "class", _IDENT, where),
                files=tuple(files),
            )
        )
    processors = []
    for i, entry in enumerate(data.get("image_processor", [])):
        where = f"[[image_processor]] #{i + 1}"
        entry = _keys(entry, {"library", "class", "build_as", "config_file"}, where)
        cls = _str(entry, "class", _IDENT, where)
        processors.append(
            ProcessorRule(
                library=_str(entry, "library", _IDENT, where),
                class_name=cls,
                build_as=_str(entry, "build_as", _IDENT, where) if "build_as" in entry else cls,
                config_file=_str(entry, "config_file", _FILE, where),
            )
        )
    return ComponentPolicy(POLICY_VERSION, bounds[0], bounds[1], tuple(models), tuple(tokenizers), tuple(processors))


@functools.cache
def component_policy() -> ComponentPolicy:
    """The shipped policy (read once)."""
    import tomllib

    text = resources.files("pipewarden.loader").joinpath("policy/components.toml").read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _bad(str(exc)) from None
    return parse_policy(data)
