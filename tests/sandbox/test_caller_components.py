"""Components the caller passes to an in-process load are never reachable by the pipeline (issue 12,
red team round 4: N1 a pipeline-owned module holding the caller's, N2 components behind the
pipeline's own ``@property``, N7 in-place writes to the caller's weights, F13).

``load_pipeline(..., isolation="inprocess", unet=mine)`` gives the pipeline a private deep copy of
``mine`` (as process mode does: there it crosses to the worker as data). Each payload below is first
shown live in plain diffusers -- the caller's object changes -- and then run through pipewarden:
it runs (on the pipeline's copy) and every caller object is unchanged, down to each weight, each
module's attributes and hooks, the attention processors, the tokenizer's vocabulary and the
scheduler's state.
"""

from __future__ import annotations

import hashlib

import pytest

from pipewarden.errors import PipewardenError
from pipewarden.sandbox import load_class, tripwire

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

HEAD = '''\
import torch
from diffusers import DiffusionPipeline, ModelMixin, AutoencoderKL, UNet2DConditionModel, DDIMScheduler
from transformers import CLIPTextModel, CLIPTokenizer


class Box(ModelMixin):
    _supports_gradient_checkpointing = True

    def __init__(self):
        super().__init__()


class VaeBox(AutoencoderKL):
    pass


class Holder(torch.nn.Module):
    def __init__(self, shape):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(shape))


'''

#: the components registered as usual
REGISTERED = '''\
class CallerPipeline(DiffusionPipeline):
    def __init__(self, unet: UNet2DConditionModel, scheduler: DDIMScheduler, text_encoder: CLIPTextModel,
                 tokenizer: CLIPTokenizer):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer)

'''

#: N2: the components live in a dict the pipeline's own properties return
HIDDEN = '''\
class CallerPipeline(DiffusionPipeline):
    def __init__(self, unet: UNet2DConditionModel, scheduler: DDIMScheduler, text_encoder: CLIPTextModel,
                 tokenizer: CLIPTokenizer):
        super().__init__()
        self.register_to_config(unet=("diffusers", "UNet2DConditionModel"), scheduler=("diffusers", "DDIMScheduler"),
                                text_encoder=("transformers", "CLIPTextModel"), tokenizer=("transformers", "CLIPTokenizer"))
        self.hidden = {"unet": unet, "scheduler": scheduler, "text_encoder": text_encoder, "tokenizer": tokenizer}

    @property
    def unet(self):
        return self.hidden["unet"]

    @property
    def text_encoder(self):
        return self.hidden["text_encoder"]

    @property
    def tokenizer(self):
        return self.hidden["tokenizer"]

    @property
    def scheduler(self):
        return self.hidden["scheduler"]

'''

BODY = '''\
    def _run(self):
        g = torch.Generator().manual_seed(0)
        sample = torch.randn(1, 4, 8, 8, generator=g)
        text = torch.randn(1, 5, 32, generator=g)
        return self.unet(sample, 3, encoder_hidden_states=text).sample

    def __call__(self, how="none"):
        if how == "box-checkpointing":  # N1
            box = Box()
            box.inner = self.unet
            box.enc = self.text_encoder
            box.enable_gradient_checkpointing()
        elif how == "box-fuse":  # N1
            box = VaeBox(block_out_channels=(8,), norm_num_groups=8, latent_channels=4, layers_per_block=1)
            box.inner = self.unet
            box.fuse_qkv_projections()
        elif how == "weight-fill":  # N7
            self.unet.conv_in.weight.data.fill_(0.0)
        elif how == "state-dict-copy":  # N7
            sd = self.unet.state_dict()
            sd["conv_in.weight"].copy_(torch.zeros_like(sd["conv_in.weight"]))
        elif how == "embedding-zero":  # N7
            self.text_encoder.get_input_embeddings().weight.data.zero_()
        elif how == "assign-alias":  # N7 through an own module aliasing the caller's parameter
            w = self.unet.conv_in.weight
            holder = Holder(w.shape)
            holder.load_state_dict({"weight": w}, assign=True)
            with torch.no_grad():
                holder.weight.mul_(0.0)
        elif how == "in-place-op":  # N7: a tensor method with an in-place result
            with torch.no_grad():
                self.unet.conv_in.bias.add_(1.0)
        elif how == "slicing":  # F2
            self.enable_attention_slicing(1)
        elif how == "super-xformers":  # N3
            super(CallerPipeline, self).disable_xformers_memory_efficient_attention()
        elif how == "tokens":  # F6
            self.tokenizer.add_tokens(["<pw-token>"])
        elif how == "scheduler-state":
            self.scheduler.set_timesteps(3)
        return self._run()


'''

SOURCES = {"registered": HEAD + REGISTERED + BODY, "hidden": HEAD + HIDDEN + BODY}

#: payload -> (what it changes on the components it is given). Each is proven live in plain diffusers.
PAYLOADS = [
    "box-checkpointing", "box-fuse", "weight-fill", "state-dict-copy", "embedding-zero", "assign-alias",
    "in-place-op", "slicing", "super-xformers", "tokens", "scheduler-state",
]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    from pipewarden.audit import synth

    root = tmp_path_factory.mktemp("caller")
    cls = load_class(SOURCES["registered"], filename="caller_pipeline.py")
    synth.save_weights_dir("CallerPipeline", synth.build_components(cls), root / "weights")
    return root


