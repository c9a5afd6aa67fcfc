"""Issue 11 parts 1-5: a Stable-Diffusion-shaped repository (transformers text encoder, tokenizer,
safety checker, image processor; fp32 + fp16 variant) loads bit-identical to plain diffusers, in
process and in-process; only what the pipeline takes is built or downloaded; every new allowance
refuses code (auto_map, .py, .bin) before anything runs."""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import pipewarden
from pipewarden._tiny import SD_PIPELINE_SOURCE, write_sd_repo
from pipewarden.errors import InputError, NotAllowedError, PipewardenError
from pipewarden.loader.components import load_components, plan_components, read_model_index
from pipewarden.loader.local import resolve_local_weights

SOURCE = SD_PIPELINE_SOURCE.encode()
SHA = hashlib.sha256(SOURCE).hexdigest()


@pytest.fixture(scope="module")
def sd(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    base = tmp_path_factory.mktemp("sd")
    repo = write_sd_repo(base / "repo")
    code = base / "code"
    code.mkdir()
    # Not "pipeline.py": diffusers caches custom pipelines by file name for the whole process,
    # and other tests load a different pipeline.py through plain diffusers.
    (code / "tiny_text_to_image.py").write_bytes(SOURCE)
    return SimpleNamespace(repo=repo, code=code / "tiny_text_to_image.py", base=base)


def _plain(sd: SimpleNamespace, **kw: object) -> np.ndarray:
    from diffusers import DiffusionPipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = DiffusionPipeline.from_pretrained(str(sd.repo), custom_pipeline=str(sd.code), trust_remote_code=True, **kw)
    return pipe("a photo of a cat", generator=torch.Generator().manual_seed(0)).images


def _load(sd: SimpleNamespace, repo: Path | str | None = None, **kw: object) -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pipewarden.load_pipeline(
            str(repo or sd.repo), custom_pipeline=str(sd.code), trust_remote_code=True, pipeline_sha256=SHA, **kw
        )


def _run(pipe: object) -> np.ndarray:
    return pipe("a photo of a cat", generator=torch.Generator().manual_seed(0)).images  # type: ignore[operator]


# ----------------------------------------------------------------------------- bit identity


def test_inprocess_fp16_variant_is_bit_identical_to_diffusers(sd: SimpleNamespace) -> None:
    pipe = _load(sd, isolation="inprocess", variant="fp16")
    assert type(pipe.text_encoder).__name__ == "CLIPTextModel"  # type: ignore[attr-defined]
    assert type(pipe.safety_checker).__name__ == "StableDiffusionSafetyChecker"  # type: ignore[attr-defined]
    got = _run(pipe)  # first, before plain diffusers has warmed any library cache in this process
    want = _plain(sd, variant="fp16")
    assert got.shape == want.shape and np.array_equal(got, want)


def test_inprocess_torch_dtype_by_name_matches_diffusers_dtypes(sd: SimpleNamespace) -> None:
    from diffusers import DiffusionPipeline

    ref = DiffusionPipeline.from_pretrained(str(sd.repo), custom_pipeline=str(sd.code), trust_remote_code=True,
                                            variant="fp16", torch_dtype=torch.float16)
    pipe = _load(sd, isolation="inprocess", variant="fp16", torch_dtype="float16")
    for name in ("unet", "vae", "text_encoder", "safety_checker"):
        a, b = getattr(pipe, name).state_dict(), getattr(ref, name).state_dict()
        assert set(a) == set(b)
        assert all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in b), name


