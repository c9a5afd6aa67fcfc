"""Private names on the sandbox's own objects are decided by allowlist rules, not a deny list.

A ``_private`` name is readable on an object the sandbox created when a class of the vetted file
defines it, when a host class's allowlist ([types.*]) gives it, or -- if no class holds it -- when
the vetted file itself assigns it. Anything else a host base class defines, declares or sets on the
object (nn.Module's ``_forward_hooks``, accelerate's ``_hf_hook``) is host state and refused.
"""

from __future__ import annotations

import ast

import pytest

from pipewarden.errors import PolicyViolation
from pipewarden.sandbox import load_class
from pipewarden.sandbox._load import private_attribute_names

torch = pytest.importorskip("torch")

SOURCE = '''
import torch
from diffusers import DiffusionPipeline


class Helper(torch.nn.Module):
    _class_level = 5

    def __init__(self):
        super().__init__()
        self._proj = torch.nn.Linear(2, 2)   # a submodule under a private name (Module.__getattr__)
        self._cache = {"k": 1}
        setattr(self, "_by_setattr", 2)

    def _helper_method(self):
        return 3


class P(DiffusionPipeline):
    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        self._guidance_scale = 7.5

    def __call__(self, what="own"):
        h = Helper()
        if what == "own":
            return (h._proj.out_features, h._cache["k"], h._by_setattr, h._helper_method(), h._class_level,
                    self._guidance_scale, type(self._execution_device).__name__)
        if what == "forward_hooks":
            return h._forward_hooks
        if what == "hooks_with_kwargs":
            return h._forward_hooks_with_kwargs   # not caught by any deny pattern: refused by the rule
        if what == "compiled_call":
            return h._compiled_call_impl
        if what == "host_set":
            return h._set_by_host
        if what == "missing":
            return getattr(h, "_never_set", "default")
        if what == "has_missing":
            return hasattr(h, "_never_set")
        return None
'''


@pytest.fixture(scope="module")
def pipe(tiny_weights):
    from diffusers import DDPMScheduler, UNet2DModel

    unet = UNet2DModel.from_pretrained(tiny_weights, subfolder="unet")
    scheduler = DDPMScheduler.from_pretrained(tiny_weights, subfolder="scheduler")
    return load_class(SOURCE)(unet, scheduler)


def test_private_names_the_file_defines_are_readable(pipe):
    assert pipe("own") == (2, 1, 2, 3, 5, 7.5, "device")


@pytest.mark.parametrize(
    "what, rule",
    [
        ("forward_hooks", "attribute.denied"),  # also on the global [deny] list (every object)
        ("hooks_with_kwargs", "attribute.not-allowlisted"),  # matches no deny pattern
        ("compiled_call", "attribute.not-allowlisted"),
    ],
)
def test_private_state_a_host_base_class_declares_is_refused(pipe, what, rule):
    with pytest.raises(PolicyViolation) as info:
        pipe(what)
    assert info.value.rule == rule


def test_private_state_the_host_sets_on_an_owned_object_is_refused(pipe, monkeypatch):
    """A private attribute host code put on the sandbox's object (as accelerate's offload hooks do),
    under a name the vetted file never defines: refused, although no deny pattern matches it."""
    import torch.nn

    original = torch.nn.Module.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        object.__setattr__(self, "_set_by_host", {"state": 1})

    monkeypatch.setattr(torch.nn.Module, "__init__", init)
    with pytest.raises(PolicyViolation) as info:
        pipe("host_set")
    assert info.value.rule == "attribute.not-allowlisted"


def test_private_name_nobody_sets_reads_as_absent(pipe):
    assert pipe("has_missing") is False
    assert pipe("missing") == "default"


def test_private_attribute_names_are_the_files_own_definitions():
    names = private_attribute_names(ast.parse(SOURCE))
    assert {"_proj", "_cache", "_by_setattr", "_helper_method", "_class_level", "_guidance_scale"} <= names
    # read, never defined by the file: not its own
    assert not names & {"_forward_hooks", "_execution_device", "_set_by_host", "_never_set", "_compiled_call_impl"}
