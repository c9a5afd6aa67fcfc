"""Escape suite (issues 3 and 6): hostile community pipelines must be refused, without effect.

Each payload in ``tests/escapes/payloads.py`` is a community-pipeline file (one
``DiffusionPipeline`` subclass, so the static scan accepts it) that attempts one escape: a
module reached through ``torch``/``diffusers``/stdlib attributes, a pickle, a frame, the GC, a
format string, a guard-hook rebinding, a hook left on the UNet, a file write, a connection, a
secret read ... For every payload and every isolation mode the suite asserts

  1. no side effect: the canary dir stays empty, the loopback listener accepts nothing, no secret
     (``os.environ``, a host-module global, a file) appears in the result, the exception or any
     captured output, and host state (modules, classes, builtins, sys hooks, torch flags, env,
     threads, child processes, the UNet's hooks) is unchanged; and
  2. the refusal is a ``PipewardenError`` (raised at load, construction or call time), never a
     bare ``AttributeError``/``NameError``/``TypeError`` and never a normal return.

Positive controls keep the suite honest: benign pipelines must run sandboxed and match plain
Python bit for bit, the detectors must fire when sample payloads run unsandboxed in this
process, and every payload marked ``live`` must actually escape plain Python (checked in a
subprocess, one forked child per payload).

Modes: ``inprocess`` = ``pipewarden.sandbox.load_class`` + construct + call here;
``process`` = ``pipewarden.load_pipeline(..., isolation="process")`` (the payload runs in the
worker; host-side detectors still apply, and the refusal must come back as a PipewardenError
subclass). A sample also runs through ``load_pipeline(isolation="inprocess")``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipewarden.errors import PipewardenError

ESCAPES_DIR = Path(__file__).resolve().parent


def _load_sibling(name: str):
    qual = f"_pw_escapes_{name}"
    if qual in sys.modules:
        return sys.modules[qual]
    spec = importlib.util.spec_from_file_location(qual, ESCAPES_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[qual] = module
    spec.loader.exec_module(module)
    return module


harness = _load_sibling("harness")
corpus = _load_sibling("payloads")

PAYLOADS = corpus.PAYLOADS
MODES = ("inprocess", "process")

#: The techniques issue 3 lists, each mapped to the payloads that attempt it. The corpus test
#: below fails if any of these payloads disappears.
ISSUE_TECHNIQUES: dict[str, tuple[str, ...]] = {
    "torch.os.system": ("torch_os_system",),
    "torch.sys.modules": ("torch_sys_modules_os",),
    "torch.builtins.open/exec/getattr/type": (
        "torch_builtins_open",
        "torch_builtins_exec",
        "torch_builtins_getattr",
        "torch_builtins_type_class_write",
    ),
    "torch.importlib": ("torch_importlib",),
    'torch.hub.load(source="local")': ("torch_hub_load_local",),
    "torch.load(weights_only=False)": ("torch_load_pickle",),
    "torch.from_file": ("torch_from_file_secret",),
    "torch.UntypedStorage.from_file": ("untyped_storage_from_file_write",),
    "torch.save": ("torch_save",),
    "torch.compile": ("torch_compile", "decorator_torch_jit_script"),
    "torch.ops.load_library": ("torch_ops_load_library",),
    "torch.jit.load": ("torch_jit_load",),
    "torch.serialization.pickle": ("torch_serialization_pickle",),
    "torch.storage.np.ctypeslib.ctypes": ("torch_storage_np_ctypes",),
    "torch.multiprocessing...socket": ("torch_multiprocessing_socket",),
    "torch.inspect frames": ("torch_inspect_frames_host_globals", "torch_inspect_f_builtins_import"),
    "gc.get_objects/get_referrers": (
        "gc_get_objects_secret",
        "gc_get_referrers_module_dict_write",
        "torch_accelerator_gc_secret",
    ),
    "operator.attrgetter/methodcaller": ("operator_attrgetter_globals", "operator_methodcaller_save"),
    "functools.reduce(getattr, ...)": ("functools_reduce_getattr",),
    "logging.StrFormatStyle {-traversal": (
        "logging_strformatstyle_traversal",
        "diffusers_logging_stdlib_logging",
    ),
    "string.Formatter": ("string_formatter_traversal",),
    '"{0.__class__.__mro__}".format(x) / format_map': (
        "str_format_mro",
        "str_format_globals_env",
        "str_format_map_globals_env",
    ),
    "metaclass or type() calls with a dunder dict": (
        "metaclass_call_subclasses",
        "type_call_dunder_dict_lying_str",
    ),
    "diffusers.utils.os": ("diffusers_utils_os", "diffusers_configuration_utils_os"),
    "get_class_from_dynamic_module(trust_remote_code=True)": ("get_class_from_dynamic_module",),
    "DiffusionPipeline.from_pretrained(custom_pipeline=..., trust_remote_code=True)": (
        "diffusionpipeline_from_pretrained_custom",
    ),
    "self.from_pretrained": ("self_from_pretrained_custom",),
    "pipe.save_pretrained": ("pipe_save_pretrained",),
    "unet.save_pretrained": ("unet_save_pretrained",),
    "scheduler.save_config": ("scheduler_save_config",),
    "unet.register_forward_hook (must not persist)": (
        "unet_register_forward_hook_init",
        "unet_register_forward_pre_hook_call",
        "global_module_forward_hook",
    ),
    "np.load(allow_pickle=True)": ("np_load_allow_pickle",),
    "np.savetxt": ("np_savetxt",),
    "ndarray.tofile": ("ndarray_tofile",),
    "PIL.Image.save": ("pil_image_save",),
    "safetensors.torch.save_file": ("safetensors_save_file",),
    "huggingface_hub.hf_hub_download": ("hf_hub_download_loopback",),
    "AttributeError.obj": ("attributeerror_obj_real_module", "except_star_attributeerror_obj"),
    "writes to shared module attributes": (
        "write_torch_functional_gelu",
        "write_diffusers_new_attribute",
        "write_diffusionpipeline_method",
        "setattr_torch_randn",
        "delattr_torch_functional_relu",
    ),
    "str subclasses that lie to a guard": ("str_subclass_lies_to_guard", "type_call_dunder_dict_lying_str"),
    "posonly parameters named like guard hooks": (
        "posonly_write_guard_param",
        "posonly_getattr_guard_param",
        "kwonly_default_write_guard",
        "module_level_guard_rebind",
        "walrus_guard_rebind",
        "locals_rebind_guard",
    ),
    "try/except*": ("except_star_attributeerror_obj", "except_star_binds_guard"),
    "import subprocess": ("import_subprocess",),
    "import os; os.system": ("import_os_system", "os_path_reaches_os"),
    "__import__": ("dunder_import",),
    "open(...)": ("open_write", "open_read_secret"),
    "x.__class__": ("dunder_class_subclasses",),
    "x.__globals__": ("dunder_globals",),
    "eval/exec/compile": ("eval_builtin", "exec_builtin", "compile_builtin"),
    "globals()/vars()/locals()": ("globals_builtins_import", "vars_module_os", "locals_rebind_guard"),
    'getattr(x, "__cl"+"ass__")': ("getattr_concat_dunder",),
    "type(x)": ("type_builtin_unbound_save",),
    "generator frames (gi_frame)": ("generator_gi_frame",),
    "tracebacks (tb_frame)": ("traceback_tb_frame", "sys_exc_info_traceback"),
    "breakpoint()": ("breakpoint_builtin",),
    "help()": ("help_builtin",),
    "ctypes": ("import_ctypes", "ctypes_cdll_evil_so", "np_ctypeslib_ctypes"),
    "sys.modules": ("import_sys_modules",),
    "__builtins__ access": ("dunder_builtins_name", "import_builtins_open"),
    "super() tricks": ("super_save_pretrained", "super_explicit_save_config"),
    "class-body escapes": ("class_body_escape", "module_body_escape"),
    "decorators": ("decorator_runs_at_definition", "decorator_torch_jit_script"),
    "lambda default args": ("lambda_default_arg", "kwonly_default_write_guard"),
    "self.__dict__": ("self_dunder_dict_write", "unet_dunder_dict_hooks"),
    "vars(self)": ("vars_unet_hooks",),
    "object.__subclasses__": ("object_subclasses",),
    "print to a file=": ("print_to_file",),
    "f-string {x!r:...} tricks": ("fstring_conversion_spec", "fstring_nested_format"),
    "tensor .numpy().tofile": ("tensor_numpy_tofile",),
    "storage()": ("tensor_storage", "tensor_untyped_storage"),
    "data_ptr": ("tensor_data_ptr",),
    "share_memory_": ("tensor_share_memory",),
    "unet._forward_hooks": ("unet_private_forward_hooks_dict",),
    "torch._C": ("torch_C_private",),
    "sys._getframe via any facade": (
        "torch_sys_getframe",
        "typing_sys_getframe",
        "inspect_sys_getframe",
        "logging_sys_getframe",
        "inspect_stack_frames",
        "inspect_currentframe",
    ),
    "torch.classes": ("torch_classes_load_library",),
    "torch.utils.cpp_extension": ("torch_cpp_extension_subprocess",),
    "torch.backends": ("torch_backends_flag_write",),
    "torch.distributed": ("torch_distributed_tcpstore",),
    "os.environ reads (secret leak)": (
        "os_environ_read",
        "os_getenv_read",
        "torch_os_environ_read",
        "inspect_os_environ",
        "diffusers_configuration_utils_os",
    ),
    "reading a secret file": (
        "open_read_secret",
        "pathlib_read_secret",
        "np_loadtxt_secret",
        "np_fromfile_secret",
        "torch_from_file_secret",
    ),
    "pathlib.Path": ("pathlib_read_secret", "pathlib_write"),
    "shutil": ("shutil_copy_secret", "torch_hub_shutil_copy_secret"),
    "tempfile": ("tempfile_mkstemp", "torch_hub_tempfile"),
    "bounded range(10**12) list (resource)": ("range_resource_bomb",),
    "importlib.import_module": ("importlib_import_module",),
    "pure-module facades (os.path, dataclasses, warnings, enum, inspect)": (
        "os_path_reaches_os",
        "dataclasses_sys_modules",
        "warnings_sys_modules",
        "enum_sys_modules",
        "inspect_getmembers_os",
    ),
}


# ------------------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def escape_world(tiny_weights, tmp_path_factory):
    """Canary dir, loopback listener, secrets and evil artifacts, shared by every payload."""
    world = harness.build_world(tmp_path_factory.mktemp("escape-world"), Path(tiny_weights))
    world.start_acceptor()
    # Warm up lazy imports (diffusers submodules, the sandbox's own modules) once, so the host
    # snapshot around the first payload does not mistake them for the payload's doing.
    harness.observe(world, corpus.BENIGN_SOURCE, "plain")
    for mode in MODES:
        try:
            harness.observe(world, corpus.BENIGN_SOURCE, mode)
        except Exception:  # noqa: BLE001 - the warm-up is best effort; the tests report failures
            pass
    yield world
    world.close()


def _render(world, payload) -> str:
    return world.render(payload.template)


# ------------------------------------------------------------------------------------------------
# The escape corpus
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("payload", PAYLOADS, ids=[p.id for p in PAYLOADS])
def test_escape_is_refused_without_side_effect(escape_world, payload, mode):
    obs = harness.observe(escape_world, _render(escape_world, payload), mode)
    # 1. The side effect must not have happened (checked first: nothing may hide an escape).
    assert obs.violations == [], f"ESCAPE via {payload.technique}: {obs.describe()}"
    if mode == "process" and payload.confined_in_worker:
        return  # allowed there: it changes only the worker's own objects (nothing on the host, checked above)
    # 2. The refusal must be one of ours, not a stray Python error or a normal return. The bare base
    #    class is what the worker uses to report an ordinary exception from inside the sandbox
    #    ("the pipeline raised KeyError"): the escape ran there, so that is not a refusal either.
    assert isinstance(obs.exception, PipewardenError), (
        f"{payload.technique} was not refused with a PipewardenError: {obs.describe()}"
    )
    assert type(obs.exception) is not PipewardenError, (
        f"{payload.technique} ran and failed with an ordinary error (reported as a bare PipewardenError), "
        f"it was not refused: {obs.describe()}"
    )
    # 3. The refusal must not hand a real object back (AttributeError.obj-style carriers).
    assert getattr(obs.exception, "obj", None) is None, obs.describe()


#: One payload per detector and per refusal layer, also run through the public in-process API
#: (``load_pipeline(isolation="inprocess")``), so the API's wiring cannot bypass the sandbox.
API_SAMPLE = (
    "torch_os_system",
    "import_subprocess",
    "open_write",
    "os_environ_read",
    "open_read_secret",
    "torch_inspect_frames_host_globals",
    "import_socket_connect",
    "write_torch_functional_gelu",
    "unet_register_forward_hook_init",
    "module_body_escape",
    "class_body_escape",
    "posonly_write_guard_param",
    "str_format_globals_env",
    "tqdm_bar_format_traversal_secret",
    "functools_update_wrapper_patches_host_class",
)


@pytest.mark.parametrize("payload_id", API_SAMPLE)
def test_escape_is_refused_through_load_pipeline_inprocess(escape_world, payload_id):
    payload = {p.id: p for p in PAYLOADS}[payload_id]
    obs = harness.observe(escape_world, _render(escape_world, payload), "api")
    assert obs.violations == [], f"ESCAPE via {payload.technique}: {obs.describe()}"
    assert isinstance(obs.exception, PipewardenError) and type(obs.exception) is not PipewardenError, (
        obs.describe()
    )
    assert getattr(obs.exception, "obj", None) is None, obs.describe()


# ------------------------------------------------------------------------------------------------
# Positive controls: the sandbox runs benign code, and the detectors can fail
# ------------------------------------------------------------------------------------------------


def _benign_sources() -> dict[str, str]:
    from pipewarden._fixtures import EXAMPLE_PIPELINE_SOURCE

    return {"example": EXAMPLE_PIPELINE_SOURCE, "idioms": corpus.BENIGN_SOURCE}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["example", "idioms"])
def test_benign_pipeline_runs_and_matches_plain_python(escape_world, name, mode):
    import torch

    source = _benign_sources()[name]

    def kwargs():
        return {"generator": torch.Generator().manual_seed(1234), "num_inference_steps": 2}

    plain = harness.observe(escape_world, source, "plain", call_kwargs=kwargs())
    assert plain.exception is None and plain.violations == [], plain.describe()
    obs = harness.observe(escape_world, source, mode, call_kwargs=kwargs())
    assert obs.violations == [], obs.describe()
    assert obs.exception is None, f"benign pipeline refused: {obs.describe()}"
    result = obs.result
    assert isinstance(result, torch.Tensor), f"expected a tensor, got {type(result)!r}"
    assert result.dtype == plain.result.dtype and result.shape == plain.result.shape
    assert torch.equal(result, plain.result), "sandboxed output differs from plain Python"


#: One sample per detector. Running them UNSANDBOXED in this process proves each detector
#: fires (and that the harness puts the host back afterwards).
DETECTOR_SAMPLES = {
    "torch_os_system": "canary dir written",
    "pil_image_save": "canary dir written",
    "import_socket_connect": "loopback connection",
    "os_environ_read": "env secret leaked",
    "open_read_secret": "file secret leaked",
    "torch_from_file_secret": "file secret leaked",
    "torch_inspect_frames_host_globals": "host-global secret leaked",
    "gc_get_referrers_module_dict_write": "torch.nn.functional.gelu was replaced",
    "write_diffusers_new_attribute": "diffusers.PWNED_BY_ESCAPE was added",
    "write_diffusionpipeline_method": "DiffusionPipeline.save_pretrained was replaced",
    "torch_backends_flag_write": "torch.backends.cudnn.benchmark changed",
    "unet_register_forward_hook_init": "UNet hooks changed",
    "global_module_forward_hook": "_global_forward_hooks changed",
    "os_environ_write": "os.environ changed",
    "sys_path_insert": "sys.path changed",
    "simplenamespace_array_interface_writes_host_memory": "DiffusionPipeline.config_name bytes changed",
    "dict_update_on_frozen_component_config": "component state changed",
    "shared_class_list_append": "host class container attributes mutated",
    "unet_set_attn_processor_persists": "component state changed",
}


@pytest.mark.parametrize("payload_id", sorted(DETECTOR_SAMPLES))
def test_detector_fires_when_payload_runs_unsandboxed(escape_world, payload_id):
    import diffusers
    import torch

    gelu, save_pretrained = torch.nn.functional.gelu, diffusers.DiffusionPipeline.save_pretrained
    payload = {p.id: p for p in PAYLOADS}[payload_id]
    baseline = harness.take_snapshot()
    obs = harness.observe(escape_world, _render(escape_world, payload), "plain")
    expected = DETECTOR_SAMPLES[payload_id]
    assert any(expected in v for v in obs.violations), obs.describe()
    # The harness restored what the payload changed, so later tests see a clean host.
    assert torch.nn.functional.gelu is gelu
    assert diffusers.DiffusionPipeline.save_pretrained is save_pretrained
    assert "PWNED_BY_ESCAPE" not in vars(diffusers)
    assert harness.ENV_SECRET == os.environ[harness.SECRET_ENV]
    leftover = harness.compare(baseline, harness.take_snapshot(), process_mode=False, restore=False)
    assert leftover == [], f"host not restored after {payload_id}: {leftover}"


def test_refusal_check_rejects_a_plain_python_error(escape_world):
    """A payload that merely fails (NameError) is not a refusal: the suite's check must say so."""
    source = corpus.pipeline(call="undefined_name_for_escape_suite()")
    obs = harness.observe(escape_world, source, "plain")
    assert obs.violations == []
    assert isinstance(obs.exception, NameError)
    assert not isinstance(obs.exception, PipewardenError)


