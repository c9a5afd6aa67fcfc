"""Hub loader against the fake hub: change the world -> run the real client -> assert refusal AND cache state.

huggingface_hub runs for real against ``tests/fakehub.py`` (see its docstring for how HF_ENDPOINT and
the import-time constants are handled).
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipewarden._fixtures import EXAMPLE_PIPELINE_SOURCE, build_weights
from pipewarden.errors import FetchError, InputError, IntegrityError, NotAllowedError, PipewardenError
from pipewarden.loader import _hf
from pipewarden.loader.hub import (
    COMMUNITY_MIRROR_ID,
    community_revision,
    is_community_name,
    is_hub_repo_id,
    resolve_code,
    resolve_weights,
)
from tests.fakehub import (
    FakeHub,
    blob_names,
    git_blob_sha1,
    set_offline,
    untrusted_cache_entries,
    use_fake_hub,
)

WEIGHTS = "org/weights"
CODE = "org/code"
WEIGHTS_FOLDER = "models--org--weights"
CODE_FOLDER = "models--org--code"
MIRROR_FOLDER = "datasets--diffusers--community-pipelines-mirror"
SAFETENSORS = "unet/diffusion_pytorch_model.safetensors"


# ------------------------------------------------------------------------------------------------
# World


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("weights")
    build_weights(d)
    files = {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}
    files[".gitattributes"] = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
    files["README.md"] = b"# tiny weights\n"
    files["unet/diffusion_pytorch_model.bin"] = b"\x80\x04pickle, never fetched"
    return files


@pytest.fixture(scope="module")
def weight_files_v2(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("weights2")
    build_weights(d, seed=1)
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


CODE_FILES = {
    "pipeline.py": EXAMPLE_PIPELINE_SOURCE.encode(),
    "README.md": b"# one-step pipeline\n",
    ".gitattributes": b"*.safetensors filter=lfs\n",
    "helpers/notes.txt": b"not code, still in the manifest\n",
    "assets/big.safetensors": b"\x00" * 4096,  # LFS in a code repo: sha256 from the hub, never downloaded
    "__pycache__/pipeline.cpython-311.pyc": b"stale bytecode, never part of a manifest",
}


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    with FakeHub() as h:
        h.cache = use_fake_hub(monkeypatch, h, tmp_path)
        yield h


@pytest.fixture
def world(hub: FakeHub, weight_files: dict[str, bytes]) -> SimpleNamespace:
    w = SimpleNamespace(hub=hub, cache=hub.cache)
    w.weights_commit = hub.add_commit(WEIGHTS, weight_files)
    w.code_commit = hub.add_commit(CODE, CODE_FILES)
    w.mirror_old = hub.add_commit(
        COMMUNITY_MIRROR_ID,
        {"v0.42.1/one_step_unet.py": b"# old\n" + EXAMPLE_PIPELINE_SOURCE.encode()},
        repo_type="dataset",
    )
    w.mirror_commit = hub.add_commit(
        COMMUNITY_MIRROR_ID,
        {
            "v0.42.1/one_step_unet.py": EXAMPLE_PIPELINE_SOURCE.encode(),
            "main/one_step_unet.py": b"# main\n" + EXAMPLE_PIPELINE_SOURCE.encode(),
            "v0.41.0/other_pipeline.py": b"# other\n",
        },
        repo_type="dataset",
        base=w.mirror_old,
    )
    return w


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


# ------------------------------------------------------------------------------------------------
# Names


@pytest.mark.parametrize(
    ("s", "ok"),
    [
        ("google/ddpm-cifar10-32", True),
        ("org/weights", True),
        ("stevhliu/one_step_unet", True),
        ("one_step_unet", False),
        ("org/name/extra", False),
        ("./org/name", False),
        ("../x", False),
        ("org/..", False),
        ("org--x/name", False),
        ("org/name.git", False),
        ("/abs/path", False),
        ("org/", False),
        (None, False),
    ],
)
def test_is_hub_repo_id(s: object, ok: bool) -> None:
    assert is_hub_repo_id(s) is ok


@pytest.mark.parametrize(
    ("rev", "expected"),
    [
        (None, ("v0.42.1", None)),  # installed diffusers release
        ("main", ("main", None)),
        ("0.42.1", ("v0.42.1", None)),
        ("v0.41.0", ("v0.41.0", None)),
        ("a" * 40, ("v0.42.1", "a" * 40)),  # a 40-hex pins the mirror dataset itself
    ],
)
def test_community_revision_follows_diffusers_convention(rev: str | None, expected: tuple) -> None:
    assert community_revision(rev) == expected


@pytest.mark.parametrize("bad", ["../../etc", "one/two", "x.py", "", "a b"])
def test_community_name_cannot_escape_the_mirror_folder(bad: str) -> None:
    assert not is_community_name(bad)
    with pytest.raises(ValueError):
        resolve_code(bad, kind="community")


def test_bad_custom_revision_for_community_is_caller_error() -> None:
    with pytest.raises(ValueError, match="custom_revision"):
        community_revision("latest")


# ------------------------------------------------------------------------------------------------
# Each form resolves


def test_weights_pinned_to_one_commit_only_safetensors_and_json(
    world: SimpleNamespace, weight_files: dict[str, bytes]
) -> None:
    snap = resolve_weights(WEIGHTS)
    assert snap.commit == world.weights_commit
    assert snap.source == WEIGHTS
    assert snap.root == world.cache / WEIGHTS_FOLDER / "snapshots" / world.weights_commit
    expected = {k for k in weight_files if k.endswith((".json", ".safetensors"))}
    assert set(snap.files) == expected
    for rel, rec in snap.files.items():
        assert rec.sha256 == _sha(weight_files[rel]) and rec.size == len(weight_files[rel])
        assert (snap.root / rel).read_bytes() == weight_files[rel]
    # pickle / README / .gitattributes never requested
    assert world.hub.count(contains=".bin") == 0 and world.hub.count(contains="README") == 0
    # every file request named the commit, never the branch
    resolves = [p for (_s, _m, p) in world.hub.requests if "/resolve/" in p]
    assert resolves and all(f"/resolve/{world.weights_commit}/" in p for p in resolves)
    assert (world.cache / WEIGHTS_FOLDER / "refs" / "main").read_text() == world.weights_commit


def test_token_goes_to_the_hub_but_never_to_the_cdn(world: SimpleNamespace) -> None:
    resolve_weights(WEIGHTS, token="hf_secret")
    resolve_code(CODE, kind="hub", token="hf_secret")
    seen = {
        (server, path.split("/")[1] if server == "hub" else "lfs")
        for server, _m, path, _a in world.hub.authorized
    }
    assert ("hub", "api") in seen and all(auth == "Bearer hf_secret" for *_x, auth in world.hub.authorized)
    assert world.hub.count(server="cdn") > 0
    assert not [a for a in world.hub.authorized if a[0] == "cdn"]


def test_weights_repo_with_only_pickle_refused_before_download(world: SimpleNamespace) -> None:
    world.hub.add_commit("org/pickles", {"model_index.json": b"{}", "unet/diffusion_pytorch_model.bin": b"x"})
    with pytest.raises(NotAllowedError, match="pickle"):
        resolve_weights("org/pickles")
    assert world.hub.count(contains="/resolve/") == 0


def test_hub_code_repo_resolves_with_full_manifest(world: SimpleNamespace) -> None:
    code = resolve_code(CODE, kind="hub")
    assert (code.kind, code.source_id, code.commit, code.module_relpath) == (
        "hub",
        CODE,
        world.code_commit,
        "pipeline.py",
    )
    assert code.source_bytes == CODE_FILES["pipeline.py"]
    assert code.sha256 == _sha(CODE_FILES["pipeline.py"]) == code.files["pipeline.py"]
    manifest = {k: _sha(v) for k, v in CODE_FILES.items() if not k.startswith("__pycache__/")}
    assert dict(code.files) == manifest
    assert code.signature_bytes is None
    assert code.root == world.cache / CODE_FOLDER / "snapshots" / world.code_commit
    # the LFS asset was described by the hub's sha256, not downloaded
    assert world.hub.count(server="cdn") == 0
    assert world.hub.count(contains="assets/big.safetensors") == 0


def test_hub_code_signature_file_is_returned_not_listed(world: SimpleNamespace) -> None:
    from pipewarden.registry.signatures import SIGNATURE_FILE

    sig = b'{"signatures": []}\n'
    commit = world.hub.add_commit(CODE, {SIGNATURE_FILE: sig}, base=world.code_commit)
    code = resolve_code(CODE, kind="hub", revision=commit)
    assert code.commit == commit
    assert code.signature_bytes == sig
    assert SIGNATURE_FILE not in code.files


def test_hub_code_repo_signed_with_model_signing_verifies_without_downloading_lfs(
    world: SimpleNamespace, tmp_path: Path
) -> None:
    """A model.sig in a hub code repo is returned like pipewarden.sig, never listed, and covers
    exactly the manifest (the LFS asset by the hub's sha256; .gitattributes left out as
    model-signing does by default)."""
    import datetime as dt

    import model_signing
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
        PublicFormat,
    )

    from pipewarden.registry.allowlist import Allowlist
    from pipewarden.registry.modelsign import ModelSigningKey
    from pipewarden.registry.signatures import verify_signed_files

    checkout = tmp_path / "checkout"
    for rel, data in CODE_FILES.items():
        if not rel.startswith("__pycache__/"):
            (checkout / rel).parent.mkdir(parents=True, exist_ok=True)
            (checkout / rel).write_bytes(data)
    private = ec.generate_private_key(ec.SECP256R1())
    key = tmp_path / "ml.pem"
    key.write_bytes(private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    model_signing.signing.Config().use_elliptic_key_signer(private_key=key).sign(checkout, tmp_path / "model.sig")
    sig = (tmp_path / "model.sig").read_bytes()
    text = ModelSigningKey(private.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).text
    allow = Allowlist.from_bytes(
        f'version = 1\n[[signers]]\nname = "ml"\nmodel_signing_key = "{text}"\n'
        f'[[sources]]\npattern = "org/*"\nsigners = ["ml"]\nthreshold = 1\n'.encode()
    )
    now = dt.datetime.now(dt.timezone.utc)
    commit = world.hub.add_commit(CODE, {"model.sig": sig}, base=world.code_commit)
    code = resolve_code(CODE, kind="hub", revision=commit)
    assert code.model_signatures == {"model.sig": sig} and "model.sig" not in code.files
    verdict = verify_signed_files(code.files, code.signature_bytes, allow, code.source_id, now=now,
                                  model_signatures=code.model_signatures)
    assert verdict.signers == ("ml",)
    assert world.hub.count(contains="assets/big.safetensors") == 0  # covered by digest, never fetched
    changed = world.hub.add_commit(CODE, {"helpers/notes.txt": b"changed\n"}, base=commit)
    code = resolve_code(CODE, kind="hub", revision=changed)
    with pytest.raises(IntegrityError, match="helpers/notes.txt"):
        verify_signed_files(code.files, code.signature_bytes, allow, code.source_id, now=now,
                            model_signatures=code.model_signatures)


def test_hub_code_repo_without_pipeline_py_refused(world: SimpleNamespace) -> None:
    world.hub.add_commit("org/nocode", {"README.md": b"x"})
    with pytest.raises(InputError, match="pipeline.py"):
        resolve_code("org/nocode", kind="hub")


def test_community_name_resolves_in_mirror_version_folder(world: SimpleNamespace) -> None:
    code = resolve_code("one_step_unet", kind="community")
    assert (code.kind, code.source_id, code.commit) == ("community", "one_step_unet", world.mirror_commit)
    assert code.module_relpath == "v0.42.1/one_step_unet.py"
    assert code.source_bytes == EXAMPLE_PIPELINE_SOURCE.encode()
    assert dict(code.files) == {"v0.42.1/one_step_unet.py": _sha(code.source_bytes)}
    # only this file's metadata was asked for, never the whole mirror listing
    assert world.hub.count(contains="/paths-info/") == 1
    main = resolve_code("one_step_unet", kind="community", revision="main")
    assert main.source_bytes.startswith(b"# main\n") and main.module_relpath == "main/one_step_unet.py"


def test_community_pinned_mirror_commit(world: SimpleNamespace) -> None:
    code = resolve_code("one_step_unet", kind="community", revision=world.mirror_old)
    assert code.commit == world.mirror_old
    assert code.source_bytes.startswith(b"# old\n")


def test_community_unknown_name_or_version(world: SimpleNamespace) -> None:
    with pytest.raises(FetchError, match="not in diffusers/community-pipelines-mirror"):
        resolve_code("no_such_pipeline", kind="community")
    with pytest.raises(FetchError, match="v0.30.0"):
        resolve_code("one_step_unet", kind="community", revision="0.30.0")


# ------------------------------------------------------------------------------------------------
# Pinning


def test_unpinned_branch_moved_between_requests_cannot_mix_commits(
    world: SimpleNamespace, weight_files: dict[str, bytes], weight_files_v2: dict[str, bytes]
) -> None:
    new = world.hub.add_commit(WEIGHTS, weight_files_v2, branch=None)
    world.hub.move_branch_after(WEIGHTS, "main", new, after="/api/models/org/weights")
    snap = resolve_weights(WEIGHTS)
    assert snap.commit == world.weights_commit
    assert snap.files[SAFETENSORS].sha256 == _sha(weight_files[SAFETENSORS])
    assert (snap.root / SAFETENSORS).read_bytes() == weight_files[SAFETENSORS]
    # the branch really moved: the next resolution sees the new commit, whole
    snap2 = resolve_weights(WEIGHTS)
    assert snap2.commit == new
    assert snap2.files[SAFETENSORS].sha256 == _sha(weight_files_v2[SAFETENSORS])


def test_code_branch_moved_between_requests_cannot_mix_commits(world: SimpleNamespace) -> None:
    evil = world.hub.add_commit(
        CODE, {"pipeline.py": b"import os; os.system('id')\n"}, base=world.code_commit, branch=None
    )
    world.hub.move_branch_after(CODE, "main", evil, after="/api/models/org/code")
    code = resolve_code(CODE, kind="hub")
    assert code.commit == world.code_commit
    assert code.source_bytes == CODE_FILES["pipeline.py"]


def test_hub_answering_another_commit_for_a_pin_is_refused() -> None:
    info = SimpleNamespace(sha="b" * 40, siblings=[])
    with pytest.raises(IntegrityError, match="pinned commit"):
        _hf.parse_listing("org/x", "model", info, requested="a" * 40)


def test_file_served_from_another_commit_is_refused_and_evicted(world: SimpleNamespace) -> None:
    other = world.hub.add_commit(CODE, {"pipeline.py": b"# other\n"}, base=world.code_commit, branch=None)
    world.hub.override_headers({"X-Repo-Commit": other}, contains="/pipeline.py", method="HEAD", times=1)
    with pytest.raises(IntegrityError, match="another commit"):
        resolve_code(CODE, kind="hub")
    assert untrusted_cache_entries(world.cache) == []
    assert not (world.cache / CODE_FOLDER / "snapshots" / other / "pipeline.py").exists()
    assert resolve_code(CODE, kind="hub").source_bytes == CODE_FILES["pipeline.py"]


@pytest.mark.parametrize("bad", ["../../../escape.json", "unet/../../x.json", "a\\b.json"])
def test_listing_with_unsafe_path_refused_before_any_download(
    world: SimpleNamespace, bad: str, tmp_path: Path
) -> None:
    world.hub.add_commit("org/traversal", {"model_index.json": b"{}", "w.safetensors": b"x", bad: b"{}"})
    with pytest.raises(FetchError, match="unsafe"):
        resolve_weights("org/traversal")
    assert world.hub.count(contains="/resolve/") == 0
    assert not list(tmp_path.rglob("escape.json")) and not list(tmp_path.rglob("x.json"))


# ------------------------------------------------------------------------------------------------
# Hostile transport: tampered, truncated, failing, slow


def test_tampered_lfs_body_refused_and_nothing_trusted_left(
    world: SimpleNamespace, weight_files: dict[str, bytes]
) -> None:
    world.hub.tamper(SAFETENSORS, times=1)
    with pytest.raises(IntegrityError, match="sha256") as exc:
        resolve_weights(WEIGHTS)
    assert "diffusion_pytorch_model.safetensors" in str(exc.value)
    assert untrusted_cache_entries(world.cache) == []
    assert _sha(weight_files[SAFETENSORS]) not in blob_names(world.cache, WEIGHTS_FOLDER)
    assert not os.path.lexists(
        world.cache / WEIGHTS_FOLDER / "snapshots" / world.weights_commit / SAFETENSORS
    )
    before = world.hub.count(server="cdn", method="GET")
    snap = resolve_weights(WEIGHTS)  # the next load downloads again, and gets the right bytes
    assert world.hub.count(server="cdn", method="GET") == before + 1
    assert snap.files[SAFETENSORS].sha256 == _sha(weight_files[SAFETENSORS])


def test_tampered_small_file_refused_by_git_sha1(world: SimpleNamespace) -> None:
    world.hub.tamper("pipeline.py", times=1)
    with pytest.raises(IntegrityError, match="git blob"):
        resolve_code(CODE, kind="hub")
    assert untrusted_cache_entries(world.cache) == []
    assert git_blob_sha1(CODE_FILES["pipeline.py"]) not in blob_names(world.cache, CODE_FOLDER)
    assert resolve_code(CODE, kind="hub").source_bytes == CODE_FILES["pipeline.py"]


def test_tampered_community_file_refused(world: SimpleNamespace) -> None:
    world.hub.tamper("v0.42.1/one_step_unet.py", times=1)
    with pytest.raises(IntegrityError):
        resolve_code("one_step_unet", kind="community")
    assert untrusted_cache_entries(world.cache) == []
    assert resolve_code("one_step_unet", kind="community").source_bytes == EXAMPLE_PIPELINE_SOURCE.encode()


def test_truncated_download_refused_without_partial_file(world: SimpleNamespace) -> None:
    world.hub.truncate(SAFETENSORS, at=1000)
    with pytest.raises(FetchError) as exc:
        resolve_weights(WEIGHTS)
    assert isinstance(exc.value, PipewardenError) and exc.value.rule and exc.value.fix
    assert untrusted_cache_entries(world.cache) == []
    assert not list(world.cache.rglob("*.incomplete"))
    assert not os.path.lexists(
        world.cache / WEIGHTS_FOLDER / "snapshots" / world.weights_commit / SAFETENSORS
    )
    world.hub.clear_switches()
    assert SAFETENSORS in resolve_weights(WEIGHTS).files


@pytest.mark.parametrize("path", [SAFETENSORS, "model_index.json"])
def test_short_body_with_consistent_headers_refused(world: SimpleNamespace, path: str) -> None:
    world.hub.truncate(path, at=10, short=True)
    with pytest.raises(FetchError, match="incomplete"):
        resolve_weights(WEIGHTS)
    assert untrusted_cache_entries(world.cache) == []
    assert not os.path.lexists(world.cache / WEIGHTS_FOLDER / "snapshots" / world.weights_commit / path)


def test_truncated_once_resumes_and_is_verified(
    world: SimpleNamespace, weight_files: dict[str, bytes]
) -> None:
    world.hub.truncate(SAFETENSORS, at=1000, times=1)
    snap = resolve_weights(WEIGHTS)
    assert snap.files[SAFETENSORS].sha256 == _sha(weight_files[SAFETENSORS])
    assert world.hub.count(server="cdn", method="GET") == 2  # first attempt + ranged resume


@pytest.mark.parametrize(
    ("where", "kw"),
    [
        ("listing", {"contains": "/api/models/"}),
        ("resolve", {"contains": "/resolve/"}),
        ("cdn", {"server": "cdn"}),
    ],
)
def test_http_500_ends_in_fetch_error_and_empty_cache(world: SimpleNamespace, where: str, kw: dict) -> None:
    world.hub.fail(500, **kw)
    with pytest.raises(FetchError) as exc:
        resolve_weights(WEIGHTS)
    assert exc.value.rule and exc.value.fix
    assert untrusted_cache_entries(world.cache) == []
    snap_dir = world.cache / WEIGHTS_FOLDER / "snapshots" / world.weights_commit
    assert not os.path.lexists(snap_dir / SAFETENSORS)
    world.hub.clear_switches()
    assert resolve_weights(WEIGHTS).commit == world.weights_commit


def test_404s_are_fetch_errors(world: SimpleNamespace) -> None:
    with pytest.raises(FetchError, match="not found"):
        resolve_weights("org/missing")
    with pytest.raises(FetchError, match="no such revision"):
        resolve_weights(WEIGHTS, revision="no-such-branch")
    world.hub.fail(404, contains="/resolve/", method="HEAD")
    with pytest.raises(FetchError):
        resolve_weights(WEIGHTS)


def test_slow_hub_still_one_consistent_commit(world: SimpleNamespace, weight_files: dict[str, bytes]) -> None:
    world.hub.slow(0.2, times=4)
    snap = resolve_weights(WEIGHTS)
    assert snap.commit == world.weights_commit
    assert snap.files[SAFETENSORS].sha256 == _sha(weight_files[SAFETENSORS])


def test_stalled_hub_api_times_out_with_fetch_error(
    world: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_hf, "API_TIMEOUT_S", 0.3)
    world.hub.slow(1.0, contains="/api/models/")
    with pytest.raises(FetchError, match="Timeout"):
        resolve_weights(WEIGHTS)
    assert world.hub.count(contains="/resolve/") == 0


# ------------------------------------------------------------------------------------------------
# Cache: offline, re-verification


def test_offline_load_from_cache_alone(world: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    online_w = resolve_weights(WEIGHTS)
    online_c = resolve_code(CODE, kind="hub")
    online_m = resolve_code("one_step_unet", kind="community")
    set_offline(monkeypatch)
    world.hub.fail(500)  # any request would now fail loudly
    before = len(world.hub.requests)
    assert resolve_weights(WEIGHTS) == online_w
    assert resolve_weights(WEIGHTS, revision=world.weights_commit) == online_w
    off_c = resolve_code(CODE, kind="hub")
    assert (off_c.commit, off_c.source_bytes, off_c.sha256) == (
        online_c.commit,
        online_c.source_bytes,
        online_c.sha256,
    )
    # offline knows only the files that were downloaded (the code repo's LFS asset was not)
    assert {k: v for k, v in online_c.files.items() if k != "assets/big.safetensors"} == dict(off_c.files)
    assert resolve_code("one_step_unet", kind="community") == online_m
    assert len(world.hub.requests) == before


def test_offline_env_var_set_after_import_is_honoured(
    world: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolve_weights(WEIGHTS)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # huggingface_hub's constant is still False
    before = len(world.hub.requests)
    resolve_weights(WEIGHTS)
    assert len(world.hub.requests) == before


def test_offline_without_cache_is_a_clear_fetch_error(
    world: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_offline(monkeypatch)
    with pytest.raises(FetchError, match="offline"):
        resolve_weights(WEIGHTS)
    with pytest.raises(FetchError, match="offline"):
        resolve_code("one_step_unet", kind="community")
    assert world.hub.requests == []


@pytest.mark.parametrize("offline", [False, True])
def test_one_byte_change_of_cached_blob_refused_on_next_load(
    world: SimpleNamespace, weight_files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch, offline: bool
) -> None:
    resolve_weights(WEIGHTS)
    blob = world.cache / WEIGHTS_FOLDER / "blobs" / _sha(weight_files[SAFETENSORS])
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))
    set_offline(monkeypatch, offline)
    with pytest.raises(IntegrityError, match="sha256|hash"):
        resolve_weights(WEIGHTS)
    assert not blob.exists()
    assert untrusted_cache_entries(world.cache) == []
    set_offline(monkeypatch, False)
    assert resolve_weights(WEIGHTS).files[SAFETENSORS].sha256 == _sha(weight_files[SAFETENSORS])


def test_changed_cached_small_file_refused_offline_by_git_sha1(
    world: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolve_code(CODE, kind="hub")
    blob = world.cache / CODE_FOLDER / "blobs" / git_blob_sha1(CODE_FILES["pipeline.py"])
    blob.write_bytes(CODE_FILES["pipeline.py"].replace(b"class ", b"klass ", 1))
    set_offline(monkeypatch)
    with pytest.raises(IntegrityError, match="git SHA-1"):
        resolve_code(CODE, kind="hub")
    assert not blob.exists()


def test_snapshot_link_redirected_outside_blobs_refused_and_target_untouched(
    world: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    resolve_code(CODE, kind="hub")
    outside = tmp_path / "victim.py"
    outside.write_bytes(b"precious")
    link = world.cache / CODE_FOLDER / "snapshots" / world.code_commit / "pipeline.py"
    link.unlink()
    link.symlink_to(outside)
    for offline in (True, False):
        set_offline(monkeypatch, offline)
        with pytest.raises(IntegrityError, match="outside"):
            resolve_code(CODE, kind="hub")
        assert outside.read_bytes() == b"precious"
        if not offline:
            break
        link.symlink_to(outside)  # evicted by the offline attempt; plant it again for the online one


def _move_to_shared_store(cache: Path, blob: Path) -> Path:
    """Re-lay a repo blob the way huggingface_hub's shared Xet store does: blobs/<etag> -> ../../blobs/xx/<hash>."""
    xet_hash = hashlib.sha256(b"xet:" + blob.name.encode()).hexdigest()
    store = cache / "blobs" / xet_hash[:2] / xet_hash
    store.parent.mkdir(parents=True, exist_ok=True)
    os.replace(blob, store)
    blob.symlink_to(os.path.relpath(store, blob.parent))
    return store


