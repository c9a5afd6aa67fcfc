"""Host code that runs while a sandbox class is created (runtime/classhooks.py): the class is built
armed, and only reviewed ``__init_subclass__``/``__set_name__`` hooks and Enum mixins may run.

Each refusal is checked by the absence of its side effect (a host registry unchanged, a secret
file's content nowhere), next to the idioms real pipelines use (outputs, str enums, generics,
cached properties, dataclass fields), which must keep working.
"""

from __future__ import annotations

import json
import textwrap

import pytest

from pipewarden.errors import PipewardenError, PolicyViolation
from pipewarden.sandbox import load_class
from pipewarden.sandbox.runtime.classhooks import check_class_creation

transformers = pytest.importorskip("transformers")

HEAD = "from diffusers import DiffusionPipeline\n"
TAIL = '''

class P(DiffusionPipeline):
    def __init__(self):
        super().__init__()

    def __call__(self):
        return RESULT
'''


def _load(module_body: str):
    return load_class(HEAD + textwrap.dedent(module_body) + TAIL)


def _rule(exc: BaseException) -> str:
    while exc is not None:
        if isinstance(exc, PipewardenError) and getattr(exc, "rule", None):
            return exc.rule
        exc = exc.__cause__ or exc.__context__
    return ""


def test_host_init_subclass_registry_unchanged():
    from transformers import cache_utils

    before = dict(cache_utils.DYNAMIC_LAYER_TYPE_MAPPING)
    with pytest.raises(PipewardenError) as info:
        _load('''
        import transformers
        class Hijack(transformers.cache_utils.DynamicLayer):
            _layer_type = "full_attention"
        RESULT = 1
        ''')
    # refused (by the transformers class list before it reaches class creation, or here)
    assert _rule(info.value) in ("class.init-subclass", "facade.not-allowlisted"), info.value
    assert dict(cache_utils.DYNAMIC_LAYER_TYPE_MAPPING) == before
    # and the class-creation layer on its own, whichever base is reachable:
    with pytest.raises(PolicyViolation) as direct:
        check_class_creation("Hijack", (cache_utils.DynamicLayer,), {"_layer_type": "full_attention"}, lambda t: False)
    assert direct.value.rule == "class.init-subclass"
    assert dict(cache_utils.DYNAMIC_LAYER_TYPE_MAPPING) == before


def test_enum_host_mixin_never_constructed(tmp_path):
    secret = tmp_path / "secret.json"
    token = "pwsecret-enum-mixin-1234"
    secret.write_text(json.dumps({"token": token}))
    with pytest.raises(PipewardenError) as info:
        cls = _load(f'''
        import enum
        from transformers.pipelines.base import JsonPipelineDataFormat
        class Leak(JsonPipelineDataFormat, enum.Enum):
            SECRET = (None, {str(secret)!r}, "token")
        RESULT = repr(Leak.SECRET._entries)
        ''')
        cls()()
    assert _rule(info.value) in ("class.enum-mixin", "facade.not-allowlisted"), info.value
    assert token not in str(info.value)
    import enum

    from transformers.pipelines.base import JsonPipelineDataFormat

    with pytest.raises(PolicyViolation) as direct:
        check_class_creation("Leak", (JsonPipelineDataFormat, enum.Enum), {"SECRET": (None, str(secret), "t")},
                             lambda t: False)
    assert direct.value.rule == "class.enum-mixin"


def test_unreviewed_init_subclass_of_a_reachable_base_is_refused(tmp_path):
    canary = tmp_path / "ran"
    with pytest.raises(PipewardenError) as info:
        _load(f'''
        import transformers
        class Evil(transformers.CLIPTextModel):
            pwned: "(open({str(canary)!r}, 'w'), int)[1]"
        RESULT = 1
        ''')
    assert _rule(info.value) in ("class.init-subclass", "facade.not-allowlisted"), info.value
    assert not canary.exists()


REAL_IDIOMS = '''
import dataclasses
import enum
import functools
import typing
from typing import Generic, TypeVar

import torch
from diffusers.utils import BaseOutput

T = TypeVar("T")


@dataclasses.dataclass
class Out(BaseOutput):
    images: typing.Any = None
    extra: list = dataclasses.field(default_factory=list)


class Mode(enum.Enum):
    FAST = "fast"
    SLOW = "slow"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Box(Generic[T]):
    def __init__(self, item: T):
        self.item = item

    @functools.cached_property
    def doubled(self):
        return self.item * 2


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)


RESULT = (Out(images=[1]).images, Mode("fast").value, int(Level.HIGH), Box(3).doubled, len(list(Block().parameters())))
'''


def test_real_class_idioms_still_build():
    assert _load(REAL_IDIOMS)()() == ([1], "fast", 2, 6, 2)


def test_set_name_of_unreviewed_host_descriptors_is_refused():
    class HostDescriptor:  # stands for a host class whose __set_name__ writes host state
        def __set_name__(self, owner, name):  # pragma: no cover - must never run
            raise AssertionError("ran")

    with pytest.raises(PolicyViolation) as info:
        check_class_creation("C", (object,), {"x": HostDescriptor()}, lambda t: False)
    assert info.value.rule == "class.set-name"


def test_set_name_through_a_dataclass_field_default_is_checked():
    import dataclasses

    class HostDescriptor:
        def __set_name__(self, owner, name):  # pragma: no cover - must never run
            raise AssertionError("ran")

    with pytest.raises(PolicyViolation) as info:
        check_class_creation("C", (object,), {"x": dataclasses.field(default=HostDescriptor())}, lambda t: False)
    assert info.value.rule == "class.set-name"


