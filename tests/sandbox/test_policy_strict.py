"""The policy fails closed: a strict schema, and every class path and module it names must resolve."""

from __future__ import annotations

from importlib import resources

import pytest

from pipewarden.errors import PipewardenError, PolicyError
from pipewarden.sandbox import load_class
from pipewarden.sandbox.policy import DYNAMIC_RULES, default_policy, load_policy_bytes
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
        ('"types.MappingProxyType" = [', '"types.MappingProxyTypo" = [', "types.MappingProxyTypo"),
        ('[types."pipewarden.sandbox.runtime.objects.SandboxLogger"]', '[types."pipewarden.sandbox.runtime.SandboxLog"]',
         "pipewarden.sandbox.runtime.SandboxLog"),
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
        ("[dunders]\n", "[dunders]\nattributes = [\"__dict__\"]\n", "attributes"),
        ("[implementations.replace]\n", "[implementations.guards]\n[implementations.replace]\n", "guards"),
        ("[file_names]\n", "[file_names]\nnamez = {}\n", "namez"),
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
        ('deepcopy = "deepcopy-reviewed" }', 'deepcopy = "deepcopy" }', "deepcopy"),
        ('from_config = "config-dict-only"', 'from_config = "config-dict"', "config-dict"),
        ("[modules.gc]\n", "[modules.gc]\nconstants = 1\n", "constants"),
        ("maps = { vocab_files_names", "maps = { config_name = \"twice\", vocab_files_names", "config_name"),
        ("names = { config_name", "names = { \"a/b\" = \"not a name\", config_name", "a/b"),
        ('calls = ["__init__", "__call__", "__post_init__"]', 'calls = ["__init__", "__call__", "_post_init"]', "_post_init"),
        ("str = [", "str = 5\nstr_ = [", "values.str"),
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
    policy = default_policy()
    resolved = resolve_policy(policy)
    assert set(policy.argument_guards.values()) <= set(resolved.argument_guards)
    assert set(resolved.argument_guards) == set(policy.argument_guard_impls)
    assert set(resolved.replacements) == set(policy.replacement_impls)
    assert all(callable(f) for f in [*resolved.argument_guards.values(), *resolved.replacements.values()])
    used = {d for rule in policy.types for d in rule.dynamic}
    assert used <= DYNAMIC_RULES


@pytest.mark.parametrize(
    "old, new, named",
    [
        ('deepcopy-reviewed = "pipewarden.sandbox.runtime.implementations.deepcopy_reviewed"',
         'deepcopy-reviewed = "pipewarden.sandbox.runtime.implementations.deepcopy_checked"',
         "implementations.replace.deepcopy-reviewed"),
        ('config-dict-only = "pipewarden.sandbox.runtime.implementations.config_dict_only"',
         'config-dict-only = "pipewarden.sandbox.runtime.implementations.config_only"',
         "implementations.argument_guards.config-dict-only"),
    ],
)
def test_renamed_implementation_refuses_to_load(old, new, named):
    """A replacement or guard whose implementation is renamed away: the policy does not load (it
    would otherwise hand out the unguarded host function)."""
    policy = load_policy_bytes(_copy(old, new))
    with pytest.raises(PolicyError) as info:
        resolve_policy(policy)
    assert info.value.rule == "policy.unresolved"
    assert named in info.value.what
    with pytest.raises(PolicyError):
        load_class(PIPELINE, policy=policy)


@pytest.mark.parametrize(
    "old, new, named",
    [
        # an implementation outside the one module the data may name (os.system as a "replacement")
        ('grad-mode = "pipewarden.sandbox.runtime.implementations.grad_mode"', 'grad-mode = "os.system"', "os.system"),
        ('grad-mode = "pipewarden.sandbox.runtime.implementations.grad_mode"',
         'grad-mode = "pipewarden.sandbox.runtime.implementations._present"', "_present"),
        # a `replace` value with no implementation entry
        ('trange = "format-checked" }\n\n[modules."tqdm.auto"]', 'trange = "format-unchecked" }\n\n[modules."tqdm.auto"]',
         "format-unchecked"),
        ('\nprogress_bar = "progress-bar"\n', '\nprogress_bar = "progress-bar-v2"\n', "progress-bar-v2"),
    ],
)
def test_unknown_implementation_refuses_to_parse(old, new, named):
    with pytest.raises(PolicyError) as info:
        load_policy_bytes(_copy(old, new))
    assert info.value.rule == "policy.malformed"
    assert named in info.value.what


