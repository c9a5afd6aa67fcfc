"""More idioms of real community pipelines (issue 11 reach), each family next to escape tests
showing the allowance cannot reach the host (the side effect is absent: no file written, the host
component and config unchanged).

Families:
- absent config names: ``getattr(scheduler.config, "steps_offset", 1)`` on a read-only config
  snapshot (stable_diffusion_repaint.py, stable_diffusion_reference.py) reads as missing;
- names [deny] matches, on the pipeline's OWN objects: its own methods
  (pipeline_prompt2prompt.py's ``register_attention_control``) and plain data it stored
  (pipeline_stable_diffusion_boxdiff.py's ``save_global_store`` flag);
- the tensor helpers of diffusers' ``Attention`` that custom attention processors call
  (``prepare_attention_mask``, ``head_to_batch_dim``, ``get_attention_scores``, ``batch_to_head_dim``);
- ``register_buffer`` in the file's own module classes (boxdiff's GaussianSmoothing);
- ``torch.autograd.grad`` (gradient guidance in boxdiff).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import textwrap

import pytest

from pipewarden.errors import PipewardenError, PolicyError
from pipewarden.sandbox import load_class, tripwire

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

HEAD = '''\
import torch
from torch import nn
from diffusers import DiffusionPipeline, AutoencoderKL, UNet2DConditionModel, DDIMScheduler
from transformers import CLIPTextModel, CLIPTokenizer


class Smoothing(nn.Module):
    def __init__(self, name="weight", persistent=True, value=None):
        super().__init__()
        kernel = torch.arange(9.0).reshape(1, 1, 3, 3) / 36.0 if value is None else value
        self.register_buffer(name, kernel, persistent=persistent)

    def forward(self, x):
        return torch.nn.functional.conv2d(x, self.weight, padding=1)


class Embedder(nn.Module):
    def __init__(self):
        super().__init__()
        self.add_embedding = nn.Linear(2, 3)
        self.set_scale = nn.Identity()


class Store:
    def __init__(self, save_global_store=False):
        self.save_global_store = save_global_store
        self.step_store = []

    def register_step(self, value):
        if self.save_global_store:
            self.step_store.append(value)
        return len(self.step_store)


class P(DiffusionPipeline):
    def __init__(self, vae: AutoencoderKL, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                 unet: UNet2DConditionModel, scheduler: DDIMScheduler):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                              scheduler=scheduler)

    def register_attention_control(self, controller):
        count = 0
        for name, module in self.unet.named_modules():
            if name.endswith("attn2"):
                count += 1
        return controller.register_step(count)

    @staticmethod
    def save_image_like(x):
        return x * 2

    def _attn(self):
        for name, module in self.unet.named_modules():
            if name.endswith("attn2"):
                return module

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
    spec = importlib.util.spec_from_file_location(f"plain_reach_{name}", path)
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


ACCEPTED = [
    # --- absent config names (stable_diffusion_repaint.py / _reference.py __init__)
    ("config-getattr-default",
     "c = self.scheduler.config\n"
     "return [getattr(c, 'steps_offset', 7), getattr(c, 'skip_prk_steps', True), getattr(c, 'not_a_key', None),\n"
     "        getattr(self.unet.config, 'not_a_key_either', 3), getattr(self.vae.config, 'scaling_factor', 0)]"),
    ("config-hasattr", "c = self.scheduler.config\n"
     "return hasattr(c, 'steps_offset'), hasattr(c, 'skip_prk_steps'), hasattr(c, 'clip_sample')"),
    ("config-attribute-error",
     "try:\n    self.scheduler.config.skip_prk_steps\nexcept AttributeError:\n    return 'missing'\nreturn 'there'"),
    ("config-copy-absent", "d = dict(self.scheduler.config)\nreturn 'skip_prk_steps' in d, d.get('skip_prk_steps', 1)"),
    # --- [deny]-matching names on the pipeline's own objects (pipeline_prompt2prompt.py, boxdiff)
    ("own-method-denied-name", "return self.register_attention_control(Store(save_global_store=True))"),
    ("own-static-method-denied-name", "return self.save_image_like(torch.ones(2)), P.save_image_like(3)"),
    ("own-class-method-read", "return P.register_attention_control(self, Store()), getattr(self, 'register_attention_control') is not None"),
    ("own-plain-data-denied-name", "s = Store(save_global_store=True)\ns.register_step(1)\n"
     "return s.save_global_store, s.register_step(2), getattr(s, 'save_global_store', None)"),
    # --- Attention helpers (custom processors of boxdiff / prompt2prompt)
    ("attention-helpers",
     "attn = self._attn()\n"
     "g = torch.Generator().manual_seed(0)\n"
     "hidden = torch.randn(2, 16, attn.to_q.in_features, generator=g)\n"
     "ctx = torch.randn(2, 5, attn.to_k.in_features, generator=g)\n"
     "mask = attn.prepare_attention_mask(torch.zeros(2, 1, 5), 5, 2)\n"
     "q = attn.head_to_batch_dim(attn.to_q(hidden))\n"
     "k = attn.head_to_batch_dim(attn.to_k(ctx))\n"
     "v = attn.head_to_batch_dim(attn.to_v(ctx))\n"
     "probs = attn.get_attention_scores(q, k, mask)\n"
     "out = attn.batch_to_head_dim(torch.bmm(probs, v))\n"
     "return mask, probs, attn.to_out[0](out), attn.prepare_attention_mask(None, 5, 2)"),
    # --- register_buffer in the file's own module class (boxdiff's GaussianSmoothing)
    ("own-module-buffer",
     "m = Smoothing()\nx = torch.arange(16.0).reshape(1, 1, 4, 4)\n"
     "n = Smoothing('kernel', persistent=False)\n"
     "return m(x), sorted(m.state_dict().keys()), sorted(n.state_dict().keys()), n.kernel"),
    # --- a submodule whose name starts like a mutator family (SDXL's unet.add_embedding.linear_1)
    ("submodule-mutator-like-name",
     "e = Embedder()\nreturn e.add_embedding.in_features, e.add_embedding(torch.ones(1, 2)).shape, e.set_scale(3)"),
    # --- torch.autograd.grad (boxdiff's gradient guidance)
    ("autograd-grad",
     "g = torch.Generator().manual_seed(0)\n"
     "latents = torch.randn(1, 4, 8, 8, generator=g).requires_grad_(True)\n"
     "text = torch.randn(1, 5, self.unet.config.cross_attention_dim, generator=g)\n"
     "with torch.enable_grad():\n"
     "    loss = (self.unet(latents, 3, encoder_hidden_states=text).sample ** 2).mean()\n"
     "    grad = torch.autograd.grad(loss.requires_grad_(True), [latents], retain_graph=True)[0]\n"
     "return grad"),
]


@pytest.mark.parametrize("label, body", ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_reach_idiom_runs_like_plain_python(label, body, sd_components, tmp_path):
    source = _source(body)
    cls = load_class(source)
    ours = cls(**sd_components)()
    theirs = _plain(source, tmp_path, label.replace("-", "_"))(**sd_components)()
    assert _same(ours, theirs), (ours, theirs)
    assert not tripwire.is_armed()


ESCAPES = [
    # --- absent config names: only public names that really are missing read as missing
    ("config-private-probe", "return getattr(self.scheduler.config, '_pw_source', 1)", "attribute.not-allowlisted"),
    ("config-private-absent", "return getattr(self.scheduler.config, '_not_there', 1)", "attribute.not-allowlisted"),
    ("config-denied-probe", "return getattr(self.scheduler.config, 'save_pretrained', None)", "attribute.denied"),
    ("config-denied-hasattr", "return hasattr(self.unet.config, 'to_json_file')", "attribute.denied"),
    ("config-absent-then-write", "if not hasattr(self.scheduler.config, 'skip_prk_steps'):\n"
     "    self.scheduler.config['skip_prk_steps'] = True", "write.host-object"),
    # --- own objects: only the file's own functions and plain data; host methods of those names stay denied
    ("own-host-save", "self.save_pretrained(canary)", "attribute.denied"),
    ("own-host-save-config", "self.save_config(canary)", "attribute.denied"),
    ("own-super-host-save", "super(P, self).save_pretrained(canary)", "attribute.denied"),
    ("own-class-host-save", "P.save_pretrained(self, canary)", "attribute.denied"),
    ("own-non-data-under-denied-name", "self.save_target = self.unet\nself.save_target", "attribute.denied"),
    # an own method's name shadowed in the instance by a host object: the host object is not readable under it
    ("own-shadowed-method", "self.register_attention_control = self.unet\nself.register_attention_control",
     "attribute.denied"),
    ("host-register-hook", "self.unet.register_forward_hook(lambda *a: None)", "attribute.denied"),
    ("host-register-forward-pre-hook", "self._attn().register_forward_pre_hook(lambda *a: None)", "attribute.denied"),
    # --- Attention: the listed helpers only (fuse_projections would rewire the host module)
    ("attention-fuse", "self._attn().fuse_projections()", "attribute.not-allowlisted"),
    ("attention-processor-private", "self._attn()._modules", "attribute.denied"),
    ("attention-set-processor-caller", "from diffusers.models.attention_processor import AttnProcessor\n"
     "self._attn().set_processor(AttnProcessor())", "call.attention-processor-target"),
    # --- register_buffer: the file's own module instances only, public names, tensors
    ("buffer-on-component", "self.unet.register_buffer('pw_canary', torch.zeros(1))", "call.modifies-host-object"),
    ("buffer-on-submodule", "self._attn().register_buffer('pw_canary', torch.zeros(1))", "call.modifies-host-object"),
    ("buffer-unbound-on-component", "torch.nn.Module.register_buffer(self.unet, 'pw_canary', torch.zeros(1))",
     "call.modifies-host-object"),
    ("buffer-private-name", "Smoothing('_forward_hooks')", "argument.attribute-name"),
    ("buffer-dunder-name", "Smoothing('__array_interface__')", "argument.attribute-name"),
    ("buffer-denied-name", "Smoothing('save_pretrained')", "argument.attribute-name"),
    ("buffer-not-a-tensor", "Smoothing('weight', value=self.unet)", "argument.array-like"),
    ("buffer-persistent-object", "Smoothing('weight', persistent=self.unet)", "argument.array-like"),
    # --- mutator-family host METHODS stay guarded (only submodules of such names are plain reads)
    ("mutator-method-caller-unet", "self.unet.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)", "call.pipeline-module-target"),
    # --- torch.autograd: grad only
    ("autograd-function", "torch.autograd.Function", "facade.not-allowlisted"),
    ("autograd-graph", "torch.autograd.graph.saved_tensors_hooks", "facade.not-allowlisted"),
    ("autograd-import-graph", "from torch.autograd import graph", "facade.not-allowlisted"),
    ("tensor-hook", "x = torch.ones(2, requires_grad=True)\nx.register_hook(lambda g: g)", "attribute.denied"),
]


def _unet_state(unet):
    return (
        unet.config.get("freeu") if hasattr(unet.config, "get") else None,
        [getattr(b, "s1", None) for b in unet.up_blocks],
        sorted(unet._buffers), len(unet._forward_hooks), len(unet._forward_pre_hooks),
        {k: type(v).__name__ for k, v in unet.attn_processors.items()},
        sorted(k for k in unet.state_dict() if "to_qkv" in k or "pw_canary" in k),
        sum(len(m._buffers) for m in unet.modules()),
        sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in unet.modules()),
    )


@pytest.mark.parametrize("label, body, rule", ESCAPES, ids=[c[0] for c in ESCAPES])
def test_reach_allowances_do_not_reach_the_host(label, body, rule, sd_components, tmp_path):
    unet, scheduler = sd_components["unet"], sd_components["scheduler"]
    before = _unet_state(unet)
    sched_config = dict(scheduler.config)
    cls = load_class(_source(body))
    canary = tmp_path / "out"
    with pytest.raises(PipewardenError) as info:
        cls(**sd_components)(canary=str(canary))
    assert info.value.rule == rule, (info.value.rule, info.value.what)
    assert os.listdir(tmp_path) == []
    assert _unet_state(unet) == before
    assert dict(scheduler.config) == sched_config
    assert not hasattr(scheduler.config, "skip_prk_steps")
    assert not hasattr(unet, "pw_canary")
    assert not tripwire.is_armed()


def test_denied_names_stay_denied_on_host_objects_of_every_kind(sd_components):
    """The own-object exception is decided on the class that defines the name: the same names on
    components, configs and host classes stay refused."""
    body = "return getattr(self.unet, 'register_attention_control', None)"
    cls = load_class(_source(body))
    with pytest.raises(PipewardenError) as info:
        cls(**sd_components)()
    assert info.value.rule == "attribute.denied"


def test_type_rule_extends_must_name_a_table_above():
    from importlib import resources

    from pipewarden.sandbox.policy import load_policy_bytes

    shipped = resources.files("pipewarden.sandbox.policy").joinpath("default.toml").read_text("utf-8")
    old = 'extends = ["torch.nn.Module"]'
    assert shipped.count(old) == 1
    with pytest.raises(PolicyError) as info:
        load_policy_bytes(shipped.replace(old, 'extends = ["torch.nn.Modul"]').encode())
    assert info.value.rule == "policy.malformed"
    assert "torch.nn.Modul" in info.value.what
    with pytest.raises(PolicyError):
        load_policy_bytes(shipped.replace(old, 'extends = "torch.nn.Module"').encode())
    # the rule really carries the base's names (only the most specific rule applies to an object)
    from pipewarden.sandbox.policy import default_policy

    rules = {r.type_path: r for r in default_policy().types}
    attn = rules["diffusers.models.attention_processor.Attention"]
    assert rules["torch.nn.Module"].attrs <= attn.attrs
    assert rules["torch.nn.Module"].dynamic <= attn.dynamic
    assert "prepare_attention_mask" not in rules["torch.nn.Module"].attrs


SEGMENTS = """
from ligo.segments import segment
from diffusers import DiffusionPipeline


