"""Class data that host code uses as file names (red team round 5, flaw 5).

``DiffusionPipeline.save_pretrained`` -> ``ConfigMixin.save_config`` runs
``os.path.join(save_directory, self.config_name)`` -- in the caller's code, after the pipeline
returned, with no sandboxed frame on the stack (the tripwire is not armed). A sandbox class (the
pipeline class itself, or its own ``DDIMScheduler`` subclass registered as a component) that sets
``config_name = "../../../home/u/.bashrc"`` would make the caller's ordinary save write there.

So the names the policy lists in ``[file_names]`` must hold plain file names whatever sandboxed
code sets them: in a class body (checked at class creation, ``class.file-name``), written on the
sandbox's own class (``write.file-name``), or written on an instance of it, by sandboxed code or
by host code it called (a ``__setattr__`` installed on the class, ``write.file-name``). A plain
file name is exactly a ``str``, not ``""``/``"."``/``".."``, without ``/``, ``\\`` or NUL. The
``maps`` kind (``vocab_files_names``) is a dict of such names, stored read-only. Components built
for this load never get these names shadowed at all (runtime/ownwrites.py: class-level data).

Decides: whether a value may stand where host code reads a file name. Trusts: the policy's list.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from pipewarden.sandbox.runtime._common import _tname, _violation

if TYPE_CHECKING:
    from pipewarden.sandbox.policy import SandboxPolicy

_FIX = "set it to a plain file name (no directory part): host save code joins it onto the save directory"


def is_plain_file_name(value: Any) -> bool:
    """A str (exactly) naming one entry of a directory: no separator, NUL, '.' or '..'."""
    return (
        type(value) is str
        and value not in ("", ".", "..")
        and "/" not in value
        and "\\" not in value
        and "\x00" not in value
    )


def checked_file_name_value(policy: SandboxPolicy, name: str, value: Any, where: str, rule: str) -> Any:
    """``value`` as it may be stored under ``name`` (a read-only copy for a map), or a refusal."""
    if name in policy.file_name_attrs:
        if value is None or is_plain_file_name(value):
            return value
        raise _violation(f"{where}: {name} = {value!r:.120} is not a plain file name", rule, _FIX)
    if name in policy.file_name_map_attrs:
        if isinstance(value, Mapping) and type(value) in (dict, MappingProxyType):
            items = dict(value)
            if all(type(k) is str and is_plain_file_name(v) for k, v in items.items()):
                return MappingProxyType(items)
        raise _violation(
            f"{where}: {name} must map names to plain file names ({_tname(value)} given)", rule, _FIX
        )
    return value


def check_class_namespace(policy: SandboxPolicy, cls_name: str, ns: dict[str, Any]) -> None:
    """Class-body values of listed names (maps replaced by read-only copies)."""
    for key in list(ns):
        if key in policy.file_name_attrs or key in policy.file_name_map_attrs:
            ns[key] = checked_file_name_value(policy, key, ns[key], f"class {cls_name}", "class.file-name")


def _defines_file_names(policy: SandboxPolicy, cls: type) -> bool:
    names = (*policy.file_name_attrs, *policy.file_name_map_attrs)
    return any(name in klass.__dict__ for klass in cls.__mro__ for name in names)


def install_file_name_guard(policy: SandboxPolicy, cls: type) -> None:
    """On a sandbox class whose MRO defines a listed name: every write of one on its instances
    (by sandboxed code, or by host code such as a constructor's keyword loop) is checked."""
    if not _defines_file_names(policy, cls):
        return
    previous = cls.__dict__.get("__setattr__")  # installed by runtime/names.py, or absent
    where = f"setting an attribute of a {cls.__qualname__}"

    def __setattr__(self: Any, key: Any, value: Any) -> None:
        if type(key) is str and (key in policy.file_name_attrs or key in policy.file_name_map_attrs):
            value = checked_file_name_value(policy, key, value, where, "write.file-name")
        if previous is not None:
            previous(self, key, value)
        else:
            super(cls, self).__setattr__(key, value)  # type: ignore[arg-type,misc]

    type.__setattr__(cls, "__setattr__", __setattr__)


class ClassWriter:
    """``_write_`` result for a class the sandbox defined: listed names are checked; everything
    else is written as before."""

    __slots__ = ("_pw_cls", "_pw_policy")

    def __init__(self, cls: type, policy: SandboxPolicy) -> None:
        object.__setattr__(self, "_pw_cls", cls)
        object.__setattr__(self, "_pw_policy", policy)

    def __setattr__(self, name: str, value: Any) -> None:
        cls = object.__getattribute__(self, "_pw_cls")
        policy = object.__getattribute__(self, "_pw_policy")
        if type(name) is str:
            value = checked_file_name_value(
                policy,
                name,
                value,
                f"setting an attribute of the class {cls.__qualname__}",
                "write.file-name",
            )
        setattr(cls, name, value)

    def __delattr__(self, name: str) -> None:
        delattr(object.__getattribute__(self, "_pw_cls"), name)

    def __setitem__(self, key: Any, value: Any) -> None:
        object.__getattribute__(self, "_pw_cls")[key] = value

    def __delitem__(self, key: Any) -> None:
        del object.__getattribute__(self, "_pw_cls")[key]