def test_decide_attribute_is_one_typed_decision():
    import torch
    from diffusers.configuration_utils import FrozenDict

    from pipewarden.sandbox.runtime import Sandbox, Verdict

    box = Sandbox(default_policy(), "decide_test")
    x = torch.zeros(2)
    assert box.decide_attribute(x, "shape") is Verdict.ALLOW
    assert box.decide_attribute(x, "add") is Verdict.ALLOW  # a torch operator (tensor_ops)
    assert box.decide_attribute(x, "data_ptr") is Verdict.DENIED
    assert box.decide_attribute(x, "_version") is Verdict.NOT_LISTED
    cfg = FrozenDict({"sample_size": 8})
    assert box.decide_attribute(cfg, "sample_size") is Verdict.ALLOW  # a config key (dynamic rule)
    assert box.decide_attribute(cfg, "not_a_key") is Verdict.NOT_LISTED
    assert box.decide_attribute("text", "upper") is Verdict.ALLOW  # plain value type ([values])
    assert box.decide_attribute(print, "__self__") is Verdict.NOT_LISTED


def test_shipped_torch_operator_list_matches_installed_torch():
    """The generator reproduces the shipped list from the installed torch (else: regenerate, review)."""
    from pipewarden.sandbox.policy import torch_operator_data
    from pipewarden.sandbox.policy._gen_torch_ops import collect

    version, names = collect()
    assert (version, frozenset(names)) == torch_operator_data()
    assert {"cat", "add", "randn", "where"} <= frozenset(names)


def test_operator_missing_from_the_generated_list_is_refused(monkeypatch):
    """A name the installed torch has but the reviewed list lacks (a torch upgrade) is not admitted."""
    import torch

    import pipewarden.sandbox.policy.resolve as resolve_mod
    from pipewarden.errors import PolicyViolation
    from pipewarden.sandbox.policy import torch_operator_data
    from pipewarden.sandbox.runtime import Sandbox, Verdict

    version, shipped = torch_operator_data()
    monkeypatch.setattr(resolve_mod, "torch_operator_data", lambda: (version, shipped - {"cat", "add"}))
    resolve_mod._torch_operators.cache_clear()
    try:
        box = Sandbox(load_policy_bytes(SHIPPED.encode()), "ops_test")
        facade = box.guarded_import("torch", fromlist=("cat",))
        with pytest.raises(PolicyViolation):
            box.facade_attr(facade, "cat")
        stack = box.facade_attr(facade, "stack")  # an array entry point: argument-guarded (runtime/arrays.py)
        assert stack.__wrapped__ is torch.stack
        assert box.decide_attribute(torch.zeros(1), "add") is Verdict.NOT_LISTED
        assert box.decide_attribute(torch.zeros(1), "sub") is Verdict.ALLOW
    finally:
        monkeypatch.undo()
        resolve_mod._torch_operators.cache_clear()


@pytest.mark.slow
def test_shipped_diffusers_name_lists_match_installed_diffusers():
    """The generator reproduces diffusers_names.toml from the installed diffusers (walks every module)."""
    from pipewarden.sandbox.policy import diffusers_name_data
    from pipewarden.sandbox.policy._gen_diffusers_names import collect

    version, prefixes, classes, members = collect()
    shipped = diffusers_name_data()
    assert version == shipped.library_version
    assert frozenset(prefixes) == shipped.member_prefixes
    assert frozenset(classes) == shipped.classes
    assert {k: frozenset(v) for k, v in members.items()} == dict(shipped.members)


