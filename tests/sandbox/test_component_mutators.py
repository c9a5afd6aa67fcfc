"""Host methods that change a component in place (red team round 3: F1 maybe_free_model_hooks ->
enable_model_cpu_offload, F2 enable_attention_slicing, F3 fuse_qkv_projections, F6 add_tokens, F10
DebugUnderflowOverflow): in-process they run only on components this pipeline owns -- built for
this load, or by its own classes -- never on objects the caller passed, and the caller's objects are
unchanged afterwards. On components built for this load they run as in plain diffusers."""

from __future__ import annotations

import pytest

from pipewarden.errors import PipewardenError
from pipewarden.sandbox import load_class, tripwire
from tests.sandbox.conftest import load_from_repo

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

SOURCE = '''\
import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel, DDIMScheduler
from transformers import CLIPTextModel, CLIPTokenizer


class MutPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "text_encoder->unet"

    def __init__(self, unet: UNet2DConditionModel, scheduler: DDIMScheduler, text_encoder: CLIPTextModel,
                 tokenizer: CLIPTokenizer):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer)

    def _run(self):
        g = torch.Generator().manual_seed(0)
        sample = torch.randn(1, 4, 8, 8, generator=g)
        text = torch.randn(1, 5, 32, generator=g)
        return self.unet(sample, 3, encoder_hidden_states=text).sample

    def __call__(self, how="slicing"):
        if how == "free-hooks":
            # F1: the pipeline chooses what diffusers' maybe_free_model_hooks would re-offload, and where
            self._all_hooks = [1]
            self._offload_device = "meta"
            self.maybe_free_model_hooks()
        elif how == "slicing":
            self.enable_attention_slicing(1)
        elif how == "fuse":
            self.unet.fuse_qkv_projections()
        elif how == "tokens":
            self.tokenizer.add_tokens(["<pw-token>"])
            return len(self.tokenizer), self._run()
        elif how == "super-xformers":
            super(MutPipeline, self).disable_xformers_memory_efficient_attention()
        elif how == "class-xformers":
            MutPipeline.disable_xformers_memory_efficient_attention(self)
        elif how == "host-class-xformers":
            DiffusionPipeline.disable_xformers_memory_efficient_attention(self)
        elif how == "debug":
            from transformers.debug_utils import DebugUnderflowOverflow
            DebugUnderflowOverflow(self.unet)
        return self._run()
'''


#: the ``repo`` fixture (tests/sandbox/conftest.py) saves SOURCE under this name, with weights for it
PIPELINE_FILE = "mut_pipeline.py"


def _load(repo, isolation="inprocess", **components):
    return load_from_repo(repo, PIPELINE_FILE, isolation, **components)


def _state(module):
    return (
        {k: type(v).__name__ for k, v in module.attn_processors.items()} if hasattr(module, "attn_processors") else {},
        sorted(name for name, _ in module.named_modules()),
        float(sum(p.double().sum() for p in module.parameters())),
        sorted(vars(module)),
        sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules()),
        any("_hf_hook" in vars(m) or "forward" in vars(m) for m in module.modules()),
    )


@pytest.mark.parametrize("how", ["slicing", "fuse", "tokens"])
def test_mutators_on_components_built_for_this_load_run_like_plain(how, repo):
    from diffusers import DiffusionPipeline

    plain = DiffusionPipeline.from_pretrained(
        str(repo / "weights"), custom_pipeline=str(repo / "mut_pipeline.py"), trust_remote_code=True
    )
    expected = plain(how=how)
    got = _load(repo)(how=how)
    if how == "tokens":
        assert got[0] == expected[0] and torch.equal(got[1], expected[1])
    else:
        assert torch.equal(got, expected)
    assert not tripwire.is_armed()


def test_maybe_free_model_hooks_never_installs_offload_hooks(repo):
    pipe = _load(repo)
    before = {n: _state(getattr(pipe, n)) for n in ("unet", "text_encoder")}
    pipe(how="free-hooks")  # resets caches only: no error, no hooks, nothing moved to "meta"
    assert {n: _state(getattr(pipe, n)) for n in ("unet", "text_encoder")} == before
    assert pipe.unet.device.type == "cpu" and pipe.text_encoder.device.type == "cpu"