def test_process_fp16_variant_is_bit_identical_to_diffusers(sd: SimpleNamespace) -> None:
    want = _plain(sd, variant="fp16")
    with _load(sd, variant="fp16") as pipe:  # type: ignore[attr-defined]
        assert pipe.text_encoder.class_name == "CLIPTextModel"
        assert pipe.tokenizer.class_name == "CLIPTokenizer"
        got = _run(pipe)
        assert np.array_equal(got, want)
        # Part 5: swapping the scheduler the diffusers way changes what the worker runs.
        from diffusers import DiffusionPipeline, EulerDiscreteScheduler

        pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
        assert pipe.scheduler.class_name == "EulerDiscreteScheduler"
        ref = DiffusionPipeline.from_pretrained(str(sd.repo), custom_pipeline=str(sd.code), trust_remote_code=True, variant="fp16")
        ref.scheduler = EulerDiscreteScheduler.from_config(ref.scheduler.config)
        want2 = ref("a photo of a cat", generator=torch.Generator().manual_seed(0)).images
        got2 = _run(pipe)
        assert not np.array_equal(got2, got) and np.array_equal(got2, want2)
        with pytest.raises(NotAllowedError, match="cannot set 'guidance'"):
            pipe.guidance = 3.0
        with pytest.raises(NotAllowedError, match="object"):
            pipe.scheduler = object()
        assert pipe.scheduler.class_name == "EulerDiscreteScheduler"
        pipe.reload()  # a fresh worker keeps the swapped scheduler
        assert pipe.scheduler.class_name == "EulerDiscreteScheduler"
        assert np.array_equal(_run(pipe), want2)


def test_process_mode_takes_objects_as_data(sd: SimpleNamespace) -> None:
    """Part 5: a scheduler, a transformers text encoder and a tokenizer cross as data; None too."""
    from diffusers import DDIMScheduler, DiffusionPipeline

    ref = DiffusionPipeline.from_pretrained(str(sd.repo), custom_pipeline=str(sd.code), trust_remote_code=True,
                                            safety_checker=None, feature_extractor=None)
    sched = DDIMScheduler.from_config(DDIMScheduler.load_config(str(sd.repo / "scheduler")), timestep_spacing="trailing")
    ref.scheduler = sched
    want = ref("a photo of a cat", generator=torch.Generator().manual_seed(0)).images
    with _load(sd, safety_checker=None, feature_extractor=None, scheduler=sched,
               text_encoder=ref.text_encoder, tokenizer=ref.tokenizer) as pipe:  # type: ignore[attr-defined]
        assert pipe.scheduler.config.timestep_spacing == "trailing"
        assert np.array_equal(_run(pipe), want)


# ----------------------------------------------------------------------------- what is built


def test_only_components_the_pipeline_takes_are_read(sd: SimpleNamespace, tmp_path: Path) -> None:
    src = SOURCE.replace(b"safety_checker=None,\n                 feature_extractor=None, ", b"")
    src = src.replace(b"safety_checker=safety_checker,\n                              feature_extractor=feature_extractor", b"")
    src = src.replace(b'_optional_components = ["safety_checker", "feature_extractor"]', b"_optional_components = []")
    src = src.replace(b"if self.safety_checker is not None:", b"if False:")
    from pipewarden.sandbox import load_class

    cls = load_class(src.decode(), filename="pipeline.py")
    digests: dict[str, str] = {}
    kwargs = load_components(resolve_local_weights(sd.repo), pipeline_class=cls, digests_out=digests, variant="fp16")
    assert "safety_checker" not in kwargs and "feature_extractor" not in kwargs
    assert not any(rel.startswith(("safety_checker/", "feature_extractor/")) for rel in digests)
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in digests
    assert "unet/diffusion_pytorch_model.safetensors" not in digests
    assert "tiny-sd.safetensors" not in digests
    assert kwargs["requires_safety_checker"] is True  # a model_index.json option, as diffusers passes it