def test_diffusers_names_missing_from_the_generated_lists_are_refused(monkeypatch):
    """classes_from / class_methods_from admit only the generated names (a diffusers upgrade's new
    class or method stays refused until the list is regenerated and reviewed)."""
    import dataclasses

    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    import pipewarden.sandbox.policy.resolve as resolve_mod
    from pipewarden.errors import PolicyViolation
    from pipewarden.sandbox.policy import diffusers_name_data
    from pipewarden.sandbox.runtime import Sandbox, Verdict

    shipped = diffusers_name_data()
    members = dict(shipped.members)
    members["EulerDiscreteScheduler"] = shipped.members["EulerDiscreteScheduler"] - {"index_for_timestep"}
    trimmed = dataclasses.replace(shipped, classes=shipped.classes - {"DDPMScheduler"}, members=members)
    sched = EulerDiscreteScheduler()
    box = Sandbox(default_policy(), "names_before")
    assert box.decide_attribute(sched, "index_for_timestep") is Verdict.ALLOW  # by class_methods_from
    monkeypatch.setattr(resolve_mod, "diffusers_name_data", lambda: trimmed)
    box = Sandbox(load_policy_bytes(SHIPPED.encode()), "names_test")
    facade = box.guarded_import("diffusers", fromlist=("DDPMScheduler",))
    with pytest.raises(PolicyViolation):
        box.facade_attr(facade, "DDPMScheduler")
    assert box.facade_attr(facade, "DDIMScheduler") is DDIMScheduler
    assert box.decide_attribute(sched, "index_for_timestep") is Verdict.NOT_LISTED
    assert box.decide_attribute(sched, "step") is Verdict.ALLOW


def test_class_methods_prefix_not_covered_by_the_generated_lists_refuses_to_load():
    policy = load_policy_bytes(_copy('class_methods_from = ["diffusers.schedulers"]',
                                     'class_methods_from = ["diffusers.schedulers", "diffusers.models"]'))
    with pytest.raises(PolicyError, match="diffusers.models"):
        resolve_policy(policy)


def test_runtime_implements_every_replacement_the_policy_names():
    """Every `replace` value has an implementation in the policy data, and the runtime serves each one."""
    from pipewarden.sandbox.runtime import Sandbox

    replacements = set(default_policy().replacement_impls)

    box = Sandbox(default_policy(), "replace_test")
    served: set[str] = set()
    for mod_name, rule in default_policy().modules.items():
        for name, impl in rule.replace.items():
            assert impl in replacements
            # a package rule with any_submodule also serves its submodules (diffusers.utils.deprecate)
            for where in (mod_name, f"{mod_name}.utils") if rule.any_submodule else (mod_name,):
                facade = box.guarded_import(where, fromlist=(name,))
                try:
                    value = box.facade_attr(facade, name)
                except AttributeError:
                    continue  # the host module lacks the name (nothing to replace)
                assert callable(value)
                served.add(impl)
    assert served == replacements


# --------------------------------------------------------------------------- transformers_names.toml

TRANSFORMERS_NAMES = resources.files("pipewarden.sandbox.policy").joinpath("transformers_names.toml").read_text("utf-8")


def test_shipped_transformers_name_list_matches_installed_transformers():
    """The generator reproduces transformers_names.toml from the installed transformers and the
    component policy (else: regenerate, review the diff)."""
    from pipewarden.sandbox.policy import transformers_name_data
    from pipewarden.sandbox.policy._gen_transformers_names import collect, render

    version, classes = collect()
    assert render(version, classes) == TRANSFORMERS_NAMES
    shipped = transformers_name_data()
    assert shipped.library_version == version and shipped.classes == frozenset(classes)
    # restricted to the components pipewarden builds, not every class transformers defines
    assert "transformers.models.clip.modeling_clip.CLIPTextModel" in shipped.classes
    assert "transformers.models.clip.modeling_clip.CLIPModel" not in shipped.classes
    assert len(shipped.classes) < 100


def _names_copy(old: str, new: str) -> bytes:
    assert TRANSFORMERS_NAMES.count(old) == 1, old
    return TRANSFORMERS_NAMES.replace(old, new).encode()


