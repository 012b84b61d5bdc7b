"""The probe components of the conformance kit: what its experiments are made of.

Datasources, steps and plugins that make a replicate observable (what ran,
where, how often, what it drew) or misbehave on purpose (fail, hang, kill
its worker, press Ctrl-C); two reference strategies; and the watchers of
what a run leaves running. Every component is defined at the top level of
this module, so that it pickles by reference into any worker; none holds a
lock or a file. The kit's checks live in ``_kit``; both are re-exported from
``crystallize_core.testing``.
"""

from __future__ import annotations

import os
import pickle
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crystallize_core.hookspecs import hookimpl

# --- datasources and steps ------------------------------------------------------


def numbers(ctx) -> list[float]:
    """A datasource: three numbers drawn from the context's private generator."""
    return [ctx.rng.random() for _ in range(3)]


def record(data, ctx):
    """A step recording the replicate index, one draw from ``ctx.rng`` and the data's sum."""
    ctx.metrics.add("replicate", ctx.replicate)
    ctx.metrics.add("draw", ctx.rng.random())
    ctx.metrics.add("total", sum(data) * ctx.get("factor", 1))
    return data


class DelayEarlyReplicates:
    """A step that makes early replicates slow, so a concurrent strategy sees
    them finish last and has to restore replicate order."""

    def __init__(self, slow: int = 4, seconds: float = 0.05):
        self.slow = slow
        self.seconds = seconds

    def __call__(self, data, ctx):
        if ctx.replicate < self.slow:
            time.sleep(self.seconds * (self.slow - ctx.replicate))
        return data


class RecordRuns:
    """A step that appends ``"<replicate> <condition>"`` to a file each time it runs
    (appends of one short line are atomic, whichever process makes them)."""

    def __init__(self, path: str):
        self.path = path

    def __call__(self, data, ctx):
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{ctx.replicate} {ctx.condition}\n".encode())
        finally:
            os.close(fd)
        return data


class UnpicklableError(Exception):
    """An exception that cannot be pickled: it holds a lock."""

    def __init__(self, message: str, *, detail: Any = None):
        super().__init__(message)
        self.lock = threading.Lock()
        self.detail = detail


class FailOn:
    """A step that raises for the given replicates of one condition; every
    other call passes. ``unpicklable`` raises ``UnpicklableError``."""

    def __init__(self, replicates: frozenset[int], condition: str = "treated", unpicklable: bool = False):
        self.replicates = frozenset(replicates)
        self.condition = condition
        self.unpicklable = unpicklable

    def __call__(self, data, ctx):
        if ctx.replicate in self.replicates and ctx.condition == self.condition:
            if self.unpicklable:
                raise UnpicklableError(f"cannot travel {ctx.replicate}", detail=ctx.replicate)
            raise ValueError(f"failing on purpose in replicate {ctx.replicate}")
        return data


class HoldsBuffer:
    """A datasource holding ``size`` bytes that it pickles as a
    [`pickle.PickleBuffer`][] under protocol 5, the way a NumPy array
    pickles its data, and whose replicates record the buffer's length."""

    def __init__(self, size: int):
        self.data = bytearray(size)

    def __reduce_ex__(self, protocol):
        if protocol >= 5:
            return _holding, (pickle.PickleBuffer(self.data),)
        return _holding, (bytes(self.data),)

    def __call__(self, ctx):
        ctx.metrics.add("held", len(self.data))
        return numbers(ctx)


def _holding(data) -> HoldsBuffer:
    held = HoldsBuffer(0)
    held.data = bytearray(data)
    return held


class UnpicklesOnlyIn:
    """A datasource that pickles anywhere and unpickles only in process
    ``driver``: what a worker meets when a module the experiment's code comes
    from is not importable where it runs."""

    def __init__(self, driver: int):
        self.driver = driver

    def __reduce__(self):
        return _rebuilt_only_in, (self.driver,)

    def __call__(self, ctx):
        return numbers(ctx)


def _rebuilt_only_in(driver: int) -> UnpicklesOnlyIn:
    if os.getpid() != driver:
        raise ModuleNotFoundError("No module named 'only_on_the_driver' (UnpicklesOnlyIn)")
    return UnpicklesOnlyIn(driver)


