"""The one parse of what the user asked for: ``custom_pipeline`` and the weights location.

Every user-given spec (``load_pipeline``'s arguments, ``pipewarden lock``'s options) is turned
here, and only here, into a frozen :class:`PipelineSpec` or :class:`WeightsSpec` of one kind:

* ``local``: an existing path, or anything spelled like one (``./x``, ``/x``, ``~/x``, ``x.py``,
  a path with a separator that is not a hub repo id);
* ``hub``: a hub repo id ``org/name`` as the hub spells it;
* ``community`` (code only): a diffusers community pipeline name such as ``one_step_unet``.

Decides only which kind a spec is, by its spelling and whether the path exists; reads no file,
touches no network, trusts nothing. The loader resolves a spec to bytes; the registry decides
whether those bytes may run.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "PipelineSpec",
    "SpecKind",
    "WeightsSpec",
    "is_community_name",
    "is_hub_repo_id",
    "parse_spec",
    "parse_pipeline_spec",
    "parse_weights_spec",
]

SpecKind = Literal["local", "hub", "community"]

_REPO_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_COMMUNITY_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,127}")


def is_hub_repo_id(s: object) -> bool:
    """True for ``"org/name"`` as the hub spells repo ids (syntax only; no network, no disk)."""
    if not isinstance(s, str) or s.count("/") != 1 or len(s) > 96:
        return False
    org, name = s.split("/")
    for part in (org, name):
        if not _REPO_PART.fullmatch(part) or part.endswith((".", "-")):
            return False
    return "--" not in s and ".." not in s and not s.endswith(".git")


def is_community_name(s: object) -> bool:
    """True for a community pipeline name such as ``"one_step_unet"`` (no slash, no dots)."""
    return isinstance(s, str) and _COMMUNITY_NAME.fullmatch(s) is not None


@dataclass(frozen=True)
class PipelineSpec:
    """Where the pipeline code comes from. ``value``: the path, repo id or community name."""

    kind: SpecKind
    value: str
    revision: str | None = None


@dataclass(frozen=True)
class WeightsSpec:
    """Where the weights come from. ``value``: the local directory or the hub repo id."""

    kind: Literal["local", "hub"]
    value: str
    revision: str | None = None


def _text(spec: object, what: str) -> str:
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str) or not spec:
        raise TypeError(f"{what} must be a non-empty str or path")
    if "\x00" in spec:
        raise ValueError(f"{what} contains a NUL character")
    return spec


def _looks_local(text: str) -> bool:
    return (
        os.path.exists(text)
        or text.endswith(".py")
        or text.startswith((".", "/", "~"))
        or (os.sep in text and not is_hub_repo_id(text))
    )


def parse_spec(
    spec: str | os.PathLike[str], *, role: Literal["code", "weights"], revision: str | None = None
) -> PipelineSpec | WeightsSpec:
    """Classify one user-given spec; the only place that decides local vs hub vs community.

    ``TypeError`` for a non-string, ``ValueError`` for a code spec that is none of the three.
    A weights spec that is not a hub repo id is local (a missing directory is reported when it
    is resolved, with the path).
    """
    if role not in ("code", "weights"):
        raise ValueError(f"role must be 'code' or 'weights', got {role!r}")
    what = "custom_pipeline" if role == "code" else "the weights argument"
    text = _text(spec, what)
    if revision is not None and not isinstance(revision, str):
        raise TypeError("revision must be a str or None")
    if role == "weights":
        if _looks_local(text) or not is_hub_repo_id(text):
            return WeightsSpec("local", text, revision)
        return WeightsSpec("hub", text, revision)
    if _looks_local(text):
        return PipelineSpec("local", text, revision)
    if is_hub_repo_id(text):
        return PipelineSpec("hub", text, revision)
    if is_community_name(text):
        return PipelineSpec("community", text, revision)
    raise ValueError(f"custom_pipeline {text!r} is neither an existing path, a hub repo id nor a community name")


def parse_pipeline_spec(spec: str | os.PathLike[str], *, revision: str | None = None) -> PipelineSpec:
    result = parse_spec(spec, role="code", revision=revision)
    assert isinstance(result, PipelineSpec)
    return result


def parse_weights_spec(spec: str | os.PathLike[str], *, revision: str | None = None) -> WeightsSpec:
    result = parse_spec(spec, role="weights", revision=revision)
    assert isinstance(result, WeightsSpec)
    return result