@pytest.mark.parametrize("offline", [False, True])
def test_blob_in_hf_shared_xet_store_is_followed_and_verified(
    world: SimpleNamespace, weight_files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch, offline: bool
) -> None:
    resolve_weights(WEIGHTS)
    blob = world.cache / WEIGHTS_FOLDER / "blobs" / _sha(weight_files[SAFETENSORS])
    store = _move_to_shared_store(world.cache, blob)
    set_offline(monkeypatch, offline)
    assert resolve_weights(WEIGHTS).files[SAFETENSORS].sha256 == _sha(weight_files[SAFETENSORS])
    data = bytearray(store.read_bytes())
    data[-1] ^= 0x01
    store.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        resolve_weights(WEIGHTS)
    assert not store.exists() and not os.path.lexists(blob)  # the bad shared copy is gone too


def test_cache_downloaded_by_diffusers_is_reused(
    world: SimpleNamespace, weight_files: dict[str, bytes]
) -> None:
    """A file already in the standard HF cache (any client) is found, re-verified, and not re-fetched."""
    from huggingface_hub import hf_hub_download

    hf_hub_download(WEIGHTS, SAFETENSORS)  # what diffusers' from_pretrained does under the hood
    cdn_before = world.hub.count(server="cdn")
    snap = resolve_weights(WEIGHTS)
    assert world.hub.count(server="cdn") == cdn_before
    assert snap.files[SAFETENSORS].sha256 == _sha(weight_files[SAFETENSORS])


