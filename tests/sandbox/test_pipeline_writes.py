"""Pipelines patching the components built for this load (issue 11 part 8, write.host-object false
positives): each idiom from a real community pipeline runs like plain diffusers in both modes, and
each allowance, pushed towards the host, is refused with the host unchanged (classes, objects the
caller passed, shared configs, private state), and sandboxed code set on a component stays
sandboxed when the caller later calls it outside pipewarden.
"""

from __future__ import annotations

import os

import pytest

from pipewarden.errors import PipewardenError
from pipewarden.sandbox import load_class, tripwire
from tests.sandbox.conftest import load_from_repo

torch = pytest.importorskip("torch")

SOURCE = '''\
import functools
from typing import List, Dict

import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel, DDIMScheduler
from diffusers.configuration_utils import register_to_config
from diffusers.models.attention import BasicTransformerBlock


class ScaledUNet(UNet2DConditionModel):
    # kohya_hires_fix.py: its own UNet subclass sorts a config entry in __init__, is built from the
    # loaded UNet with load_state_dict
    @register_to_config
    def __init__(self, scales: List[Dict] = [{"t": 1, "s": 0.5}], **kwargs):
        super().__init__(**kwargs)
        if scales:
            self.config.scales = sorted(scales, key=lambda x: x["t"], reverse=True)

    @classmethod
    def from_unet(cls, unet, scales):
        config = dict(unet.config)
        config["scales"] = scales
        new = cls(**config)
        new.load_state_dict(unet.state_dict())
        new.to(unet.dtype)
        return new


class PatchPipeline(DiffusionPipeline):
    def __init__(self, unet: UNet2DConditionModel, scheduler: DDIMScheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    def _run(self, unet):
        g = torch.Generator().manual_seed(0)
        sample = torch.randn(1, 4, 8, 8, generator=g)
        text = torch.randn(1, 5, 32, generator=g)
        return unet(sample, 3, encoder_hidden_states=text).sample

    def __call__(self, how="reference"):
        blocks = [m for m in self.unet.modules() if isinstance(m, BasicTransformerBlock)]

        def hacked(self, hidden_states, *args, **kwargs):
            # stable_diffusion_reference.py: hacked_basic_transformer_inner_forward
            self.bank.append(hidden_states.detach().clone())
            if self.only_cross_attention:
                return hidden_states
            out = self._original_inner_forward(hidden_states, *args, **kwargs)
            if getattr(self, "probe", None) is not None:
                self.probe(out)
            return out * self.attn_weight

        if how == "reference":
            for i, module in enumerate(blocks):
                if getattr(module, "original_forward", None) is None:
                    module.original_forward = module.forward
                module._original_inner_forward = module.original_forward
                module.forward = hacked.__get__(module, BasicTransformerBlock)
                module.bank = []
                module.probe = None
                module.attn_weight = float(i + 1) / float(len(blocks)) + 0.5
            out = self._run(self.unet)
            banks = [len(m.bank) for m in blocks]
            for m in blocks:
                m.bank.clear()
            return out, banks
        if how == "config":
            # ip_adapter_face_id.py / pipeline_faithdiff: self.unet.config.x = ...
            self.unet.config.custom_flag = 3
            self.scheduler.eta = 0.5  # stable_diffusion_repaint.py: self.scheduler.eta = eta
            return self.unet.config.custom_flag, self.scheduler.eta, self._run(self.unet)
        if how == "subclass":
            unet = ScaledUNet.from_unet(self.unet, [{"t": 1, "s": 0.5}, {"t": 5, "s": 0.25}])
            return [x["t"] for x in unet.config.scales], self._run(unet)
        # ---- escapes (each must be refused)
        if how == "class-attr":
            type(blocks[0]).forward = hacked
        elif how == "private-existing":
            blocks[0]._version = 3
        elif how == "dunder":
            setattr(blocks[0], "__call__", hacked)
        elif how == "hook-name":
            blocks[0].forward_hook = hacked
        elif how == "property":
            self.unet.dtype = torch.float64
        elif how == "host-callable":
            blocks[0].forward = torch.zeros
        elif how == "host-class-value":
            blocks[0].forward = UNet2DConditionModel
        elif how == "host-partial":
            blocks[0].forward = functools.partial(torch.zeros, 2)
        elif how == "scheduler-method":
            self.scheduler.step = hacked
        elif how == "config-private":
            self.unet.config._class_name = "X"
        elif how == "config-item":
            self.unet.config["custom_flag"] = 1
        elif how == "config-method":
            self.unet.config.items = hacked
        elif how == "load-state-dict":
            self.unet.load_state_dict({k: v * 0 for k, v in self.unet.state_dict().items()})
        elif how == "delete-host":
            del blocks[0].norm1
        elif how == "scheduler-config-name":
            self.scheduler.config_name = "../pw_escaped_config.json"
        elif how == "unet-config-name":
            self.unet.config_name = "../pw_escaped_config.json"
        elif how == "ignore-for-config":
            self.scheduler.ignore_for_config = ["num_train_timesteps"]
        elif how == "class-none-data":
            self.unet._auto_class = "AutoModel"
        elif how == "method-to-data":
            blocks[0].forward = None
        return None
'''

