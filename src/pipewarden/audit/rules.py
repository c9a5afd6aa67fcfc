"""The audit's rule table: ids, severities, messages, help, and the call/attribute patterns.

This module decides *what the audit reports and how loudly*; it is data, read by
``sandbox/audit.py``. It does not decide what the sandbox allows: which modules may be imported,
which class is the pipeline and whether the file compiles under the restricted policy come from
``sandbox.policy``, ``sandbox.scan`` and ``sandbox.compile`` (one source of truth). Rule ids are
stable: a rule may be retired, never renumbered or reused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

Severity = Literal["error", "warning", "note"]
SEVERITIES: tuple[Severity, ...] = ("error", "warning", "note")


@dataclass(frozen=True)
class Rule:
    """One audit rule. ``message`` is the one-line summary; ``help`` says why and what to do."""

    id: str
    name: str
    severity: Severity
    message: str
    help: str


# fmt: off
RULES: tuple[Rule, ...] = (
    Rule("PW001", "parse-error", "error",
         "File does not parse as Python (syntax error, invalid UTF-8 or NUL bytes)",
         "The sandbox only loads UTF-8 Python source that parses and compiles. Fix the syntax error at the "
         "reported line, save the file as UTF-8 and remove NUL bytes."),
    Rule("PW002", "file-too-large", "error",
         "File is larger than the audit's size limit",
         "Pipeline files are source code; a file over the limit (default 2 MiB, see --max-file-size) is "
         "refused unread. Split the file or raise the limit if it is genuinely that large."),
    Rule("PW003", "file-unreadable", "error",
         "File could not be read (not a regular file, or an I/O or permission error)",
         "Only regular files are audited. Check the path and its permissions."),
    Rule("PW004", "too-complex", "error",
         "Source is nested too deeply to analyse",
         "Python's parser or the sandbox's analysis ran out of recursion depth or memory on this file. "
         "Deeply nested expressions are a denial-of-service pattern; flatten the expression."),
    Rule("PW005", "analysis-failed", "error",
         "The audit could not analyse this file",
         "An unexpected failure stopped the analysis of this file; the file is treated as failing "
         "(fail closed). Please report it with the file attached."),
    Rule("PW006", "encoding-declaration", "error",
         "File declares a source encoding other than UTF-8 (a coding cookie)",
         "Python decodes a file with `# -*- coding: utf-7 -*-` (or latin-1, ...) differently from how "
         "reviewers and this audit read it, which can hide code (an os.system call inside what looks like "
         "a comment). The sandbox loads UTF-8 only. Save the file as UTF-8 and remove the declaration."),
    Rule("PW010", "pipeline-class-count", "error",
         "File does not define exactly one DiffusionPipeline subclass",
         "diffusers picks the pipeline class of a custom_pipeline file automatically and needs exactly one "
         "class inheriting from DiffusionPipeline. Keep one pipeline class per file; move helpers that "
         "subclass DiffusionPipeline elsewhere."),
    Rule("PW020", "import-outside-policy", "error",
         "Import of a module outside the sandbox policy, run when the file is loaded",
         "Sandboxed pipelines can import only the modules listed in the sandbox policy "
         "(sandbox/policy/default.toml), served through facades. Use an allowed module, or have your "
         "organisation add the module to its allowlist (extra_modules)."),
    Rule("PW021", "builtin-outside-policy", "warning",
         "Use of a builtin that the sandbox does not provide",
         "Sandboxed code sees only the builtins listed in the sandbox policy ([builtins] in "
         "sandbox/policy/default.toml); any other builtin (type, dir, IOError, ...) is refused when the "
         "line runs. Use an allowed alternative (isinstance instead of type, ...)."),
    Rule("PW022", "conditional-import-outside-policy", "warning",
         "Conditional import of a module outside the sandbox policy",
         "The import is outside the sandbox policy but does not run unconditionally at import time (it "
         "sits under an if, in a function, or in a try whose except catches ImportError), so loading "
         "succeeds and the code fails only if that path runs. Typical: optional accelerators "
         "(torch_xla, xformers). Remove it, or have your organisation allowlist the module."),
    Rule("PW023", "name-outside-policy", "error",
         "Name taken from a module that the sandbox policy does not expose (import or attribute)",
         "Sandboxed pipelines reach a module only through its facade, which answers only the names the "
         "sandbox policy lists (sandbox/policy/default.toml and the generated name lists): `from M import "
         "name`, `alias.name.attr` (np.lib.npyio.DataSource, torch.utils.collect_env.run) and "
         "getattr(alias, \"name\") are checked against the same policy. Under plain diffusers the name is "
         "whatever the library holds (file, process and network helpers included). Use a listed name, or "
         "have your organisation add the module's name to its allowlist (extra_modules)."),
    Rule("PW024", "unused-name-outside-policy", "warning",
         "Imported name outside the sandbox policy that the file never uses",
         "`from M import name` where M is allowed but the policy does not expose the name; M's rule binds "
         "a refusing stand-in instead, and the file never refers to the name, so nothing runs. Remove the "
         "import (any use of the name is PW023, an error)."),
    Rule("PW030", "dunder-access", "warning",
         "Access to a dunder attribute or namespace introspection",
         "Attributes such as __class__ or __dict__ and vars() are the first step of most Python sandbox "
         "escapes; the sandbox refuses most of them. Use the public API of the object instead."),
    Rule("PW031", "frame-introspection", "error",
         "Access to frame, code or interpreter internals (f_globals, __globals__, __subclasses__, ...)",
         "Frame, code, traceback and generator internals, __globals__/__builtins__/__subclasses__, "
         "globals(), sys._getframe and inspect's frame functions reach objects outside the sandbox. "
         "Pipelines have no legitimate need for them; remove the access."),
    Rule("PW032", "computed-module-attribute", "error",
         "Attribute of a module chosen at run time, or a module used as a value",
         "getattr(module, name) with a name built at run time hides which function is used from "
         "review and from this audit (getattr(os, 'sys' + 'tem')); so does a module passed, stored or "
         "returned as a value (vars(torch), self.helper = torch.utils), through which any of its names "
         "is reached later. Use the attribute by its name: `torch.nn.functional.silu`."),
    Rule("PW040", "unsafe-deserialization", "error",
         "Call that can unpickle data (torch.load without weights_only=True, np.load(allow_pickle=True), pickle)",
         "Unpickling runs arbitrary code from the data file. Use safetensors, pass weights_only=True to "
         "torch.load, and never pass allow_pickle=True to numpy.load."),
    Rule("PW041", "unpinned-hub-download", "warning",
         "Hub download without a pinned 40-hex commit revision",
         "from_pretrained, hf_hub_download, snapshot_download and similar calls fetch whatever the branch "
         "points to today (compare bandit B615). Pass revision=\"<40-hex commit sha>\" as a literal."),
    Rule("PW042", "file-or-os-access", "warning",
         "Call that reads or writes files or touches the host OS (open, os.*, shutil, save_pretrained, ...)",
         "Sandboxed pipelines receive their components from the loader and have no file system access. "
         "Take inputs as arguments and return outputs instead of reading or writing files."),
    Rule("PW043", "process-or-native-code", "error",
         "Call that starts processes or loads native code (subprocess, os.system, ctypes, ...)",
         "Starting processes or loading native code leaves every Python-level guard behind. Remove the call."),
    Rule("PW044", "network-access", "error",
         "Call that opens network connections (requests, urllib, socket, http.client, ...)",
         "Pipelines must not talk to the network: downloads go through the verified loader. Remove the call "
         "and pass the data in as an argument."),
    Rule("PW045", "dynamic-code", "error",
         "Dynamic code execution or import (exec, eval, compile, __import__, importlib, torch.hub.load)",
         "Code built or imported at run time cannot be audited. Write the code out in the file and import "
         "modules with a plain import statement."),
    Rule("PW046", "nested-remote-code", "error",
         "Load of further custom or remote code (custom_pipeline=, trust_remote_code=True, dynamic module loaders)",
         "A pipeline that loads another custom pipeline or remote code (custom_pipeline=..., "
         "trust_remote_code=True, get_class_from_dynamic_module) runs code that was never reviewed or "
         "pinned. Load the code you need through pipewarden itself, with its own pin."),
    Rule("PW047", "annotation-code", "error",
         "Annotation evaluated at load that is not a plain type expression",
         "diffusers calls typing.get_type_hints on the pipeline's __init__ while it loads the pipeline, "
         "which evaluates string annotations (all annotations under `from __future__ import annotations`, "
         "and strings inside annotations such as Optional[\"X\"]) as code. An annotation must be a plain "
         "type expression: names, dotted names, subscripts, `|`, None and constants. Write the type, not code."),
    Rule("PW050", "restricted-compile", "error",
         "File would not compile under the sandbox's restricted policy",
         "The sandbox compiles pipelines with a RestrictedPython transformer; the reported construct is "
         "refused there, so the pipeline cannot be loaded by pipewarden. The message names the sandbox "
         "rule and the construct."),
    # -- dynamic audit (`pipewarden audit --run`): found by running the file once in a confined worker
    Rule("PW060", "dynamic-refusal", "error",
         "Running the pipeline reached a capability the sandbox policy refuses",
         "`audit --run` ran the pipeline once in a locked-down worker on tiny random components, and the "
         "reported line asked for something the sandbox refuses (the sandbox rule and the attribute or call "
         "are in the message), whatever the static audit could see: a name built at run time, a loader "
         "reached through a chain of calls. A refusal the pipeline caught and went on from is reported too. "
         "Under pipewarden the pipeline fails (or silently loses that step) at this line; remove the call or "
         "use what the sandbox offers."),
    Rule("PW061", "dynamic-resource-limit", "error",
         "Running the pipeline hit a resource limit of the worker",
         "The minimal run (short prompt, 2 steps, smallest size, tiny components) exceeded one of the "
         "worker's default limits (memory, CPU time, wall-clock time, file size, message size). A real "
         "run needs far more; find out what the pipeline does at that point."),
    Rule("PW062", "dynamic-not-completed", "warning",
         "The minimal call did not complete (the pipeline raised, or the worker stopped)",
         "The run ended with an exception that is not a policy refusal. With tiny random components this "
         "is often the pipeline's own assumption about real model shapes or inputs, not a security "
         "issue; the lines the run never reached are listed as not covered, so a reviewer knows what "
         "the run did not exercise."),
    Rule("PW063", "dynamic-no-components", "warning",
         "The pipeline could not be given tiny components, so it was not run",
         "`audit --run` builds tiny random components from the pipeline's __init__ signature (annotations "
         "or the usual parameter names); the message says which parameter has no recipe. The file was "
         "only audited statically."),
    Rule("PW064", "dynamic-completed", "note",
         "The minimal call completed in the confined worker",
         "The pipeline ran once end to end on tiny random components; the coverage says which lines ran."),
)
# fmt: on

RULES_BY_ID: Mapping[str, Rule] = MappingProxyType({r.id: r for r in RULES})


# --- call patterns ------------------------------------------------------------------------------
#
# A call's target is resolved statically to a dotted name through the file's own import bindings
# (``import numpy as np`` makes ``np.load`` -> ``numpy.load``); builtins resolve to
# ``builtins.<name>``. The tables are consulted in this order and the first table with an entry
# for the call decides it (at most one finding per call):
#   1. EXACT (qualified name);
#   2. LAST  (the last component of the target, whatever the receiver: ``x.from_pretrained``);
#   3. PREFIX (``subprocess`` matches ``subprocess.run``), longest prefix first.
# Within an entry the first pattern whose condition holds gives the finding; if none holds (e.g. a
# pinned revision) the call is not reported. A rule id of ``None`` marks a call as known-harmless.
# Conditions (evaluated in sandbox/audit.py):
#   "no_weights_only"  -> matches unless weights_only=True is passed as a literal
#   "allow_pickle"     -> matches when allow_pickle is passed and is not the literal False
# A condition the call's ``*args``/``**mapping`` could decide (not a literal dict the audit can
# read) counts as the unsafe case: fail closed.
#   "unpinned"         -> matches unless revision="<40 hex>" is passed as a literal

@dataclass(frozen=True)
class CallPattern:
    rule: str | None
    what: str
    condition: str | None = None


EXACT_CALLS: Mapping[str, tuple[CallPattern, ...]] = MappingProxyType({
    "torch.load": (
        CallPattern("PW040", "torch.load without weights_only=True can unpickle arbitrary code", "no_weights_only"),
        CallPattern("PW042", "torch.load reads a file"),
    ),
    "torch.serialization.load": (
        CallPattern("PW040", "torch.serialization.load without weights_only=True can unpickle arbitrary code",
                    "no_weights_only"),
        CallPattern("PW042", "torch.serialization.load reads a file"),
    ),
    "numpy.load": (
        CallPattern("PW040", "numpy.load with allow_pickle enabled can unpickle arbitrary code", "allow_pickle"),
        CallPattern("PW042", "numpy.load reads a file"),
    ),
    "torch.hub.load": (CallPattern("PW045", "torch.hub.load downloads and runs code from a repository"),),
    "torch.hub.load_state_dict_from_url": (
        CallPattern("PW044", "torch.hub.load_state_dict_from_url downloads and unpickles a file"),
    ),
    "torch.hub.download_url_to_file": (CallPattern("PW044", "torch.hub.download_url_to_file downloads a file"),),
    "torch.utils.model_zoo.load_url": (CallPattern("PW044", "torch.utils.model_zoo.load_url downloads and unpickles a file"),),
    "torch.jit.load": (CallPattern("PW040", "torch.jit.load loads a TorchScript archive (code and pickled data)"),),
    "torch.ops.load_library": (CallPattern("PW043", "torch.ops.load_library loads a native library"),),
    "torch.classes.load_library": (CallPattern("PW043", "torch.classes.load_library loads a native library"),),
    "torch.save": (CallPattern("PW042", "torch.save writes a file"),),
    "numpy.save": (CallPattern("PW042", "numpy.save writes a file"),),
    "numpy.savez": (CallPattern("PW042", "numpy.savez writes a file"),),
    "numpy.savez_compressed": (CallPattern("PW042", "numpy.savez_compressed writes a file"),),
    "numpy.fromfile": (CallPattern("PW042", "numpy.fromfile reads a file"),),
    "numpy.loadtxt": (CallPattern("PW042", "numpy.loadtxt reads a file"),),
    "numpy.genfromtxt": (CallPattern("PW042", "numpy.genfromtxt reads a file"),),
    "PIL.Image.open": (CallPattern("PW042", "PIL.Image.open reads a file"),),
    "safetensors.torch.load_file": (CallPattern("PW042", "safetensors.torch.load_file reads a file"),),
    "safetensors.torch.save_file": (CallPattern("PW042", "safetensors.torch.save_file writes a file"),),
    "safetensors.safe_open": (CallPattern("PW042", "safetensors.safe_open reads a file"),),
    "diffusers.utils.load_image": (CallPattern("PW044", "load_image fetches a URL or reads a file"),),
    "diffusers.utils.export_to_video": (CallPattern("PW042", "export_to_video writes a file"),),
    "diffusers.utils.export_to_gif": (CallPattern("PW042", "export_to_gif writes a file"),),
    "pandas.read_pickle": (CallPattern("PW040", "pandas.read_pickle unpickles arbitrary code"),),
    "joblib.load": (CallPattern("PW040", "joblib.load unpickles arbitrary code"),),
    "builtins.open": (CallPattern("PW042", "open() reads or writes files"),),
    "builtins.exec": (CallPattern("PW045", "exec() runs code built at run time"),),
    "builtins.eval": (CallPattern("PW045", "eval() runs code built at run time"),),
    "builtins.compile": (CallPattern("PW045", "compile() builds code at run time"),),
    "builtins.__import__": (CallPattern("PW045", "__import__() imports a module chosen at run time"),),
    "builtins.breakpoint": (CallPattern("PW045", "breakpoint() starts a debugger"),),
    "builtins.help": (CallPattern("PW045", "help() imports modules named by a string (pydoc)"),),
    "builtins.input": (CallPattern("PW042", "input() reads from the terminal"),),
    "builtins.globals": (CallPattern("PW031", "globals() exposes the module namespace and its builtins"),),
    "builtins.vars": (CallPattern("PW030", "vars() exposes an object's __dict__"),),
    "sys._getframe": (CallPattern("PW031", "sys._getframe reaches the caller's frames"),),
    "sys.exit": (CallPattern("PW043", "sys.exit stops the host process"),),
    "os.system": (CallPattern("PW043", "os.system runs a shell command"),),
    "os.popen": (CallPattern("PW043", "os.popen runs a shell command"),),
    "os.fork": (CallPattern("PW043", "os.fork starts a process"),),
    "os.forkpty": (CallPattern("PW043", "os.forkpty starts a process"),),
    "os.kill": (CallPattern("PW043", "os.kill signals a process"),),
    "os.killpg": (CallPattern("PW043", "os.killpg signals processes"),),
    "os.posix_spawn": (CallPattern("PW043", "os.posix_spawn starts a process"),),
    "os.posix_spawnp": (CallPattern("PW043", "os.posix_spawnp starts a process"),),
    "os._exit": (CallPattern("PW043", "os._exit kills the host process"),),
} | {
    f"os.{name}": (CallPattern("PW043", f"os.{name} replaces the process with another program"),)
    for name in ("execl", "execle", "execlp", "execlpe", "execv", "execve", "execvp", "execvpe")
} | {
    f"os.{name}": (CallPattern("PW043", f"os.{name} starts a process"),)
    for name in ("spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe")
} | {
    # Pure string functions of os.path: no file system access.
    "os.path.join": (CallPattern(None, ""),),
    "os.path.basename": (CallPattern(None, ""),),
    "os.path.dirname": (CallPattern(None, ""),),
    "os.path.splitext": (CallPattern(None, ""),),
    "os.path.split": (CallPattern(None, ""),),
    "os.path.normpath": (CallPattern(None, ""),),
    "os.path.normcase": (CallPattern(None, ""),),
    "os.path.commonprefix": (CallPattern(None, ""),),
    "io.BytesIO": (CallPattern(None, ""),),
    "io.StringIO": (CallPattern(None, ""),),
    "pathlib.Path": (CallPattern(None, ""),),
    "pathlib.PurePath": (CallPattern(None, ""),),
    "pathlib.PurePosixPath": (CallPattern(None, ""),),
    "gc.get_objects": (CallPattern("PW031", "gc.get_objects reaches arbitrary live objects"),),
    "gc.get_referrers": (CallPattern("PW031", "gc.get_referrers reaches arbitrary live objects"),),
    "gc.get_referents": (CallPattern("PW031", "gc.get_referents reaches arbitrary live objects"),),
    "builtins.exit": (CallPattern("PW043", "exit() stops the host process"),),
    "builtins.quit": (CallPattern("PW043", "quit() stops the host process"),),
    "urllib.parse.urlparse": (CallPattern(None, ""),),
    "urllib.parse.urljoin": (CallPattern(None, ""),),
    "urllib.parse.quote": (CallPattern(None, ""),),
    "urllib.parse.unquote": (CallPattern(None, ""),),
    "urllib.parse.urlencode": (CallPattern(None, ""),),
})

LAST_NAME_CALLS: Mapping[str, tuple[CallPattern, ...]] = MappingProxyType({
    name: (CallPattern("PW041", "{name} without a pinned revision=\"<40-hex commit>\"", "unpinned"),)
    for name in (
        "from_pretrained", "from_single_file", "hf_hub_download", "snapshot_download", "load_lora_weights",
        "load_textual_inversion", "load_ip_adapter", "load_dataset", "hf_hub_url", "cached_download",
    )
} | {
    "get_class_from_dynamic_module": (CallPattern("PW046", "{name} imports code downloaded or read at run time"),),
    "get_cached_module_file": (CallPattern("PW046", "{name} fetches code to import at run time"),),
    "get_class_in_module": (CallPattern("PW046", "{name} imports a module chosen at run time"),),
    "download_url_to_file": (CallPattern("PW044", "{name} downloads a file"),),
    "load_url": (CallPattern("PW044", "{name} downloads a file"),),
    "load_state_dict_from_url": (CallPattern("PW044", "{name} downloads and unpickles a file"),),
    "load_library": (CallPattern("PW043", "{name} loads a native library"),),
    "save_pretrained": (CallPattern("PW042", "{name} writes files"),),
    "push_to_hub": (CallPattern("PW044", "{name} uploads to the network"),),
    "write_text": (CallPattern("PW042", "{name} writes a file"),),
    "write_bytes": (CallPattern("PW042", "{name} writes a file"),),
    "read_text": (CallPattern("PW042", "{name} reads a file"),),
    "read_bytes": (CallPattern("PW042", "{name} reads a file"),),
    "unlink": (CallPattern("PW042", "{name} deletes a file"),),
    "rmtree": (CallPattern("PW042", "{name} deletes a directory tree"),),
    "currentframe": (CallPattern("PW031", "{name} reaches the caller's frames"),),
    "_getframe": (CallPattern("PW031", "{name} reaches the caller's frames"),),
})

PREFIX_CALLS: Mapping[str, tuple[CallPattern, ...]] = MappingProxyType({
    "os": (CallPattern("PW042", "{name} touches the host OS (files, environment, processes)"),),
    "io": (CallPattern("PW042", "{name} reads or writes files"),),
    "shutil": (CallPattern("PW042", "{name} reads, writes or deletes files"),),
    "tempfile": (CallPattern("PW042", "{name} creates files"),),
    "glob": (CallPattern("PW042", "{name} lists files"),),
    "pathlib": (CallPattern("PW042", "{name} accesses the file system"),),
    "pickle": (CallPattern("PW040", "{name} can unpickle arbitrary code"),),
    "_pickle": (CallPattern("PW040", "{name} can unpickle arbitrary code"),),
    "cPickle": (CallPattern("PW040", "{name} can unpickle arbitrary code"),),
    "dill": (CallPattern("PW040", "{name} can unpickle arbitrary code"),),
    "cloudpickle": (CallPattern("PW040", "{name} can unpickle arbitrary code"),),
    "marshal": (CallPattern("PW045", "{name} builds code objects from bytes"),),
    "shelve": (CallPattern("PW040", "{name} can unpickle arbitrary code"),),
    "subprocess": (CallPattern("PW043", "{name} starts a process"),),
    "pty": (CallPattern("PW043", "{name} starts a process"),),
    "multiprocessing": (CallPattern("PW043", "{name} starts processes"),),
    "asyncio.create_subprocess_exec": (CallPattern("PW043", "{name} starts a process"),),
    "asyncio.create_subprocess_shell": (CallPattern("PW043", "{name} runs a shell command"),),
    "ctypes": (CallPattern("PW043", "{name} loads or calls native code"),),
    "torch.utils.cpp_extension": (CallPattern("PW043", "{name} compiles and loads native code"),),
    "torch.package": (CallPattern("PW040", "{name} imports code and pickled objects from a package archive"),),
    "cffi": (CallPattern("PW043", "{name} loads or calls native code"),),
    "signal": (CallPattern("PW043", "{name} changes process signal handling"),),
    "requests": (CallPattern("PW044", "{name} opens a network connection"),),
    "urllib": (CallPattern("PW044", "{name} opens a network connection"),),
    "urllib3": (CallPattern("PW044", "{name} opens a network connection"),),
    "http.client": (CallPattern("PW044", "{name} opens a network connection"),),
    "httpx": (CallPattern("PW044", "{name} opens a network connection"),),
    "aiohttp": (CallPattern("PW044", "{name} opens a network connection"),),
    "socket": (CallPattern("PW044", "{name} opens a network connection"),),
    "ssl": (CallPattern("PW044", "{name} opens a network connection"),),
    "ftplib": (CallPattern("PW044", "{name} opens a network connection"),),
    "smtplib": (CallPattern("PW044", "{name} opens a network connection"),),
    "telnetlib": (CallPattern("PW044", "{name} opens a network connection"),),
    "webbrowser": (CallPattern("PW044", "{name} opens a URL"),),
    "importlib": (CallPattern("PW045", "{name} imports a module chosen at run time"),),
    "runpy": (CallPattern("PW045", "{name} runs a module"),),
    "code": (CallPattern("PW045", "{name} runs code built at run time"),),
    "inspect.stack": (CallPattern("PW031", "{name} reaches the caller's frames"),),
    "inspect.trace": (CallPattern("PW031", "{name} reaches frames of the current exception"),),
    "inspect.currentframe": (CallPattern("PW031", "{name} reaches the caller's frames"),),
    "inspect.getouterframes": (CallPattern("PW031", "{name} reaches the caller's frames"),),
    "inspect.getinnerframes": (CallPattern("PW031", "{name} reaches frames"),),
    "inspect.getmembers": (CallPattern("PW031", "{name} lists every attribute, dunders included"),),
    "inspect.getattr_static": (CallPattern("PW031", "{name} reads attributes around guards"),),
    "inspect.getclosurevars": (CallPattern("PW031", "{name} exposes globals and closures of a function"),),
    "huggingface_hub": (CallPattern("PW044", "{name} talks to the Hugging Face Hub"),),
})

#: Last names of network download helpers: reported as PW044 in addition to any other pattern of
#: the call (``hf_hub_download`` is also PW041 when its revision is not pinned).
DOWNLOAD_LAST_NAMES: frozenset[str] = frozenset({
    "hf_hub_download", "snapshot_download", "cached_download", "download_url_to_file", "load_url",
    "load_state_dict_from_url", "urlretrieve",
})

#: Keyword arguments that make a call load further custom or remote code (PW046).
NESTED_CODE_KEYWORDS: frozenset[str] = frozenset({"custom_pipeline", "trust_remote_code"})

# --- attribute patterns ---------------------------------------------------------------------------

#: Attribute names whose access is reported as PW031 (error): frame/code/generator/traceback internals
#: and the classic escape dunders. Reading these is how sandbox escapes reach real builtins.
INTROSPECTION_ATTRIBUTES: frozenset[str] = frozenset({
    "f_globals", "f_locals", "f_back", "f_builtins", "f_code", "f_trace", "f_lasti", "f_generator",
    "gi_frame", "gi_code", "gi_yieldfrom", "cr_frame", "cr_code", "cr_await", "cr_origin",
    "ag_frame", "ag_code", "ag_await", "tb_frame", "tb_next",
    "co_code", "co_consts", "co_names", "co_varnames", "co_filename",
    "func_globals", "func_code", "func_closure",
    "__globals__", "__builtins__", "__subclasses__", "__code__", "__closure__", "__mro__", "__bases__",
    "__base__", "__reduce__", "__reduce_ex__", "__import__", "__loader__", "__spec__", "__getattribute__",
    "__traceback__", "__self__", "__func__", "__kwdefaults__", "__defaults__",
})

#: Dunder attribute names that are not reported (ordinary protocol calls such as ``super().__init__``).
#: The audit uses the sandbox policy's ``allowed_dunder_attrs`` (the reviewed idioms) instead when the
#: policy has one; this list is the fallback for a policy without it.
BENIGN_DUNDERS: frozenset[str] = frozenset({
    "__init__", "__call__", "__name__", "__qualname__", "__doc__", "__version__", "__len__", "__iter__",
    "__next__", "__enter__", "__exit__", "__getitem__", "__setitem__", "__contains__", "__repr__", "__str__",
    "__eq__", "__hash__", "__post_init__", "__annotations__", "__dataclass_fields__", "__module__",
})

#: Builtins that take an attribute name: a literal name argument is checked like ``obj.name``.
ATTRIBUTE_BUILTINS: frozenset[str] = frozenset({"getattr", "setattr", "hasattr", "delattr"})

HEX40_LENGTH = 40


def rule(rule_id: str) -> Rule:
    """The rule with ``rule_id``; ``KeyError`` for an unknown id (a programming error)."""
    return RULES_BY_ID[rule_id]
