"""What the replicate function needs to run coroutine steps.

Imported only by a replicate function whose datasource or steps are coroutine
functions, so that plain pipelines never import [`asyncio`][].

A replicate called as a plain function (by the serial, thread or process
strategies) is driven on an event loop of its thread's own, created on first
use and kept for the thread's life: ``asyncio.run`` per replicate would cost
a new loop, its selector and its self-pipe every time.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

from crystallize_core.errors import StrategyContractError, warn_at_user_code

T = TypeVar("T")

_local = threading.local()
# Loops a forked child inherited from its parent: their selector (an epoll or
# kqueue instance) is shared with the parent, so closing them here would
# unregister the parent's file descriptors. Kept alive so that nothing, not
# even the loop's own finaliser, closes them in the child.
_inherited: list[_ThreadLoop] = []


class _ThreadLoop:
    """One thread's event loop, closed when the thread ends (its locals are freed)."""

    __slots__ = ("loop", "pid")

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.pid = os.getpid()
        _track_tasks(self.loop)

    def __del__(self) -> None:
        loop = self.loop
        if self.pid == os.getpid() and not loop.is_closed() and not loop.is_running():
            loop.close()


def thread_loop() -> asyncio.AbstractEventLoop:
    """This thread's event loop for driving replicates, created on first use."""
    holder: _ThreadLoop | None = getattr(_local, "holder", None)
    if holder is None or holder.pid != os.getpid() or holder.loop.is_closed():
        if holder is not None and holder.pid != os.getpid():
            _inherited.append(holder)
        holder = _local.holder = _ThreadLoop()
    return holder.loop


def run_coroutine(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to completion on this thread's loop and return its value.

    Raises [`StrategyContractError`][] when this thread already runs an
    event loop: a strategy on an event loop must ``await replicate_fn.acall(i)``.
    """
    if asyncio._get_running_loop() is not None:
        coroutine.close()
        raise StrategyContractError(
            "replicate_fn(i) was called from a thread whose event loop is running, and this experiment has "
            "coroutine steps: a strategy running on an event loop must await replicate_fn.acall(i) instead"
        )
    loop = thread_loop()
    task = _local.driven = loop.create_task(coroutine)
    _local.stopping = False
    try:
        return loop.run_until_complete(task)
    except BaseException:
        # Ctrl-C, or a BaseException the replicate does not capture: leave no
        # pending task or unretrieved exception behind on the loop.
        if not task.done():
            _local.stopping = True
            task.cancel()
            try:
                loop.run_until_complete(task)
            except BaseException:
                pass
        elif not task.cancelled():
            task.exception()
        raise
    finally:
        _unwind_leftovers(loop)


#: The replicate whose code is running in this context (a task copies it into
#: the tasks it starts), so that the tasks it starts are known as its own.
_running: contextvars.ContextVar[Any] = contextvars.ContextVar("crystallize_running_replicate", default=None)


def enter_replicate(running: Any) -> contextvars.Token:
    """Make ``running`` (a [`RunningReplicate`][crystallize_core.replicate.RunningReplicate])
    the replicate of the current task: the tasks started from here on are listed in
    its ``started``. Undone by ``leave_replicate``."""
    _track_tasks(asyncio.get_running_loop())
    return _running.set(running)


def leave_replicate(running: Any, token: contextvars.Token) -> None:
    """End ``running``: cancel the tasks it started that are still running,
    with one warning naming the component that started them.

    They unwind at the loop's next turns; a task left running would otherwise
    run on in a later replicate, or a later run, on the same loop.
    """
    _running.reset(token)
    left = [(task, kind, component) for task, kind, component in running.started if not task.done()]
    running.started.clear()
    if not left:
        return
    for task, _, _ in left:
        task.cancel()
    from crystallize_core._usercode import describe_callable  # sysconfig: only to name leftover tasks

    task, kind, component = left[0]
    what = f"{kind} {describe_callable(component)}" if component is not None else "the replicate"
    coroutine = getattr(task.get_coro(), "__qualname__", "?")
    more = f" (and {len(left) - 1} more)" if len(left) > 1 else ""
    warn_at_user_code(
        f"{what} started a task running {coroutine!r}{more} and left it running when its replicate ended; "
        "Crystallize cancelled it. Await the tasks a step starts (or cancel them) before the step returns",
        RuntimeWarning,
    )


async def await_returned(running: Any, awaitable: Awaitable[T]) -> T:
    """Await what a plain component returned, as the replicate ``running``."""
    token = enter_replicate(running)
    try:
        return await awaitable
    finally:
        leave_replicate(running, token)


def _track_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Have ``loop`` list each task it creates in the running replicate's
    ``started``; any task factory the loop already had still makes the task."""
    previous = loop.get_task_factory()
    if getattr(previous, "tracks_replicate_tasks", False):
        return

    def tracking_factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Future:
        running = _running.get()
        if running is not None:
            coro = running.follow(coro)
        task = previous(loop, coro, **kwargs) if previous is not None else asyncio.Task(coro, loop=loop, **kwargs)
        if running is not None:
            running.started.append((task, running.kind, running.component))
        return task

    tracking_factory.tracks_replicate_tasks = True  # type: ignore[attr-defined]
    loop.set_task_factory(tracking_factory)


def _unwind_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    """Let the tasks a replicate left on this thread's loop (cancelled when it
    ended) unwind now, rather than run on in the next replicate driven here.

    A task that ignores its cancellation is given a second one and a second
    of grace; one that outlives both is left, with a warning, and cancelled
    again when the next replicate driven here ends.
    """
    pending = {task for task in asyncio.all_tasks(loop) if not task.done()}
    if not pending:
        return
    for task in pending:
        task.cancel()
    done, pending = loop.run_until_complete(asyncio.wait(pending, timeout=1.0))
    for task in pending:
        task.cancel()
    if pending:
        more, pending = loop.run_until_complete(asyncio.wait(pending, timeout=1.0))
        done |= more
    for task in done:  # an error raised while unwinding is the task's own: never logged as unretrieved
        if not task.cancelled():
            task.exception()
    for task in pending:
        warn_at_user_code(
            f"a task running {getattr(task.get_coro(), '__qualname__', '?')!r} that a step started ignores "
            "cancellation and is still running; it is cancelled again when the next replicate on this thread ends",
            RuntimeWarning,
        )


def cancel_requested() -> bool:
    """Whether the running task is being cancelled from outside (a timeout, Ctrl-C, fail-fast).

    Tells that apart from a step raising [`asyncio.CancelledError`][] of its
    own accord, which is captured like any error. Python 3.10 has no
    ``Task.cancelling``: there only ``run_coroutine`` knows whether it
    cancelled its task, and in a task of anyone else's every
    ``CancelledError`` is taken as a cancellation of the replicate.
    """
    task = asyncio.current_task()
    if task is None:
        return False
    cancelling = getattr(task, "cancelling", None)
    if cancelling is not None:
        return cancelling() > 0
    if task is getattr(_local, "driven", None):
        return _local.stopping
    return True