@pytest.mark.parametrize(
    "old, new, named",
    [
        ('"transformers.models.clip.modeling_clip.CLIPTextModelOutput",',
         '"transformers.models.clip.modeling_clip.CLIPTextModelOutputV2",',
         "transformers.models.clip.modeling_clip.CLIPTextModelOutputV2"),
        # re-exported elsewhere: the list must name where the class is defined
        ('"transformers.tokenization_utils_base.BatchEncoding",', '"transformers.BatchEncoding",',
         "transformers.BatchEncoding"),
    ],
)
def test_renamed_transformers_class_path_refuses_to_load(monkeypatch, old, new, named):
    import pipewarden.sandbox.policy.resolve as resolve_mod
    from pipewarden.sandbox.policy import parse_transformers_names

    monkeypatch.setattr(resolve_mod, "transformers_name_data", lambda: parse_transformers_names(_names_copy(old, new)))
    policy = load_policy_bytes(SHIPPED.encode())
    with pytest.raises(PolicyError) as info:
        resolve_policy(policy)
    assert info.value.rule == "policy.unresolved"
    assert named in info.value.what
    with pytest.raises(PolicyError):
        load_class(PIPELINE, policy=policy)


def test_transformers_names_unknown_key_refuses_to_load():
    from pipewarden.sandbox.policy import parse_transformers_names

    with pytest.raises(PolicyError) as info:
        parse_transformers_names(_names_copy("version = 1\n", "version = 1\nclasses_from = [\"transformers\"]\n"))
    assert info.value.rule == "policy.malformed"
    assert "classes_from" in info.value.what


def test_transformers_classes_not_listed_are_refused(monkeypatch):
    """classes_from for transformers admits only the generated list: a class it does not list (a
    model pipewarden never builds, an Auto class, Trainer) binds a refusing stub; a trimmed list
    (as after a transformers upgrade renames a class) refuses the class it no longer lists."""
    import dataclasses

    from transformers import CLIPTextModel, CLIPTokenizer

    import pipewarden.sandbox.policy.resolve as resolve_mod
    from pipewarden.errors import PolicyViolation
    from pipewarden.sandbox.policy import transformers_name_data
    from pipewarden.sandbox.runtime import ClassRef, DeniedName, Sandbox

    box = Sandbox(default_policy(), "tf_names")
    facade = box.guarded_import("transformers", fromlist=("CLIPTextModel",))
    assert box.facade_attr(facade, "CLIPTextModel") is CLIPTextModel
    tokenizer = box.facade_attr(facade, "CLIPTokenizer")  # listed; never constructed ([no_construct])
    assert type(tokenizer) is ClassRef and object.__getattribute__(tokenizer, "_pw_cls") is CLIPTokenizer
    for name in ("CLIPModel", "AutoTokenizer", "Trainer", "LlamaModel"):
        assert isinstance(box.facade_attr(facade, name, for_import=True), DeniedName)
        with pytest.raises(PolicyViolation):
            box.facade_attr(facade, name)
    shipped = transformers_name_data()
    trimmed = dataclasses.replace(
        shipped, classes=shipped.classes - {"transformers.models.clip.modeling_clip.CLIPTextModel"}
    )
    monkeypatch.setattr(resolve_mod, "transformers_name_data", lambda: trimmed)
    box = Sandbox(load_policy_bytes(SHIPPED.encode()), "tf_names_trimmed")
    facade = box.guarded_import("transformers", fromlist=("CLIPTextModel",))
    with pytest.raises(PolicyViolation):
        box.facade_attr(facade, "CLIPTextModel")
    assert type(box.facade_attr(facade, "CLIPTokenizer")) is ClassRef


def test_classes_from_package_without_generated_list_refuses_to_load():
    """classes_from is admitted only through generated data: a package without a list does not load."""
    policy = load_policy_bytes(_copy("[modules.numbers]\n", "[modules.numbers]\nclasses_from = [\"numbers\"]\n"))
    with pytest.raises(PolicyError, match="no generated name list"):
        resolve_policy(policy)