ESCAPES = [
    ("class-attr", "write.host-class"),
    ("private-existing", "write.pipeline-name"),
    ("dunder", "attribute.dunder-write"),
    ("hook-name", "write.pipeline-name"),
    ("property", "write.pipeline-name"),
    ("host-callable", "write.pipeline-value"),
    ("host-class-value", "write.pipeline-value"),
    ("host-partial", "write.pipeline-value"),
    ("scheduler-method", "write.pipeline-name"),
    ("config-private", "write.pipeline-name"),
    ("config-item", "write.host-object"),
    ("config-method", "write.pipeline-name"),
    ("delete-host", "write.pipeline-name"),
    # class-level data host code reads (save_pretrained/save_config join config_name onto the
    # save directory): never shadowed on a load-built object
    ("scheduler-config-name", "write.pipeline-name"),
    ("unet-config-name", "write.pipeline-name"),
    ("ignore-for-config", "write.pipeline-name"),
    ("class-none-data", "write.pipeline-name"),
    ("method-to-data", "write.pipeline-name"),
]


#: the ``repo`` fixture (tests/sandbox/conftest.py) saves SOURCE under this name, with weights for it
PIPELINE_FILE = "patch_pipeline.py"


def _load(repo, isolation="inprocess", **components):
    return load_from_repo(repo, PIPELINE_FILE, isolation, **components)


def _plain(repo):
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(
        str(repo / "weights"), custom_pipeline=str(repo / "patch_pipeline.py"), trust_remote_code=True
    )


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _blocks(unet):
    from diffusers.models.attention import BasicTransformerBlock

    return [m for m in unet.modules() if isinstance(m, BasicTransformerBlock)]


@pytest.mark.parametrize("how", ["reference", "config", "subclass"])
def test_patching_components_built_for_this_load_runs_like_plain(how, repo):
    plain = _plain(repo)
    expected = plain(how=how)
    again = plain(how=how)
    pipe = _load(repo)
    assert _same(pipe(how=how), expected)
    assert _same(pipe(how=how), again)  # a second call sees what the first one set
    assert not tripwire.is_armed()


@pytest.mark.parametrize("how", ["reference", "config", "subclass"])
def test_patching_in_the_worker_runs_like_plain(how, repo):
    expected = _plain(repo)(how=how)
    with _load(repo, "process") as handle:
        assert _same(handle(how=how), expected)


def test_config_attribute_stays_out_of_items_and_other_instances(repo):
    """``unet.config.x = v`` sets the attribute (as diffusers does), never an item: nothing reaches a
    saved config, another UNet built from the same files, or the class."""
    from diffusers import UNet2DConditionModel

    pipe = _load(repo)
    pipe(how="config")
    assert pipe.unet.config.custom_flag == 3
    assert "custom_flag" not in dict(pipe.unet.config)
    assert "custom_flag" not in pipe.unet.to_json_string()
    fresh = UNet2DConditionModel.from_pretrained(str(repo / "weights" / "unet"))
    assert not hasattr(fresh.config, "custom_flag")
    assert not hasattr(UNet2DConditionModel, "custom_flag")
    assert not hasattr(type(pipe.scheduler), "eta") or type(pipe.scheduler).__dict__.get("eta") != 0.5


