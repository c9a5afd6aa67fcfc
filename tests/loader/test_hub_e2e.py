"""load_pipeline end to end against the fake hub: every custom_pipeline form, pins, refusals, threads."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import pipewarden
from pipewarden._fixtures import EXAMPLE_PIPELINE_SOURCE, build_weights
from pipewarden.errors import IntegrityError, NotAllowedError, TrustRequiredError
from pipewarden.loader.hub import COMMUNITY_MIRROR_ID
from tests.fakehub import FakeHub, blob_names, untrusted_cache_entries, use_fake_hub

SOURCE = EXAMPLE_PIPELINE_SOURCE.encode()
SOURCE_SHA = hashlib.sha256(SOURCE).hexdigest()
SAFETENSORS = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("e2e-weights")
    build_weights(d)
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, weight_files: dict[str, bytes]):
    with FakeHub() as hub:
        cache = use_fake_hub(monkeypatch, hub, tmp_path)
        w = SimpleNamespace(hub=hub, cache=cache, local_weights=tmp_path / "local-weights")
        build_weights(w.local_weights)
        w.weights_commit = hub.add_commit("org/weights", weight_files)
        w.code_commit = hub.add_commit("org/code", {"pipeline.py": SOURCE, "README.md": b"# code\n"})
        w.mirror_commit = hub.add_commit(
            COMMUNITY_MIRROR_ID, {"v0.42.1/one_step_unet.py": SOURCE}, repo_type="dataset"
        )
        yield w


def _run(pipe: object) -> torch.Tensor:
    torch.manual_seed(0)  # DDPMScheduler.step draws its variance noise from the global generator
    out = pipe(generator=torch.Generator().manual_seed(0), num_inference_steps=1)  # type: ignore[operator]
    assert isinstance(out, torch.Tensor) and out.shape == (1, 3, 8, 8) and torch.isfinite(out).all()
    return out


@pytest.mark.parametrize("custom_pipeline", ["org/code", "one_step_unet"])
def test_each_hub_form_loads_and_runs(world: SimpleNamespace, custom_pipeline: str) -> None:
    gates: list[str] = []
    pipe = pipewarden.load_pipeline(
        "org/weights",
        custom_pipeline=custom_pipeline,
        trust_remote_code=True,
        pipeline_sha256=SOURCE_SHA,
        isolation="inprocess",
        on_gate=lambda gate, verdict: gates.append(f"{gate}: {verdict}"),
    )
    _run(pipe)
    assert any(world.weights_commit in g for g in gates)


def test_hub_code_with_local_weights_and_pinned_revisions(world: SimpleNamespace) -> None:
    pipe = pipewarden.load_pipeline(
        str(world.local_weights),
        custom_pipeline="org/code",
        custom_revision=world.code_commit,
        trust_remote_code=True,
        pipeline_sha256=SOURCE_SHA,
        isolation="inprocess",
    )
    _run(pipe)
    pipe2 = pipewarden.load_pipeline(
        "org/weights",
        revision=world.weights_commit,
        custom_pipeline="one_step_unet",
        custom_revision="0.42.1",
        trust_remote_code=True,
        pipeline_sha256=SOURCE_SHA,
        isolation="inprocess",
    )
    _run(pipe2)


@pytest.mark.parametrize("custom_pipeline", ["org/code", "one_step_unet"])
def test_no_opt_in_refused_before_any_request(world: SimpleNamespace, custom_pipeline: str) -> None:
    with pytest.raises(TrustRequiredError):
        pipewarden.load_pipeline(
            "org/weights", custom_pipeline=custom_pipeline, pipeline_sha256=SOURCE_SHA, isolation="inprocess"
        )
    assert world.hub.requests == []


@pytest.mark.parametrize(
    ("custom_pipeline", "commit_attr"), [("org/code", "code_commit"), ("one_step_unet", "mirror_commit")]
)
def test_unpinned_code_refused_with_commit_and_sha256_to_pin(
    world: SimpleNamespace, custom_pipeline: str, commit_attr: str
) -> None:
    with pytest.raises(NotAllowedError) as exc:
        pipewarden.load_pipeline(
            "org/weights", custom_pipeline=custom_pipeline, trust_remote_code=True, isolation="inprocess"
        )
    msg = str(exc.value)
    assert SOURCE_SHA in msg and getattr(world, commit_attr) in msg


def test_code_changed_on_branch_refused_by_pin(world: SimpleNamespace) -> None:
    world.hub.add_commit("org/code", {"pipeline.py": SOURCE + b"\n# changed\n"}, base=world.code_commit)
    with pytest.raises(IntegrityError, match="pipeline_sha256"):
        pipewarden.load_pipeline(
            "org/weights",
            custom_pipeline="org/code",
            trust_remote_code=True,
            pipeline_sha256=SOURCE_SHA,
            isolation="inprocess",
        )


def test_tampered_weights_refused_end_to_end_then_recovers(world: SimpleNamespace) -> None:
    world.hub.tamper(SAFETENSORS, times=1)
    kw = dict(
        custom_pipeline="org/code", trust_remote_code=True, pipeline_sha256=SOURCE_SHA, isolation="inprocess"
    )
    with pytest.raises(IntegrityError):
        pipewarden.load_pipeline("org/weights", **kw)
    assert untrusted_cache_entries(world.cache) == []
    _run(pipewarden.load_pipeline("org/weights", **kw))


@pytest.mark.slow
def test_eight_threads_loading_the_same_pipeline(
    world: SimpleNamespace, weight_files: dict[str, bytes]
) -> None:
    barrier = threading.Barrier(8)
    pipes: list[object] = [None] * 8

    def work(i: int) -> None:
        barrier.wait()
        try:
            pipes[i] = pipewarden.load_pipeline(
                "org/weights",
                custom_pipeline="org/code",
                trust_remote_code=True,
                pipeline_sha256=SOURCE_SHA,
                isolation="inprocess",
            )
        except BaseException as exc:  # noqa: BLE001 - reported below
            pipes[i] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    errors = [p for p in pipes if isinstance(p, BaseException) or p is None]
    assert not errors, errors
    # identical results: same weights bit for bit, same output (run one after the other: the
    # concurrent *loading* is under test, not thread-level float determinism of torch)
    ref_state = pipes[0].unet.state_dict()  # type: ignore[attr-defined]
    for p in pipes[1:]:
        state = p.unet.state_dict()  # type: ignore[attr-defined]
        assert state.keys() == ref_state.keys() and all(torch.equal(state[k], ref_state[k]) for k in state)
    outs = [_run(p) for p in pipes]
    assert all(torch.equal(o, outs[0]) for o in outs)
    assert len(blob_names(world.cache, "models--org--weights")) == len(weight_files)
    assert len(blob_names(world.cache, "models--org--code")) == 2
    assert world.hub.count(server="cdn", method="GET") == 1


@pytest.mark.slow
def test_hub_weights_in_isolated_worker(world: SimpleNamespace) -> None:
    """The default isolation reads the HF cache snapshot (links into blobs/) inside the worker."""
    pipe = pipewarden.load_pipeline(
        "org/weights", custom_pipeline="one_step_unet", trust_remote_code=True, pipeline_sha256=SOURCE_SHA
    )
    try:
        out = pipe(num_inference_steps=1)
        assert isinstance(out, torch.Tensor) and out.shape == (1, 3, 8, 8)
    finally:
        close = getattr(pipe, "close", None)
        if callable(close):
            close()


def test_lock_cli_locks_hub_sources_and_load_enforces_them(world: SimpleNamespace, tmp_path: Path) -> None:
    from pipewarden.cli import main

    lock = tmp_path / "pipewarden.lock"
    assert main(["lock", "--weights", "org/weights", "--custom-pipeline", "org/code", "--out", str(lock)]) == 0
    text = lock.read_text()
    assert world.weights_commit in text and world.code_commit in text
    pipe = pipewarden.load_pipeline(
        "org/weights", custom_pipeline="org/code", trust_remote_code=True, lockfile=lock, isolation="inprocess"
    )
    _run(pipe)
    # The branch moves to new code: the lock (not a sha256 argument) refuses it.
    world.hub.add_commit("org/code", {"pipeline.py": SOURCE + b"\\n# changed\\n", "README.md": b"# code\\n"})
    with pytest.raises(IntegrityError):
        pipewarden.load_pipeline(
            "org/weights", custom_pipeline="org/code", trust_remote_code=True, lockfile=lock, isolation="inprocess"
        )


# -- admission order and the kill switch (issue 13 part 1, issue 11 part 4, issue 14 part 3) ----------


def _weight_requests(hub: FakeHub) -> int:
    return hub.count(contains="org/weights") + hub.count(server="cdn")


@pytest.mark.parametrize("custom_pipeline", ["org/code", "one_step_unet"])
@pytest.mark.parametrize("pin", [None, "0" * 64], ids=["unpinned", "mis-pinned"])
def test_code_pin_is_checked_before_any_weight_request(
    world: SimpleNamespace, custom_pipeline: str, pin: str | None
) -> None:
    with pytest.raises((NotAllowedError, IntegrityError)) as exc:
        pipewarden.load_pipeline(
            "org/weights", custom_pipeline=custom_pipeline, trust_remote_code=True, pipeline_sha256=pin, isolation="inprocess"
        )
    assert exc.value.rule == ("trust.code-unpinned" if pin is None else "trust.pin-mismatch")
    assert world.hub.count() > 0  # the code was fetched ...
    assert _weight_requests(world.hub) == 0, world.hub.requests  # ... and not one weight request was made
    # the same load, pinned, does reach the weights: the counter sees them
    pipewarden.load_pipeline(
        "org/weights", custom_pipeline=custom_pipeline, trust_remote_code=True, pipeline_sha256=SOURCE_SHA, isolation="inprocess"
    )
    assert _weight_requests(world.hub) > 0


def test_kill_switch_refuses_every_custom_pipeline_whatever_its_source(
    world: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PIPEWARDEN_DISABLE_REMOTE_CODE has one meaning: no custom pipeline runs, local ones included.
    Nothing is fetched, nothing is compiled, even with the opt-in and a correct pin."""
    import pipewarden.sandbox as sb

    compiled: list[object] = []
    real_load_class = sb.load_class
    monkeypatch.setattr(sb, "load_class", lambda *a, **k: compiled.append(a) or pytest.fail("compiled"))
    local = tmp_path / "local-code"
    local.mkdir()
    (local / "pipeline.py").write_bytes(SOURCE)
    monkeypatch.setenv("PIPEWARDEN_DISABLE_REMOTE_CODE", "1")
    for custom_pipeline, weights in [
        (str(local), str(world.local_weights)),
        (str(local / "pipeline.py"), str(world.local_weights)),
        ("org/code", "org/weights"),
        ("one_step_unet", "org/weights"),
    ]:
        for isolation in ("inprocess", "process"):
            with pytest.raises(NotAllowedError) as exc:
                pipewarden.load_pipeline(
                    weights, custom_pipeline=custom_pipeline, trust_remote_code=True, pipeline_sha256=SOURCE_SHA, isolation=isolation
                )
            assert exc.value.rule == "trust.kill-switch" and "PIPEWARDEN_DISABLE_REMOTE_CODE" in str(exc.value)
    assert world.hub.requests == [] and compiled == []
    # switched off ("0"), the same local load runs: the refusals above were the switch's
    monkeypatch.setenv("PIPEWARDEN_DISABLE_REMOTE_CODE", "0")
    monkeypatch.setattr(sb, "load_class", real_load_class)
    pipe = pipewarden.load_pipeline(
        str(world.local_weights), custom_pipeline=str(local), trust_remote_code=True, pipeline_sha256=SOURCE_SHA, isolation="inprocess"
    )
    _run(pipe)


