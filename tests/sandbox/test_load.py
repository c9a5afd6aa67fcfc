"""load_class end to end: bit-identical results on benign pipelines, refusals without side effects."""

from __future__ import annotations

import os
import textwrap
import threading
from pathlib import Path

import pytest

from pipewarden.errors import PipewardenError, PolicyViolation, ScanError
from pipewarden.sandbox import load_class, tripwire
from tests._sandbox_benign import BENIGN_PIPELINE_SOURCE
from tests.conftest import seed_file

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def components(tiny_weights):
    from diffusers import DDPMScheduler, UNet2DModel

    unet = UNet2DModel.from_pretrained(tiny_weights, subfolder="unet")
    scheduler = DDPMScheduler.from_pretrained(tiny_weights, subfolder="scheduler")
    return unet, scheduler


def _reference(weights: Path, source: str, tmp_path: Path, name: str):
    """The same source loaded by diffusers itself (plain Python). diffusers caches dynamic modules by
    file name for the whole process, so every reference gets a unique name."""
    from diffusers import DiffusionPipeline

    path = tmp_path / name
    path.write_text(source)
    pipe = DiffusionPipeline.from_pretrained(str(weights), custom_pipeline=str(path), trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize(
    "label, aliases",
    [("one_step_unet.py", None), ("one_step_unet_musev.py", {"MuseVdiffusers": "diffusers"}), ("example", None)],
)
def test_bit_identical_to_diffusers(label, aliases, components, tiny_weights, tmp_path):
    from pipewarden._fixtures import EXAMPLE_PIPELINE_SOURCE

    source = EXAMPLE_PIPELINE_SOURCE if label == "example" else seed_file(label).read_text()
    cls = load_class(source, filename=label if label != "example" else "pipeline.py", import_aliases=aliases)
    unet, scheduler = components
    pipe = cls(unet=unet, scheduler=scheduler)
    torch.manual_seed(0)
    ours = pipe()
    # diffusers cannot import the MuseV spelling; its reference is the diffusers spelling.
    ref_source = seed_file().read_text() if label == "one_step_unet_musev.py" else source
    ref = _reference(tiny_weights, ref_source, tmp_path, f"ref_{label.replace('.py', '')}.py")
    torch.manual_seed(0)
    theirs = ref()
    assert torch.equal(ours, theirs)


def test_positive_control_benign_idioms_match_plain_execution(components, tiny_weights, tmp_path):
    cls = load_class(BENIGN_PIPELINE_SOURCE, filename="benign.py")
    unet, scheduler = components
    pipe = cls(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    armed_seen: list[bool] = []
    out = pipe(generator=torch.Generator().manual_seed(3), callback=lambda i, t: armed_seen.append(tripwire.is_armed()))
    ref = _reference(tiny_weights, BENIGN_PIPELINE_SOURCE, tmp_path, "ref_benign_control.py")
    expected = ref(generator=torch.Generator().manual_seed(3))
    assert torch.equal(out.images, expected.images)
    assert out.steps == expected.steps == 2
    # host code called from sandboxed code runs with the tripwire armed; the host itself is not armed
    assert armed_seen == [True, True]
    assert not tripwire.is_armed()
    assert pipe.history == [0, 1] and cls.describe() == "BenignPipeline"


def test_vetted_class_shape(components):
    from diffusers import DiffusionPipeline

    cls = load_class(seed_file().read_text())
    assert issubclass(cls, DiffusionPipeline) and cls.__name__ == "UnetSchedulerOneForwardPipeline"
    import inspect

    assert list(inspect.signature(cls.__init__).parameters) == ["self", "unet", "scheduler"]


# --------------------------------------------------------------------------- refusals

HEAD = "from diffusers import DiffusionPipeline\nimport torch\n"


def _pipeline(call_body: str, module_body: str = "") -> str:
    body = textwrap.indent(textwrap.dedent(call_body), " " * 8)
    return (
        HEAD
        + textwrap.dedent(module_body)
        + "\n\nclass P(DiffusionPipeline):\n"
        + "    def __init__(self, unet, scheduler):\n"
        + "        super().__init__()\n"
        + "        self.register_modules(unet=unet, scheduler=scheduler)\n\n"
        + "    def __call__(self, canary=''):\n"
        + body
        + "\n        return None\n"
    )


# (label, module body, __call__ body, expected rule). CANARY is replaced by a path in a canary dir.
LOAD_TIME = [
    ("import-subprocess", "import subprocess\nsubprocess.run(['touch', CANARY])\n", "import.not-allowlisted"),
    ("import-socket", "import socket\n", "import.not-allowlisted"),
    ("import-sys", "import sys\n", "import.not-allowlisted"),
    ("import-builtins", "import builtins\n", "compile.name.reserved"),
    ("import-importlib", "import importlib\n", "import.not-allowlisted"),
    ("open-write", "open(CANARY, 'w').write('x')\n", "builtins.refused"),
    ("os-system", "import os\nos.system('touch ' + CANARY)\n", "facade.not-allowlisted"),
    ("from-os-system", "from os import system\nsystem('touch ' + CANARY)\n", "facade.not-allowlisted"),
    ("os-environ", "import os\nSECRET = os.environ['HOME']\n", "facade.not-allowlisted"),
    ("torch-os", "torch.os.system('touch ' + CANARY)\n", "facade.not-allowlisted"),
    ("torch-sys", "m = torch.sys.modules\n", "facade.not-allowlisted"),
    ("torch-builtins", "torch.builtins.open(CANARY, 'w')\n", "facade.not-allowlisted"),
    ("torch-load", "torch.load(CANARY, weights_only=False)\n", "facade.not-allowlisted"),
    ("torch-save", "torch.save({}, CANARY)\n", "facade.not-allowlisted"),
    ("torch-from-file", "torch.from_file(CANARY)\n", "facade.not-allowlisted"),
    ("torch-hub", "torch.hub.load('x', 'y', source='local')\n", "facade.not-allowlisted"),
    ("torch-ops", "torch.ops.load_library(CANARY)\n", "facade.not-allowlisted"),
    ("torch-jit", "torch.jit.load(CANARY)\n", "facade.not-allowlisted"),
    ("torch-private", "c = torch._C\n", "facade.private-name"),
    ("diffusers-utils-os", "import diffusers\ndiffusers.utils.os.system('touch ' + CANARY)\n", "facade.not-allowlisted"),
    ("dynamic-module", "from diffusers.utils import get_class_from_dynamic_module\nget_class_from_dynamic_module('x', 'y')\n",
     "facade.not-allowlisted"),
    ("hf-hub-download", "from huggingface_hub import hf_hub_download\nhf_hub_download('a/b', 'c')\n", "facade.not-allowlisted"),
    ("np-load", "import numpy as np\nnp.load(CANARY, allow_pickle=True)\n", "facade.not-allowlisted"),
    ("gc", "import gc\nobjs = gc.get_objects()\n", "facade.not-allowlisted"),
    ("attrgetter", "import operator\nf = operator.attrgetter('__class__')\n", "facade.not-allowlisted"),
    ("reduce-getattr", "import functools\nfunctools.reduce(getattr, ['__class__'], 1)\n", "attribute.not-allowlisted"),
    ("format-traversal", "s = '{0.__class__.__bases__}'.format(1)\n", "attribute.not-allowlisted"),
    ("format-unbound", "s = str.format('{0.__class__}', 1)\n", "attribute.not-allowlisted"),
    ("getattr-dunder", "c = getattr(1, '__class__')\n", "attribute.not-allowlisted"),
    ("type-call", "T = type('T', (), {'__init_subclass__': None})\n", "builtins.refused"),
    ("str-subclass", "class S(str):\n    pass\n", "class.bases"),
    ("metaclass-base", "import abc\nclass M(abc.ABCMeta):\n    pass\n", "facade.not-allowlisted"),
    ("metaclass-type-stub", "class M(type):\n    pass\n", "builtins.refused"),
    ("enum-metaclass", "import enum\nMeta = enum.EnumMeta\n", "facade.not-allowlisted"),
    ("shared-module-write", "import torch.nn.functional as F\nF.gelu = None\n", "write.facade"),
    ("setattr-module", "setattr(torch, 'randn', None)\n", "write.facade"),
    ("name-not-str", "getattr(torch, 1)\n", "attribute.name-type"),
    ("dunder-compile", "x = ().__class__.__base__.__subclasses__()\n", "compile.attribute.dunder"),
]


@pytest.mark.parametrize("label, body, rule", LOAD_TIME, ids=[c[0] for c in LOAD_TIME])
def test_load_time_refusals_leave_no_trace(label, body, rule, tmp_path):
    canary = tmp_path / "canary"
    canary_dir = tmp_path
    before = sorted(os.listdir(canary_dir))
    gelu_before = torch.nn.functional.gelu
    randn_before = torch.randn
    src = _pipeline("pass", body.replace("CANARY", repr(str(canary))))
    with pytest.raises(PipewardenError) as info:
        load_class(src)
    assert info.value.rule == rule, (info.value.rule, info.value.what)
    assert isinstance(info.value, (PolicyViolation, ScanError))
    assert not canary.exists()
    assert sorted(os.listdir(canary_dir)) == before
    assert torch.nn.functional.gelu is gelu_before and torch.randn is randn_before
    assert not tripwire.is_armed()


CALL_TIME = [
    ("pipe-save-pretrained", "self.save_pretrained(canary)", "attribute.denied"),
    ("unet-save-pretrained", "self.unet.save_pretrained(canary)", "attribute.denied"),
    ("scheduler-save-config", "self.scheduler.save_config(canary)", "attribute.denied"),
    ("from-pretrained-custom", "DiffusionPipeline.from_pretrained(canary, custom_pipeline=canary, trust_remote_code=True)",
     "attribute.denied"),
    ("forward-hook", "self.unet.register_forward_hook(lambda *a: None)", "attribute.denied"),
    ("tensor-storage", "torch.zeros(2).untyped_storage()", "attribute.denied"),
    ("tensor-data-ptr", "torch.zeros(2).data_ptr()", "attribute.denied"),
    ("ndarray-tofile", "torch.zeros(2).numpy().tofile(canary)", "attribute.denied"),
    ("unet-private", "self.unet._forward_hooks", "attribute.denied"),
    ("unet-private-modules", "self.unet._modules", "attribute.denied"),
    ("unet-write", "self.unet.forward = None", "write.host-object"),
    ("config-write", "self.unet.config.sample_size = 3", "write.host-object"),
    ("class-write", "torch.Tensor.add = None", "write.host-class"),
    ("attribute-error-obj", "try:\n    self.nonexistent_attr\nexcept AttributeError as e:\n    x = e.obj",
     "attribute.not-allowlisted"),
    ("exception-traceback", "try:\n    1/0\nexcept Exception as e:\n    x = e.with_traceback", "attribute.not-allowlisted"),
    ("logger-internals", "from diffusers.utils import logging\nlogging.get_logger('x').manager",
     "attribute.not-allowlisted"),
    ("pil-save", "from PIL import Image\nImage.new('RGB', (2, 2)).save(canary)", "attribute.denied"),
    ("unbound-forward-hook", "torch.nn.Module.register_forward_hook(self.unet, lambda *a: None)", "attribute.denied"),
    ("unbound-dict-update-frozen", "dict.update(self.unet.config, sample_size=999)", "call.unbound-host-method"),
    ("unbound-setattr-module", "torch.nn.Module.to_empty(self.unet, device='meta')", "attribute.not-allowlisted"),
    ("tqdm-bar-format", "from tqdm.auto import tqdm\ntqdm(total=1, bar_format='{desc.m.__func__}')",
     "argument.format-traversal"),
    ("progress-bar-config", "self.set_progress_bar_config(bar_format='{desc.__class__}')\nself.progress_bar(total=1)",
     "argument.format-traversal"),
    ("progress-bar-own-config", "self._progress_bar_config = {'bar_format': '{desc[0]}'}\nself.progress_bar(total=1)",
     "argument.format-traversal"),
    ("tqdm-positional-bar-format", "from tqdm.auto import tqdm\n"
     "tqdm(None, None, 1, True, None, None, 0.1, 10.0, None, None, False, 'it', False, False, 0.3, '{desc.x}')",
     "argument.format-traversal"),
    ("progress-bar-config-subclass", "class Sneaky(dict):\n    def get(self, key, default=None):\n        return None\n"
     "self._progress_bar_config = Sneaky(bar_format='{desc[0]}')\nself.progress_bar(total=1)",
     "argument.format-traversal"),
    ("config-get-list-append", "self.unet.config.get('block_out_channels').append(1)", "write.host-state"),
    ("config-values-append", "for v in self.unet.config.values():\n    if isinstance(v, list):\n        v.append(1)",
     "write.host-state"),
    ("ordereddict-clear-config", "import collections\ncollections.OrderedDict.clear(self.scheduler.config)",
     "call.unbound-host-method"),
    ("config-ior", "c = self.unet.config\nc |= {'sample_size': 1}", "write.host-state"),
    ("deprecate-take-from", "from diffusers.utils import deprecate\n"
     "deprecate(('__globals__', '9.0', ''), take_from=self.register_modules, standard_warn=False)",
     "argument.take-from"),
    ("register-modules-private", "self.register_modules(**{'_x': self.unet})", "argument.component-name"),
    ("dunder-kwargs-mapping", "import types\ntypes.SimpleNamespace(**{'__array_interface__': {}})", "call.dunder-keyword"),
    ("update-wrapper-attribute-list", "import functools\n"
     "functools.update_wrapper(DiffusionPipeline, lambda: 1, assigned=('save_pretrained',), updated=())",
     "argument.attribute-list"),
    ("wraps-attribute-list", "import functools\nfunctools.wraps(lambda: 1, assigned=('forward',), updated=())(self.unet)",
     "argument.attribute-list"),
    ("update-wrapper-host-class", "import functools\nfunctools.update_wrapper(DiffusionPipeline, lambda: 1)",
     "call.modifies-host-object"),
    ("wraps-host-object", "import functools\nfunctools.wraps(lambda: 1)(self.unet)", "call.modifies-host-object"),
    ("dataclass-host-class", "import dataclasses\ndataclasses.dataclass(DiffusionPipeline)", "call.modifies-host-object"),
    ("deepcopy-memo", "import copy\nmemo = {}\ncopy.deepcopy(self.unet, memo)", "argument.memo"),
    ("hasattr-denied-probe", "hasattr(self.unet, 'register_forward_hook')", "attribute.denied"),
    ("set-processor", "self.unet.mid_block.attentions[0].set_processor(None)", "call.attention-processor-target"),
]


@pytest.mark.parametrize("label, body, rule", CALL_TIME, ids=[c[0] for c in CALL_TIME])
def test_call_time_refusals_leave_no_trace(label, body, rule, components, tmp_path):
    unet, scheduler = components
    hooks_before = (len(unet._forward_hooks), len(unet._forward_pre_hooks))
    sample_size = unet.config.sample_size
    forward = unet.forward
    cls = load_class(_pipeline(body))
    pipe = cls(unet=unet, scheduler=scheduler)
    canary = tmp_path / "out"
    with pytest.raises(PipewardenError) as info:
        pipe(canary=str(canary))
    assert info.value.rule == rule, (info.value.rule, info.value.what)
    assert not canary.exists() and os.listdir(tmp_path) == []
    assert (len(unet._forward_hooks), len(unet._forward_pre_hooks)) == hooks_before
    assert unet.config.sample_size == sample_size and unet.forward == forward
    assert not tripwire.is_armed()


def test_refusal_carries_no_host_object(components):
    cls = load_class(_pipeline("self.nonexistent_attr"))
    pipe = cls(*components)
    with pytest.raises(AttributeError) as info:
        pipe()
    assert info.value.obj is None  # a fresh exception: no handle on the real UNet


def test_unavailable_module_is_an_ordinary_import_error():
    src = _pipeline(
        "return HAVE_XLA",
        "try:\n    import torch_xla.core.xla_model as xm\n    HAVE_XLA = True\nexcept ImportError:\n    HAVE_XLA = False\n",
    )
    cls = load_class(src)
    assert cls.__name__ == "P"


def test_print_goes_to_the_logger(components, caplog):
    import logging

    cls = load_class(_pipeline("print('hello', 'sandbox')"))
    with caplog.at_level(logging.INFO, logger="pipewarden.sandbox.print"):
        cls(*components)()
    assert "hello sandbox" in caplog.text


def test_safe_format_still_formats(components):
    cls = load_class(_pipeline("return '{0}-{name}-{1[0]}'.format(1, [2], name=self.__class__.__name__)"))
    assert cls(*components)() == "1-P-2"


# --------------------------------------------------------------------------- tripwire


def test_tripwire_blocks_writes_processes_and_sockets_when_armed(tmp_path):
    import socket
    import subprocess

    target = tmp_path / "w"
    with tripwire.armed():
        with pytest.raises(PolicyViolation) as info:
            open(target, "w")
        assert info.value.rule == "tripwire.open-write"
        with pytest.raises(PolicyViolation):
            subprocess.Popen(["true"])
        with pytest.raises(PolicyViolation):
            socket.socket()
        with pytest.raises(PolicyViolation):
            os.system("true")
        with pytest.raises(PolicyViolation):
            compile("1", "<x>", "eval")
        with pytest.raises(PolicyViolation):
            import ctypes  # noqa: F401  (already imported elsewhere? then the dlopen test below)

            ctypes.CDLL(None)
        with pytest.raises(PolicyViolation):  # reading outside the installed libraries
            open(__file__).close()
    assert not target.exists()
    open(target, "w").close()  # disarmed again
    assert target.exists()


def test_tripwire_is_per_context(tmp_path):
    seen: dict[str, bool] = {}

    def other_thread():
        seen["other"] = tripwire.is_armed()

    with tripwire.armed():
        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
        seen["here"] = tripwire.is_armed()
    assert seen == {"other": False, "here": True}


def test_host_callback_from_sandbox_cannot_write(components, tmp_path):
    target = tmp_path / "cb"
    cls = load_class(_pipeline("callback()"). replace("canary=''", "canary='', callback=None"))
    pipe = cls(*components)
    with pytest.raises(PolicyViolation):
        pipe(callback=lambda: open(target, "w"))
    assert not target.exists()


def test_from_config_accepts_configs_not_paths(components, tmp_path):
    cls = load_class(_pipeline("s = type_(self.scheduler).from_config(self.scheduler.config)\nreturn s.config.num_train_timesteps"
                               .replace("type_(self.scheduler)", "DDIMScheduler"),
                               "from diffusers import DDIMScheduler\n"))
    assert cls(*components)() == 1000
    cls = load_class(_pipeline("DDIMScheduler.from_config(canary)", "from diffusers import DDIMScheduler\n"))
    with pytest.raises(PolicyViolation) as info:
        cls(*components)(canary=str(tmp_path))
    assert info.value.rule == "argument.config-path"


HOST_STATE = [
    ("config-list", "lst = self.unet.config.block_out_channels\nlst.append(999)"),
    ("config-list-item", "lst = self.unet.config.block_out_channels\nlst[0] = -1"),
    ("class-shared-list", "self._optional_components.append(1)"),
    ("config-item-list", "lst = self.unet.config['block_out_channels']\nlst += [999]"),
]


@pytest.mark.parametrize("label, body", HOST_STATE, ids=[c[0] for c in HOST_STATE])
def test_host_containers_are_read_only_snapshots(label, body, components):
    from diffusers import DiffusionPipeline

    unet, scheduler = components
    before = list(unet.config.block_out_channels)
    shared = list(DiffusionPipeline._optional_components)
    cls = load_class(_pipeline(body))
    with pytest.raises(PolicyViolation) as info:
        cls(unet, scheduler)()
    assert info.value.rule in ("write.host-state", "write.host-object")
    assert list(unet.config.block_out_channels) == before
    assert list(DiffusionPipeline._optional_components) == shared


def test_read_only_snapshots_still_read_and_copy(components):
    cls = load_class(_pipeline(
        "lst = self.unet.config.block_out_channels\nmine = list(lst) + [1]\nmine.append(2)\n"
        "return len(lst), lst[0], mine[-1], isinstance(lst, list)"
    ))
    n, first, last, is_list = cls(*components)()
    assert (n, last, is_list) == (len(components[0].config.block_out_channels), 2, True)
    assert first == components[0].config.block_out_channels[0]


def test_module_constants_are_read_only():
    import diffusers.utils.constants as consts

    before = list(consts.DEPRECATED_REVISION_ARGS)
    src = _pipeline("pass", "from diffusers.utils.constants import DEPRECATED_REVISION_ARGS\n"
                            "DEPRECATED_REVISION_ARGS.append('evil')\n")
    with pytest.raises(PolicyViolation) as info:
        load_class(src)
    assert info.value.rule == "write.host-state"
    assert list(consts.DEPRECATED_REVISION_ARGS) == before


def test_grad_mode_call_form_is_refused_and_with_form_works(components):
    with pytest.raises(PolicyViolation) as info:
        load_class(_pipeline("torch.set_grad_enabled(False)"))
    assert info.value.rule == "compile.call.global-state"
    cls = load_class(_pipeline("with torch.set_grad_enabled(False):\n    inside = torch.is_grad_enabled()\n"
                               "return inside, torch.is_grad_enabled()"))
    assert cls(*components)() == (False, True)
    assert torch.is_grad_enabled()


def test_return_types_fields_are_readable(components):
    cls = load_class(_pipeline("r = torch.max(torch.tensor([[1.0, 5.0], [7.0, 2.0]]), dim=1)\nreturn r.values, r.indices"))
    values, indices = cls(*components)()
    assert values.tolist() == [5.0, 7.0] and indices.tolist() == [1, 0]


@pytest.mark.parametrize(
    "body, rule",
    [
        ("super(torch.nn.Module, self.unet).__init__()", "attribute.not-allowlisted"),
        ("torch.nn.Module.__init__(self.unet)", "call.host-init"),
    ],
)
def test_host_initialisers_cannot_reset_host_objects(body, rule, components):
    unet, scheduler = components
    n_params = len(list(unet.parameters()))
    cls = load_class(_pipeline(body))
    with pytest.raises(PolicyViolation) as info:
        cls(unet, scheduler)()
    assert info.value.rule == rule
    assert len(list(unet.parameters())) == n_params and len(unet._modules) > 0


def test_hasattr_probes_absent_or_unlisted_names_quietly(components):
    cls = load_class(_pipeline(
        "return (hasattr(self.unet.config, 'latents_mean'), hasattr(self.unet.config, 'sample_size'),\n"
        "        hasattr(self, 'missing_thing'), hasattr(torch, 'definitely_not_a_torch_name'))"
    ))
    assert cls(*components)() == (False, True, False, False)


def test_file_reading_component_classes_are_names_only(components, tmp_path):
    secret = tmp_path / "vocab.txt"
    secret.write_text("[PAD]\n[UNK]\ntop-secret-token\n")
    module = (
        "from typing import Optional, Union\n"
        "from transformers import BertTokenizer, CLIPTokenizer, CLIPTextModel\n"
        "Hint = Optional[Union[CLIPTokenizer, BertTokenizer]]\n"
    )
    cls = load_class(_pipeline("return isinstance(self.unet, CLIPTokenizer), isinstance(self.unet, CLIPTextModel)", module))
    assert cls(*components)() == (False, False)
    # CLIPTokenizer is a component class (transformers_names.toml): a name, never constructed
    cls = load_class(_pipeline("t = CLIPTokenizer(vocab_file=canary, merges_file=canary)\nreturn t.decode([2])", module))
    with pytest.raises(PolicyViolation) as info:
        cls(*components)(canary=str(secret))
    assert info.value.rule == "construct.file-reading-class"
    with pytest.raises(PolicyViolation) as info:
        load_class(_pipeline("pass", module + "class MyTok(CLIPTokenizer):\n    pass\n"))
    assert info.value.rule == "construct.file-reading-class"
    # BertTokenizer is not one of pipewarden's components: the import binds a stub that may appear in
    # an annotation (above) and refuses every use
    cls = load_class(_pipeline("t = BertTokenizer(vocab_file=canary)\nreturn t.convert_ids_to_tokens([2])", module))
    with pytest.raises(PolicyViolation) as info:
        cls(*components)(canary=str(secret))
    assert info.value.rule == "facade.not-allowlisted"
    for body in ("class MyTok(BertTokenizer):\n    pass\n", "ok = isinstance(1, BertTokenizer)\n"):
        with pytest.raises(PipewardenError) as info:
            load_class(_pipeline("pass", module + body))
        assert "transformers.BertTokenizer is not available" in str(info.value)


def test_no_base_exception_escapes_the_host_except_clause():
    # BaseException, SystemExit, KeyboardInterrupt, GeneratorExit are not sandbox builtins
    for body in ("class Bye(GeneratorExit):\n    pass\n", "raise BaseException('x')\n", "raise SystemExit(0)\n"):
        with pytest.raises(PipewardenError):
            load_class(_pipeline("pass", body))


def test_tripwire_refuses_reads_outside_the_libraries(tmp_path):
    import json

    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    with tripwire.armed():
        with pytest.raises(PolicyViolation) as info:
            secret.read_text()
        assert info.value.rule == "tripwire.open-read"
        with pytest.raises(PolicyViolation):
            os.listdir(tmp_path)
        # installed library files stay readable (lazy imports, package data)
        assert json.__file__ and open(json.__file__).read(10)
    assert secret.read_text() == "top secret"


ARRAY_INTERFACE = "{'shape': (1,), 'typestr': '|u1', 'data': (8, False), 'version': 3}"
DUNDER_KEY_PRODUCERS = [
    ("frozendict", "from diffusers.configuration_utils import FrozenDict\n"
     f"x = FrozenDict({{'__array_interface__': {ARRAY_INTERFACE}}})"),
    ("output-first-field", "from diffusers.pipelines.pipeline_utils import ImagePipelineOutput\n"
     f"x = ImagePipelineOutput(images={{'__array_interface__': {ARRAY_INTERFACE}}})"),
    ("model-output", "from transformers.modeling_outputs import BaseModelOutput\n"
     "x = BaseModelOutput(last_hidden_state={'__reduce_ex__': 1})"),
    ("batch-encoding", "from transformers import BatchEncoding\nx = BatchEncoding({'__array_interface__': 1})"),
    ("enum-functional", "import enum\nx = enum.Enum('E', {'a': 1, '__array_interface__': 5})"),
    ("enum-functional-str", "import enum\nx = enum.Enum('E', 'a __array_interface__')"),
    ("own-output-subclass", "from dataclasses import dataclass\nfrom diffusers.utils import BaseOutput\n"
     "@dataclass\nclass Out(BaseOutput):\n    images: dict\n"
     f"x = Out(images={{'__array_interface__': {ARRAY_INTERFACE}}})"),
    ("own-output-setitem", "from dataclasses import dataclass\nfrom diffusers.utils import BaseOutput\n"
     "@dataclass\nclass Out(BaseOutput):\n    images: list\n"
     "x = Out(images=[1])\nx['__array_interface__'] = 1"),
    ("from-config-keys", "from diffusers import DDPMScheduler\n"
     "x = DDPMScheduler.from_config({'__array_interface__': 1})"),
    ("own-module-registry", "class M(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
     "        self._parameters['__array_interface__'] = {}\nM()"),
    ("subclass-forwarding-class", "from transformers import BatchEncoding\nclass B(BatchEncoding):\n    pass\n"),
    ("enum-without-members", "import enum\nclass Base(enum.Enum):\n    pass\n"),
]


@pytest.mark.parametrize("label, body", DUNDER_KEY_PRODUCERS, ids=[c[0] for c in DUNDER_KEY_PRODUCERS])
def test_dunder_keys_never_become_attributes(label, body):
    with pytest.raises(PolicyViolation) as info:
        load_class(_pipeline("pass", body))
    assert info.value.rule in (
        "argument.dunder-key", "call.dunder-keyword", "attribute.denied", "class.bases", "class.enum-without-members"
    ), info.value.what


def test_key_checked_classes_still_work_normally(components):
    module = (
        "import enum\nfrom dataclasses import dataclass\nfrom diffusers.utils import BaseOutput\n"
        "from diffusers.configuration_utils import FrozenDict\n"
        "class Color(enum.Enum):\n    RED = 1\n"
        "@dataclass\nclass Out(BaseOutput):\n    images: list\n"
    )
    cls = load_class(_pipeline(
        "o = Out(images=[1, 2])\nf = FrozenDict({'a': 1})\n"
        "return o.images, o['images'], f['a'], Color.RED.value, isinstance(o, BaseOutput), isinstance(f, FrozenDict)",
        module,
    ))
    assert cls(*components)() == ([1, 2], [1, 2], 1, 1, True, True)


def test_modular_pipelines_cannot_be_built_in_the_sandbox(components, tmp_path):
    cls = load_class(_pipeline("ModularPipeline(pretrained_model_name_or_path=canary)",
                               "from diffusers import ModularPipeline\n"))
    with pytest.raises(PolicyViolation) as info:
        cls(*components)(canary=str(tmp_path))
    assert info.value.rule == "construct.file-reading-class"


def test_stdlib_logging_gives_the_sandbox_logger(components, caplog):
    import logging as std_logging

    cls = load_class(_pipeline(
        "log = logging.getLogger(__name__)\nlog.warning('x=%s', 3)\nreturn log.isEnabledFor(logging.WARNING)",
        "import logging\n",
    ))
    with caplog.at_level(std_logging.WARNING):
        assert cls(*components)() is True
    assert "x=3" in caplog.text
    with pytest.raises(PolicyViolation):
        load_class(_pipeline("pass", "import logging\nlogging.Formatter('{0.__class__}', style='{')\n"))
