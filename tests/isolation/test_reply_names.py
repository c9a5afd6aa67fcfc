"""Worker-chosen names never become attributes or keyword arguments of host objects.

Red team round 3, F4 and F7 (one flaw): a worker reply's dict keys, config keys, output fields
and class names reached host attribute setters -- diffusers' ``BaseOutput.__post_init__`` spreads
a dict first field into attributes, ``FrozenDict.__init__`` / ``register_to_config`` (through
``Cls.from_config(handle.component.config)``) set every config key. A worker-chosen
``__array_interface__`` on a host object is a raw pointer numpy reads and writes.

The families below feed the ONE parse boundary (``wire.messages.parse``) every door found:
output dicts that diffusers would spread (every known output class and a custom one), output
field names, the pipeline config, component configs (top level and nested), component names,
callback tensor names; then the same through a real worker. Each checks the ABSENCE of the
side effect (no such attribute on the host object; nothing built) besides the refusal.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings

import pytest

from pipewarden.errors import WorkerError
from pipewarden.isolation.wire import codec
from pipewarden.isolation.wire.framing import Frame
from pipewarden.isolation.wire.messages import CONFIG_METADATA_KEYS, parse

TAG = "__pw__"
_POINTER = {"data": [4096, False], "shape": [8], "typestr": "|u1", "version": 3}

#: Names that must never become attributes of a host object: protocols numpy/torch/copy/pickle
#: read from instances, Python's own, private names, the outputs' and mappings' methods, non-names.
PROTOCOL_KEYS = [
    "__array_interface__", "__array_struct__", "__array__", "__cuda_array_interface__", "__dlpack__",
    "__torch_function__", "__deepcopy__", "__copy__", "__reduce_ex__", "__reduce__", "__setstate__",
    "__class__", "__dict__", "__getattr__", "__init__", "__eq__",
]
PRIVATE_KEYS = ["_private", "_BaseOutput__x", "_pw_class_name"]
METHOD_KEYS = ["to_tuple", "keys", "items", "values", "get", "pop", "update", "setdefault", "copy"]
NON_NAMES = ["0", "not a name", "a-b", "", "class", "x" * 200]


def _result(value: object) -> object:
    return parse(Frame({"kind": "result", "value": value}, b"")).value  # type: ignore[attr-defined]


def _known_outputs() -> list[tuple[str, list[str]]]:
    out = []
    for name in sorted(codec._KNOWN_OUTPUTS):
        cls = codec._known_output_class(name, ())
        if cls is not None:
            out.append((name, [f.name for f in dataclasses.fields(cls)]))
    return out


OUTPUT_CLASSES = [*_known_outputs(), ("MyCustomOutput", ["images", "extra"])]


def _spread_output(cls: str, fields: list[str], key: str) -> dict:
    first, *rest = fields
    return {TAG: "output", "cls": cls,
            "fields": {first: {TAG: "dict", "v": {key: {TAG: "dict", "v": dict(_POINTER)}}}, **{f: None for f in rest}}}


# ------------------------------------------------------------------------- outputs (F4)


@pytest.mark.parametrize("key", PROTOCOL_KEYS + PRIVATE_KEYS + METHOD_KEYS + NON_NAMES)
@pytest.mark.parametrize(("cls", "fields"), OUTPUT_CLASSES, ids=[c for c, _ in OUTPUT_CLASSES])
def test_a_spread_output_dict_key_never_becomes_a_host_attribute(cls, fields, key):
    out = _result(_spread_output(cls, fields, key))
    host_own = key == "_pw_class_name" and vars(out).get(key) == cls  # the host's record of the name
    assert key not in vars(out) or host_own, f"{key!r} became an attribute of the host {type(out).__name__}"
    assert out[key] == _POINTER  # kept as an item, as the data it is
    assert out.to_tuple() == (_POINTER,) and list(out.keys()) == [key]  # the methods are intact
    if key.startswith("__array"):
        import numpy as np

        with pytest.raises((TypeError, ValueError)):  # no pointer to read: numpy sees a mapping
            np.asarray(out, dtype=np.uint8)


@pytest.mark.parametrize(("cls", "fields"), OUTPUT_CLASSES, ids=[c for c, _ in OUTPUT_CLASSES])
def test_public_spread_keys_still_become_attributes_as_in_diffusers(cls, fields):
    first, *rest = fields
    out = _result({TAG: "output", "cls": cls,
                   "fields": {first: {TAG: "dict", "v": {"latents": 1, "nsfw": [True]}}, **{f: None for f in rest}}})
    assert out.latents == 1 and out.nsfw == [True] and out["latents"] == 1 and out.to_tuple() == (1, [True])
    if cls in codec._KNOWN_OUTPUTS:  # the same object diffusers itself builds
        real = type(out)(**{first: {"latents": 1, "nsfw": [True]}}, **{f: None for f in rest})
        assert vars(out) == vars(real) and list(out.items()) == list(real.items())


@pytest.mark.parametrize("field", PROTOCOL_KEYS + PRIVATE_KEYS + NON_NAMES)
@pytest.mark.parametrize("cls", ["ImagePipelineOutput", "MyCustomOutput"])
def test_an_output_field_that_is_not_a_public_name_is_refused(cls, field):
    with pytest.raises(WorkerError) as info:
        _result({TAG: "output", "cls": cls, "fields": {field: {TAG: "dict", "v": dict(_POINTER)}}})
    assert info.value.rule in ("wire.attribute-name", "wire.malformed-value")


@pytest.mark.parametrize("field", METHOD_KEYS + ["class_name"])
def test_a_custom_output_field_named_like_a_method_stays_an_item(field):
    out = _result({TAG: "output", "cls": "MyCustomOutput", "fields": {"images": [1], field: [2]}})
    assert field not in vars(out) and out[field] == [2]
    assert out.to_tuple() == ([1], [2]) and out.class_name == "MyCustomOutput"


@pytest.mark.parametrize("name", ["ImagePipelineOutput", "MyCustomOutput", "BaseOutput", "OrderedDict", "Tensor"])
def test_output_classes_are_an_allowlist_and_no_class_is_built(name):
    out = _result({TAG: "output", "cls": name, "fields": {"images": [1]}})
    if name == "ImagePipelineOutput":
        from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

        assert type(out) is ImagePipelineOutput
    else:
        assert type(out) is codec.isolated_output_class() and out.class_name == name
        assert type(out).__name__ == "IsolatedOutput"


# ------------------------------------------------------------------------- configs (F7)


def _loaded(config: dict | None = None, unet: dict | None = None, **extra: object) -> object:
    header = {"kind": "loaded", "class_name": "P", "config": config or {},
              "components": {"unet": unet, "scheduler": {"num_train_timesteps": 10}},
              "types": {"unet": "UNet2DConditionModel", "scheduler": "DDIMScheduler"}}
    header.update(extra)
    return parse(Frame(json.loads(json.dumps(header)), b""))


BAD_CONFIG_KEYS = PROTOCOL_KEYS + PRIVATE_KEYS + ["keys", "items", "get", "update", "copy", "move_to_end"] + NON_NAMES


@pytest.mark.parametrize("key", BAD_CONFIG_KEYS)
@pytest.mark.parametrize("where", ["pipeline", "component"])
def test_a_config_key_that_could_become_a_host_attribute_is_refused(where, key):
    bad = {"num_train_timesteps": 1000, key: dict(_POINTER)}
    with pytest.raises(WorkerError) as info:
        _loaded(config=bad) if where == "pipeline" else _loaded(unet=bad)
    assert info.value.rule == "wire.attribute-name"


@pytest.mark.parametrize("key", PROTOCOL_KEYS)
def test_a_nested_config_key_with_a_dunder_name_is_refused(key):
    # nested keys stay items (nothing spreads them into attributes), but never protocol names
    with pytest.raises(WorkerError) as info:
        _loaded(unet={"block": {"inner": {key: dict(_POINTER)}}})
    assert info.value.rule == "wire.attribute-name"


def test_a_config_the_boundary_accepts_builds_host_objects_without_protocol_attributes():
    from diffusers import DDIMScheduler

    cfg = {"num_train_timesteps": 1000, "beta_schedule": "linear", "_class_name": "DDIMScheduler",
           "_diffusers_version": "0.0", "_use_default_values": ["clip_sample"], "nested_ok": {"0": [1], "a b": 2}}
    loaded = _loaded(unet=cfg)
    assert set(CONFIG_METADATA_KEYS) >= {k for k in cfg if k.startswith("_")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = DDIMScheduler.from_config(loaded.components["unet"])  # type: ignore[attr-defined]
    assert sched.config.num_train_timesteps == 1000
    assert not [k for k in vars(sched.config) if k.startswith("__")]


@pytest.mark.parametrize("name", ["_private", "__dict__", "__array_interface__", "class", "0", "a-b"])
def test_a_component_name_that_is_not_a_public_name_is_refused(name):
    header = {"kind": "loaded", "class_name": "P", "config": {}, "components": {name: None}, "types": {name: "X"}}
    with pytest.raises(WorkerError) as info:
        parse(Frame(header, b""))
    assert info.value.rule == "wire.attribute-name"


def test_component_types_must_name_reported_components():
    header = {"kind": "loaded", "class_name": "P", "config": {}, "components": {"unet": None},
              "types": {"unet": "U", "__array_interface__": "X"}}
    with pytest.raises(WorkerError):
        parse(Frame(header, b""))


@pytest.mark.parametrize("name", ["__array_interface__", "_private", "__class__", "0", "a b"])
def test_a_callback_tensor_name_that_is_not_a_public_name_is_refused(name):
    header = {"kind": "callback", "step": 0, "timestep": 1, "tensors": {TAG: "dict", "v": {"latents": 1, name: 2}}}
    with pytest.raises(WorkerError) as info:
        parse(Frame(header, b""))
    assert info.value.rule == "wire.attribute-name"


def test_dtype_names_are_read_without_touching_torch_module_getattr():
    for name in ("_dynamo", "__class__", "Tensor", "nn"):
        with pytest.raises(WorkerError):
            _result({TAG: "dtype", "v": name})
    import torch

    assert _result({TAG: "dtype", "v": "float16"}) is torch.float16


# ------------------------------------------------------------------ through a real worker

WORKER_SOURCE = '''\
import dataclasses
import typing

import torch
from diffusers import DiffusionPipeline

POINTER = {"data": (4096, False), "shape": (8,), "typestr": "|u1", "version": 3}


@dataclasses.dataclass
class ImagePipelineOutput:  # carries diffusers' name; the host must not trust that
    images: typing.Any


@dataclasses.dataclass
class MyOutput:
    images: typing.Any
    nsfw: typing.Any = None


class DictConfigScheduler:
    def __init__(self, extra):
        self.extra = extra

    @property
    def config(self):
        cfg = {"num_train_timesteps": 1000}
        cfg.update(self.extra)
        return cfg


class NamesPipeline(DiffusionPipeline):
    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    def __call__(self, mode="known", callback_on_step_end=None):
        spread = {"__array_interface__": POINTER, "__deepcopy__": 1, "to_tuple": "x", "ok": 2}
        if mode == "known":
            return ImagePipelineOutput(images=spread)
        if mode == "custom":
            return MyOutput(images=spread)
        if mode == "callback":
            callback_on_step_end(self, 0, 1, {"latents": torch.zeros(1), "__array_interface__": torch.zeros(1)})
        return torch.zeros(1)
'''

WORKER_CONFIG_SOURCE = WORKER_SOURCE.replace(
    "self.register_modules(unet=unet, scheduler=scheduler)",
    'self.register_modules(unet=unet, scheduler=DictConfigScheduler({"__array_interface__": POINTER}))',
)


@pytest.fixture(scope="module")
def tiny_weights_dir(tmp_path_factory):
    from pipewarden._fixtures import build_weights

    return build_weights(tmp_path_factory.mktemp("names-weights"), seed=5)


def _load(weights, tmp_path, source):
    import pipewarden

    path = tmp_path / "pipeline.py"
    path.write_text(source)
    return pipewarden.load_pipeline(str(weights), custom_pipeline=str(path), trust_remote_code=True,
                                    pipeline_sha256=hashlib.sha256(source.encode()).hexdigest(), isolation="process")


def test_worker_outputs_reach_the_host_without_worker_chosen_attributes(tiny_weights_dir, tmp_path):
    from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

    with _load(tiny_weights_dir, tmp_path, WORKER_SOURCE) as pipe:
        known = pipe(mode="known")
        custom = pipe(mode="custom")
        seen: list[dict] = []
        with pytest.raises(WorkerError) as info:
            pipe(mode="callback", callback_on_step_end=lambda p, i, t, kw: seen.append(kw) or kw)
    assert type(known) is ImagePipelineOutput and type(custom) is codec.isolated_output_class()
    for out in (known, custom):
        assert not [k for k in vars(out) if k.startswith("_") and k != "_pw_class_name"], vars(out)
        assert "to_tuple" not in vars(out) and callable(out.to_tuple)
        assert out.ok == 2 and out["__array_interface__"]["shape"] == (8,)  # items keep the data
    assert info.value.rule == "wire.attribute-name" and seen == []  # the host callback never ran


def test_worker_component_config_with_protocol_keys_is_refused_at_load(tiny_weights_dir, tmp_path):
    with pytest.raises(WorkerError) as info:
        _load(tiny_weights_dir, tmp_path, WORKER_CONFIG_SOURCE)
    assert info.value.rule == "wire.attribute-name" and "__array_interface__" in str(info.value)


def test_the_documented_scheduler_swap_still_works_and_sets_no_protocol_attribute(tiny_weights_dir, tmp_path):
    from diffusers import DDIMScheduler

    with _load(tiny_weights_dir, tmp_path, WORKER_SOURCE) as pipe:
        cfg = pipe.scheduler.config
        sched = DDIMScheduler.from_config(cfg)
        assert not [k for k in vars(sched.config) if k.startswith("__")]
        pipe.scheduler = sched  # sent to the worker as data; its answer passes the same boundary
        assert pipe.scheduler.class_name == "DDIMScheduler"
        assert isinstance(pipe(mode="plain"), object)
