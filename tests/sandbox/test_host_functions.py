"""Issue 12, flaw 2: every Python-level host function the policy exposes is replaced or reviewed."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")

from pipewarden.sandbox.policy import default_policy, host_functions  # noqa: E402

DOC = Path(__file__).resolve().parents[2] / "docs" / "host-functions.md"


def test_every_exposed_python_function_is_replaced_or_reviewed():
    assert host_functions.unreviewed() == []
    quals = {f.qualname: f for f in host_functions.exposed()}
    # the known deputies are replaced, not merely reviewed
    for name in (
        "functools.update_wrapper",
        "functools.wraps",
        "dataclasses.replace",
        "dataclasses.asdict",
        "copy.copy",
        "copy.deepcopy",
        "inspect.signature",
        "collections.namedtuple",
        "typing_extensions.override",
    ):
        assert quals[name].how.startswith("replaced"), name


def test_a_new_unreviewed_function_fails_the_check():
    import dataclasses

    policy = default_policy()
    rule = policy.modules["string"]
    widened = dataclasses.replace(rule, attrs=rule.attrs | {"capwords"})  # a Python function, unreviewed
    modules = dict(policy.modules)
    modules["string"] = widened
    wider = dataclasses.replace(policy, modules=modules)
    assert host_functions.unreviewed(wider) == ["string.capwords"]


def test_the_generated_document_is_current():
    assert DOC.read_text(encoding="utf-8") == host_functions.render_markdown(), (
        "regenerate: python -m pipewarden.sandbox.policy.host_functions > docs/host-functions.md"
    )
