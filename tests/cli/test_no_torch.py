"""CI without torch: audit, verify, lock, allowlist (and keygen, sign, doctor) never import torch.

``verify`` of an OpenSSF model-signing key signature is included: it needs neither torch nor the
``model-signing`` extra (the signature is made with the library in the fixture, outside the runner).

Each command runs in a fresh interpreter where importing torch, diffusers, transformers, numpy,
PIL or safetensors fails (as in an install without the ``run`` extra); the command must still do
its job, and none of those modules may be in ``sys.modules`` afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[2] / "src")
HEAVY = ("torch", "diffusers", "transformers", "numpy", "PIL", "safetensors")

RUNNER = '''
import importlib.abc, json, sys
HEAVY = tuple(sys.argv.pop(1).split(','))

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: audit-only install)")
        return None

sys.meta_path.insert(0, Block())
from pipewarden.cli import main
code = main(sys.argv[1:])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
print("@@" + json.dumps({"code": code, "loaded": loaded}))
'''


def _run(*argv: str, cwd: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run([sys.executable, "-c", RUNNER, ",".join(HEAVY), *argv], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)
    tail = [line for line in proc.stdout.splitlines() if line.startswith("@@")]
    assert tail, proc.stdout + proc.stderr
    result = json.loads(tail[-1][2:])
    result["stderr"] = proc.stderr
    return result


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_weights):
    import shutil

    from pipewarden._fixtures import write_example_pipeline

    root = tmp_path_factory.mktemp("notorch")
    write_example_pipeline(root / "my_pipeline")
    shutil.copytree(tiny_weights, root / "weights")
    # An OpenSSF model-signing key signature (made here with the model-signing library).
    import model_signing
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
        PublicFormat,
    )

    key = ec.generate_private_key(ec.SECP256R1())
    (root / "ml.pem").write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    (root / "ml.pub.pem").write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    write_example_pipeline(root / "ms_pipeline")
    model_signing.signing.Config().use_elliptic_key_signer(private_key=root / "ml.pem").sign(
        root / "ms_pipeline", root / "ms_pipeline" / "model.sig")
    return root


def test_commands_for_ci_never_import_torch(workspace):
    steps = [
        ("audit", "my_pipeline"),
        ("audit", "--format", "sarif", "--output", "audit.sarif", "my_pipeline"),
        ("keygen", "--name", "alice", "--out", "keys"),
        ("allowlist", "add-signer", "org.toml", "--name", "alice", "--public-key", "keys/alice.pub"),
        ("allowlist", "allow", "org.toml", "--source", "local:**", "--signers", "alice", "--threshold", "1"),
        ("allowlist", "show", "org.toml"),
        ("sign", "my_pipeline", "--key", "keys/alice.key"),
        ("verify", "my_pipeline", "--allowlist", "org.toml", "--source", "my_pipeline"),
        ("allowlist", "add-signer", "ms.toml", "--name", "ml", "--model-signing-key", "ml.pub.pem"),
        ("allowlist", "allow", "ms.toml", "--source", "local:**", "--signers", "ml", "--threshold", "1"),
        ("verify", "ms_pipeline", "--allowlist", "ms.toml", "--source", "ms_pipeline"),
        ("lock", "--weights", "weights", "--custom-pipeline", "my_pipeline", "--out", "pipewarden.lock"),
        ("doctor", "--json"),
    ]
    env_state = dict(PIPEWARDEN_STATE_DIR=str(workspace / "state"))
    os.environ.update(env_state)
    try:
        for argv in steps:
            result = _run(*argv, cwd=workspace)
            assert result["code"] == 0, (argv, result["stderr"])
            assert result["loaded"] == [], (argv, result["loaded"])
    finally:
        for k in env_state:
            os.environ.pop(k, None)
    assert (workspace / "pipewarden.lock").is_file() and (workspace / "audit.sarif").is_file()


def test_audit_run_without_the_run_extra_is_a_clean_usage_error(workspace):
    result = _run("audit", "--run", "my_pipeline", cwd=workspace)
    assert result["code"] == 2, result["stderr"]
    assert "pipewarden[run]" in result["stderr"] and "load.run-extra-missing" in result["stderr"]
    assert "Traceback" not in result["stderr"]
    assert result["loaded"] == []
