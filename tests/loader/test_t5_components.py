"""Issue 11 part 1: a T5 text encoder and a T5 tokenizer (Flux / SD3 / matryoshka shapes) are built
from verified bytes (config.json + safetensors; tokenizer.json + tokenizer_config.json), in process
and in-process, and encode a prompt bit-identically to plain diffusers / transformers."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import pipewarden
from pipewarden.audit import synth
from pipewarden.errors import NotAllowedError

T5_PIPELINE_SOURCE = '''
import torch
from diffusers import DiffusionPipeline
from transformers import T5EncoderModel, T5TokenizerFast


class T5EmbedPipeline(DiffusionPipeline):
    def __init__(self, text_encoder: T5EncoderModel, tokenizer: T5TokenizerFast):
        super().__init__()
        self.register_modules(text_encoder=text_encoder, tokenizer=tokenizer)

    @torch.no_grad()
    def __call__(self, prompt, max_sequence_length: int = 16):
        ids = self.tokenizer(prompt, padding="max_length", max_length=max_sequence_length, truncation=True,
                             return_tensors="pt").input_ids
        return ids, self.text_encoder(ids)[0]
'''
SHA = hashlib.sha256(T5_PIPELINE_SOURCE.encode()).hexdigest()
PROMPT = "a photo of a cat, with a dog!"


@pytest.fixture(scope="module")
def t5(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    base = tmp_path_factory.mktemp("t5")
    torch.manual_seed(0)
    components = {"text_encoder": synth._t5_encoder(synth.Shape(xl=False, latent=False)), "tokenizer": synth.t5_tokenizer()}
    repo = synth.save_weights_dir("T5EmbedPipeline", components, base / "repo")
    code = base / "code"
    code.mkdir()
    (code / "t5_embed.py").write_text(T5_PIPELINE_SOURCE)
    return SimpleNamespace(repo=repo, code=code / "t5_embed.py")


def _load(t5: SimpleNamespace, repo: Path | None = None, **kw: object) -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pipewarden.load_pipeline(str(repo or t5.repo), custom_pipeline=str(t5.code), trust_remote_code=True,
                                        pipeline_sha256=SHA, **kw)


def _plain(t5: SimpleNamespace) -> tuple[torch.Tensor, torch.Tensor]:
    from diffusers import DiffusionPipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = DiffusionPipeline.from_pretrained(str(t5.repo), custom_pipeline=str(t5.code), trust_remote_code=True)
    return pipe(PROMPT)


def test_weights_dir_holds_data_files_only(t5: SimpleNamespace) -> None:
    index = json.loads((t5.repo / "model_index.json").read_text())
    assert index["text_encoder"] == ["transformers", "T5EncoderModel"]
    assert index["tokenizer"][0] == "transformers" and index["tokenizer"][1] in ("T5Tokenizer", "T5TokenizerFast")
    files = {p.relative_to(t5.repo).as_posix() for p in t5.repo.rglob("*") if p.is_file()}
    assert "tokenizer/tokenizer.json" in files and "text_encoder/model.safetensors" in files
    assert not [f for f in files if f.endswith((".py", ".bin", ".pt", ".pkl"))]


@pytest.mark.parametrize("isolation", ["inprocess", "process"])
def test_t5_encoder_and_tokenizer_are_bit_identical_to_diffusers(t5: SimpleNamespace, isolation: str) -> None:
    want_ids, want_emb = _plain(t5)
    assert want_ids.shape == (1, 16) and int(want_ids[0, 0]) != 2  # real pieces, not <unk>
    pipe = _load(t5, isolation=isolation)
    try:
        if isolation == "inprocess":
            assert type(pipe.text_encoder).__name__ == "T5EncoderModel"  # type: ignore[attr-defined]
            assert type(pipe.tokenizer).__name__ in ("T5Tokenizer", "T5TokenizerFast")  # type: ignore[attr-defined]
        else:
            assert pipe.text_encoder.class_name == "T5EncoderModel"  # type: ignore[attr-defined]
        got_ids, got_emb = pipe(PROMPT)  # type: ignore[operator]
    finally:
        if hasattr(pipe, "close"):
            pipe.close()
    assert torch.equal(got_ids, want_ids)
    assert got_emb.dtype == want_emb.dtype and torch.equal(got_emb, want_emb)


def test_t5_tokenizer_folder_with_code_is_refused(t5: SimpleNamespace, tmp_path: Path) -> None:
    """A .py beside the tokenizer data files is refused before anything is built or run."""
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(t5.repo, repo)
    marker = tmp_path / "ran.txt"
    (repo / "tokenizer" / "tokenization_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    cfg = json.loads((repo / "tokenizer" / "tokenizer_config.json").read_text())
    cfg["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
    (repo / "tokenizer" / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(NotAllowedError) as info:
        _load(t5, repo, isolation="inprocess")
    assert info.value.rule in ("components.code-file", "components.code-reference")
    assert not marker.exists()
