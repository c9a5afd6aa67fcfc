"""callback_on_step_end and the denoising progress bar with isolation="process".

The callback runs on the host with a read-only stand-in of the pipeline; the tensors it returns
go back to the worker over the JSON + safetensors wire, exactly as diffusers hands them to the
pipeline. The reference is the same pipeline class run by plain diffusers, no sandbox.
"""

from __future__ import annotations

import io
import types
from pathlib import Path

import pytest
import torch

import pipewarden
from pipewarden.isolation import PipelineHandle
from pipewarden.isolation._client import fork_server
from pipewarden.limits import Limits
from pipewarden.loader.digests import sha256_file

CALLBACK_SOURCE = '''\
import torch
from diffusers import DiffusionPipeline


class CallbackPipeline(DiffusionPipeline):
    _callback_tensor_inputs = ["latents", "model_output"]

    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @torch.no_grad()
    def __call__(self, generator=None, num_inference_steps=3, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs=["latents"]):
        size = self.unet.config.sample_size
        latents = torch.randn((1, 3, size, size), generator=generator)
        self.scheduler.set_timesteps(num_inference_steps)
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            model_output = self.unet(latents, t).sample
            latents = self.scheduler.step(model_output, t, latents, generator=generator).prev_sample
            if callback_on_step_end is not None:
                available = {"latents": latents, "model_output": model_output}
                callback_kwargs = {}
                for k in callback_on_step_end_tensor_inputs:
                    callback_kwargs[k] = available[k]
                callback_outputs = callback_on_step_end(self, i, t, callback_kwargs)
                latents = callback_outputs.pop("latents", latents)
        return latents
'''


@pytest.fixture(scope="module", autouse=True)
def server():
    return fork_server()


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cb") / "pipeline.py"
    path.write_text(CALLBACK_SOURCE)
    return path


@pytest.fixture(scope="module")
def handle(tiny_weights, source):
    pipe = pipewarden.load_pipeline(
        str(tiny_weights), custom_pipeline=str(source), trust_remote_code=True,
        pipeline_sha256=sha256_file(source), isolation="process", limits=Limits(wall_s=120),
    )
    assert isinstance(pipe, PipelineHandle)
    yield pipe
    pipe.close()


def _plain_diffusers(weights: Path):
    """The same class, run by plain diffusers: no pipewarden anywhere."""
    from diffusers import DDPMScheduler, UNet2DModel

    module = types.ModuleType("plain_callback_pipeline")
    exec(compile(CALLBACK_SOURCE, "plain_callback_pipeline.py", "exec"), module.__dict__)  # trusted test source
    unet = UNet2DModel.from_pretrained(str(weights / "unet"))
    scheduler = DDPMScheduler.from_pretrained(str(weights / "scheduler"))
    pipe = module.CallbackPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _recording_callback(log: list):
    def callback(pipe, step, timestep, callback_kwargs):
        latents = callback_kwargs["latents"]
        log.append((step, int(timestep), tuple(sorted(callback_kwargs)), float(latents.abs().sum())))
        if step == 1:
            return {"latents": latents * 0.5 + 0.25}  # edits the latents, as diffusers allows
        return {}

    return callback


def test_callback_records_steps_and_edits_latents_like_plain_diffusers(handle, tiny_weights):
    plain = _plain_diffusers(tiny_weights)
    log_plain: list = []
    log_proc: list = []
    out_plain = plain(generator=torch.Generator().manual_seed(5), num_inference_steps=4,
                      callback_on_step_end=_recording_callback(log_plain))
    out_proc = handle(generator=torch.Generator().manual_seed(5), num_inference_steps=4,
                      callback_on_step_end=_recording_callback(log_proc))
    assert [entry[0] for entry in log_proc] == [0, 1, 2, 3]
    assert log_proc == log_plain
    assert torch.equal(out_proc, out_plain)
    # and the edit mattered: without the callback the output differs
    out_none = handle(generator=torch.Generator().manual_seed(5), num_inference_steps=4)
    assert not torch.equal(out_none, out_proc)


def test_callback_tensor_inputs_choose_what_the_callback_sees(handle, tiny_weights):
    seen: list = []

    def callback(pipe, step, timestep, callback_kwargs):
        seen.append({k: v.shape for k, v in callback_kwargs.items()})
        return {}

    handle(num_inference_steps=2, callback_on_step_end=callback,
           callback_on_step_end_tensor_inputs=["latents", "model_output"])
    assert seen == [{"latents": (1, 3, 8, 8), "model_output": (1, 3, 8, 8)}] * 2


def test_pipeline_callback_objects_bring_their_tensor_inputs(handle):
    from diffusers.callbacks import PipelineCallback

    class Halve(PipelineCallback):
        tensor_inputs = ["latents", "model_output"]

        def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
            self.keys = sorted(callback_kwargs)
            return {"latents": callback_kwargs["latents"] / 2}

    cb = Halve(cutoff_step_ratio=None, cutoff_step_index=0)
    handle(num_inference_steps=2, callback_on_step_end=cb)
    assert cb.keys == ["latents", "model_output"]


def test_callback_gets_a_read_only_stand_in(handle):
    got: dict = {}

    def callback(pipe, step, timestep, callback_kwargs):
        got["name"] = pipe.class_name
        got["sample_size"] = pipe.unet.config.sample_size
        with pytest.raises(AttributeError):
            pipe.scheduler = None
        with pytest.raises(AttributeError):
            pipe.__call__  # noqa: B018 - no way to call the pipeline from its own callback
        got["ok"] = True
        return {}

    handle(num_inference_steps=1, callback_on_step_end=callback)
    assert got == {"name": "CallbackPipeline", "sample_size": 8, "ok": True}