def test_plain_value_types_admit_only_listed_attributes():
    """[values] lists each plain type's attributes: a name it does not list (as a method a later
    Python adds would be) is refused on the value and on the type; snapshots read as their base."""
    from pipewarden.sandbox.runtime import Sandbox, Verdict
    from pipewarden.sandbox.runtime.snapshots import _private_copy

    box = Sandbox(default_policy(), "values_listed")
    assert box.decide_attribute("text", "upper") is Verdict.ALLOW
    assert box.decide_attribute(str, "maketrans") is Verdict.ALLOW
    assert box.decide_attribute(3, "bit_length") is Verdict.ALLOW
    snapshot = _private_copy({"sample_size": 8})  # a host config handed out read-only
    assert box.decide_attribute(snapshot, "sample_size") is Verdict.ALLOW
    assert box.decide_attribute(snapshot, "keys") is Verdict.ALLOW
    assert box.decide_attribute(snapshot, "not_a_key") is Verdict.NOT_LISTED
    policy = load_policy_bytes(_copy('"translate", "upper", "zfill"]\nbytes', '"translate", "zfill"]\nbytes'))
    box = Sandbox(policy, "values_trimmed")
    assert box.decide_attribute("text", "upper") is Verdict.NOT_LISTED
    assert box.decide_attribute(str, "upper") is Verdict.NOT_LISTED
    assert box.decide_attribute("text", "lower") is Verdict.ALLOW


# ---------------------------------------------------------------------------------------------------
# [class_creation]: the reviewed host hooks a class statement may run are policy data, resolved at load

_BASE_OUTPUT_HOOK = '"diffusers.utils.outputs.BaseOutput.__init_subclass__" = '
_CACHED_PROPERTY = '"functools.cached_property" = '


@pytest.mark.parametrize(
    "old, new, named",
    [
        # a hook whose class was renamed away (as after a library upgrade)
        (_BASE_OUTPUT_HOOK, '"diffusers.utils.outputs.BaseOutputV2.__init_subclass__" = ',
         "diffusers.utils.outputs.BaseOutputV2.__init_subclass__"),
        # a class that exists but defines no __init_subclass__ of its own (an inherited one is not reviewed)
        (_BASE_OUTPUT_HOOK, '"diffusers.DDIMScheduler.__init_subclass__" = ', "diffusers.DDIMScheduler.__init_subclass__"),
        # the same hook under a path it is not defined at (a re-export): the review names the definition
        (_BASE_OUTPUT_HOOK, '"diffusers.utils.BaseOutput.__init_subclass__" = ', "now defined as"),
        (_CACHED_PROPERTY, '"functools.cached_propertee" = ', "functools.cached_propertee"),
        (_CACHED_PROPERTY, '"functools.partial" = ', "functools.partial (defines no __set_name__)"),
        ('\ncomplex = "pure constructor', '\ncomplexx = "pure constructor', "class_creation.enum_mixins: complexx"),
        # a key in a reviewed table is an entry: a misspelt option is an entry that does not resolve
        ("[class_creation.set_name]\n", "[class_creation.set_name]\nreviewed_by = \"me\"\n",
         "class_creation.set_name: reviewed_by"),
    ],
)
def test_renamed_class_creation_entry_refuses_to_load(old, new, named):
    policy = load_policy_bytes(_copy(old, new))
    with pytest.raises(PolicyError) as info:
        resolve_policy(policy)
    assert info.value.rule == "policy.unresolved"
    assert named in info.value.what
    with pytest.raises(PolicyError):
        load_class(PIPELINE, policy=policy)


