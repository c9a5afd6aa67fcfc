"""Idioms of real community pipelines the sandbox must accept (issue 11 part 8), each next to an
escape test showing the allowance cannot reach the host.

The pipelines below use Stable-Diffusion-shaped tiny components from
``pipewarden.audit.synth``; every accepted idiom is compared with the same source run as plain
Python (what diffusers would do).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import textwrap

import pytest

from pipewarden.errors import PipewardenError
from pipewarden.sandbox import load_class, tripwire

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

HEAD = '''\
import torch
from diffusers import DiffusionPipeline, AutoencoderKL, UNet2DConditionModel, DDIMScheduler
from diffusers.loaders import TextualInversionLoaderMixin
from transformers import CLIPTextModel, CLIPTokenizer


class P(DiffusionPipeline, TextualInversionLoaderMixin):
    def __init__(self, vae: AutoencoderKL, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                 unet: UNet2DConditionModel, scheduler: DDIMScheduler):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                              scheduler=scheduler)

    def __call__(self, canary=""):
'''


def _source(body: str) -> str:
    return HEAD + textwrap.indent(textwrap.dedent(body), " " * 8) + "\n"


@pytest.fixture(scope="module")
def sd_components():
    from pipewarden.audit import synth

    cls = load_class(_source("return None"))
    return synth.build_components(cls)


def _plain(source: str, tmp_path, name: str):
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"plain_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.P


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


# (label, __call__ body). Each is taken from real community pipelines (named in the comment).
ACCEPTED = [
    # 50 of 110 files end __call__ with this (e.g. stable_diffusion_reference.py)
    ("maybe-free-model-hooks", "self.maybe_free_model_hooks()\nreturn 1"),
    # older files (e.g. lpw_stable_diffusion.py) probe the pre-0.20 offload hook
    ("final-offload-hook", "if hasattr(self, 'final_offload_hook') and self.final_offload_hook is not None:\n"
     "    self.final_offload_hook.offload()\nreturn 2"),
    # textual-inversion mixin in 39 files (e.g. composable_stable_diffusion.py)
    ("maybe-convert-prompt", "prompt = 'a photo of a cat'\nif isinstance(self, TextualInversionLoaderMixin):\n"
     "    prompt = self.maybe_convert_prompt(prompt, self.tokenizer)\nreturn prompt"),
    # every img2img / inpaint pipeline (e.g. stable_diffusion_controlnet_img2img.py)
    ("latent-dist", "image = torch.linspace(-1, 1, 3 * 64 * 64).reshape(1, 3, 64, 64)\n"
     "dist = self.vae.encode(image).latent_dist\n"
     "g = torch.Generator().manual_seed(0)\n"
     "return dist.sample(g), dist.mean, dist.mode(), dist.std, dist.var"),
    # SDXL-style pipelines read the projection size of the text encoder (e.g. lpw_stable_diffusion_xl.py)
    ("transformers-config", "cfg = self.text_encoder.config\n"
     "return cfg.projection_dim, cfg.hidden_size, cfg.max_position_embeddings, self.tokenizer.model_max_length"),
    # 87 files compare prompt types (stable_diffusion_reference.py: type(prompt) is not type(negative_prompt))
    ("type-one-argument", "prompt, negative_prompt = 'a', ['b']\n"
     "same = type(prompt) is type('x') and type(negative_prompt) is list and type(prompt) is not type(negative_prompt)\n"
     "return same, type(self.unet).__name__, type(self.unet) is type(self.unet), type(self.unet) is UNet2DConditionModel, "
     "f'{type(prompt)}'"),
    # ndarray.max()/.sum() import numpy._core._methods from C through the frame's __import__
    # (masked_stable_diffusion_xl_img2img.py: mask_blur / mask_blur.max())
    ("ndarray-reductions", "import numpy as np\na = np.arange(6.0).reshape(2, 3)\n"
     "return float(a.max()), float(a.sum()), float(a.mean()), a.min(axis=0).tolist()"),
    # the sandbox's own copy of a config is writable (e.g. stable_diffusion_mega.py: new_config = dict(...))
    ("dict-of-config", "new_config = dict(self.scheduler.config)\nnew_config['steps_offset'] = 1\n"
     "new_config['clip_sample'] = True\nnew_config.update(sample_size=8)\n"
     "return new_config['steps_offset'], new_config['clip_sample'], self.scheduler.config.clip_sample"),
]


@pytest.mark.parametrize("label, body", ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_real_pipeline_idiom_runs_like_plain_python(label, body, sd_components, tmp_path):
    source = _source(body)
    cls = load_class(source)
    ours = cls(**sd_components)()
    theirs = _plain(source, tmp_path, label.replace("-", "_"))(**sd_components)()
    assert _same(ours, theirs), (ours, theirs)
    assert not tripwire.is_armed()


# Each allowance above, pushed towards the host: refused, and the host is unchanged.
ESCAPES = [
    # the hooks exception is the name maybe_free_model_hooks only: every other *_hooks / *_hook stays denied
    ("other-hooks", "self.unet._forward_hooks", "attribute.denied"),
    ("register-hook", "self.unet.register_forward_pre_hook(lambda *a: None)", "attribute.denied"),
    ("offload-hook-write", "self.unet.final_offload_hook = 1", "write.host-object"),
    # maybe_convert_prompt reads; the loader half of the mixin (files) stays refused
    ("load-textual-inversion", "self.load_textual_inversion(canary)", "attribute.denied"),
    # DiagonalGaussianDistribution: the listed reads only, and it is not writable
    ("latent-dist-write", "d = self.vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist\nd.mean = None",
     "write.host-object"),
    ("latent-dist-private", "d = self.vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist\ngetattr(d, '__dict__')",
     "attribute.not-allowlisted"),
    # transformers configs: data only; no file methods, no writes
    ("config-to-json-file", "self.text_encoder.config.to_json_file(canary)", "attribute.denied"),
    ("config-save", "self.text_encoder.config.save_pretrained(canary)", "attribute.denied"),
    ("config-write", "self.text_encoder.config.projection_dim = 3", "write.host-object"),
    ("config-private", "self.text_encoder.config._attn_implementation_internal", "attribute.not-allowlisted"),
    ("config-id2label-write", "self.text_encoder.config.id2label[0] = 'x'", "write.host-object"),
    # type(): never builds a class, and the class of a facade is not handed out
    ("type-three-arguments", "type('X', (object,), {'__init_subclass__': None})", "builtins.refused"),
    ("type-of-facade-write", "type(torch).randn = None", "write.facade"),
    ("type-host-class-write", "type(self.unet).forward = None", "write.host-class"),
    ("type-of-scheduler-write", "type(self.scheduler).step = None", "write.host-class"),
    # the C-level import path hands sandboxed code nothing: its own imports of private modules fail
    ("private-module-import", "import numpy._core._methods", "import.private-module"),
    ("private-module-from-import", "from numpy._core import _methods", "import.private-module"),
    # a copy the sandbox made is writable; the host config it came from is not
    ("host-config-write", "self.scheduler.config['steps_offset'] = 5", "write.host-object"),
    ("host-internal-dict", "self.scheduler._internal_dict = {}", "write.host-object"),
]


@pytest.mark.parametrize("label, body, rule", ESCAPES, ids=[c[0] for c in ESCAPES])
def test_allowances_do_not_reach_the_host(label, body, rule, sd_components, tmp_path):
    unet, text_encoder, scheduler = sd_components["unet"], sd_components["text_encoder"], sd_components["scheduler"]
    hooks = (len(unet._forward_hooks), len(unet._forward_pre_hooks))
    te_config = text_encoder.config.to_dict()
    sched_config = dict(scheduler.config)
    forward, step = type(unet).forward, type(scheduler).step
    cls = load_class(_source(body))
    canary = tmp_path / "out"
    with pytest.raises(PipewardenError) as info:
        cls(**sd_components)(canary=str(canary))
    assert info.value.rule == rule, (info.value.rule, info.value.what)
    assert os.listdir(tmp_path) == []
    assert (len(unet._forward_hooks), len(unet._forward_pre_hooks)) == hooks
    assert text_encoder.config.to_dict() == te_config
    assert dict(scheduler.config) == sched_config
    assert type(unet).forward is forward and type(scheduler).step is step
    assert not hasattr(unet, "final_offload_hook")
    assert not tripwire.is_armed()


def test_pil_to_numpy_after_a_cold_start(sd_components, tmp_path, monkeypatch):
    """``np.array(pil_image)`` (every controlnet pipeline's prepare_image) makes PIL import
    PIL.ImageFile lazily, whose module body compiles forward references: imported with PIL, while
    the tripwire is suspended, not from inside the sandboxed call."""
    import PIL
    import PIL.ImageFile

    monkeypatch.delitem(sys.modules, "PIL.ImageFile")
    monkeypatch.delattr(PIL, "ImageFile")
    source = HEAD.replace("import torch\n", "import numpy as np\nimport torch\nfrom PIL import Image\n", 1) + (
        "        return np.array(Image.new('RGB', (4, 4), (1, 2, 3))).tolist()\n"
    )
    cls = load_class(source)
    assert cls(**sd_components)() == [[[1, 2, 3]] * 4] * 4
    assert not tripwire.is_armed()


# ------------------------------------------------------------------ attention processors
# prompt2prompt / boxdiff / style_aligned install their own processors on the UNet they were given.

ATTN_SOURCE = '''\
import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel, DDIMScheduler
from diffusers.models.attention_processor import AttnProcessor


class ScaledProcessor:
    def __init__(self, scale):
        self.scale = scale
        self.inner = AttnProcessor()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        out = self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        return out * self.scale


class LyingDict(dict):
    # what a guard that checks values() would see; diffusers' set_attn_processor pops the real items
    def values(self):
        return [AttnProcessor() for _ in range(len(self))]


class AttnPipeline(DiffusionPipeline):
    def __init__(self, unet: UNet2DConditionModel, scheduler: DDIMScheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    def __call__(self, how="dict"):
        if how == "dict":
            procs = {}
            for name in self.unet.attn_processors.keys():
                procs[name] = ScaledProcessor(0.5 if "attn2" in name else 1.0)
            self.unet.set_attn_processor(procs)
        elif how == "one":
            for module in self.unet.modules():
                if hasattr(module, "set_processor"):
                    module.set_processor(ScaledProcessor(0.25))
        elif how == "default":
            self.unet.set_default_attn_processor()
        elif how == "diffusers":
            self.unet.set_attn_processor(AttnProcessor())
        elif how == "not-a-processor":
            self.unet.set_attn_processor(torch.nn.Identity())
        elif how == "lambda":
            self.unet.set_attn_processor(lambda *a, **k: a[1])
        elif how == "lying-dict":
            procs = LyingDict()
            for name in self.unet.attn_processors.keys():
                procs[name] = torch.nn.Identity()
            self.unet.set_attn_processor(procs)
        g = torch.Generator().manual_seed(0)
        sample = torch.randn(1, 4, 8, 8, generator=g)
        text = torch.randn(1, 5, 32, generator=g)
        return self.unet(sample, 3, encoder_hidden_states=text).sample
'''


@pytest.fixture(scope="module")
def attn_repo(tmp_path_factory):
    from pipewarden.audit import synth

    root = tmp_path_factory.mktemp("attn")
    code = root / "attn_pipeline.py"
    code.write_text(ATTN_SOURCE)
    cls = load_class(ATTN_SOURCE, filename="attn_pipeline.py")
    synth.save_weights_dir(cls.__name__, synth.build_components(cls), root / "weights")
    return root


def _pw_load(attn_repo, isolation):
    import hashlib

    import pipewarden

    code = attn_repo / "attn_pipeline.py"
    return pipewarden.load_pipeline(
        str(attn_repo / "weights"), custom_pipeline=str(code), trust_remote_code=True,
        pipeline_sha256=hashlib.sha256(code.read_bytes()).hexdigest(), isolation=isolation,
    )


@pytest.mark.parametrize("how", ["dict", "one", "default", "diffusers"])
def test_attention_processors_on_components_this_load_built(how, attn_repo):
    from diffusers import DiffusionPipeline

    plain = DiffusionPipeline.from_pretrained(
        str(attn_repo / "weights"), custom_pipeline=str(attn_repo / "attn_pipeline.py"), trust_remote_code=True
    )
    expected = plain(how=how)
    inproc = _pw_load(attn_repo, "inprocess")
    assert torch.equal(inproc(how=how), expected)
    with _pw_load(attn_repo, "process") as proc:
        assert torch.equal(proc(how=how), expected)
    assert not tripwire.is_armed()


@pytest.mark.parametrize(
    "how, rule",
    [
        ("not-a-processor", "argument.attention-processor"),
        ("lambda", "argument.attention-processor"),
        # F13: the dict's values() differ from what diffusers pops; the items themselves are checked
        ("lying-dict", "argument.attention-processor"),
    ],
)
def test_attention_processors_must_be_diffusers_or_the_files_classes(how, rule, attn_repo):
    inproc = _pw_load(attn_repo, "inprocess")
    before = dict(inproc.unet.attn_processors)
    with pytest.raises(PipewardenError) as info:
        inproc(how=how)
    assert info.value.rule == rule
    assert dict(inproc.unet.attn_processors) == before


@pytest.mark.parametrize("how", ["dict", "one", "default", "diffusers"])
def test_attention_processors_never_on_objects_the_caller_passed(how, attn_repo):
    import hashlib

    from diffusers import UNet2DConditionModel

    import pipewarden

    unet = UNet2DConditionModel.from_pretrained(str(attn_repo / "weights" / "unet"))
    before = {k: type(v) for k, v in unet.attn_processors.items()}
    code = attn_repo / "attn_pipeline.py"
    # through load_pipeline with the caller's UNet, and through load_class + construct
    pipe = pipewarden.load_pipeline(
        str(attn_repo / "weights"), custom_pipeline=str(code), trust_remote_code=True,
        pipeline_sha256=hashlib.sha256(code.read_bytes()).hexdigest(), isolation="inprocess", unet=unet,
    )
    assert pipe.unet is not unet  # a private copy: the processors are installed there, as in plain
    pipe(how=how)
    cls = load_class(ATTN_SOURCE, filename="attn_pipeline.py")
    with pytest.raises(PipewardenError) as info:  # objects handed straight to the class stay the caller's
        cls(unet=unet, scheduler=pipe.scheduler)(how=how)
    assert info.value.rule == "call.attention-processor-target"
    assert {k: type(v) for k, v in unet.attn_processors.items()} == before
    assert not tripwire.is_armed()


FE_SOURCE = '''\
import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel, DDIMScheduler
from PIL import Image
from transformers import CLIPImageProcessor


class FePipeline(DiffusionPipeline):
    def __init__(self, unet: UNet2DConditionModel, scheduler: DDIMScheduler, feature_extractor: CLIPImageProcessor):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, feature_extractor=feature_extractor)

    def __call__(self):
        # the safety-checker input path of every SD pipeline
        return self.feature_extractor([Image.new("RGB", (64, 64), (9, 8, 7))], return_tensors="pt").pixel_values
'''

_FE_SCRIPT = """
import hashlib, sys
from pathlib import Path
import pipewarden
root = Path(sys.argv[1])
code = root / "fe_pipeline.py"
pipe = pipewarden.load_pipeline(str(root / "weights"), custom_pipeline=str(code), trust_remote_code=True,
                                pipeline_sha256=hashlib.sha256(code.read_bytes()).hexdigest(), isolation="inprocess")
print("SHAPE", tuple(pipe().shape))
"""


def test_first_image_processor_call_in_a_fresh_process(tmp_path):
    """transformers' first processor call per class lazily tries ``import annotationlib`` (through
    huggingface_hub); from inside the sandbox the tripwire refuses it, so the in-process loader
    warms the processors it built, as the worker does. A fresh process, so nothing is cached."""
    import subprocess

    from pipewarden.audit import synth

    (tmp_path / "fe_pipeline.py").write_text(FE_SOURCE)
    cls = load_class(FE_SOURCE, filename="fe_pipeline.py")
    synth.save_weights_dir(cls.__name__, synth.build_components(cls), tmp_path / "weights")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.run([sys.executable, "-c", _FE_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                          env=env, timeout=600)
    assert "SHAPE (1, 3, 32, 32)" in proc.stdout, proc.stderr[-3000:]