@pytest.mark.parametrize("how", ["slicing", "fuse", "tokens", "free-hooks"])
def test_mutators_never_change_components_the_caller_passed(how, repo):
    """Through ``load_pipeline`` the pipeline gets private copies of what the caller passed: the
    mutator runs (on the copy, as in plain diffusers) and the caller's objects are unchanged.
    Through ``load_class`` (objects handed straight to the class) it is refused."""
    from diffusers import DiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    def passed():
        return dict(
            unet=UNet2DConditionModel.from_pretrained(str(repo / "weights" / "unet")),
            text_encoder=CLIPTextModel.from_pretrained(str(repo / "weights" / "text_encoder")),
            tokenizer=CLIPTokenizer.from_pretrained(str(repo / "weights" / "tokenizer")),
        )

    mine = passed()
    unet, text_encoder, tokenizer = mine["unet"], mine["text_encoder"], mine["tokenizer"]
    before = (_state(unet), _state(text_encoder), len(tokenizer))
    pipe = _load(repo, **mine)
    assert pipe.unet is not unet and pipe.text_encoder is not text_encoder and pipe.tokenizer is not tokenizer
    if how == "free-hooks":  # re-implemented: runs, installs no offload hooks (plain diffusers would fail here)
        assert torch.is_tensor(pipe(how=how))
        expected = got = None
    else:
        plain = DiffusionPipeline.from_pretrained(
            str(repo / "weights"), custom_pipeline=str(repo / "mut_pipeline.py"), trust_remote_code=True, **passed()
        )
        expected, got = plain(how=how), pipe(how=how)
    if how == "free-hooks":
        pass
    elif how == "tokens":
        assert got[0] == expected[0] and torch.equal(got[1], expected[1])
        assert len(pipe.tokenizer) == len(tokenizer) + 1  # it ran, on the pipeline's copy
    else:
        assert torch.equal(got, expected)
    if how in ("slicing", "fuse"):
        assert _state(pipe.unet) != before[0]  # it ran, on the pipeline's copy
    cls = load_class(SOURCE, filename="mut_pipeline.py")
    direct = cls(unet=unet, scheduler=pipe.scheduler, text_encoder=text_encoder, tokenizer=tokenizer)
    if how == "free-hooks":
        direct(how=how)  # allowed (re-implemented), but changes nothing
    else:
        with pytest.raises(PipewardenError) as info:
            direct(how=how)
        assert info.value.rule == "call.pipeline-module-target", (info.value.rule, info.value.what)
    assert (_state(unet), _state(text_encoder), len(tokenizer)) == before
    assert not tripwire.is_armed()


@pytest.mark.parametrize("how", ["super-xformers", "class-xformers", "host-class-xformers"])
def test_mutators_read_through_super_or_the_class_check_the_self_they_get(how, repo):
    """N3: a mutator-family host method read through ``super(C, self)`` or from the class is
    checked against the ``self`` it runs on: the caller's UNet keeps its processor objects."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(repo / "weights" / "unet"))
    processors = {k: id(v) for k, v in unet.attn_processors.items()}
    pipe = _load(repo)
    cls = load_class(SOURCE, filename="mut_pipeline.py")
    direct = cls(unet=unet, scheduler=pipe.scheduler, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    with pytest.raises(PipewardenError) as info:
        direct(how=how)
    assert info.value.rule == "call.pipeline-module-target", (info.value.rule, info.value.what)
    assert {k: id(v) for k, v in unet.attn_processors.items()} == processors
    # through load_pipeline the caller's UNet is copied: the method runs on the copy only
    copied = _load(repo, unet=unet)
    assert torch.is_tensor(copied(how=how))
    assert {k: id(v) for k, v in unet.attn_processors.items()} == processors
    assert not tripwire.is_armed()
    # on the pipeline's own components it runs (as in plain diffusers)
    own = _load(repo)
    before = {k: id(v) for k, v in own.unet.attn_processors.items()}
    assert torch.is_tensor(own(how=how))
    assert {k: id(v) for k, v in own.unet.attn_processors.items()} != before


def test_debug_hooks_helper_is_not_constructible(repo):
    unet = None
    pipe = _load(repo)
    unet = pipe.unet
    before = _state(unet)
    with pytest.raises(PipewardenError):
        pipe(how="debug")
    assert _state(unet) == before