@pytest.mark.parametrize(
    "old, new, named",
    [
        ("[class_creation.init_subclass]\n", "[class_creation]\nstrict = false\n[class_creation.init_subclass]\n", "strict"),
        ("[class_creation.set_name]\n", "[class_creation.get_name]\n[class_creation.set_name]\n", "get_name"),
        ('since_python = "3.11" }', 'since_python = "3.11", scope = "all" }', "scope"),
        # every entry needs a reason
        (_CACHED_PROPERTY + '"records', _CACHED_PROPERTY + '"" # "records', "needs a reason"),
        ('since_python = "3.11" }', 'since_python = "3.x" }', "since_python"),
        # init_subclass entries name the hook itself
        (_BASE_OUTPUT_HOOK, '"diffusers.utils.outputs.BaseOutput" = ', "must name an __init_subclass__"),
    ],
)
def test_malformed_class_creation_entry_refuses_to_parse(old, new, named):
    with pytest.raises(PolicyError) as info:
        load_policy_bytes(_copy(old, new))
    assert info.value.rule == "policy.malformed"
    assert named in info.value.what


def test_missing_class_creation_section_refuses_to_load():
    start = SHIPPED.index("[class_creation.enum_mixins]\n")
    end = SHIPPED.index("\n\n", start)
    with pytest.raises(PolicyError, match="enum_mixins"):
        load_policy_bytes((SHIPPED[:start] + SHIPPED[end:]).encode())


CLASS_IDIOMS = PIPELINE + '''
import dataclasses
import enum
import functools
from diffusers.utils import BaseOutput


@dataclasses.dataclass
class Out(BaseOutput):
    images: list = None


class Level(int, enum.Enum):
    LOW = 1


class Box:
    @functools.cached_property
    def doubled(self):
        return 2
'''


@pytest.mark.parametrize(
    "old, rule",
    [
        ('"diffusers.utils.outputs.BaseOutput.__init_subclass__" = "registers', "class.init-subclass"),
        ('"functools.cached_property" = "records', "class.set-name"),
        ('int = "pure constructor', "class.enum-mixin"),
    ],
)
def test_class_creation_follows_the_policy_data(old, rule):
    """The shipped entries are what admit these idioms: a copy of the policy without one refuses the
    class statement that needs it (and the shipped policy builds all three)."""
    from pipewarden.errors import PolicyViolation

    assert load_class(CLASS_IDIOMS) is not None
    line_start = SHIPPED.index(old)
    line_end = SHIPPED.index("\n", line_start)
    policy = load_policy_bytes((SHIPPED[:line_start] + SHIPPED[line_end + 1:]).encode())
    with pytest.raises(PipewardenError) as info:
        load_class(CLASS_IDIOMS, policy=policy)
    exc: BaseException | None = info.value
    while exc is not None and not isinstance(exc, PolicyViolation):
        exc = exc.__cause__ or exc.__context__
    assert exc is not None and exc.rule == rule, info.value


# ---------------------------------------------------------------------------------------------------
# The other host-name tables the runtime used to hold in code: [dunders] instance,
# [component_mutators], [writes], [tripwire] readable_paths


@pytest.mark.parametrize(
    "old, new, named",
    [
        ("[component_mutators]\n", "[component_mutators]\nsuffixes = [\"_x\"]\n", "suffixes"),
        ('prefixes = ["enable_", ', 'prefixes = ["enable", ', "component_mutators.prefixes"),
        ("[writes]\n", "[writes]\narray_attributes = []\n", "array_attributes"),
        ('tensor_attributes = ["requires_grad", ', 'tensor_attributes = ["_version", ', "_version"),
        ('instance = ["__orig_class__", ', 'instance = ["orig_class", ', "orig_class"),
        ('readable_paths = ["/dev/null", ', 'readable_paths = ["dev/null", ', "dev/null"),
        ('readable_paths = ["/dev/null", ', 'readable_paths = ["/sys/../home", ', "/sys/../home"),
    ],
)
def test_runtime_name_tables_are_strict(old, new, named):
    with pytest.raises(PolicyError) as info:
        load_policy_bytes(_copy(old, new))
    assert info.value.rule == "policy.malformed"
    assert named in info.value.what


