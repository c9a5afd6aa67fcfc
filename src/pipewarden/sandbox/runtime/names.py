"""Names that become attributes through a data path.

A name the sandbox chooses as *data* (a mapping key, a keyword, a ``(name, value)`` pair, an
``attribute_map`` entry) becomes an attribute when host code stores it with ``setattr`` or answers
it from ``__getattr__``/``__getattribute__``: ``nn.ParameterDict({"__array_interface__": d})``,
``FrozenDict``, ``SimpleNamespace``, ``PretrainedConfig(**kw)``, a config subclass whose
``attribute_map`` sends ``ai`` to ``__array_interface__``. numpy, torch and PIL read such names
(``__array_interface__`` is a raw pointer) and ``copy`` reads ``__reduce_ex__``. So every such name
passes the same allowlist as a direct attribute write (``guarded_setattr``): an identifier-shaped
``str`` that is neither a dunder nor ``_x_``-shaped; the names that land in ``nn.Module``
registries (``ModuleDict``/``ParameterDict`` keys) must also be public, because the module's own
machinery lives in private attributes (``_parameters``, ``_modules``, ...).

Decides: whether one name may become an attribute; which guards a sandbox class deriving from a
name-redirecting host class gets (:func:`install_name_guards`). Trusts: nothing the sandbox hands
it (names are checked with ``type(name) is str`` and ``str`` methods called unbound)."""

from __future__ import annotations

from typing import Any

from pipewarden.sandbox.runtime._common import _tname, _violation


def is_dunder(name: str) -> bool:
    return str.startswith(name, "__")


def attribute_name_ok(name: Any, *, private: bool = True) -> bool:
    """The allowlist a name chosen by the sandbox must pass before it becomes an attribute.

    ``private=False``: only public names (nn.Module registries)."""
    if type(name) is not str or not str.isidentifier(name):
        return False
    if str.startswith(name, "_"):
        if not private or str.startswith(name, "__") or (str.endswith(name, "_") and len(name) > 1):
            return False
    return True


def check_attribute_name(where: str, name: Any, *, private: bool = True) -> None:
    """Refuse a str name that would become a forbidden attribute: a dunder everywhere, anything
    but a public identifier where ``private=False`` (non-str names are left to the host, whose
    ``setattr`` takes str only; str subclasses are read with ``str``'s own methods)."""
    if not isinstance(name, str):
        return
    if is_dunder(name):
        raise _violation(
            f"{where} with the name {str(name)!r} (it would become an attribute that host protocols read)",
            "argument.dunder-key",
        )
    if not private and not (str.isidentifier(name) and not str.startswith(name, "_")):
        raise _violation(
            f"{where} with the name {str(name)!r} (names that become attributes here are public identifiers)",
            "argument.attribute-name",
            "use a public identifier (letters, digits, underscores; not starting with '_')",
        )


def check_attribute_names(where: str, names: Any, *, private: bool = True) -> None:
    for name in names:
        check_attribute_name(where, name, private=private)


# ---------------------------------------------------------------------------------------------------
# Host classes that redirect attribute names through data: transformers' PretrainedConfig maps
# every name in ``attribute_map`` (a class attribute, an instance attribute, a mutable dict) in
# both ``__getattribute__`` and ``__setattr__``. A sandbox class deriving from such a class gets
# guards that keep the redirection to public names: private and dunder reads never go through the
# host hook, and a write lands only on a name the direct-write rule allows.


def _host_defines(cls: type, name: str) -> bool:
    """Does a host class among ``cls``'s bases (not ``object``) define ``name``?"""
    return any(name in klass.__dict__ for klass in cls.__mro__[1:] if klass is not object)


def _mapped_name(obj: Any, key: str, where: str) -> None:
    """Refuse a write that a host ``attribute_map`` would redirect to a name sandboxed code may
    not write (read the way the host reads it: the object's own attribute, then the class's)."""
    try:
        amap = object.__getattribute__(obj, "attribute_map")
    except AttributeError:
        return
    import types

    if type(amap) not in (dict, types.MappingProxyType):
        raise _violation(f"{where}: attribute_map is a {_tname(amap)}, not a plain dict", "argument.attribute-name")
    if key not in amap:
        return
    target = amap[key]
    if not attribute_name_ok(target):
        what = f"{where}: attribute_map sends {key!r} to {target!r} (a name sandboxed code may not write)"
        if type(target) is str and is_dunder(target):
            raise _violation(what, "argument.dunder-key")
        raise _violation(what, "argument.attribute-name")


def install_name_guards(cls: type, instance_dunders: frozenset[str]) -> None:
    """Guards on a sandbox class whose host bases hook attribute access.

    * A host ``__getattribute__`` (PretrainedConfig: ``attribute_map`` redirection): private and
      dunder names are read without it (``object.__getattribute__``), so no data the sandbox
      controls can answer ``__array_interface__`` and the like.
    * A host ``__setattr__`` (nn.Module, DiffusionPipeline, PretrainedConfig): every write that
      host code performs on the sandbox's object (``ParameterDict.__setitem__``, a config's
      keyword loop, ``update``) is checked like a direct write: no dunder name (except the few
      host code itself stores: the policy's ``[dunders] instance``), and no ``attribute_map`` target that is not a plain name.
    """
    where = cls.__name__
    if _host_defines(cls, "__getattribute__"):

        def __getattribute__(self: Any, key: Any) -> Any:
            if type(key) is str and str.startswith(key, "_"):
                return object.__getattribute__(self, key)
            return super(cls, self).__getattribute__(key)  # type: ignore[arg-type,misc]

        type.__setattr__(cls, "__getattribute__", __getattribute__)
    if _host_defines(cls, "__setattr__"):

        def __setattr__(self: Any, key: Any, value: Any) -> None:
            if type(key) is not str:
                raise _violation(f"setting an attribute of {where} with a {_tname(key)} name", "attribute.name-type")
            if is_dunder(key) and key not in instance_dunders:
                raise _violation(
                    f"setting {key!r} on a {where} (it would become an attribute that host protocols read)",
                    "argument.dunder-key",
                )
            _mapped_name(self, key, f"setting {key!r} on a {where}")
            super(cls, self).__setattr__(key, value)  # type: ignore[arg-type,misc]

        type.__setattr__(cls, "__setattr__", __setattr__)
