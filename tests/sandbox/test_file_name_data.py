"""Class data that host save code uses as file names holds plain names (red team round 5, flaw 5).

``pipe.save_pretrained(dir)`` -- the caller's ordinary code, after the pipeline returned -- runs
``os.path.join(dir, self.config_name)`` for the pipeline and each component (diffusers
``ConfigMixin.save_config``). A pipeline that sets ``config_name`` on its own classes or objects
(the pipeline class body, its own ``DDIMScheduler`` subclass registered as a component, a write
on the class or on an instance) chose where the caller's save writes. Each door below is shown
live in plain diffusers (a file lands outside the save directory); with pipewarden in-process it
is refused with a named rule, and nothing is written outside the save directory. A plain file
name is still accepted, and saving a normal pipeline still works.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from pipewarden.errors import PipewardenError
from pipewarden.sandbox import load_class

pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")


def _escape(root: Path) -> str:
    """An absolute name: os.path.join(save_dir, it) drops save_dir (a "../" name works the same way)."""
    return str(root / "outside" / "escaped.json")


HEAD = """\
from diffusers import DiffusionPipeline, DDIMScheduler

NAME = {name!r}


class OwnScheduler(DDIMScheduler):
    pass

"""

#: door -> (module-level classes, the pipeline's __init__ body after register_modules, class body)
DOORS: dict[str, tuple[str, str, str]] = {
    "pipeline-class-body": ("", "", "config_name = NAME"),
    "scheduler-subclass-body": (
        "class EvilScheduler(DDIMScheduler):\n    config_name = NAME\n",
        "self.register_modules(scheduler=EvilScheduler())",
        "",
    ),
    "class-write-after-creation": (
        "",
        "OwnScheduler.config_name = NAME\nself.register_modules(scheduler=OwnScheduler())",
        "",
    ),
    "setattr-on-own-class": (
        "",
        "setattr(OwnScheduler, 'config_name', NAME)\nself.register_modules(scheduler=OwnScheduler())",
        "",
    ),
    "instance-write-on-own-scheduler": (
        "",
        "s = OwnScheduler()\ns.config_name = NAME\nself.register_modules(scheduler=s)",
        "",
    ),
    "instance-write-on-the-pipeline": ("", "self.config_name = NAME", ""),
    "setattr-on-the-pipeline": ("", "setattr(self, 'config_name', NAME)", ""),
    "write-on-the-load-built-scheduler": ("", "self.scheduler.config_name = NAME", ""),
}


def _source(door: str, name: str) -> str:
    classes, init_body, class_body = DOORS[door]
    return (
        HEAD.format(name=name)
        + classes
        + "\n\nclass P(DiffusionPipeline):\n"
        + (textwrap.indent(class_body, "    ") + "\n" if class_body else "")
        + "    def __init__(self, scheduler):\n"
        + "        super().__init__()\n"
        + "        self.register_modules(scheduler=scheduler)\n"
        + textwrap.indent(init_body, " " * 8)
        + "\n"
    )


def _files(root: Path) -> list[str]:
    return sorted(str(Path(d, f).relative_to(root)) for d, _, fs in os.walk(root) for f in fs)


def _save(cls: type, root: Path) -> None:
    from diffusers import DDIMScheduler

    (root / "outside").mkdir()
    pipe = cls(scheduler=DDIMScheduler())
    pipe.save_pretrained(str(root / "save"))


@pytest.mark.parametrize("door", sorted(set(DOORS) - {"write-on-the-load-built-scheduler"}))
def test_door_is_live_in_plain_diffusers(door, tmp_path):
    ns: dict[str, object] = {}
    exec(compile(_source(door, _escape(tmp_path)), "p.py", "exec"), ns)
    _save(ns["P"], tmp_path)  # type: ignore[arg-type]
    assert "outside/escaped.json" in _files(tmp_path)


@pytest.mark.parametrize("door", sorted(DOORS))
def test_door_refused_in_process_and_nothing_written_outside(door, tmp_path):
    with pytest.raises(PipewardenError) as info:
        cls = load_class(_source(door, _escape(tmp_path)), filename="p.py")
        _save(cls, tmp_path)
    expected = {"class.file-name", "write.file-name", "write.pipeline-name", "write.host-object"}
    assert info.value.rule in expected, info.value
    assert not any(not f.startswith("save/") for f in _files(tmp_path)), _files(tmp_path)


@pytest.mark.parametrize(
    "value",
    ["/tmp/abs.json", "..", ".", "", "a/b.json", "a\\b.json", "a\x00.json", 3],
)
def test_every_non_plain_name_is_refused_in_a_class_body(value):
    src = HEAD.format(name=value) + "class Evil(DDIMScheduler):\n    config_name = NAME\n"
    with pytest.raises(PipewardenError) as info:
        load_class(src + "\n\nclass P(DiffusionPipeline):\n    pass\n", filename="p.py")
    assert info.value.rule == "class.file-name"


def test_a_str_subclass_is_not_a_plain_name():
    """os.path.join calls the value's own str methods; only an exact str is taken at its word."""
    from pipewarden.sandbox.policy import default_policy
    from pipewarden.sandbox.runtime.filenames import checked_file_name_value

    class Name(str):
        def startswith(self, *args: object) -> bool:  # type: ignore[override]
            return False

    with pytest.raises(PipewardenError) as info:
        checked_file_name_value(default_policy(), "config_name", Name("x.json"), "t", "write.file-name")
    assert info.value.rule == "write.file-name"
    assert (
        checked_file_name_value(default_policy(), "config_name", "x.json", "t", "write.file-name") == "x.json"
    )


@pytest.mark.parametrize(
    "door", ["scheduler-subclass-body", "instance-write-on-own-scheduler", "pipeline-class-body"]
)
def test_plain_file_names_still_work_and_save_stays_in_the_directory(door, tmp_path):
    cls = load_class(_source(door, "renamed_config.json"), filename="p.py")
    _save(cls, tmp_path)
    files = _files(tmp_path)
    assert all(f.startswith("save/") for f in files), files
    if door == "pipeline-class-body":
        assert "save/renamed_config.json" in files
    else:
        assert "save/scheduler/renamed_config.json" in files


def test_normal_pipeline_saves_into_the_directory(tmp_path):
    src = HEAD.format(name="unused") + (
        "\n\nclass P(DiffusionPipeline):\n"
        "    def __init__(self, scheduler):\n"
        "        super().__init__()\n"
        "        self.register_modules(scheduler=OwnScheduler(beta_end=scheduler.config.beta_end))\n"
    )
    _save(load_class(src, filename="p.py"), tmp_path)
    assert _files(tmp_path) == ["save/model_index.json", "save/scheduler/scheduler_config.json"]


def test_vocab_files_names_map_is_checked_and_stored_read_only():
    from pipewarden.sandbox.policy import default_policy
    from pipewarden.sandbox.runtime.filenames import checked_file_name_value

    policy = default_policy()
    stored = checked_file_name_value(
        policy, "vocab_files_names", {"vocab_file": "v.json"}, "t", "class.file-name"
    )
    assert dict(stored) == {"vocab_file": "v.json"}
    with pytest.raises(TypeError):
        stored["vocab_file"] = "../x"  # type: ignore[index]
    with pytest.raises(PipewardenError) as info:
        checked_file_name_value(
            policy, "vocab_files_names", {"vocab_file": "../v.json"}, "t", "class.file-name"
        )
    assert info.value.rule == "class.file-name"