def test_a_raising_callback_raises_on_the_host_and_the_handle_still_works(handle):
    class Stop(Exception):
        pass

    calls: list = []

    def callback(pipe, step, timestep, callback_kwargs):
        calls.append(step)
        raise Stop("enough")

    with pytest.raises(Stop, match="enough"):
        handle(num_inference_steps=3, callback_on_step_end=callback)
    assert calls == [0]  # the call stopped at the first step
    assert handle(num_inference_steps=1).shape == (1, 3, 8, 8)


def test_a_callback_returning_something_that_cannot_cross_is_refused(handle):
    from pipewarden.errors import PipewardenError

    with pytest.raises(PipewardenError):
        handle(num_inference_steps=1, callback_on_step_end=lambda *a: {"latents": object()})
    assert handle(num_inference_steps=1).shape == (1, 3, 8, 8)


def test_the_workers_progress_bar_is_drawn_on_the_host(handle, monkeypatch):
    import huggingface_hub.utils

    monkeypatch.delenv("PIPEWARDEN_QUIET", raising=False)
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    monkeypatch.setattr(huggingface_hub.utils, "are_progress_bars_disabled", lambda *a, **k: False)
    out = io.StringIO()
    handle.set_progress_bar_config(disable=False, file=out, desc="denoise", ascii=True)
    try:
        handle(num_inference_steps=3)
    finally:
        handle.set_progress_bar_config()
    text = out.getvalue()
    assert "denoise" in text and "3/3" in text, text

    off = io.StringIO()
    handle.set_progress_bar_config(disable=True, file=off)
    try:
        handle(num_inference_steps=3)
    finally:
        handle.set_progress_bar_config()
    assert off.getvalue() == ""


def test_quiet_silences_the_host_bar_even_when_asked_for(handle, monkeypatch):
    monkeypatch.setenv("PIPEWARDEN_QUIET", "1")
    out = io.StringIO()
    handle.set_progress_bar_config(disable=False, file=out)
    try:
        handle(num_inference_steps=2)
    finally:
        handle.set_progress_bar_config()
    assert out.getvalue() == ""


@pytest.mark.parametrize(
    "header",
    [
        {"kind": "progress", "bar": -1, "n": 0},
        {"kind": "progress", "bar": 0, "n": "3"},
        {"kind": "progress", "bar": 0, "n": 1, "total": -5},
        {"kind": "progress", "bar": True, "n": 1},
        {"kind": "callback", "step": "0", "timestep": 1, "tensors": {"__pw__": "dict", "v": {}}},
        {"kind": "callback", "step": 0, "timestep": "t", "tensors": {"__pw__": "dict", "v": {}}},
        {"kind": "callback", "step": 0, "timestep": 1, "tensors": [1, 2]},
        {"kind": "callback", "step": 0, "timestep": 1, "tensors": {"__pw__": "pickle", "v": "x"}},
    ],
)
def test_malformed_mid_call_messages_are_refused(header):
    from pipewarden.errors import WorkerError
    from pipewarden.isolation.wire.framing import Frame
    from pipewarden.isolation.wire.messages import parse

    with pytest.raises(WorkerError):
        parse(Frame(header, b""))


def test_a_worker_sending_mid_call_messages_outside_a_call_is_stopped(handle, tiny_weights, source):
    """A load or .to() expects no callback or progress frames: one is a protocol error."""
    from pipewarden.errors import WorkerError
    from pipewarden.isolation.wire import messages

    pipe = pipewarden.load_pipeline(
        str(tiny_weights), custom_pipeline=str(source), trust_remote_code=True,
        pipeline_sha256=sha256_file(source), isolation="process",
    )
    worker = pipe._worker
    original = worker._receive
    sent = iter([messages.Progress(0, 1, 2, False)])

    def fake_receive(deadline, what):
        for msg in sent:
            original(deadline, what)  # consume the real answer, then pretend it was a progress frame
            return msg
        return original(deadline, what)

    worker._receive = fake_receive
    with pytest.raises(WorkerError, match="Progress"):
        pipe.to("cpu")
    assert pipe.closed
    pipe.reload()
    assert not pipe.closed and pipe(num_inference_steps=1).shape == (1, 3, 8, 8)
    pipe.close()


def test_a_progress_report_the_host_cannot_draw_is_a_worker_error(tiny_weights, source, monkeypatch):
    """Whatever goes wrong drawing what the worker reported is a WorkerError (the worker is
    stopped), never a library's own exception out of the call (red team round 9)."""
    from pipewarden.errors import WorkerError
    from pipewarden.isolation import _handle

    pipe = pipewarden.load_pipeline(
        str(tiny_weights), custom_pipeline=str(source), trust_remote_code=True,
        pipeline_sha256=sha256_file(source), isolation="process",
    )

    def overflow(self, msg):
        raise OverflowError("int too large to convert to float")

    monkeypatch.setattr(_handle._HostBars, "update", overflow)
    with pytest.raises(WorkerError) as info:
        pipe(num_inference_steps=2)
    assert info.value.rule == "worker.protocol"
    assert pipe.closed
    monkeypatch.undo()
    pipe.reload()
    assert pipe(num_inference_steps=1).shape == (1, 3, 8, 8)
    pipe.close()