class CountUnpickles:
    """A datasource that appends this process's id to a file whenever it is
    unpickled, to count how often the experiment is shipped."""

    def __init__(self, path: str):
        self.path = path

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.path = state["path"]
        with open(self.path, "a") as log:
            log.write(f"{os.getpid()}\n")

    def __call__(self, ctx):
        return numbers(ctx)


class SleepEach:
    """A step that sleeps ``seconds`` in every replicate, so that runs take a while."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def __call__(self, data, ctx):
        time.sleep(self.seconds)
        return data


class SleepOn:
    """A step that sleeps ``seconds`` in the given replicates only."""

    def __init__(self, replicates: frozenset[int], seconds: float):
        self.replicates = frozenset(replicates)
        self.seconds = seconds

    def __call__(self, data, ctx):
        if ctx.replicate in self.replicates:
            time.sleep(self.seconds)
        return data


class InterruptAfter:
    """A last step that sends SIGINT to process ``pid`` (the run's caller) once
    ``finished`` replicates have reached it in condition ``last_condition``: a
    real Ctrl-C, from wherever the replicates run. Replicates are counted in a
    file beside ``marker``."""

    def __init__(self, finished: int, pid: int, marker: str, last_condition: str = "treated"):
        self.finished = finished
        self.pid = pid
        self.marker = marker
        self.last_condition = last_condition

    def __call__(self, data, ctx):
        if ctx.condition != self.last_condition:
            return data
        fd = os.open(self.marker + ".count", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, b".")
        finally:
            os.close(fd)
        if os.path.getsize(self.marker + ".count") >= self.finished:
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                return data  # already sent
            os.kill(self.pid, signal.SIGINT)
        return data


class KillWorkerOn:
    """A step that kills the process running it, in the given replicates:
    ``"exit"`` calls ``os._exit(1)``, ``"kill"`` sends itself SIGKILL, and
    ``"once"`` exits only the first time (it leaves a marker file), to test a
    retry that succeeds. It never kills the process ``driver`` (the test's
    own): there it raises instead, so a strategy that runs replicates in the
    calling process fails the check rather than ending the test session."""

    def __init__(self, how: dict[int, str], marker_dir: str = "", driver: int | None = None):
        self.how = dict(how)
        self.marker_dir = marker_dir
        self.driver = os.getpid() if driver is None else driver

    def __call__(self, data, ctx):
        how = self.how.get(ctx.replicate)
        if how is not None and os.getpid() == self.driver:
            raise RuntimeError("KillWorkerOn refused to kill the driver process: the replicate ran in it")
        if how == "exit":
            os._exit(1)
        if how == "kill":
            os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))
        if how == "once":
            marker = Path(self.marker_dir) / f"died-{ctx.replicate}"
            if not marker.exists():
                marker.touch()
                os._exit(3)
        return data


# --- global random state: what a step draws after SeedPlugin(auto_seed=True) ----------

# SeedPlugin seeds the process-global generators before each condition.
# Replicates that run at once in one process (threads, coroutines) seed and
# draw from them in turn, so a draw in a step may follow another replicate's
# seeding or draw: such a draw is marked as not clean and left out of
# comparisons. Seedings and draws are counted under one lock. These live here, one per
# process, and never travel: the probes that use them pickle by reference.
_seeding_lock = threading.Lock()
_seedings = [0]
_seeded_at: dict[tuple[int, str], int] = {}
_unlocked: set[tuple[int, str]] = set()
#: The longest wait for the seeding lock, which only synchronous hooks hold.
_SEEDING_LOCK_SECONDS = 10.0


class MarkSeeding:
    """A plugin bracketing the seeding of each condition (SeedPlugin's, and
    anything else's in ``before_condition``), so that [`DrawGlobalRandom`][]
    can tell whether another condition was seeded, or drew, in this process
    between this condition's seeding and its draw.

    Its first hook runs before every other ``before_condition`` and takes a
    lock; its last runs after every other, counts the seeding and lets go.
    Nothing that can wait (an ``await``) happens while the lock is held.
    """

    @hookimpl(tryfirst=True, specname="before_condition")
    def lock_before_seeding(self, replicate: int, condition: str) -> None:
        # Bounded: a hook that raised between the two halves never let go.
        if not _seeding_lock.acquire(timeout=_SEEDING_LOCK_SECONDS):
            _seeded_at.pop((replicate, condition), None)
            _unlocked.add((replicate, condition))

    @hookimpl(trylast=True, specname="before_condition")
    def count_after_seeding(self, replicate: int, condition: str) -> None:
        if (replicate, condition) in _unlocked:
            _unlocked.discard((replicate, condition))
            return
        try:
            _seedings[0] += 1
            _seeded_at[(replicate, condition)] = _seedings[0]
        finally:
            _seeding_lock.release()


class DrawGlobalRandom:
    """A step recording one draw from the global [`random`][] module
    (``global_random``) and one from NumPy's global generator
    (``global_numpy``; None where NumPy is not installed), and whether they
    are this condition's own (``global_clean``): no other condition in this
    process was seeded or drew since this one was seeded, as [`MarkSeeding`][]
    and this step count under one lock."""

    def __call__(self, data, ctx):
        try:
            import numpy  # imported here: the kit does not need NumPy
        except ImportError:
            numpy = None
        with _seeding_lock:
            seeded_at = _seeded_at.pop((ctx.replicate, ctx.condition), None)
            clean = seeded_at is not None and seeded_at == _seedings[0]
            drawn = random.random()
            drawn_numpy = None if numpy is None else float(numpy.random.random())
            _seedings[0] += 1
        ctx.metrics.add("global_random", drawn)
        ctx.metrics.add("global_numpy", drawn_numpy)
        ctx.metrics.add("global_clean", clean)
        return data


# --- reference strategies -------------------------------------------------------------


class Decliner:
    """A strategy that always declines and remembers being asked."""

    def __init__(self):
        self.asked = 0

    @hookimpl
    def run_experiment_loop(self, experiment, replicate_fn):
        self.asked += 1
        return None


class LoopStrategy:
    """A correct strategy that runs replicates in a plain loop in the calling
    thread and counts how often it is asked (``asked``). Formerly ``Recorder``."""

    def __init__(self):
        self.asked = 0

    @hookimpl
    def run_experiment_loop(self, experiment, replicate_fn):
        self.asked += 1
        # On Ctrl-C nothing to hand over: each finished replicate reported itself to the run.
        return [replicate_fn(replicate) for replicate in range(experiment.replicates)]


# --- what a run leaves running ---------------------------------------------------------

#: Processes a Python interpreter starts for its own use, not a strategy's workers.
_INTERPRETER_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver", "resource_tracker")


def peak_memory_mb() -> float:
    """This process's peak resident memory in MB, for memory tests run in a subprocess.

    Reads ``VmHWM`` where ``/proc`` has it: on Linux, ``ru_maxrss`` of a
    child started by ``vfork`` and ``exec`` can report its parent's peak (a
    test session's). Elsewhere, ``ru_maxrss`` (bytes on macOS, KB on Linux).
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)


def live_child_processes() -> dict[int, int]:
    """This process's living descendants, as process id to parent id, except
    the helper processes ``multiprocessing`` keeps for the interpreter (psutil)."""
    import psutil

    found = {}
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            command = " ".join(child.cmdline())
            parent = child.ppid()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if not any(helper in command for helper in _INTERPRETER_HELPERS):
            found[child.pid] = parent
    return found


def processes_started_since(before: dict[int, int]) -> list[int]:
    """Descendants started since the snapshot ``before`` by this process, or by
    processes it started since: not those a cluster that was already running
    starts for itself (a Ray raylet replacing its workers, say)."""
    now = live_child_processes()
    new = {pid for pid in now if pid not in before}
    me = os.getpid()
    return sorted(pid for pid in new if now[pid] == me or now[pid] in new)


def describe_process(pid: int) -> str:
    """``"<pid> (<command line>)"``, shortened, for messages about a process left running."""
    import psutil

    try:
        command = " ".join(psutil.Process(pid).cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return str(pid)
    return f"{pid} ({command[:80]}{'...' if len(command) > 80 else ''})"


def live_threads() -> set[threading.Thread]:
    """This process's running threads. The thread objects, not their
    identifiers: a thread started later can reuse the identifier of one that
    was running, and would then not count as new."""
    return {thread for thread in threading.enumerate() if thread.is_alive()}


def wait_until(condition: Callable[[], bool], seconds: float = 30.0) -> bool:
    """Poll ``condition`` until it holds or ``seconds`` pass; return whether it held."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
