"""Policy as data: versioned, frozen, extendable only by addition; the shipped pipeline list is current."""

from __future__ import annotations

import dataclasses

import pytest

from pipewarden.sandbox.policy import (
    default_policy,
    diffusers_list_version,
    diffusers_non_pipeline_names,
    diffusers_pipeline_names,
    diffusers_unavailable_pipeline_names,
    load_policy_bytes,
)
from pipewarden.sandbox.scan import _is_pipeline_name as scan_is_pipeline_name


def test_default_policy_is_versioned_frozen_and_cached():
    p = default_policy()
    assert isinstance(p.version, int) and p.version >= 1
    assert p is default_policy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.version = 99  # type: ignore[misc]
    assert isinstance(p.allowed_modules, frozenset)
    for name in ("torch", "diffusers", "numpy", "math", "typing", "inspect", "os", "packaging.version"):
        assert p.is_module_allowed(name), name
    for name in ("subprocess", "socket", "ctypes", "sys", "builtins", "importlib", "pickle", "torch._C", ""):
        assert not p.is_module_allowed(name), name
    assert p.is_module_allowed("diffusers.pipelines.stable_diffusion")  # any_submodule
    assert p.import_aliases["MuseVdiffusers"] == "diffusers"
    assert p.is_module_allowed("MuseVdiffusers.utils")


@pytest.mark.parametrize(
    "name", ["save_pretrained", "from_pretrained", "load_lora_weights", "push_to_hub", "register_forward_hook",
             "share_memory_", "untyped_storage", "storage", "data_ptr", "tofile", "to_json_file", "save_config",
             "download", "from_single_file", "register_forward_pre_hook", "save"],
)
def test_denied_everywhere(name):
    assert default_policy().deny.denies(name)


@pytest.mark.parametrize("name", ["register_modules", "register_to_config", "step", "to", "eval", "compile", "config"])
def test_not_denied(name):
    assert not default_policy().deny.denies(name)


def test_with_extras_adds_but_never_removes():
    base = default_policy()
    extended = base.with_extras(extra_modules={"colorsys": ["rgb_to_hsv"], "torch": ["load"]},
                                import_aliases={"MyForkdiffusers": "diffusers"})
    assert extended.is_module_allowed("colorsys")
    assert "rgb_to_hsv" in extended.modules["colorsys"].attrs
    assert extended.canonical_module("MyForkdiffusers.utils") == "diffusers.utils"
    # an added name that the global deny list refuses stays refused
    assert extended.deny.denies("load")
    assert base.modules["torch"].attrs <= extended.modules["torch"].attrs
    assert extended.deny == base.deny and extended.tripwire == base.tripwire
    assert not base.is_module_allowed("colorsys")  # the original is untouched


@pytest.mark.parametrize(
    "mods, aliases",
    [({"_private": []}, None), ({"os": "system"}, None), ({"x": ["__class__"]}, None),
     (None, {"torch": "diffusers"}), (None, {"evil": "subprocess"})],
)
def test_with_extras_rejects_bad_input(mods, aliases):
    with pytest.raises((ValueError, TypeError)):
        default_policy().with_extras(extra_modules=mods, import_aliases=aliases)


def test_malformed_policy_data_is_refused():
    with pytest.raises(ValueError):
        load_policy_bytes(b"version = 0\n")


@pytest.mark.slow
def test_shipped_pipeline_list_matches_installed_diffusers():
    """Regenerates the list from the installed diffusers (the generator script) and compares.

    Which pipelines are dummy objects depends on the optional packages installed here (sentencepiece
    makes Kolors importable, onnxruntime the ONNX pipelines); the scanner counts both kinds as
    pipeline classes, so what must match is the classification, not that split.
    """
    from pipewarden.sandbox.policy._gen_diffusers_pipelines import collect

    version, names, unavailable, not_pipelines = collect()
    assert version == diffusers_list_version()
    shipped_unavailable = diffusers_unavailable_pipeline_names()
    assert frozenset(names) | frozenset(unavailable) == diffusers_pipeline_names() | shipped_unavailable
    assert frozenset(not_pipelines) == diffusers_non_pipeline_names() - shipped_unavailable
    assert all(scan_is_pipeline_name(n) for n in [*names, *unavailable])
    assert {"DiffusionPipeline", "StableDiffusionPipeline", "DDPMPipeline"} <= diffusers_pipeline_names()
