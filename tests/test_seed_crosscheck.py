"""Optional cross-check: the project's seed-shaped fixtures against the original seed files.

The fixtures in tests/fixtures/pipelines/ are what every other test uses, so a fresh clone needs
nothing beside it. When the original seed folder is present (``../shared/seed`` beside the clone,
or ``--seed-dir DIR``) these tests show the fixtures are the same programs as the seed files;
without it they are reported as skipped, with the reason (never silently).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import seed_file

NAMES = ["one_step_unet.py", "one_step_unet_musev.py"]


def _program(source: str) -> tuple[list[str], list[str]]:
    """(sorted module-level imports, every other statement): comments and import order aside."""
    tree = ast.parse(source)
    imports = sorted(ast.dump(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)))
    rest = [ast.dump(n) for n in tree.body if not isinstance(n, (ast.Import, ast.ImportFrom))]
    return imports, rest


@pytest.mark.parametrize("name", NAMES)
def test_fixture_is_the_seed_program(seed_dir: Path, name: str) -> None:
    original = seed_dir / name
    if not original.is_file():
        pytest.fail(f"the seed folder {seed_dir} has no {name}")
    assert _program(seed_file(name).read_text()) == _program(original.read_text())


@pytest.mark.parametrize("name", NAMES)
def test_seed_file_loads_and_scans_like_the_fixture(seed_dir: Path, name: str) -> None:
    from pipewarden.sandbox.compile import check_compile
    from pipewarden.sandbox.scan import scan_source

    original = (seed_dir / name).read_bytes()
    ours = seed_file(name).read_bytes()
    aliases = {"MuseVdiffusers": "diffusers"}
    a, b = scan_source(original, filename=name, import_aliases=aliases), scan_source(ours, filename=name, import_aliases=aliases)
    assert a.pipeline_class == b.pipeline_class == "UnetSchedulerOneForwardPipeline"
    assert [(c.name, c.bases) for c in a.candidates] == [(c.name, c.bases) for c in b.candidates]
    assert check_compile(original.decode()) == check_compile(ours.decode()) == ()
