"""Audit results reused for unchanged files (same sha256, same audit fingerprint), never otherwise."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from pipewarden.audit import cache as audit_cache
from pipewarden.audit import static
from pipewarden.audit.cache import AuditCache, fingerprint
from pipewarden.audit.static import AuditOptions, audit_paths
from pipewarden.cli import main

CLEAN = (
    "from diffusers import DiffusionPipeline\n\n"
    "class P(DiffusionPipeline):\n"
    "    def __init__(self, unet):\n"
    "        super().__init__()\n"
    "        self.register_modules(unet=unet)\n"
)
BAD = "import socket\n" + CLEAN + "\n\ndef helper(obj):\n    return eval(obj)\n"


class Counter:
    def __init__(self, monkeypatch):
        self.audited: list[str] = []
        real = static.audit_source

        def counting(data, *, path="pipeline.py", options=None):
            self.audited.append(path)
            return real(data, path=path, options=options)

        monkeypatch.setattr(static, "audit_source", counting)


@pytest.fixture
def files(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "clean.py").write_text(CLEAN)
    (tmp_path / "p" / "bad.py").write_text(BAD)
    return tmp_path / "p"


@pytest.fixture
def cache_path(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cache" / "audit-results.json"
    monkeypatch.setenv("PIPEWARDEN_AUDIT_CACHE", str(path))
    return path


def _run(files: Path, options: AuditOptions | None = None):
    options = options or AuditOptions()
    return audit_paths([files], options, cache=AuditCache(options))


def test_unchanged_files_are_reused_with_identical_reports(files, cache_path, monkeypatch):
    counter = Counter(monkeypatch)
    cold = _run(files)
    assert len(counter.audited) == 2 and cache_path.is_file()
    assert stat.S_IMODE(cache_path.stat().st_mode) == 0o600
    warm = _run(files)
    assert len(counter.audited) == 2  # nothing audited again
    assert warm == cold
    assert warm.exit_code == 1 and any(f.rule == "PW020" for r in warm.files for f in r.findings)


def test_a_changed_file_is_audited_again(files, cache_path, monkeypatch):
    counter = Counter(monkeypatch)
    _run(files)
    (files / "clean.py").write_text(CLEAN + "\nimport subprocess\n")
    report = _run(files)
    assert counter.audited.count("p/clean.py") == 2 and counter.audited.count("p/bad.py") == 1
    assert any(f.rule == "PW020" and "subprocess" in f.message for f in report.files[1].findings)


def test_other_options_or_audit_code_are_a_miss(files, cache_path, monkeypatch):
    counter = Counter(monkeypatch)
    _run(files)
    _run(files, AuditOptions(import_aliases=(("mydiffusers", "diffusers"),)))
    assert len(counter.audited) == 4
    base = fingerprint(AuditOptions())
    assert fingerprint(AuditOptions(max_file_size=1000)) != base
    # a change to any audit/sandbox source or policy file changes the fingerprint
    import pipewarden.audit.rules as rules_mod

    real_read = Path.read_bytes

    def edited(self):
        data = real_read(self)
        return data + b"\n# edited" if self == Path(rules_mod.__file__) else data

    monkeypatch.setattr(Path, "read_bytes", edited)
    assert fingerprint(AuditOptions()) != base


@pytest.mark.parametrize("damage", ["corrupt", "mode644", "foreign", "oversized", "forged_entries"])
def test_unsafe_cache_is_never_trusted(files, cache_path, monkeypatch, damage):
    _run(files)
    counter = Counter(monkeypatch)
    doc = json.loads(cache_path.read_text())
    if damage == "corrupt":
        cache_path.write_text("{")
    elif damage == "mode644":
        # a readable-by-others cache holding a forged "clean" result for bad.py
        for entry in doc["records"]:
            entry[3] = []
        cache_path.write_text(json.dumps(doc))
        os.chmod(cache_path, 0o644)
    elif damage == "foreign":
        real = os.geteuid()
        monkeypatch.setattr(os, "geteuid", lambda: real + 4242)
    elif damage == "oversized":
        cache_path.write_text(json.dumps(doc)[:-1] + " " * audit_cache.MAX_CACHE_BYTES + "}")
    elif damage == "forged_entries":
        for entry in doc["records"]:
            entry[3] = [["PW020", "bogus-severity", 1, 1, "x", None]]
        cache_path.write_text(json.dumps(doc))
    report = _run(files)
    assert len(counter.audited) == 2
    assert report.exit_code == 1


def test_internal_failures_are_not_cached(files, cache_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(static, "check_tree", boom)
    first = _run(files)
    assert all(any(f.rule == "PW005" for f in r.findings) for r in first.files)
    monkeypatch.undo()
    monkeypatch.setenv("PIPEWARDEN_AUDIT_CACHE", str(cache_path))
    os.chdir(files.parent)
    again = _run(files)
    assert not any(f.rule == "PW005" for r in again.files for f in r.findings)


def test_cli_uses_the_cache_and_no_cache_bypasses_it(files, cache_path, monkeypatch, capsys):
    assert main(["audit", "--no-cache", "--format", "json", str(files)]) == 1
    assert not cache_path.exists()
    uncached = capsys.readouterr().out
    assert main(["audit", "--format", "json", str(files)]) == 1
    first = capsys.readouterr().out
    assert first == uncached
    assert cache_path.is_file()
    counter = Counter(monkeypatch)
    assert main(["audit", "--format", "json", str(files)]) == 1
    assert counter.audited == []
    assert capsys.readouterr().out == first
    monkeypatch.setenv("PIPEWARDEN_AUDIT_CACHE", "off")
    assert main(["audit", "--format", "json", str(files)]) == 1
    assert len(counter.audited) == 2