def test_component_mutator_prefixes_follow_the_policy_data():
    """A host method in a mutator family runs only on owned components; the families are data."""
    from pipewarden.errors import PolicyViolation
    from pipewarden.sandbox.runtime import Sandbox
    from pipewarden.sandbox.runtime.ownwrites import mutator_guard

    torch = pytest.importorskip("torch")

    class HostModule(torch.nn.Module):  # stands for a host component class with a mutator method
        def __init__(self):
            super().__init__()
            self.flag = False

        def enable_thing(self):
            self.flag = True

    foreign = HostModule()  # a caller's object: the sandbox does not own it
    box = Sandbox(default_policy(), "mutators_shipped")
    guarded = mutator_guard(box, foreign, "enable_thing", foreign.enable_thing)
    with pytest.raises(PolicyViolation):
        guarded()
    assert foreign.flag is False
    policy = load_policy_bytes(_copy('prefixes = ["enable_", ', 'prefixes = ['))
    box = Sandbox(policy, "mutators_trimmed")
    assert mutator_guard(box, foreign, "enable_thing", foreign.enable_thing) == foreign.enable_thing


def test_tensor_write_attributes_follow_the_policy_data():
    from pipewarden.errors import PolicyViolation
    from pipewarden.sandbox.runtime import Sandbox

    torch = pytest.importorskip("torch")
    x = torch.zeros(2)
    Sandbox(default_policy(), "writes_shipped").guarded_write(x).requires_grad = True
    assert x.requires_grad
    policy = load_policy_bytes(_copy('tensor_attributes = ["requires_grad", ', 'tensor_attributes = ['))
    y = torch.zeros(2)
    with pytest.raises(PolicyViolation):
        Sandbox(policy, "writes_trimmed").guarded_write(y).requires_grad = True
    assert not y.requires_grad


def test_tripwire_readable_paths_follow_the_policy_data():
    from pipewarden.sandbox import tripwire

    assert tripwire._readable("/proc/cpuinfo", default_policy().tripwire)
    assert not tripwire._readable("/proc/self/environ", default_policy().tripwire)
    policy = load_policy_bytes(_copy('"/proc/cpuinfo", ', ""))
    assert not tripwire._readable("/proc/cpuinfo", policy.tripwire)


@pytest.mark.parametrize(
    "old, new, named",
    [
        ("[arrays]\n", "[arrays]\nmodules = []\n", "modules"),
        ('libraries = ["numpy", "torch", "PIL"]', 'libraries = ["numpy", "torch.nn", "PIL"]', "torch.nn"),
        ('protocols = [\n  "__array_interface__",', 'protocols = [\n  "array_interface",', "array_interface"),
        ('preload = ["PIL.ImageFile"]\nattrs = ["Image", "fromarray"', 'preload = ["PIL..ImageFile"]\nattrs = ["Image", "fromarray"',
         "PIL..ImageFile"),
    ],
)
def test_array_and_preload_tables_are_strict(old, new, named):
    with pytest.raises(PolicyError) as info:
        load_policy_bytes(_copy(old, new))
    assert info.value.rule == "policy.malformed"
    assert named in info.value.what


def test_renamed_preload_module_refuses_to_load():
    policy = load_policy_bytes(_copy('preload = ["PIL.ImageFile"]\nattrs = ["Image", "fromarray"',
                                     'preload = ["PIL.ImageFyle"]\nattrs = ["Image", "fromarray"'))
    with pytest.raises(PolicyError) as info:
        resolve_policy(policy)
    assert "modules.PIL.Image.preload: PIL.ImageFyle" in info.value.what


def test_array_protocols_follow_the_policy_data():
    """A class defining an array protocol is refused as an argument of an array entry point; the
    protocol names and the libraries whose own classes implement them are policy data."""
    from pipewarden.errors import PolicyViolation
    from pipewarden.sandbox.runtime import Sandbox

    np = pytest.importorskip("numpy")

    class Steered:  # a host-looking class (not the sandbox's) whose __array__ numpy would call
        def __array__(self, dtype=None, copy=None):
            return np.zeros(1)

    box = Sandbox(default_policy(), "arrays_shipped")
    with pytest.raises(PolicyViolation):
        box.array_arguments.check("an argument", Steered())
    box.array_arguments.check("an argument", np.float32(1.0))  # numpy's own class: the implementation
    policy = load_policy_bytes(_copy('"__array_interface__", "__array_struct__", "__array__", ',
                                     '"__array_interface__", "__array_struct__", '))
    Sandbox(policy, "arrays_trimmed").array_arguments.check("an argument", Steered())
    policy = load_policy_bytes(_copy('libraries = ["numpy", "torch", "PIL"]', 'libraries = ["torch", "PIL"]'))
    with pytest.raises(PolicyViolation):
        Sandbox(policy, "arrays_no_numpy").array_arguments.check("an argument", np.float32(1.0))