class P(DiffusionPipeline):
    def __init__(self):
        super().__init__()

    def __call__(self):
        BODY
"""


def _segments_source(body: str) -> str:
    return SEGMENTS.replace("BODY", body)


def test_ligo_segment_values_like_plain_python(tmp_path):
    """mixture_tiling_sdxl.py: tile overlaps with ligo.segments.segment (values only)."""
    pytest.importorskip("ligo.segments")
    body = ("a = segment(0, 10) - segment(5, 20)\n        b = segment(3, 8)\n"
            "        return (a[0], a[1], a.intersects(b), b.shift(2), abs(b), segment(1, 2) in b, b & segment(4, 12),"
            " b.contract(1), b.protract(1), a.connects(segment(5, 9)), a.disjoint(b))")
    source = _segments_source(body)
    ours = load_class(source)()()
    path = tmp_path / "seg_plain.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("plain_reach_segments", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert ours == module.P()()
    assert not tripwire.is_armed()


@pytest.mark.parametrize(
    "body, rule",
    [
        ("from ligo.segments import segmentlist\n        return segmentlist([segment(0, 1)])", "facade.not-allowlisted"),
        ("import ligo\n        return ligo", "import.not-allowlisted"),
        ("segment.intersects = None", "write.host-class"),
        ("return getattr(segment(0, 1), '_' + '_reduce_ex__')", "attribute.not-allowlisted"),
    ],
)
def test_ligo_segment_is_values_only(body, rule):
    segments = pytest.importorskip("ligo.segments")
    before = segments.segment.intersects
    with pytest.raises(PipewardenError) as info:
        load_class(_segments_source(body))()()
    assert info.value.rule.endswith(rule), (info.value.rule, info.value.what)
    assert segments.segment.intersects is before
    assert not tripwire.is_armed()
