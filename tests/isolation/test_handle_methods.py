"""The handle is the pipeline (issue 11 part 7): public methods besides ``__call__`` run in the
worker, and Python's ``random`` / NumPy's global generators are synced like torch's, so process
mode stays bit-identical to in-process for pipelines that draw from them."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import pipewarden
from pipewarden.errors import PolicyViolation, WorkerError
from pipewarden.isolation._client import fork_server
from pipewarden.isolation.wire import rng as wire_rng
from pipewarden.loader.digests import sha256_file

MEGA_SOURCE = '''\
import random

import numpy as np
import torch
from diffusers import DiffusionPipeline


class MegaLikePipeline(DiffusionPipeline):
    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    def _noise(self, n):
        # draws from all three global generators, like seed_resize / wildcard / img2img pipelines
        jitter = random.random() + random.randint(0, 9)
        offset = float(np.random.randn())
        return torch.randn(1, 3, n, n) * jitter + offset

    def text2img(self, size=8, scale=1.0):
        sample = self._noise(size)
        t = self.scheduler.timesteps[0] if len(self.scheduler.timesteps) else 0
        return self.unet(sample, t).sample * scale

    def img2img(self, image, strength=0.5):
        return image * strength + self._noise(image.shape[-1])

    def __call__(self, size=8):
        return self.text2img(size=size)
'''


@pytest.fixture(scope="module", autouse=True)
def server():
    return fork_server()


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from pipewarden._fixtures import build_weights

    return build_weights(tmp_path_factory.mktemp("methods-weights"), seed=5)


@pytest.fixture(scope="module")
def mega(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("methods-code") / "pipeline.py"
    path.write_text(MEGA_SOURCE)
    return {"custom_pipeline": str(path), "trust_remote_code": True, "pipeline_sha256": sha256_file(path)}


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _states():
    return random.getstate(), np.random.get_state(legacy=True), torch.get_rng_state()


def _same_states(a, b) -> bool:
    return (
        a[0] == b[0]
        and a[1][0] == b[1][0] and np.array_equal(a[1][1], b[1][1]) and a[1][2:] == b[1][2:]
        and torch.equal(a[2], b[2])
    )


@pytest.mark.parametrize("call", ["__call__", "text2img", "img2img"])
def test_methods_and_global_rngs_match_inprocess(call, weights, mega):
    inproc = pipewarden.load_pipeline(str(weights), isolation="inprocess", **mega)
    image = torch.linspace(0, 1, 3 * 8 * 8).reshape(1, 3, 8, 8)
    args = {"__call__": {}, "text2img": {"size": 8, "scale": 2.0}, "img2img": {"image": image}}[call]
    with pipewarden.load_pipeline(str(weights), isolation="process", **mega) as proc:
        assert set(proc.methods) >= {"text2img", "img2img"} and "_noise" not in proc.methods
        results = []
        for pipe in (inproc, proc):
            _seed_all(1234)
            fn = pipe if call == "__call__" else getattr(pipe, call)
            first = fn(**args)
            second = fn(**args)  # the state carried over from the first call must match too
            results.append((first, second, _states()))
    (a1, a2, sa), (b1, b2, sb) = results
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.equal(a1, a2)  # the generators really advanced
    assert _same_states(sa, sb)


def test_only_public_methods_of_the_vetted_file_are_reachable(weights, mega, tmp_path):
    with pipewarden.load_pipeline(str(weights), isolation="process", **mega) as proc:
        for name in ("_noise", "save_pretrained", "register_modules", "from_pretrained", "enable_model_cpu_offload"):
            with pytest.raises(AttributeError):
                getattr(proc, name)
        # a request the host would never build is refused by the worker as well
        with pytest.raises(PolicyViolation):
            proc._invoke("save_pretrained", str(tmp_path / "out"))
        with pytest.raises(PolicyViolation):
            proc._invoke("_noise", 8)
        assert list(tmp_path.iterdir()) == []
        # and the worker is still serving
        assert proc.text2img(size=8).shape == (1, 3, 8, 8)


def _good_state() -> dict:
    return wire_rng.capture().to_json()


@pytest.mark.parametrize(
    "mutate",
    [
        lambda s: s.pop("np"),
        lambda s: s.update(extra=1),
        lambda s: s["py"].__setitem__(0, 2),
        lambda s: s["py"][1].pop(),
        lambda s: s["py"][1].__setitem__(5, -1),
        lambda s: s["py"][1].__setitem__(5, 2**32),
        lambda s: s["py"][1].__setitem__(5, True),
        lambda s: s["py"][1].__setitem__(5, 1.0),
        lambda s: s["py"][1].__setitem__(-1, 625),
        lambda s: s["py"].__setitem__(2, float("nan")),
        lambda s: s["py"].__setitem__(2, "x"),
        lambda s: s["np"][0].append(1),
        lambda s: s["np"].__setitem__(1, 625),
        lambda s: s["np"].__setitem__(2, 2),
        lambda s: s["np"].__setitem__(3, float("inf")),
        lambda s: s.__setitem__("np", "MT19937"),
    ],
)
def test_malformed_rng_state_from_the_worker_is_refused_and_host_state_unchanged(mutate):
    state = _good_state()
    mutate(state)
    random.seed(99)
    np.random.seed(99)
    before = _states()
    with pytest.raises(WorkerError):
        wire_rng.parse(state)
    assert _same_states(before, _states())


def test_rng_state_round_trips():
    random.seed(5)
    np.random.seed(6)
    random.random()
    np.random.randn(3)
    state = wire_rng.parse(_good_state())
    expected = (random.random(), float(np.random.randn()))
    state.apply()
    assert (random.random(), float(np.random.randn())) == expected
