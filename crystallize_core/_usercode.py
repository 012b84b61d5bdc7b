"""Telling the user's code from Crystallize's own, so that messages point at the user's line.

Crystallize's own code is every module of ``crystallize_core``, of each
``crystallize_*`` plugin package, and of pluggy, which calls the hooks.
"""

from __future__ import annotations

import os
import re
import sys
import sysconfig
from types import FrameType, TracebackType


def is_own_module(name: object) -> bool:
    """Whether the module called ``name`` belongs to Crystallize or pluggy."""
    if not isinstance(name, str):
        return False
    top = name.partition(".")[0]
    return top == "pluggy" or top.startswith("crystallize_")


def user_frame(frame: FrameType | None) -> tuple[FrameType | None, int]:
    """The innermost frame, from ``frame`` outwards, whose module is not Crystallize's own,
    and how many frames were passed over to reach it.

    When every frame is Crystallize's own, the outermost one is returned.
    """
    skipped = 0
    while frame is not None and is_own_module(frame.f_globals.get("__name__")):
        if frame.f_back is None:
            break
        frame = frame.f_back
        skipped += 1
    return frame, skipped


def user_location(tb: TracebackType | None) -> tuple[str, int] | None:
    """``(filename, line)`` of the innermost traceback entry in the user's code, or None.

    The user's code is whatever is neither Crystallize's own nor part of
    Python itself; installed third-party packages count as the user's only
    when nothing else does, so that an error raised inside a library is
    pinned on the user's line that called it.
    """
    entries = []
    while tb is not None:
        entries.append((tb.tb_frame, tb.tb_lineno))
        tb = tb.tb_next
    candidates = [
        (frame.f_code.co_filename, line)
        for frame, line in entries
        if not is_own_module(frame.f_globals.get("__name__")) and not _is_python_itself(frame.f_code.co_filename)
    ]
    outside_installed = [entry for entry in candidates if not _is_installed(entry[0])]
    chosen = outside_installed or candidates
    return chosen[-1] if chosen else None


_TRACEBACK_ENTRY = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+)', re.MULTILINE)


def user_location_in_text(traceback_text: str) -> tuple[str, int] | None:
    """``user_location`` for a traceback that travelled as text, as in a
    [`ReplicateError`][].

    Crystallize's own files are told apart by their folder, that of each
    imported ``crystallize_*`` or pluggy package.
    """
    own = _own_folders()
    candidates = [
        (m["file"], int(m["line"]))
        for m in _TRACEBACK_ENTRY.finditer(traceback_text)
        if not _is_python_itself(m["file"]) and not _under(m["file"], own)
    ]
    outside_installed = [entry for entry in candidates if not _is_installed(entry[0])]
    chosen = outside_installed or candidates
    return chosen[-1] if chosen else None


def shown_path(filename: str) -> str:
    """``filename`` relative to the working folder when it lies inside it, else as it is."""
    try:
        relative = os.path.relpath(filename)
    except ValueError:  # another drive, on Windows
        return filename
    return filename if relative.startswith(os.pardir) else relative


def located(location: tuple[str, int] | None) -> str:
    """`` (file:line)`` for a location, or nothing."""
    return f" ({shown_path(location[0])}:{location[1]})" if location else ""


def describe_callable(component: object) -> str:
    """``'name' (file:line)``: a datasource, step or treatment function as the user wrote it."""
    target = component
    while hasattr(target, "func") and hasattr(target, "args") and hasattr(target, "keywords"):  # functools.partial
        target = target.func
    name = getattr(target, "__qualname__", None) or type(target).__qualname__
    code = getattr(target, "__code__", None)
    if code is None:
        call = vars(type(target)).get("__call__")  # a callable object: where its class defines the call
        code = getattr(call, "__code__", None)
    return f"{name!r}" + (located((code.co_filename, code.co_firstlineno)) if code is not None else "")


def _own_folders() -> tuple[str, ...]:
    folders: list[str] = []
    for name, module in list(sys.modules.items()):
        if "." not in name and is_own_module(name):
            folders.extend(os.path.abspath(p) for p in getattr(module, "__path__", ()))
    return tuple(folders)


def _is_python_itself(filename: str) -> bool:
    if filename.startswith("<"):  # <frozen importlib._bootstrap>, <string>
        return True
    return _under(filename, _stdlib_folders())


def _is_installed(filename: str) -> bool:
    return _under(filename, _site_folders())


def _under(filename: str, folders: tuple[str, ...]) -> bool:
    path = os.path.abspath(filename)
    return any(path == folder or path.startswith(folder + os.sep) for folder in folders)


_FOLDERS: dict[str, tuple[str, ...]] = {}


def _stdlib_folders() -> tuple[str, ...]:
    if "stdlib" not in _FOLDERS:
        paths = sysconfig.get_paths()
        found = {paths.get("stdlib"), paths.get("platstdlib")}
        _FOLDERS["stdlib"] = tuple(os.path.abspath(p) for p in found if p)
    return _FOLDERS["stdlib"]


def _site_folders() -> tuple[str, ...]:
    if "site" not in _FOLDERS:
        import site

        paths = sysconfig.get_paths()
        found = {paths.get("purelib"), paths.get("platlib"), *getattr(site, "getsitepackages", list)()}
        found.update(p for p in sys.path if p.endswith(("site-packages", "dist-packages")))
        _FOLDERS["site"] = tuple(os.path.abspath(p) for p in found if p)
    return _FOLDERS["site"]
