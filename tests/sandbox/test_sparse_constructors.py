"""torch's sparse constructors are not admitted (red team round 5, flaw 6).

``torch.sparse_coo_tensor`` and its compressed siblings take raw indices that torch does not
validate unless ``check_invariants=True``; ``dense.add_(sparse)`` then writes past the end of
``dense``'s heap block (live in plain torch: element 6 of a 4-element view is written; with
another layout the process aborts). The constructors are left out of the generated operator
allowlist (``_gen_torch_ops.EXCLUDED``), so a pipeline calling one is refused with a named rule
before anything is built -- checked in a child process, so a regression that corrupts the heap
fails the test instead of aborting pytest.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")

CONSTRUCTORS = {
    "sparse_coo_tensor": "torch.sparse_coo_tensor(torch.tensor([[6]]), torch.tensor([7.0]), (4,))",
    "sparse_csr_tensor": "torch.sparse_csr_tensor(torch.tensor([0, 1]), torch.tensor([9]), torch.tensor([7.0]), (1, 4))",
    "sparse_csc_tensor": "torch.sparse_csc_tensor(torch.tensor([0, 1]), torch.tensor([9]), torch.tensor([7.0]), (4, 1))",
    "sparse_bsr_tensor": "torch.sparse_bsr_tensor(torch.tensor([0, 1]), torch.tensor([9]), torch.ones(1, 1, 1), (1, 4))",
    "sparse_bsc_tensor": "torch.sparse_bsc_tensor(torch.tensor([0, 1]), torch.tensor([9]), torch.ones(1, 1, 1), (4, 1))",
    "sparse_compressed_tensor": (
        "torch.sparse_compressed_tensor(torch.tensor([0, 1]), torch.tensor([9]), torch.tensor([7.0]), (1, 4),"
        " layout=torch.sparse_csr)"
    ),
}

CHILD = '''
import json
import sys
from pipewarden.errors import PipewardenError
from pipewarden.sandbox import load_class

SRC = """
import torch
from diffusers import DiffusionPipeline


class P(DiffusionPipeline):
    def __init__(self):
        super().__init__()

    def __call__(self):
        buf = torch.zeros(16)
        view = buf[:4]
        view.add_(%s)
        return buf
"""
for name, expr in json.loads(sys.argv[1]).items():
    try:
        out = load_class(SRC % expr, filename="p.py")()()
    except PipewardenError as exc:
        print(name, "REFUSED", exc.rule, flush=True)
        continue
    print(name, "RAN", out.tolist(), flush=True)
'''


@pytest.fixture(scope="module")
def child_results(tmp_path_factory) -> tuple[subprocess.CompletedProcess[str], dict[str, list[str]]]:
    """Every constructor tried in one child process (a heap write there cannot abort pytest)."""
    script = tmp_path_factory.mktemp("sparse") / "child.py"
    script.write_text(CHILD)
    proc = subprocess.run(
        [sys.executable, str(script), json.dumps(CONSTRUCTORS)], capture_output=True, text=True, timeout=300
    )
    return proc, {line.split()[0]: line.split()[1:] for line in proc.stdout.splitlines() if line.strip()}


def test_the_door_is_live_in_plain_torch(tmp_path):
    """Without the sandbox the unchecked index lands outside the 4-element view."""
    script = tmp_path / "plain.py"
    script.write_text(
        textwrap.dedent(
            """
            import torch
            buf = torch.zeros(16)
            buf[:4].add_(torch.sparse_coo_tensor(torch.tensor([[6]]), torch.tensor([7.0]), (4,)))
            print(buf[6].item())
            """
        )
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "7.0", proc.stderr[-500:]


@pytest.mark.parametrize("name", sorted(CONSTRUCTORS))
def test_sparse_constructor_refused_without_touching_memory(name, child_results):
    proc, results = child_results
    assert proc.returncode == 0, f"child died ({proc.returncode}): {proc.stderr[-800:]}"
    assert results.get(name, [])[:2] == ["REFUSED", "facade.not-allowlisted"], (
        proc.stdout + proc.stderr[-800:]
    )


def test_operator_list_leaves_out_the_sparse_constructors():
    from pipewarden.sandbox.policy import torch_operator_data
    from pipewarden.sandbox.policy._gen_torch_ops import EXCLUDED

    assert set(CONSTRUCTORS) <= set(EXCLUDED)
    _, ops = torch_operator_data()
    assert "add" in ops and not set(EXCLUDED) & ops
