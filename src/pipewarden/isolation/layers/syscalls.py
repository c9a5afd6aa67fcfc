"""Raw Linux system calls used by the worker layers (ctypes; x86_64 and aarch64).

Decides nothing; exposes thin wrappers that raise ``OSError`` with the errno. Architectures other
than x86_64 and aarch64 get ``ARCH = None`` and every layer that needs a syscall number reports
itself unavailable instead of guessing.
"""

from __future__ import annotations

import ctypes
import os
import platform

_MACHINE = platform.machine().lower()
ARCH: str | None = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}.get(
    _MACHINE
)

# Syscall numbers the layers need. Landlock's are the same on both (new syscalls share numbers).
NR: dict[str, dict[str, int]] = {
    "x86_64": {
        "landlock_create_ruleset": 444,
        "landlock_add_rule": 445,
        "landlock_restrict_self": 446,
        "capset": 126,
        "capget": 125,
    },
    "aarch64": {
        "landlock_create_ruleset": 444,
        "landlock_add_rule": 445,
        "landlock_restrict_self": 446,
        "capset": 91,
        "capget": 90,
    },
}

_libc = ctypes.CDLL(None, use_errno=True)
#: False off Linux (or without these libc functions): every layer then reports itself missing.
LINUX = all(hasattr(_libc, f) for f in ("syscall", "prctl", "unshare", "mount")) and platform.system() == "Linux"
if not LINUX:
    ARCH = None
else:
    _libc.syscall.restype = ctypes.c_long
    _libc.prctl.restype = ctypes.c_int
    _libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    _libc.unshare.restype = ctypes.c_int
    _libc.unshare.argtypes = [ctypes.c_int]
    _libc.mount.restype = ctypes.c_int
    _libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


def _unsupported(what: str) -> OSError:
    return OSError(38, f"{what}: not supported on {platform.system()} {_MACHINE}")


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def syscall(name: str, *args) -> int:
    if ARCH is None:
        raise _unsupported(name)
    return _check(_libc.syscall(ctypes.c_long(NR[ARCH][name]), *args), name)


def prctl(option: int, a2: int = 0, a3: int = 0, a4: int = 0, a5: int = 0) -> int:
    if not LINUX:
        raise _unsupported("prctl")
    return _check(_libc.prctl(option, a2, a3, a4, a5), f"prctl({option})")


def unshare(flags: int) -> None:
    if not LINUX:
        raise _unsupported("unshare")
    _check(_libc.unshare(flags), "unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    if not LINUX:
        raise _unsupported("mount")

    def enc(v: str | None) -> bytes | None:
        return None if v is None else os.fsencode(v)

    _check(_libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REC = 0x4000
MS_PRIVATE = 0x40000

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_SET_SECCOMP = 22
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECCOMP_MODE_FILTER = 2

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWNS = 0x00020000
CLONE_THREAD = 0x00010000

CAP_DAC_READ_SEARCH = 2
CAP_LAST_CAP_FALLBACK = 40


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def capset_only(caps: tuple[int, ...]) -> None:
    """Set effective = permitted = ``caps`` and inheritable = none for the calling thread."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for cap in caps:
        idx, bit = divmod(cap, 32)
        data[idx].effective |= 1 << bit
        data[idx].permitted |= 1 << bit
    syscall("capset", ctypes.byref(header), ctypes.byref(data))


def cap_last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap", encoding="ascii") as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return CAP_LAST_CAP_FALLBACK