def test_null_optional_components_become_none_and_passed_override(sd: SimpleNamespace, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(sd.repo, repo)
    index = json.loads((repo / "model_index.json").read_text())
    index["safety_checker"] = [None, None]
    (repo / "model_index.json").write_text(json.dumps(index))
    shutil.rmtree(repo / "safety_checker")
    from pipewarden.sandbox import load_class

    cls = load_class(SD_PIPELINE_SOURCE, filename="pipeline.py")
    digests: dict[str, str] = {}
    kwargs = load_components(resolve_local_weights(repo), pipeline_class=cls, digests_out=digests,
                             passed={"feature_extractor": None})
    assert kwargs["safety_checker"] is None and kwargs["feature_extractor"] is None
    assert not any(rel.startswith("feature_extractor/") for rel in digests)


def test_plan_refuses_unknown_keyword_and_missing_component(sd: SimpleNamespace) -> None:
    from pipewarden.sandbox import load_class

    cls = load_class(SD_PIPELINE_SOURCE, filename="pipeline.py")
    index = read_model_index((sd.repo / "model_index.json").read_bytes())
    with pytest.raises(InputError, match="'text_encoderr'") as info:
        plan_components(cls, index, {"text_encoderr": None})
    assert info.value.rule == "components.unknown-keyword"
    partial = read_model_index(json.dumps({"unet": ["diffusers", "UNet2DConditionModel"]}).encode())
    with pytest.raises(InputError, match="text_encoder"):
        plan_components(cls, partial, {})


def test_keywords_are_never_silently_dropped(sd: SimpleNamespace) -> None:
    for kw in ({"device_map": "auto"}, {"low_cpu_mem_usage": False}, {"provider": "cpu"}):
        with pytest.raises(InputError, match=f"{next(iter(kw))}=") as info:
            _load(sd, isolation="inprocess", **kw)
        assert info.value.rule == "load.unsupported-keyword"
    with pytest.raises(InputError, match="no argument 'not_a_component'"):
        _load(sd, isolation="inprocess", not_a_component=1)
    with pytest.raises(InputError, match="variant='bf16'") as info:
        _load(sd, isolation="inprocess", variant="bf16")
    assert info.value.rule == "weights.variant-missing"
    with pytest.raises(NotAllowedError, match="use_safetensors=False"):
        _load(sd, isolation="inprocess", use_safetensors=False)
    with pytest.raises(ValueError, match="floating-point"):
        _load(sd, isolation="inprocess", torch_dtype="int8")
    # accepted and meaningful: local_files_only / cache_dir with a local directory
    pipe = _load(sd, isolation="inprocess", local_files_only=True, use_safetensors=True, requires_safety_checker=False)
    assert pipe.config.requires_safety_checker is False  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- refusals


def _tampered(sd: SimpleNamespace, tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(sd.repo, repo)
    return repo


MARKER_CODE = "import pathlib\npathlib.Path({marker!r}).write_text('ran')\n"


@pytest.mark.parametrize("isolation", ["inprocess", "process"])
def test_tokenizer_auto_map_is_refused_and_nothing_runs(sd: SimpleNamespace, tmp_path: Path, isolation: str) -> None:
    repo = _tampered(sd, tmp_path)
    marker = tmp_path / "ran.txt"
    (repo / "tokenizer" / "tokenization_evil.py").write_text(MARKER_CODE.format(marker=str(marker)))
    (repo / "tokenizer" / "tokenization_evil.py").unlink()  # first: auto_map alone
    cfg = json.loads((repo / "tokenizer" / "tokenizer_config.json").read_text())
    cfg["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
    (repo / "tokenizer" / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(PipewardenError, match="auto_map") as info:
        _load(sd, repo, isolation=isolation)
    assert info.value.rule == "components.code-reference"
    assert not marker.exists()


@pytest.mark.parametrize("isolation", ["inprocess", "process"])
def test_python_file_in_tokenizer_folder_is_refused(sd: SimpleNamespace, tmp_path: Path, isolation: str) -> None:
    repo = _tampered(sd, tmp_path)
    marker = tmp_path / "ran.txt"
    (repo / "tokenizer" / "tokenization_clip.py").write_text(MARKER_CODE.format(marker=str(marker)))
    with pytest.raises(PipewardenError, match="tokenization_clip.py") as info:
        _load(sd, repo, isolation=isolation)
    assert info.value.rule == "components.code-file"
    assert not marker.exists()


def test_pickle_text_encoder_is_refused_and_never_opened(sd: SimpleNamespace, tmp_path: Path) -> None:
    repo = _tampered(sd, tmp_path)
    for f in (repo / "text_encoder").glob("*.safetensors"):
        f.unlink()
    marker = tmp_path / "unpickled.txt"
    import pickle

    class Boom:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (Path(marker).write_text, ("ran",))

    (repo / "text_encoder" / "pytorch_model.bin").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(NotAllowedError, match="pytorch_model.bin") as info:
        _load(sd, repo, isolation="inprocess")
    assert info.value.rule == "weights.pickle-refused"
    assert not marker.exists()


def test_unlisted_component_class_is_refused(sd: SimpleNamespace, tmp_path: Path) -> None:
    repo = _tampered(sd, tmp_path)
    index = json.loads((repo / "model_index.json").read_text())
    index["tokenizer"] = ["transformers", "AutoTokenizer"]
    (repo / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(NotAllowedError, match="transformers.AutoTokenizer") as info:
        _load(sd, repo, isolation="inprocess")
    assert info.value.rule == "components.class-not-allowed"


def test_component_policy_fails_closed() -> None:
    from pipewarden.loader.component_policy import component_policy, parse_policy

    pol = component_policy()
    assert pol.find("transformers", "CLIPTextModel") is not None
    assert pol.find("transformers", "AutoModel") is None
    with pytest.raises(InputError):
        parse_policy({"version": 1, "limits": {"max_json_bytes": 1, "max_data_file_bytes": 1}, "surprise": []})
    with pytest.raises(InputError, match="code files"):
        parse_policy({"version": 1, "limits": {"max_json_bytes": 1, "max_data_file_bytes": 1},
                      "tokenizer": [{"library": "transformers", "class": "X", "files": ["evil.py"]}]})


# ----------------------------------------------------------------------------- hub (part 4)


def _downloaded(requests: list[tuple[str, str, str]]) -> set[str]:
    """Files whose bytes were served: small files by the hub, LFS files by the CDN."""
    from urllib.parse import unquote

    out = set()
    for _server, method, path in requests:
        path = unquote(path)
        if method != "GET":
            continue
        if "/resolve/" in path:
            out.add(path.split("/resolve/", 1)[1].split("/", 1)[1])
        elif path.startswith("/lfs/"):
            out.add(path.split("/", 3)[3])
    return out


def test_hub_fp16_variant_downloads_only_what_the_pipeline_takes(
    sd: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tests.fakehub import FakeHub, use_fake_hub

    files = {p.relative_to(sd.repo).as_posix(): p.read_bytes() for p in sorted(sd.repo.rglob("*")) if p.is_file()}
    files["text_encoder/pytorch_model.bin"] = b"not opened"
    files["unused/config.json"] = b"{}"
    with FakeHub() as hub:
        use_fake_hub(monkeypatch, hub, tmp_path)
        hub.add_commit("org/sd", files)
        want = _plain(sd, variant="fp16")
        with _load(sd, "org/sd", variant="fp16") as pipe:  # type: ignore[attr-defined]
            got = _run(pipe)
        assert np.array_equal(got, want)
        fetched = _downloaded(hub.requests)
    weights = {f for f in fetched if f.endswith(".safetensors")}
    assert weights == {
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors",
        "text_encoder/model.fp16.safetensors",
        "safety_checker/model.fp16.safetensors",
    }
    assert "tiny-sd.safetensors" not in fetched and "unused/config.json" not in fetched
    assert not any(f.endswith(".bin") for f in fetched)
    assert {"tokenizer/vocab.json", "tokenizer/merges.txt", "model_index.json"} <= fetched


def test_hub_skips_folders_the_pipeline_does_not_take(
    sd: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tests.fakehub import FakeHub, use_fake_hub

    files = {p.relative_to(sd.repo).as_posix(): p.read_bytes() for p in sorted(sd.repo.rglob("*")) if p.is_file()}
    with FakeHub() as hub:
        use_fake_hub(monkeypatch, hub, tmp_path)
        hub.add_commit("org/sd", files)
        pipe = _load(sd, "org/sd", isolation="inprocess", safety_checker=None, feature_extractor=None)
        assert pipe.safety_checker is None  # type: ignore[attr-defined]
        fetched = _downloaded(hub.requests)
    assert not any(f.startswith(("safety_checker/", "feature_extractor/")) for f in fetched)
    assert "unet/diffusion_pytorch_model.safetensors" in fetched
    assert "unet/diffusion_pytorch_model.fp16.safetensors" not in fetched


# ----------------------------------------------------------------------------- part 6


CUSTOM_SCHEDULER_PIPELINE = '''\
import torch
from diffusers import DDIMScheduler, DiffusionPipeline
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput


class HalfStepScheduler(DDIMScheduler):
    """A scheduler the pipeline file defines: DDIM with every update halved."""

    def step(self, model_output, timestep, sample, **kwargs):
        out = super().step(model_output, timestep, sample, **kwargs)
        prev = sample + 0.5 * (out.prev_sample - sample)
        return DDIMSchedulerOutput(prev_sample=prev, pred_original_sample=out.pred_original_sample)


class CustomSchedulerPipeline(DiffusionPipeline):
    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @torch.no_grad()
    def __call__(self, generator=None, num_inference_steps=2):
        latents = torch.randn((1, 4, 8, 8), generator=generator)
        embeds = torch.zeros((1, 4, 32))
        self.scheduler.set_timesteps(num_inference_steps)
        for t in self.scheduler.timesteps:
            noise = self.unet(latents, t, encoder_hidden_states=embeds).sample
            latents = self.scheduler.step(noise, t, latents).prev_sample
        return latents
'''


@pytest.mark.parametrize("isolation", ["inprocess", "process"])
def test_pipeline_file_scheduler_is_a_component(sd: SimpleNamespace, tmp_path: Path, isolation: str) -> None:
    repo = _tampered(sd, tmp_path)
    index = json.loads((repo / "model_index.json").read_text())
    index["scheduler"] = ["pipeline", "HalfStepScheduler"]  # [<module>, <ClassName>], module = the file's stem
    (repo / "model_index.json").write_text(json.dumps(index))
    code = tmp_path / "code"
    code.mkdir()
    (code / "pipeline.py").write_text(CUSTOM_SCHEDULER_PIPELINE)
    sha = hashlib.sha256(CUSTOM_SCHEDULER_PIPELINE.encode()).hexdigest()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = pipewarden.load_pipeline(str(repo), custom_pipeline=str(code), trust_remote_code=True,
                                        pipeline_sha256=sha, isolation=isolation)
    try:
        kind = pipe.scheduler.class_name if isolation == "process" else type(pipe.scheduler).__name__  # type: ignore[attr-defined]
        assert kind == "HalfStepScheduler"
        got = pipe(generator=torch.Generator().manual_seed(0))  # type: ignore[operator]
    finally:
        if isolation == "process":
            pipe.close()  # type: ignore[attr-defined]
    # The same numbers as plain DDIM with the update halved, computed here by hand.
    from diffusers import DDIMScheduler, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(sd.repo / "unet")).eval()
    sched = DDIMScheduler.from_pretrained(str(sd.repo / "scheduler"))
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn((1, 4, 8, 8), generator=gen)
    sched.set_timesteps(2)
    with torch.no_grad():
        for t in sched.timesteps:
            noise = unet(latents, t, encoder_hidden_states=torch.zeros((1, 4, 32))).sample
            prev = sched.step(noise, t, latents).prev_sample
            latents = latents + 0.5 * (prev - latents)
    assert torch.equal(got, latents)


def test_pipeline_file_class_must_be_named_by_the_file(sd: SimpleNamespace, tmp_path: Path) -> None:
    repo = _tampered(sd, tmp_path)
    index = json.loads((repo / "model_index.json").read_text())
    index["scheduler"] = ["other_module", "HalfStepScheduler"]
    (repo / "model_index.json").write_text(json.dumps(index))
    code = tmp_path / "code"
    code.mkdir()
    (code / "pipeline.py").write_text(CUSTOM_SCHEDULER_PIPELINE)
    (repo / "scheduler" / "other_module.py").write_text("raise SystemExit('never run')\n")
    sha = hashlib.sha256(CUSTOM_SCHEDULER_PIPELINE.encode()).hexdigest()
    with pytest.raises(NotAllowedError, match="other_module.HalfStepScheduler") as info:
        pipewarden.load_pipeline(str(repo), custom_pipeline=str(code), trust_remote_code=True, pipeline_sha256=sha,
                                 isolation="inprocess")
    assert info.value.rule == "components.class-not-allowed"


# ----------------------------------------------------------------------------- SDXL / Flux shapes


def test_sdxl_and_flux_text_encoders_match_transformers(tmp_path: Path) -> None:
    """CLIPTextModelWithProjection, CLIPVisionModelWithProjection and T5EncoderModel (tied
    embeddings, fp32-kept modules) come out exactly as transformers' from_pretrained builds them."""
    from transformers import (
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
        T5Config,
        T5EncoderModel,
    )

    torch.manual_seed(0)
    models = {
        "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(
            hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=99,
            projection_dim=16, max_position_embeddings=16)),
        "image_encoder": CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, image_size=16,
            patch_size=8, projection_dim=16)),
        "text_encoder_3": T5EncoderModel(T5Config(
            vocab_size=99, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, decoder_start_token_id=0)),
    }
    index = {"_class_name": "X"}
    for name, model in models.items():
        model.to(torch.float16).save_pretrained(tmp_path / name, variant="fp16")
        model.to(torch.float32).save_pretrained(tmp_path / name)
        index[name] = ["transformers", type(model).__name__]
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    snap = resolve_local_weights(tmp_path)
    for kw in ({}, {"variant": "fp16"}, {"variant": "fp16", "torch_dtype": torch.float16}):
        built = load_components(snap, **kw)  # type: ignore[arg-type]
        for name, model in models.items():
            ref_kw = {"variant": kw.get("variant"), "dtype": kw.get("torch_dtype")}
            ref = type(model).from_pretrained(str(tmp_path / name), **{k: v for k, v in ref_kw.items() if v is not None})
            a, b = built[name].state_dict(), ref.state_dict()
            assert set(a) == set(b), name
            assert all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in b), (name, kw)
            assert not built[name].training


def test_auto_map_in_a_model_config_is_refused(sd: SimpleNamespace, tmp_path: Path) -> None:
    repo = _tampered(sd, tmp_path)
    cfg = json.loads((repo / "text_encoder" / "config.json").read_text())
    cfg["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (repo / "text_encoder" / "config.json").write_text(json.dumps(cfg))
    marker = tmp_path / "ran.txt"
    (repo / "text_encoder" / "modeling_evil.py").write_text(MARKER_CODE.format(marker=str(marker)))
    with pytest.raises(NotAllowedError, match="auto_map") as info:
        _load(sd, repo, isolation="inprocess")
    assert info.value.rule == "components.code-reference"
    assert not marker.exists()


def test_objects_of_unreviewed_classes_never_cross(sd: SimpleNamespace, tmp_path: Path) -> None:
    """A subclass of a diffusers scheduler (its own code) is refused, not pickled or rebuilt as its base."""
    from diffusers import DDIMScheduler

    marker = tmp_path / "ran.txt"

    class Sneaky(DDIMScheduler):
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (Path(marker).write_text, ("ran",))

    with pytest.raises(NotAllowedError, match="Sneaky") as info:
        _load(sd, scheduler=Sneaky())
    assert info.value.rule == "worker.object-component"
    assert not marker.exists()


def test_hub_cache_dir_and_local_files_only(sd: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from tests.fakehub import FakeHub, use_fake_hub

    files = {p.relative_to(sd.repo).as_posix(): p.read_bytes() for p in sorted(sd.repo.rglob("*")) if p.is_file()}
    own_cache = tmp_path / "own-cache"
    with FakeHub() as hub:
        default_cache = use_fake_hub(monkeypatch, hub, tmp_path / "default")
        hub.add_commit("org/sd", files)
        first = _run(_load(sd, "org/sd", isolation="inprocess", cache_dir=own_cache, safety_checker=None, feature_extractor=None))
        assert any(own_cache.rglob("model_index.json"))
        assert not any(Path(str(default_cache)).rglob("model_index.json"))
        seen = len(hub.requests)
        hub.fail(500)  # the hub is down: local_files_only loads from the cache alone, asking nothing
        again = _run(_load(sd, "org/sd", isolation="inprocess", cache_dir=own_cache, local_files_only=True,
                           safety_checker=None, feature_extractor=None))
        assert len(hub.requests) == seen
    assert np.array_equal(first, again)


def test_hub_lock_covers_tokenizer_files(sd: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Everything the load reads is in the lock (merges.txt too), and the locked load works."""
    from pipewarden.cli import main
    from tests.fakehub import FakeHub, use_fake_hub

    files = {p.relative_to(sd.repo).as_posix(): p.read_bytes() for p in sorted(sd.repo.rglob("*")) if p.is_file()}
    lock = tmp_path / "pipewarden.lock"
    with FakeHub() as hub:
        use_fake_hub(monkeypatch, hub, tmp_path)
        hub.add_commit("org/sd", files)
        assert main(["lock", "--weights", "org/sd", "--custom-pipeline", str(sd.code), "--out", str(lock)]) == 0
        assert "tokenizer/merges.txt" in lock.read_text()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pipe = pipewarden.load_pipeline("org/sd", custom_pipeline=str(sd.code), trust_remote_code=True,
                                            lockfile=lock, isolation="inprocess", variant="fp16")
    assert np.array_equal(_run(pipe), _plain(sd, variant="fp16"))