@pytest.mark.parametrize(
    "generator, data, args",
    [
        ("_gen_torch_ops", "torch_ops.toml", ("torch_version", "operators")),
        ("_gen_transformers_names", "transformers_names.toml", ("transformers_version", "classes")),
        ("_gen_diffusers_pipelines", "diffusers_pipelines.toml",
         ("diffusers_version", "pipelines", "unavailable_pipelines", "not_pipelines")),
        ("_gen_diffusers_names", "diffusers_names.toml",
         ("diffusers_version", "class_methods_from_prefixes", "classes", "members")),
    ],
)
def test_generators_render_the_shipped_files_byte_for_byte(generator, data, args):
    """The one shared renderer (_gen_common) reproduces each shipped name list exactly from its own
    data: regenerating after an upgrade diffs only in the names, never in the file's shape."""
    import importlib

    from pipewarden.sandbox.policy import tomllib  # tomli on Python 3.10

    shipped = resources.files("pipewarden.sandbox.policy").joinpath(data).read_bytes()
    doc = tomllib.loads(shipped.decode())
    module = importlib.import_module(f"pipewarden.sandbox.policy.{generator}")
    assert module.render(*(doc[key] for key in args)).encode() == shipped


# ---------------------------------------------------------------------------------------------------
# [bases] refused_protocols (red team round 5): host classes a sandbox class may not derive from


@pytest.mark.parametrize(
    "old, new, named",
    [
        ("[bases]\n", "[bases]\nallowed_protocols = []\n", "allowed_protocols"),
        ('refused_protocols = [\n  "__enter__", ', 'refused_protocols = [\n  "enter", ', "enter"),
        ("[bases]\nrefused_protocols", "[bases_x]\nrefused_protocols", "bases"),
    ],
)
def test_base_protocol_table_is_strict(old, new, named):
    with pytest.raises(PolicyError) as info:
        load_policy_bytes(_copy(old, new))
    assert info.value.rule in ("policy.malformed", "policy.unknown-key", "policy.missing-key"), info.value.rule
    assert named in info.value.what


NO_GRAD_SUBCLASS = '''
import contextlib
from diffusers import DiffusionPipeline


class Forever(contextlib.suppress):
    def __exit__(self, *args):
        return False


class P(DiffusionPipeline):
    def __init__(self):
        super().__init__()
'''


def test_base_protocols_follow_the_policy_data():
    with pytest.raises(PipewardenError) as info:
        load_class(NO_GRAD_SUBCLASS, filename="bases_shipped.py")
    assert info.value.rule == "class.host-protocol"
    trimmed = load_policy_bytes(_copy('  "__enter__", "__exit__", "__aenter__", "__aexit__",\n', ""))
    assert "__enter__" not in trimmed.base_protocols
    load_class(NO_GRAD_SUBCLASS, filename="bases_trimmed.py", policy=trimmed)  # the data decides


def test_a_callable_arguments_replacement_needs_its_callable_position():
    # reduce's callable position is known; partial's is not listed: the policy refuses to load
    old = 'wraps = "wraps", reduce = "callable-arguments" }'
    assert load_policy_bytes(_copy(old, old)).modules["functools"].replace["reduce"] == "callable-arguments"
    with pytest.raises(PolicyError) as info:
        load_policy_bytes(_copy(old, 'wraps = "wraps", reduce = "callable-arguments", partial = "callable-arguments" }'))
    assert info.value.rule == "policy.malformed" and "partial" in info.value.what
