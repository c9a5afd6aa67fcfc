"""Regenerate ``torch_ops.toml``: the public C tensor operators of the installed torch.

``[modules.torch] variable_functions`` (``torch.add``, ``torch.cat``, ...) and ``[types."torch.Tensor"]
tensor_ops`` (``x.add``, ``x.add_``) admit these names. They are generated data, not a rule evaluated
at run time, so a torch upgrade shows up as a diff to review::

    python -m pipewarden.sandbox.policy._gen_torch_ops > src/pipewarden/sandbox/policy/torch_ops.toml

At run time the sandbox admits the shipped names that the installed torch also has (never a name
the file does not list); ``tests/sandbox/test_policy_strict.py`` checks that the file matches the
installed torch. Trusted code (imports torch); never run on the audit path.
"""

from __future__ import annotations

import sys

from pipewarden.sandbox.policy._gen_common import document, name_list, preamble

#: Operators left out of the allowlist, with the reason (reviewed; none is used by the corpus).
#: The sparse constructors take raw indices that torch does not validate unless
#: ``check_invariants=True`` (torch's own warning: "Memory errors (e.g. SEGFAULT) will occur"):
#: ``dense.add_(torch.sparse_coo_tensor([[6]], [7.], (4,)))`` writes past ``dense``'s heap block.
#: ``resize_as_sparse_`` changes a sparse tensor's sizes under its indices.
EXCLUDED: dict[str, str] = {
    "sparse_coo_tensor": "raw indices, unchecked by default: out-of-bounds native writes",
    "sparse_csr_tensor": "raw indices, unchecked by default: out-of-bounds native writes",
    "sparse_csc_tensor": "raw indices, unchecked by default: out-of-bounds native writes",
    "sparse_bsr_tensor": "raw indices, unchecked by default: out-of-bounds native writes",
    "sparse_bsc_tensor": "raw indices, unchecked by default: out-of-bounds native writes",
    "sparse_compressed_tensor": "raw indices, unchecked by default: out-of-bounds native writes",
    "resize_as_sparse_": "resizes a sparse tensor under its (unchecked) indices",
}


def base_version(version: str) -> str:
    """'2.13.0+cpu' -> '2.13.0' (the local build tag does not change the operator set)."""
    return version.split("+", 1)[0]


def collect() -> tuple[str, list[str]]:
    import torch

    from pipewarden.sandbox.policy import default_policy

    deny = default_policy().deny  # what [deny] refuses is left out: the list is a true allowlist
    names = sorted(
        n
        for n in dir(torch._C._VariableFunctions)
        if not n.startswith("_") and not deny.denies(n) and n not in EXCLUDED
    )
    return base_version(torch.__version__), names


def render(version: str, names: list[str]) -> str:
    comments = (
        "The public operators of torch._C._VariableFunctions less those [deny] refuses: torch.<op> and",
        "tensor.<op>[_] in the sandbox. Left out with a reason: _gen_torch_ops.EXCLUDED (the sparse",
        "constructors: raw indices torch does not validate).",
    )
    return document([*preamble("_gen_torch_ops", comments, "torch_version", version), *name_list("operators", names)])


def main() -> int:
    sys.stdout.write(render(*collect()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