@pytest.mark.slow
def test_every_live_payload_escapes_plain_python(tiny_weights, tmp_path):
    """Each payload really is an attack: unsandboxed, its side effect happens (subprocess)."""
    env = dict(os.environ)
    proc = subprocess.run(
        [
            sys.executable,
            str(ESCAPES_DIR / "live_check.py"),
            "--root",
            str(tmp_path),
            "--weights",
            str(tiny_weights),
        ],
        capture_output=True,
        text=True,
        timeout=1800,  # one forked child per payload (~300), a few seconds each on a loaded machine
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    results = report["results"]
    problems = []
    for payload in PAYLOADS:
        if not payload.live:
            continue
        if payload.needs_shared_object and not report["have_shared_object"]:
            continue  # no C compiler here: the payload still runs sandboxed above
        got = results.get(payload.id)
        if got is None or "harness_error" in got:
            problems.append(f"{payload.id}: {got}")
            continue
        violations = got["violations"]
        ok = {
            corpus.FILE: any("canary dir written" in v for v in violations),
            corpus.CONNECT: any("loopback connection" in v for v in violations),
            corpus.SECRET: any("secret leaked" in v for v in violations),
            corpus.STATE: bool(violations),
            corpus.HOOKS: any("UNet hooks changed" in v for v in violations),
            corpus.RUNS: got["exception"] is None,
        }[payload.effect]
        if not ok:
            problems.append(f"{payload.id} ({payload.effect}): {got}")
    assert problems == [], "payloads that do not escape plain Python:\n" + "\n".join(problems)


def test_corpus_covers_every_issue_technique():
    ids = {p.id for p in PAYLOADS}
    missing = {tech: [i for i in want if i not in ids] for tech, want in ISSUE_TECHNIQUES.items()}
    missing = {k: v for k, v in missing.items() if v}
    assert missing == {}
    assert len(PAYLOADS) >= 50
    for payload in PAYLOADS:
        assert payload.effect in {
            corpus.FILE,
            corpus.CONNECT,
            corpus.SECRET,
            corpus.STATE,
            corpus.HOOKS,
            corpus.RUNS,
        }


def test_payloads_pass_the_static_scan_shape():
    """Every payload parses and defines exactly one DiffusionPipeline subclass (so only the
    sandbox, not a trivial scan rejection, can stop it)."""
    import ast

    for payload in PAYLOADS:
        tree = ast.parse(payload.template.replace("@PORT@", "1").replace("@SECRET_LEN@", "1"))
        classes = [
            node
            for node in ast.walk(tree)
            if isinstance(node, ast.ClassDef)
            and any(isinstance(b, ast.Name) and b.id == "DiffusionPipeline" for b in node.bases)
        ]
        assert len(classes) == 1, payload.id


def test_issue12_families_cover_every_sandbox_flaw():
    """Issue 12: each design flaw has a family of doors in the corpus (every payload live in plain
    Python, checked by test_every_live_payload_escapes_plain_python), so none can silently vanish."""
    families = corpus.ISSUE12_FAMILIES
    assert sorted(families) == [
        "1 ownership laundering",
        "2 confused deputies",
        "3 unarmed sandboxed code",
        "4 attribute-key checks",
        "5 host-read configuration",
        "6 raw bound host methods",
    ]
    ids = {p.id for p in PAYLOADS}
    for flaw, doors in families.items():
        assert set(doors) <= ids
        assert len(doors) >= (1 if flaw.startswith("6") else 3), flaw
