"""Landlock through raw syscalls: filesystem, TCP and scope restriction of the calling process.

Decides which access rights exist at each ABI version; the caller decides which paths get which
rights. ``restrict`` is all-or-nothing per call: it builds a ruleset, adds every rule and
restricts the process, or raises ``OSError`` before restricting anything.
"""

from __future__ import annotations

import ctypes
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass

from pipewarden.isolation.layers import syscalls as sc

# Filesystem rights (ABI 1 = bits 0..12, 2 adds REFER, 3 TRUNCATE, 5 IOCTL_DEV).
EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13
TRUNCATE = 1 << 14
IOCTL_DEV = 1 << 15

NET_BIND_TCP = 1 << 0
NET_CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
SCOPE_SIGNAL = 1 << 1

_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1}
_FILE_ONLY = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV

READ = EXECUTE | READ_FILE | READ_DIR
DEVICE_RW = READ_FILE | WRITE_FILE | IOCTL_DEV | TRUNCATE

_LANDLOCK_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_O_PATH = getattr(os, "O_PATH", 0o10000000)


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def abi_version() -> int:
    """The kernel's Landlock ABI version, 0 when Landlock is unavailable."""
    try:
        return sc.syscall("landlock_create_ruleset", None, ctypes.c_size_t(0), ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION))
    except OSError:
        return 0


def fs_rights(abi: int) -> int:
    return _FS_BY_ABI.get(abi, (1 << 16) - 1)


@dataclass(frozen=True)
class Rule:
    path: str
    access: int


@dataclass(frozen=True)
class Applied:
    abi: int
    fs: bool
    net: bool
    scope: bool
    rules: int
    skipped: tuple[str, ...]


def restrict(rules: Iterable[Rule], *, abi: int) -> Applied:
    """Restrict the calling process to ``rules`` (no_new_privs must already be set).

    Paths that do not exist are skipped (and listed); a rule on a non-directory keeps only the
    file rights. TCP bind/connect are denied entirely where the ABI has them (>= 4); abstract
    unix sockets and signals are scoped to the domain where it has them (>= 6).
    """
    if abi < 1:
        raise OSError(38, "Landlock unavailable")
    handled = fs_rights(abi)
    net = NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
    attr = _RulesetAttr(handled, net, scoped)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    ruleset_fd = sc.syscall("landlock_create_ruleset", ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    skipped: list[str] = []
    count = 0
    try:
        for rule in rules:
            try:
                fd = os.open(rule.path, _O_PATH | os.O_CLOEXEC)
            except OSError:
                skipped.append(rule.path)
                continue
            try:
                access = rule.access & handled
                if not stat.S_ISDIR(os.fstat(fd).st_mode):
                    access &= _FILE_ONLY
                if not access:
                    continue
                beneath = _PathBeneathAttr(access, fd)
                sc.syscall("landlock_add_rule", ctypes.c_int(ruleset_fd), ctypes.c_int(_RULE_PATH_BENEATH), ctypes.byref(beneath), ctypes.c_uint32(0))
                count += 1
            finally:
                os.close(fd)
        sc.syscall("landlock_restrict_self", ctypes.c_int(ruleset_fd), ctypes.c_uint32(0))
    finally:
        os.close(ruleset_fd)
    return Applied(abi=abi, fs=True, net=bool(net), scope=bool(scoped), rules=count, skipped=tuple(skipped))