@pytest.mark.parametrize("how, rule", ESCAPES, ids=[e[0] for e in ESCAPES])
def test_writes_to_components_built_for_this_load_stay_inside_the_allowance(how, rule, repo):
    from diffusers.models.attention import BasicTransformerBlock

    pipe = _load(repo)
    block = _blocks(pipe.unet)[0]
    before_dict = dict(vars(block))
    cls_forward = BasicTransformerBlock.forward
    config_items = dict(pipe.unet.config)
    config_attrs = dict(vars(pipe.unet.config))
    step = type(pipe.scheduler).step
    scheduler_vars, unet_vars = dict(vars(pipe.scheduler)), dict(vars(pipe.unet))
    with pytest.raises(PipewardenError) as info:
        pipe(how=how)
    assert info.value.rule == rule, (info.value.rule, info.value.what)
    assert dict(vars(pipe.scheduler)) == scheduler_vars
    assert dict(vars(pipe.unet)) == unet_vars
    assert pipe.scheduler.config_name == "scheduler_config.json"
    assert pipe.unet.config_name == "config.json"
    assert BasicTransformerBlock.forward is cls_forward
    assert dict(vars(block)) == before_dict
    assert dict(pipe.unet.config) == config_items
    assert dict(vars(pipe.unet.config)) == config_attrs
    assert "step" not in vars(pipe.scheduler) and type(pipe.scheduler).step is step
    assert pipe.unet.dtype == torch.float32
    assert not tripwire.is_armed()


def test_class_data_write_reaches_no_saved_file(repo, tmp_path):
    """N4: ``scheduler.config_name = "../x.json"`` is refused, so save_config writes inside the
    save directory only."""
    pipe = _load(repo)
    with pytest.raises(PipewardenError):
        pipe(how="scheduler-config-name")
    save = tmp_path / "save"
    pipe.scheduler.save_config(str(save))
    assert (save / "scheduler_config.json").exists()
    assert not (tmp_path / "pw_escaped_config.json").exists()


@pytest.mark.parametrize("how, rule", [
    ("reference", "write.host-object"),
    ("config", "write.host-object"),
    ("load-state-dict", "call.pipeline-module-target"),
])
def test_components_the_caller_passed_are_never_written(how, rule, repo):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(repo / "weights" / "unet"))
    blocks = _blocks(unet)
    dicts = [dict(vars(b)) for b in blocks]
    weights = {k: v.clone() for k, v in unet.state_dict().items()}
    config_attrs = dict(vars(unet.config))
    pipe = _load(repo, unet=unet)
    assert pipe.unet is not unet  # in-process loads give the pipeline a private copy
    pipe(how=how)  # so the write lands on the copy, as plain diffusers would write its UNet
    cls = load_class(SOURCE, filename="patch_pipeline.py")
    with pytest.raises(PipewardenError) as info:  # objects handed straight to the class stay the caller's
        cls(unet=unet, scheduler=pipe.scheduler)(how=how)
    assert info.value.rule == rule, (info.value.rule, info.value.what)
    assert [dict(vars(b)) for b in blocks] == dicts
    assert all(torch.equal(v, weights[k]) for k, v in unet.state_dict().items())
    assert dict(vars(unet.config)) == config_attrs
    # reading the caller's UNet to build the pipeline's own subclass is fine
    assert pipe(how="subclass")[0] == [5, 1]


def test_sandboxed_forward_stays_sandboxed_when_the_caller_calls_it(repo, tmp_path):
    """After the pipeline returned, the caller runs ``pipe.unet`` outside pipewarden: torch calls the
    forward the pipeline set, which is sandboxed code -- its attribute reads go through the guards,
    and host code it calls runs with the tripwire armed (code origin)."""
    pipe = _load(repo)
    pipe(how="reference")
    assert not tripwire.is_armed()
    block = _blocks(pipe.unet)[0]
    seen = []
    canary = tmp_path / "canary"

    def probe(out):  # host code, called by the sandboxed forward
        seen.append(tripwire.is_armed())
        with open(canary, "w") as fh:  # noqa: PTH123 - the write the tripwire must stop
            fh.write("x")

    block.probe = probe  # the caller puts a host function where the pipeline reads one
    g = torch.Generator().manual_seed(0)
    with pytest.raises(PipewardenError) as info:
        pipe.unet(torch.randn(1, 4, 8, 8, generator=g), 3, encoder_hidden_states=torch.randn(1, 5, 32, generator=g))
    assert info.value.rule.startswith("tripwire."), info.value.rule
    assert seen == [True]
    assert not canary.exists() and os.listdir(tmp_path) == []
    assert not tripwire.is_armed()
