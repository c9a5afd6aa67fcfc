"""The audit benchmark's ``run()`` (figure (d)) works on a small corpus and reports what
``benchmarks/run.py`` reads. Timing values are not asserted (benchmarks, never timed tests)."""

from __future__ import annotations

import pytest

from pipewarden._fixtures import EXAMPLE_PIPELINE_SOURCE


def test_run_reports_the_figures_on_a_small_corpus(tmp_path):
    from benchmarks import audit_bench

    (tmp_path / "a.py").write_text(EXAMPLE_PIPELINE_SOURCE, encoding="utf-8")
    (tmp_path / "b.py").write_text("import socket\n" + EXAMPLE_PIPELINE_SOURCE, encoding="utf-8")
    result = audit_bench.run(tmp_path, repeats=1, jobs=(1,))
    assert result["files"] == 2
    for key in ("files_per_s", "files_per_s_per_core", "ratio_vs_py_compile", "py_compile_s"):
        assert isinstance(result[key], float) and result[key] > 0
    assert result["rule_counts"] == {"PW020": 1}
    assert result["pipeline_classes_found"] == 2
    assert not list(tmp_path.rglob("__pycache__"))  # py_compile wrote its .pyc files elsewhere


def test_run_without_a_corpus_raises_a_plain_error(tmp_path):
    from benchmarks import audit_bench

    with pytest.raises(FileNotFoundError):
        audit_bench.run(tmp_path)
