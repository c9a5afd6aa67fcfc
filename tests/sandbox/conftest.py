"""Fixtures shared by the sandbox tests."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="module")
def repo(request, tmp_path_factory) -> Path:
    """A folder holding the requesting module's pipeline (its ``SOURCE``, saved as its
    ``PIPELINE_FILE``) and tiny random weights synthesised for that pipeline under ``weights/``."""
    from pipewarden.audit import synth
    from pipewarden.sandbox import load_class

    source, filename = request.module.SOURCE, request.module.PIPELINE_FILE
    root = tmp_path_factory.mktemp(Path(filename).stem)
    (root / filename).write_text(source)
    cls = load_class(source, filename=filename)
    synth.save_weights_dir(cls.__name__, synth.build_components(cls), root / "weights")
    return root


def load_from_repo(repo: Path, filename: str, isolation: str = "inprocess", **components: Any) -> Any:
    """``load_pipeline`` of the pipeline file in ``repo`` (pinned by its sha256) on its weights."""
    import pipewarden

    code = repo / filename
    return pipewarden.load_pipeline(
        str(repo / "weights"), custom_pipeline=str(code), trust_remote_code=True,
        pipeline_sha256=hashlib.sha256(code.read_bytes()).hexdigest(), isolation=isolation, **components,
    )