@pytest.mark.slow
def test_process_mode_with_hub_lockfile_end_to_end(world: SimpleNamespace, tmp_path: Path) -> None:
    """lockfile= in the default process mode: the lock pins the code and every weight, which the
    worker re-verifies; a lock whose weights digest differs is refused."""
    from pipewarden.cli import main

    lock = tmp_path / "pipewarden.lock"
    assert main(["lock", "--weights", "org/weights", "--custom-pipeline", "one_step_unet", "--out", str(lock)]) == 0
    pipe = pipewarden.load_pipeline("org/weights", custom_pipeline="one_step_unet", trust_remote_code=True, lockfile=lock)
    try:
        out = _run(pipe)
    finally:
        pipe.close()
    ref = pipewarden.load_pipeline(
        "org/weights", custom_pipeline="one_step_unet", trust_remote_code=True, lockfile=lock, isolation="inprocess"
    )
    assert torch.equal(out, _run(ref))
    digest = hashlib.sha256(world.hub.file("org/weights", world.weights_commit, SAFETENSORS).data).hexdigest()
    lock.write_text(lock.read_text().replace(digest, "0" * 64))
    with pytest.raises(IntegrityError, match=SAFETENSORS):
        pipewarden.load_pipeline("org/weights", custom_pipeline="one_step_unet", trust_remote_code=True, lockfile=lock)
