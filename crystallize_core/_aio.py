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
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from crystallize_core.errors import StrategyContractError

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