# ---------------------------------------------------------------------------------------------------
# Annotations are data host code evaluates (typing.get_type_hints in DiffusionPipeline.
# _get_signature_types, which from_pretrained/from_pipe call on the vetted class, outside any
# sandboxed frame): str annotations are made inert when a sandbox function or class is defined.

_ESCAPE = (
    "[c for c in ().__class__.__base__.__subclasses__() if c.__name__ == '_wrap_close'][0]"
    ".__init__.__globals__['system']('touch {canary}')"
)

ANNOTATED = '''
import dataclasses
import typing

from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput


@dataclasses.dataclass
class Out(BaseOutput):
    images: "{expr}" = None
    count: "typing.ClassVar[int]" = 3


class P(DiffusionPipeline):
    def __init__(self, unet: "{expr}" = None):
        super().__init__()

    def __call__(self, steps: "{expr}" = 1):
        return Out(images=[steps])
'''


def _annotated_source(canary) -> str:
    return ANNOTATED.replace("{expr}", _ESCAPE.format(canary=canary))


def _host_evaluations(cls, out_cls) -> None:
    import inspect
    import typing

    for call in (
        lambda: cls._get_signature_types(),
        lambda: typing.get_type_hints(cls.__init__),
        lambda: typing.get_type_hints(cls.__call__),
        lambda: inspect.signature(cls.__call__, eval_str=True),
        lambda: typing.get_type_hints(out_cls),
    ):
        try:
            call()
        except Exception:  # noqa: BLE001 - only the side effect matters here
            pass


def test_control_str_annotations_are_evaluated_by_host_helpers(tmp_path):
    canary = tmp_path / "plain"
    namespace: dict = {"__name__": "plain_annotated"}
    exec(compile(_annotated_source(canary), str(tmp_path / "p.py"), "exec"), namespace)  # noqa: S102
    _host_evaluations(namespace["P"], namespace["Out"])
    assert canary.exists()  # the payload is live outside the sandbox


def test_host_evaluating_sandbox_annotations_runs_nothing(tmp_path):
    canary = tmp_path / "sandboxed"
    cls = load_class(_annotated_source(canary))
    out = cls()(steps=2)
    _host_evaluations(cls, type(out))
    assert not canary.exists()
    # the text is kept (inert), ClassVar keeps its meaning for dataclasses
    import dataclasses

    assert [f.name for f in dataclasses.fields(type(out))] == ["images"]
    assert out.images == [2]


NESTED = '''
import typing
from typing import Annotated, Dict, List, Optional, Union

from diffusers import DiffusionPipeline


class P(DiffusionPipeline):
    def __init__(
        self,
        unet: list["{a}"] = None,
        vae: dict[str, "{b}"] = None,
        scheduler: Optional[list["{c}"]] = None,
        tokenizer: Union[int, dict[str, "{d}"]] = None,
        text_encoder: Annotated[list["{e}"], "{f}"] = None,
        dtype_probe: list["torch.set_default_dtype(torch.float64)"] = None,
        plain: Optional[List[int]] = None,
    ):
        super().__init__()

    def __call__(self):
        return 1
'''


def test_host_evaluating_nested_text_annotations_runs_nothing(tmp_path):
    """N5: a str nested in list[...]/dict[...]/Optional/Union/Annotated or a ForwardRef is made inert
    with the whole annotation; plain typing annotations stay as they are."""
    import typing

    import torch

    source = NESTED
    canaries = {}
    for key in "abcdef":
        canaries[key] = tmp_path / f"nested_{key}"
        source = source.replace("{" + key + "}", _ESCAPE.format(canary=canaries[key]))
    before = torch.get_default_dtype()
    cls = load_class(source)
    for call in (
        lambda: cls._get_signature_types(),
        lambda: typing.get_type_hints(cls.__init__),
        lambda: typing.get_type_hints(cls.__init__, include_extras=True),
    ):
        try:
            call()
        except Exception:  # noqa: BLE001 - only the side effect matters here
            pass
    assert [k for k, c in canaries.items() if c.exists()] == []
    assert torch.get_default_dtype() == before
    hints = typing.get_type_hints(cls.__init__)
    assert hints["plain"] == typing.Optional[typing.List[int]]  # noqa: UP006 - typing forms on purpose
    assert hints["unet"] is typing.Any


def test_inert_annotations_walks_typing_forms():
    """typing's own ForwardRef (Optional["x"], List["x"], TypeVar bounds) anywhere makes the whole
    annotation inert; the inert form is stable and plain annotations are returned as they are."""
    import typing

    from pipewarden.sandbox.runtime.classhooks import inert_annotations

    text = "__import__('os').system('true')"
    holding = {
        "a": typing.Optional[typing.List[text]],  # noqa: UP006
        "b": typing.ForwardRef(text),
        "c": typing.Union[int, typing.Dict[str, text]],  # noqa: UP006
        "d": typing.TypeVar("T", bound=text),
        "e": typing.Annotated[int, text],
        "f": list[list[list[text]]],
        "g": list[object(), text],
    }
    inert = inert_annotations(holding)
    for key, value in inert.items():
        assert value == typing.Annotated[typing.Any, "<annotation holding text>"], key
    assert inert_annotations(inert) is inert
    plain = {"a": typing.Optional[typing.List[int]], "b": int | None, "c": typing.Literal[1]}  # noqa: UP006
    assert inert_annotations(plain) is plain