def _code(repo, which):
    path = repo / f"{which}_pipeline.py"
    path.write_text(SOURCES[which])
    return path


def _mine(repo):
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    w = repo / "weights"
    return dict(
        unet=UNet2DConditionModel.from_pretrained(str(w / "unet")),
        text_encoder=CLIPTextModel.from_pretrained(str(w / "text_encoder")),
        tokenizer=CLIPTokenizer.from_pretrained(str(w / "tokenizer")),
        scheduler=DDIMScheduler.from_pretrained(str(w / "scheduler")),
    )


#: objects whose ids a fingerprint records stay alive, so an id cannot be reused by a new object
_KEEP: list = []


def _fingerprint(objs):
    """Everything of the caller's objects a pipeline could change, by value and by identity."""
    out = {}
    for name, obj in objs.items():
        if isinstance(obj, torch.nn.Module):
            _KEEP.extend(getattr(obj, "attn_processors", {}).values())
            _KEEP.extend(obj.parameters())
            out[name] = (
                {k: (v.dtype, v.shape, v.detach().clone()) for k, v in obj.state_dict(keep_vars=True).items()},
                [(n, type(m).__name__, sorted(vars(m)), len(m._forward_hooks) + len(m._forward_pre_hooks),
                  getattr(m, "gradient_checkpointing", None)) for n, m in obj.named_modules()],
                {k: id(v) for k, v in getattr(obj, "attn_processors", {}).items()},
                [id(p) for p in obj.parameters()],
            )
        elif hasattr(obj, "get_vocab"):
            out[name] = (len(obj), sorted(obj.get_vocab().items()), sorted(vars(obj)))
        else:
            out[name] = (sorted((k, repr(v)) for k, v in vars(obj).items()), dict(obj.config))
    return out


def _same(a, b):
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, tuple) and x and isinstance(x[0], dict) and x[0] and isinstance(next(iter(x[0].values())), tuple):
            if x[0].keys() != y[0].keys() or any(
                x[0][n][:2] != y[0][n][:2] or not torch.equal(x[0][n][2], y[0][n][2]) for n in x[0]
            ):
                return False
            if x[1:] != y[1:]:
                return False
        elif x != y:
            return False
    return True


def _pw(repo, which, **mine):
    import pipewarden

    code = _code(repo, which)
    return pipewarden.load_pipeline(
        str(repo / "weights"), custom_pipeline=str(code), trust_remote_code=True,
        pipeline_sha256=hashlib.sha256(code.read_bytes()).hexdigest(), isolation="inprocess", **mine,
    )


@pytest.mark.parametrize("which", ["registered", "hidden"])
@pytest.mark.parametrize("how", PAYLOADS)
def test_payload_changes_the_callers_objects_in_plain_diffusers(how, which, repo):
    """The positive control: without pipewarden each payload changes what the caller passed."""
    from diffusers import DiffusionPipeline

    mine = _mine(repo)
    before = _fingerprint(mine)
    plain = DiffusionPipeline.from_pretrained(
        str(repo / "weights"), custom_pipeline=str(_code(repo, which)), trust_remote_code=True, **mine
    )
    plain(how=how)
    assert not _same(_fingerprint(mine), before)
    _KEEP.clear()


@pytest.mark.parametrize("which", ["registered", "hidden"])
@pytest.mark.parametrize("how", PAYLOADS)
def test_payload_never_reaches_the_callers_objects_in_process(how, which, repo):
    mine = _mine(repo)
    before = _fingerprint(mine)
    pipe = _pw(repo, which, **mine)
    assert all(getattr(pipe, k) is not v for k, v in mine.items())
    own_before = _fingerprint({k: getattr(pipe, k) for k in mine})
    try:
        pipe(how=how)
        ran = True
    except PipewardenError:  # refused is fine too; what matters is the caller's objects
        ran = False
    assert _same(_fingerprint(mine), before)
    if ran and how != "super-xformers":  # it ran on the pipeline's private copies
        assert not _same(_fingerprint({k: getattr(pipe, k) for k in mine}), own_before)
    assert not tripwire.is_armed()
    _KEEP.clear()


def test_output_with_passed_components_is_bit_identical_to_plain(repo):
    from diffusers import DiffusionPipeline

    for how in ("none", "weight-fill", "slicing"):
        plain = DiffusionPipeline.from_pretrained(
            str(repo / "weights"), custom_pipeline=str(_code(repo, "registered")), trust_remote_code=True, **_mine(repo)
        )
        assert torch.equal(_pw(repo, "registered", **_mine(repo))(how=how), plain(how=how)), how


def test_a_component_that_cannot_be_copied_is_refused_by_name(repo):
    import threading

    mine = _mine(repo)
    mine["unet"].lock = threading.Lock()  # deepcopy cannot copy a lock
    before = _fingerprint(mine)
    with pytest.raises(PipewardenError) as info:
        _pw(repo, "registered", **mine)
    assert info.value.rule == "load.component-not-copyable"
    assert "unet=" in info.value.what and "unet=" in info.value.fix
    assert _same(_fingerprint(mine), before)
    # the advice works: leave it out and pipewarden builds the UNet from the weights directory
    del mine["unet"]
    assert torch.is_tensor(_pw(repo, "registered", **mine)())
