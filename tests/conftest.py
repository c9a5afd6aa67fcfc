"""Shared fixtures: small offline weights and pipeline sources, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SEED_DIR = Path(__file__).resolve().parents[2] / "shared" / "seed"

# Never reach a real hub from tests; hub tests point HF_ENDPOINT at their own fake server.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("PIPEWARDEN_QUIET", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session", autouse=True)
def _private_digest_store(tmp_path_factory) -> None:
    """Verified-digest records go to a per-session store, never the user's cache."""
    store = tmp_path_factory.mktemp("digest-store") / "verified-digests.json"
    os.environ["PIPEWARDEN_DIGEST_STORE"] = str(store)
    # Audit results are not reused across tests (tests that patch the audit must see it run);
    # tests/audit/test_cache.py turns the cache on explicitly.
    os.environ["PIPEWARDEN_AUDIT_CACHE"] = "off"


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A weights directory laid out like google/ddpm-cifar10-32, with a 45 k-parameter UNet."""
    from pipewarden._fixtures import build_weights

    return build_weights(tmp_path_factory.mktemp("weights"), seed=0)


@pytest.fixture(scope="session")
def example_pipeline(tmp_path_factory) -> Path:
    """Our example pipeline as DIR/pipeline.py; returns the file path."""
    from pipewarden._fixtures import write_example_pipeline

    return write_example_pipeline(tmp_path_factory.mktemp("example"))


def seed_file(name: str = "one_step_unet.py") -> Path:
    """A file of ../shared/seed/. CI always has ../shared beside the clone."""
    path = SEED_DIR / name
    if not path.is_file():
        pytest.fail(f"seed file {path} is missing: the repository expects ../shared/seed beside it")
    return path
