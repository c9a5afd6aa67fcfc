"""The policy fails closed: a strict schema, and every class path and module it names must resolve."""

from __future__ import annotations

from importlib import resources

import pytest

from pipewarden.errors import PolicyError
from pipewarden.sandbox import load_class
from pipewarden.sandbox.policy import ARGUMENT_GUARDS, DYNAMIC_RULES, default_policy, load_policy_bytes
from pipewarden.sandbox.policy.resolve import _lookup, resolve_policy

SHIPPED = resources.files("pipewarden.sandbox.policy").joinpath("default.toml").read_text("utf-8")

PIPELINE = """
from diffusers import DiffusionPipeline

class P(DiffusionPipeline):
    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    def __call__(self):
        return None
"""


def _copy(old: str, new: str) -> bytes:
    assert SHIPPED.count(old) == 1, old
    return SHIPPED.replace(old, new).encode()


def test_shipped_policy_resolves():
    resolved = resolve_policy(default_policy())
    paths = {f"{c.__module__}.{c.__qualname__}" for c, _ in resolved.type_rules}
    assert "diffusers.configuration_utils.FrozenDict" in paths
    assert len(resolved.no_construct) == len(default_policy().no_construct_bases)
    assert len(resolved.attribute_key_bases) == len(default_policy().attribute_key_bases)


@pytest.mark.parametrize(
    "old, new, named",
    [
        # a deny list entry renamed (as after a library upgrade): the protection must not vanish silently
        ('"transformers.TrainingArguments", "transformers.Trainer",',
         '"transformers.TrainingArguments", "transformers.TrainerRenamed",', "transformers.TrainerRenamed"),
        ('"diffusers.configuration_utils.FrozenDict", "diffusers.utils.BaseOutput",',
         '"diffusers.configuration_utils.FrozenDictV2", "diffusers.utils.BaseOutput",',
         "diffusers.configuration_utils.FrozenDictV2"),
        ('[types."diffusers.configuration_utils.FrozenDict"]', '[types."diffusers.configuration_utils.Frozen"]',
         "diffusers.configuration_utils.Frozen"),
        ('reviewed = ["torch.nn.modules.module.Module",', 'reviewed = ["torch.nn.modules.mod.Module",',
         "torch.nn.modules.mod.Module"),
        ('[modules."torch.nn.init"]', '[modules."torch.nn.initialisers"]', "torch.nn.initialisers"),
    ],
)
def test_renamed_class_path_or_module_refuses_to_load(old, new, named):
    policy = load_policy_bytes(_copy(old, new))  # the schema is fine; the name does not resolve
    with pytest.raises(PolicyError) as info:
        resolve_policy(policy)
    assert info.value.rule == "policy.unresolved"
    assert named in info.value.what
    # and no pipeline loads under it: nothing runs with a protection missing
    with pytest.raises(PolicyError):
        load_class(PIPELINE, policy=policy)


def test_class_deleted_from_the_library_refuses_to_load(monkeypatch):
    """A library upgrade that removes a class the deny lists name: the policy refuses to load."""
    import diffusers.configuration_utils

    policy = load_policy_bytes(SHIPPED.encode())  # a fresh object: not cached
    _lookup.cache_clear()
    monkeypatch.delattr(diffusers.configuration_utils, "FrozenDict")
    try:
        with pytest.raises(PolicyError) as info:
            resolve_policy(policy)
        assert "diffusers.configuration_utils.FrozenDict" in info.value.what
    finally:
        monkeypatch.undo()
        _lookup.cache_clear()
    assert resolve_policy(policy).policy is policy


@pytest.mark.parametrize(
    "old, new, key",
    [
        ("version = 1\n", "version = 1\nstrict = false\n", "strict"),
        ("[modules.gc]\n", "[modules.gc]\nclasses_form = [\"gc\"]\n", "classes_form"),
        ('[types."torch.device"]\n', '[types."torch.device"]\nclass-methods-from = ["torch"]\n', "class-methods-from"),
        ("max_range = 100_000_000\n", "max_range = 100_000_000\nmax_rnage = 5\n", "max_rnage"),
        ("[no_construct]\n", "[no_construct]\nbase = []\n", "base"),
    ],
)
def test_unknown_key_refuses_to_load(old, new, key):
    with pytest.raises(PolicyError) as info:
        load_policy_bytes(_copy(old, new))
    assert info.value.rule == "policy.malformed"
    assert key in info.value.what


@pytest.mark.parametrize(
    "old, new, value",
    [
        ('dynamic = ["instance-public"]\n', 'dynamic = ["instance-public", "class-methods-from"]\n',
         "class-methods-from"),
        ('replace = { deepcopy = "deepcopy-no-memo" }', 'replace = { deepcopy = "deepcopy" }', "deepcopy"),
        ('from_config = "config-dict-only"', 'from_config = "config-dict"', "config-dict"),
        ("[modules.gc]\n", "[modules.gc]\nconstants = 1\n", "constants"),
        ('[types."torch.device"]\n', '[types."torch.device ; x"]\n', "torch.device ; x"),
    ],
)
def test_unknown_value_refuses_to_load(old, new, value):
    with pytest.raises(PolicyError) as info:
        load_policy_bytes(_copy(old, new))
    assert value in info.value.what


def test_missing_required_section_refuses_to_load():
    start = SHIPPED.index("[getattr]\n")
    end = SHIPPED.index("\n\n", start)
    with pytest.raises(PolicyError, match="getattr"):
        load_policy_bytes((SHIPPED[:start] + SHIPPED[end:]).encode())


def test_absent_optional_package_is_skipped_not_an_error():
    """A top-level package that is not installed at all cannot reach sandboxed code: its entries are skipped."""
    policy = load_policy_bytes(_copy('"transformers.TrainingArguments", "transformers.Trainer",',
                                     '"transformers.TrainingArguments", "transformers.Trainer", '
                                     '"pipewarden_not_installed_pkg.Thing",'))
    resolved = resolve_policy(policy)
    assert len(resolved.no_construct) == len(default_policy().no_construct_bases)


def test_runtime_implements_the_policy_vocabulary():
    from pipewarden.sandbox.runtime.argguards import ARGUMENT_GUARD_IMPLS

    assert set(ARGUMENT_GUARD_IMPLS) == ARGUMENT_GUARDS
    assert set(default_policy().argument_guards.values()) <= ARGUMENT_GUARDS
    used = {d for rule in default_policy().types for d in rule.dynamic}
    assert used <= DYNAMIC_RULES