def test_offline_load_of_a_cache_filled_by_diffusers(
    world: SimpleNamespace, weight_files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import snapshot_download

    snapshot_download(WEIGHTS, allow_patterns=["*.json", "*.safetensors", "*.bin"])  # writes refs/main too
    set_offline(monkeypatch)
    before = len(world.hub.requests)
    snap = resolve_weights(WEIGHTS)
    assert len(world.hub.requests) == before
    assert snap.commit == world.weights_commit
    assert set(snap.files) == {k for k in weight_files if k.endswith((".json", ".safetensors"))}
    assert snap.files[SAFETENSORS].sha256 == _sha(weight_files[SAFETENSORS])


# ------------------------------------------------------------------------------------------------
# Concurrency


def test_eight_threads_same_repo_identical_results_one_copy(
    world: SimpleNamespace, weight_files: dict[str, bytes]
) -> None:
    world.hub.slow(0.05, contains="/resolve/")  # widen the race window
    barrier = threading.Barrier(8)
    results: list[object] = [None] * 8

    def work(i: int) -> None:
        barrier.wait()
        try:
            results[i] = (resolve_weights(WEIGHTS), resolve_code(CODE, kind="hub"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            results[i] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert all(r == results[0] for r in results)
    wanted = {k for k in weight_files if k.endswith((".json", ".safetensors"))}
    expected_blobs = sorted(
        _sha(weight_files[k]) if k.endswith(".safetensors") else git_blob_sha1(weight_files[k])
        for k in wanted
    )
    assert blob_names(world.cache, WEIGHTS_FOLDER) == expected_blobs
    assert untrusted_cache_entries(world.cache) == []
    assert world.hub.count(server="cdn", method="GET") == 1  # the weights were downloaded once, not 8 times


# ------------------------------------------------------------------------------------------------
# Progress


def test_quiet_env_silences_all_bars(
    world: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(_hf, "HASH_PROGRESS_MIN_BYTES", 0)
    monkeypatch.setenv("PIPEWARDEN_QUIET", "1")
    resolve_weights(WEIGHTS)
    assert "verifying" not in capfd.readouterr().err


class _FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("tty", [True, False])
@pytest.mark.parametrize("quiet_var", [None, "HF_HUB_DISABLE_PROGRESS_BARS", "PIPEWARDEN_QUIET"])
def test_hashing_progress_for_large_files(
    world: SimpleNamespace,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    quiet_var: str | None,
    tty: bool,
) -> None:
    """The verifying bar is drawn like the hub's: on a terminal only, silenced by either variable."""
    import importlib

    hf_tqdm_module = importlib.import_module("huggingface_hub.utils.tqdm")

    monkeypatch.setattr(_hf, "HASH_PROGRESS_MIN_BYTES", 1000)
    monkeypatch.delenv("PIPEWARDEN_QUIET", raising=False)
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    monkeypatch.setattr(
        hf_tqdm_module, "HF_HUB_DISABLE_PROGRESS_BARS", None
    )  # read at import by huggingface_hub
    if quiet_var:
        monkeypatch.setenv(quiet_var, "1")
    terminal = _FakeTerminal()
    if tty:
        monkeypatch.setattr(sys, "stderr", terminal)
    resolve_weights(WEIGHTS)
    err = terminal.getvalue() + capfd.readouterr().err
    if quiet_var or not tty:
        assert "verifying" not in err
    else:
        assert "verifying org/weights@" in err and "diffusion_pytorch_model.safetensors" in err
