"""Lock files and the admission state machine the loader runs (opt-in, allowlist, lock, pins)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pipewarden.errors import InputError, IntegrityError, NotAllowedError, SignatureError, TrustRequiredError
from pipewarden.loader.code import CodeSource
from pipewarden.loader.snapshot import FileRecord, Snapshot
from pipewarden.registry.admission import Admission, AdmittedCode, AdmittedWeights, load_allowlist_from_env
from pipewarden.registry.lockfile import (
    LockEntry,
    Lockfile,
    entry_for_local_code,
    entry_for_local_weights,
    write_lock,
)
from pipewarden.registry.signatures import SIGNATURE_FILE
from tests._registry_support import (
    FILES_BYTES,
    NOW,
    _isolated_state,  # noqa: F401  (autouse)
    allowlist,
    digests,
    new_key,
    signed,
)

FILES = digests(FILES_BYTES)
COMMIT = "a" * 40
ALICE = new_key()


def _code(
    kind="hub",
    source_id="acme/pipes",
    files=FILES,
    source_bytes=FILES_BYTES["pipeline.py"],
    signature=None,
    commit=COMMIT,
) -> CodeSource:
    return CodeSource(
        kind=kind,
        source_id=source_id,
        commit=commit,
        module_relpath="pipeline.py",
        source_bytes=source_bytes,
        sha256=hashlib.sha256(source_bytes).hexdigest(),
        files=files,
        signature_bytes=signature,
        root=None,
    )


# -- lock files ----------------------------------------------------------------------------------------
def test_write_and_load_round_trip(tmp_path):
    path = tmp_path / "pipewarden.lock"
    entry = LockEntry(source="acme/pipes", role="code", files=FILES, commit=COMMIT)
    write_lock(path, [entry])
    lock = Lockfile.load(path)
    assert lock.entry_for("acme/pipes") == entry
    assert lock.entry_for("acme/other") is None
    # merging replaces the same (source, role) and keeps the rest
    w = LockEntry(source="acme/pipes", role="weights", files={"model_index.json": "1" * 64}, commit=COMMIT)
    write_lock(path, [w])
    lock = Lockfile.load(path)
    assert lock.entry_for("acme/pipes", "weights") == w and lock.entry_for("acme/pipes", "code") == entry
    with pytest.raises(ValueError, match="role="):
        lock.entry_for("acme/pipes")


@pytest.mark.parametrize(
    ("actual", "needles"),
    [
        ({**FILES, "pipeline.py": "f" * 64}, ["pipeline.py", FILES["pipeline.py"], "f" * 64]),
        ({k: v for k, v in FILES.items() if k != "README.md"}, ["README.md", "missing"]),
        ({**FILES, "extra.py": "0" * 64}, ["extra.py", "not in the lock"]),
    ],
    ids=["hash-mismatch-names-file-and-both-hashes", "missing-file", "extra-file"],
)
def test_check_files_refuses_any_difference(actual, needles):
    entry = LockEntry(source="acme/pipes", role="code", files=FILES)
    with pytest.raises(IntegrityError) as exc:
        entry.check_files(actual, what="pipeline code")
    for n in needles:
        assert n in str(exc.value)


def test_signature_file_is_never_locked():
    entry = LockEntry(source="s", role="code", files={**FILES, SIGNATURE_FILE: "0" * 64})
    assert SIGNATURE_FILE not in entry.files
    entry.check_files({**FILES, SIGNATURE_FILE: "1" * 64})


def test_commit_pinned():
    entry = LockEntry(source="acme/pipes", role="code", files=FILES, commit=COMMIT)
    entry.check_commit(COMMIT, what="code")
    with pytest.raises(IntegrityError, match="b" * 40):
        entry.check_commit("b" * 40, what="code")


def test_lock_layout_is_strict(tmp_path):
    path = tmp_path / "l.lock"
    write_lock(path, [LockEntry(source="s", role="code", files=FILES)])
    text = path.read_text()
    for bad in (
        text.replace("# pipewarden.lock", "# pipewarden.LOCK"),
        text + "\n",
        text.replace(" = ", "=", 1),
    ):
        with pytest.raises(InputError, match="layout"):
            Lockfile.from_bytes(bad.encode())


def test_local_lock_entries(tmp_path, tiny_weights):
    code = tmp_path / "pipe"
    code.mkdir()
    for rel, data in FILES_BYTES.items():
        (code / rel).parent.mkdir(parents=True, exist_ok=True)
        (code / rel).write_bytes(data)
    (code / SIGNATURE_FILE).write_bytes(b"whatever")
    e = entry_for_local_code(code)
    assert e.source == f"local:{code.resolve()}" and dict(e.files) == FILES and e.commit is None
    single = entry_for_local_code(code / "pipeline.py")
    assert single.source == f"local:{(code / 'pipeline.py').resolve()}"
    assert dict(single.files) == {"pipeline.py": FILES["pipeline.py"]}
    w = entry_for_local_weights(tiny_weights)
    assert "model_index.json" in w.files and "unet/diffusion_pytorch_model.safetensors" in w.files
    assert (
        w.files["model_index.json"]
        == hashlib.sha256((tiny_weights / "model_index.json").read_bytes()).hexdigest()
    )


def _snapshot(files: dict[str, str], *, source: str = "acme/w", commit: str | None = COMMIT) -> Snapshot:
    return Snapshot(
        root=Path("/nonexistent"),
        source=source,
        commit=commit,
        files={rel: FileRecord(rel, digest, 1) for rel, digest in files.items()},
    )


def decide(code: CodeSource, *, allowlist, lockfile, pipeline_sha256, isolation=None, now=None) -> AdmittedCode:
    """One admission of ``code`` with these pins (what load_pipeline runs, minus the I/O)."""
    return Admission(
        trust_remote_code=True,
        pipeline_sha256=pipeline_sha256,
        lockfile=lockfile,
        allowlist=allowlist,
        isolation=isolation,
        env={},
        now=now,
    ).admit_code(code)


def test_weights_are_admitted_only_after_the_code(tmp_path):
    w = {"model_index.json": "1" * 64, "unet/x.safetensors": "2" * 64}
    path = tmp_path / "p.lock"
    write_lock(
        path,
        [
            LockEntry(source="acme/w", role="weights", files=w, commit=COMMIT),
            LockEntry(source="acme/pipes", role="code", files=FILES, commit=COMMIT),
        ],
    )

    def admit(files, *, source="acme/w", commit=COMMIT, lockfile=path) -> AdmittedWeights:
        a = Admission(trust_remote_code=True, lockfile=lockfile, pipeline_sha256=FILES["pipeline.py"], env={})
        with pytest.raises(RuntimeError, match="code pin is checked first"):
            a.admit_weights(_snapshot(files, source=source, commit=commit))
        a.admit_code(_code())
        return a.admit_weights(_snapshot(files, source=source, commit=commit))

    assert admit(w, lockfile=None).lock_entry is None
    admitted = admit(w)
    assert admitted.lock_entry is not None and admitted.lock_entry.source == "acme/w"
    assert dict(admitted.expected) == w and admitted.pinned.files["unet/x.safetensors"].sha256 == "2" * 64
    with pytest.raises(IntegrityError, match="unet/x.safetensors"):
        admit({**w, "unet/x.safetensors": "3" * 64})
    with pytest.raises(IntegrityError, match="unet/y.safetensors"):
        admit({**w, "unet/y.safetensors": "3" * 64})  # a published file the lock does not name
    with pytest.raises(IntegrityError, match="not in lock file"):
        admit(w, source="acme/other")
    with pytest.raises(IntegrityError, match="commit"):
        admit(w, commit="c" * 40)
    # local weights carry no digests yet: the lock's digests are what each file must hash to
    local = admit({"model_index.json": "", "unet/x.safetensors": ""})
    assert dict(local.expected) == w


def test_admitted_results_are_made_only_by_the_admission():
    with pytest.raises(TypeError, match="only by"):
        AdmittedCode(code=_code(), pins=("pipeline_sha256",), gates=())
    with pytest.raises(TypeError, match="only by"):
        AdmittedWeights(snapshot=_snapshot({}), expected={})
    a = Admission(trust_remote_code=True, pipeline_sha256=FILES["pipeline.py"], env={})
    admitted = a.admit_code(_code())
    assert admitted.pins == ("pipeline_sha256",) and [g for g, _ in a.gates] == ["kill switch", "opt-in", "sha256 pin"]
    with pytest.raises(RuntimeError):
        a.admit_code(_code())


def test_opt_in_is_checked_before_anything_else():
    with pytest.raises(TrustRequiredError):
        Admission(trust_remote_code=False, pipeline_sha256=FILES["pipeline.py"], env={})
    with pytest.raises(TypeError):
        Admission(trust_remote_code="yes", env={})  # type: ignore[arg-type]


# -- code admission ------------------------------------------------------------------------------------
def test_unpinned_code_is_refused():
    with pytest.raises(NotAllowedError) as exc:
        decide(_code(), allowlist=None, lockfile=None, pipeline_sha256=None)
    assert exc.value.rule == "trust.code-unpinned" and FILES["pipeline.py"] in str(exc.value) and COMMIT in str(exc.value)


def test_allowlist_signatures_and_policy_returned():
    policy = '[policy]\nrequired_isolation = "process"\n[policy.extra_modules]\neinops = ["rearrange"]\n'
    allow = allowlist({"alice": ALICE}, [("acme/*", ["alice"], 1)], policy=policy)
    code = _code(signature=signed(FILES, ALICE))
    d = decide(code, allowlist=allow, lockfile=None, pipeline_sha256=FILES["pipeline.py"], now=NOW)
    assert d.pins == ("signatures", "pipeline_sha256")
    assert d.required_isolation == "process" and dict(d.extra_modules) == {"einops": ("rearrange",)}
    assert d.signature is not None and d.signature.signers == ("alice",)
    assert d.allowlist_version == 1
    with pytest.raises(NotAllowedError, match="isolation"):
        decide(code, allowlist=allow, lockfile=None, pipeline_sha256=None, isolation="inprocess", now=NOW)


def test_allowlist_refusals_surface_typed_errors():
    allow = allowlist({"alice": ALICE}, [("acme/*", ["alice"], 1)])
    with pytest.raises(NotAllowedError):
        decide(
            _code(source_id="evil/pipes", signature=signed(FILES, ALICE)),
            allowlist=allow,
            lockfile=None,
            pipeline_sha256=None,
            now=NOW,
        )
    with pytest.raises(SignatureError):
        decide(_code(signature=None), allowlist=allow, lockfile=None, pipeline_sha256=None, now=NOW)
    with pytest.raises(IntegrityError):
        decide(
            _code(files={**FILES, "extra.py": "0" * 64}, signature=signed(FILES, ALICE)),
            allowlist=allow,
            lockfile=None,
            pipeline_sha256=None,
            now=NOW,
        )


def test_bytes_to_run_must_match_recorded_digests():
    code = _code()
    tampered = CodeSource(
        kind="hub",
        source_id="acme/pipes",
        commit=COMMIT,
        module_relpath="pipeline.py",
        source_bytes=b"import os\n",
        sha256=code.sha256,
        files=FILES,
    )
    with pytest.raises(IntegrityError, match="bytes to run"):
        decide(tampered, allowlist=None, lockfile=None, pipeline_sha256=code.sha256)


def test_pipeline_sha256_pin():
    with pytest.raises(IntegrityError) as exc:
        decide(_code(), allowlist=None, lockfile=None, pipeline_sha256="0" * 64)
    assert "0" * 64 in str(exc.value) and FILES["pipeline.py"] in str(exc.value)
    with pytest.raises(ValueError):
        decide(_code(), allowlist=None, lockfile=None, pipeline_sha256="not-a-hash")


def test_lock_in_decide(tmp_path):
    path = tmp_path / "pipewarden.lock"
    write_lock(path, [LockEntry(source="acme/pipes", role="code", files=FILES, commit=COMMIT)])
    assert decide(_code(), allowlist=None, lockfile=path, pipeline_sha256=None).pins == ("lockfile",)
    with pytest.raises(IntegrityError, match="commit"):
        decide(_code(commit="b" * 40), allowlist=None, lockfile=path, pipeline_sha256=None)
    with pytest.raises(IntegrityError, match="README.md"):
        decide(
            _code(files={**FILES, "README.md": "9" * 64}), allowlist=None, lockfile=path, pipeline_sha256=None
        )
    with pytest.raises(IntegrityError, match="not in lock file"):
        decide(_code(source_id="acme/other"), allowlist=None, lockfile=path, pipeline_sha256=None)


def test_load_allowlist_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPEWARDEN_STATE_DIR", str(tmp_path / "state"))
    assert load_allowlist_from_env({}) is None
    f = tmp_path / "org.toml"
    f.write_text("version = 3\n")
    assert load_allowlist_from_env({"PIPEWARDEN_ALLOWLIST": str(f)}).version == 3
    monkeypatch.setenv("PIPEWARDEN_ALLOWLIST", str(tmp_path / "missing.toml"))
    with pytest.raises(InputError):
        load_allowlist_from_env()


def test_registry_does_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys, pipewarden.registry, pipewarden.cli.keys, pipewarden.cli.allowlist, pipewarden.cli.lock, pipewarden.registry.admission;"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
    )
    assert out.stdout.strip() == "[]"
