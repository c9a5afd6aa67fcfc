"""Shared fixtures: small offline weights and pipeline sources, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
#: The original seed files, for the optional cross-check (tests/test_seed_crosscheck.py) only.
DEFAULT_SEED_DIR = Path(__file__).resolve().parents[2] / "shared" / "seed"

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
    """A seed-shaped pipeline of the project's own fixtures (tests/fixtures/pipelines/)."""
    path = FIXTURES / "pipelines" / name
    if not path.is_file():
        raise FileNotFoundError(f"fixture {path} is missing from the repository")
    return path


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--seed-dir",
        default=None,
        help="folder holding the original seed files for tests/test_seed_crosscheck.py "
        "(default: ../shared/seed beside the clone; those tests are skipped, with the reason, without it)",
    )


@pytest.fixture(scope="session")
def seed_dir(request: pytest.FixtureRequest) -> Path:
    """The original seed folder for the cross-check, or a visible skip when there is none."""
    given = request.config.getoption("--seed-dir")
    path = Path(given) if given else DEFAULT_SEED_DIR
    if not path.is_dir():
        if given:
            pytest.fail(f"--seed-dir {given} is not a directory")
        pytest.skip(f"seed cross-check: no seed folder at {path} (pass --seed-dir DIR to run it)")
    return path
