"""Replicates on one event loop, started by this run and closed by it.

``max_workers`` worker tasks take replicate indices from one shared
iterator until none is left, so a run holds that many tasks however many
replicates it has. Each worker awaits ``replicate_fn.acall(i)``, the
replicate function's awaitable form, or runs a replicate function without
one in a thread ([`asyncio.to_thread`][]).

With a timeout, each replicate runs in a task of its own whose every turn on
the loop is timed: a replicate's time is what it ran and waited, less the time
other replicates held the loop meanwhile. So a replicate that blocks the loop
(a plain ``time.sleep`` in a step) is the one timed out, with the step named,
and the replicates it kept waiting are not.
"""

from __future__ import annotations

import asyncio
import inspect
import signal
import threading
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from time import perf_counter
from typing import Any

from crystallize_core.replicate import RunningReplicate


def run_on_event_loop(
    replicate_fn: Callable[[int], Any],
    total: int,
    concurrency: int,
    rate_limit: float | None,
    timeout: float | None,
    fail_fast: bool = False,
) -> list:
    """Run replicates ``0 .. total - 1`` on a new event loop and return their results in order.

    On Ctrl-C, raises ``KeyboardInterrupt``; an exception that escapes a
    replicate (fail-fast's ``ReplicateFailed``, raised for a timeout too under
    ``fail_fast``) is raised after the others are cancelled. Either way its ``completed`` holds the finished results.
    The loop is closed before returning, with no task left pending.
    """
    loop = asyncio.new_event_loop()
    # Replicates with no coroutine step, and replicate functions with no
    # acall, run on threads of the loop's default executor.
    threads = _DaemonThreads()
    loop.set_default_executor(threads)
    run = _LoopRun(replicate_fn, total, concurrency, rate_limit, timeout, fail_fast, threads.running)
    main = loop.create_task(run.main())
    try:
        with _CancelOnCtrlC(loop, main) as ctrl_c:
            try:
                return loop.run_until_complete(main)
            except asyncio.CancelledError:
                if not ctrl_c.fired:
                    raise
                raise KeyboardInterrupt from None
    except BaseException as stopped:  # also a second Ctrl-C, or one our handler did not see
        stopped.completed = run.finished()  # type: ignore[attr-defined]
        raise
    finally:
        try:
            _cancel_remaining(loop, [main, *run.workers])
        finally:
            loop.close()


class _LoopRun:
    """One run's state: the results so far, the workers, and how replicates start."""

    def __init__(
        self,
        replicate_fn: Any,
        total: int,
        concurrency: int,
        rate_limit: float | None,
        timeout: float | None,
        fail_fast: bool,
        in_threads: dict[asyncio.Future, Future],
    ):
        self.replicate_fn = replicate_fn
        self.acall = getattr(replicate_fn, "acall", None)
        self.total = total
        self.concurrency = concurrency
        self.timeout = timeout
        self.fail_fast = fail_fast
        self.spacing = None if rate_limit is None else _StartSpacing(rate_limit)
        self.results: list = [None] * total
        self.workers: list[asyncio.Task] = []
        #: Set before this run cancels its own workers, so that a cancellation
        #: is told apart from a replicate that raised CancelledError itself.
        self.stopping = False
        #: The workers whose replicate is running in a thread, which cannot be stopped.
        self.in_threads: dict[asyncio.Future, Future] = in_threads
        #: Seconds that the replicates of this run have held the loop, in all (timed runs only).
        self.held = 0.0
        #: Positions are replicate indices unless the run resumes (a subset of them).
        self.indices = getattr(replicate_fn, "replicates", None)
        #: Whether ``acall`` reports the components a replicate enters (the core's do).
        self.followed = self.acall is not None and "running" in inspect.signature(self.acall).parameters

    def finished(self) -> list:
        return [result for result in self.results if result is not None]

    async def main(self) -> list:
        indices = iter(range(self.total))
        loop = asyncio.get_running_loop()
        self.workers = [loop.create_task(self.work(indices)) for _ in range(self.concurrency)]
        try:
            await asyncio.wait(self.workers, return_when=asyncio.FIRST_EXCEPTION)
            for worker in self.workers:  # in creation order: the same error wins every time
                escaped = worker.exception() if worker.done() and not worker.cancelled() else None
                if escaped is not None:
                    raise escaped
            return self.results
        finally:
            # Fail-fast or Ctrl-C: cancel every replicate waiting on the loop
            # and wait for them to unwind, so no task is left pending. One
            # running in a thread cannot be stopped: as under the thread
            # strategy, it finishes and its result is kept (a second Ctrl-C
            # abandons it).
            self.stopping = True
            running = [worker for worker in self.workers if not worker.done()]
            for worker in running:
                if worker not in self.in_threads:
                    worker.cancel()
            if running:
                await asyncio.wait(running)

    async def work(self, indices: Iterator[int]) -> None:
        me = asyncio.current_task()
        assert me is not None  # a worker is a task
        # One iterator shared by every worker on one thread: each index is
        # taken exactly once, with no lock.
        for replicate in indices:
            if self.stopping:
                return
            if self.spacing is not None:
                await self.spacing.wait()
            self.results[replicate] = await self.one(replicate)
            self.in_threads.pop(me, None)

    async def one(self, replicate: int) -> Any:
        acall = self.acall
        if self.timeout is not None and acall is not None:
            return await self.timed(replicate)
        call = acall(replicate) if acall is not None else asyncio.to_thread(self.replicate_fn, replicate)
        try:
            if self.timeout is None:
                return await call
            return await asyncio.wait_for(call, self.timeout)
        except asyncio.TimeoutError:
            return self.timed_out(replicate, None)
        except asyncio.CancelledError:
            if self.stopping:
                raise
            return self.cancelled_itself(replicate)

    async def timed(self, replicate: int) -> Any:
        """Run ``replicate`` in a task of its own, timed by a ``_Watch``."""
        assert self.timeout is not None and self.acall is not None
        watch = _Watch(self, self.timeout)
        call = self.acall(replicate, watch) if self.followed else self.acall(replicate)
        loop = asyncio.get_running_loop()
        task = watch.task = loop.create_task(_timed(watch, call))
        watch.arm(loop)
        try:
            result = await task  # cancelling this worker (Ctrl-C, fail-fast) cancels the task
        except asyncio.CancelledError:
            if self.stopping:
                raise
            if not watch.timed_out:
                return self.cancelled_itself(replicate)
        finally:
            watch.disarm()
        # A replicate past its time is timed out even if it ended (it blocked the
        # loop to its end, or caught the cancellation): others waited on it.
        return self.timed_out(replicate, watch) if watch.timed_out else result

    def timed_out(self, replicate: int, watch: _Watch | None) -> Any:
        index = replicate if self.indices is None else self.indices[replicate]
        message = f"replicate {index} ran longer than the timeout of {self.timeout} s; its task was cancelled"
        if watch is not None and watch.blocker is not None:
            kind, component, seconds = watch.blocker
            what = f"{kind} {_name(component)}" if component is not None else "its code"
            message = (
                f"replicate {index} ran longer than the timeout of {self.timeout} s: {what} blocked the event loop "
                f"for {seconds:.2f} s without awaiting, and no other replicate could run meanwhile; await in it "
                "(asyncio.to_thread for a blocking call)"
            )
        result = self.replicate_fn.error_result(replicate, "ReplicateTimeout", message)
        if self.fail_fast:  # a timeout stops a fail-fast run, as under every strategy
            from crystallize_core import ReplicateFailed

            raise ReplicateFailed(result.errors[0]) from None
        return result

    def cancelled_itself(self, replicate: int) -> Any:
        # Not cancelled by this run: the replicate raised CancelledError
        # itself (only seen on Python 3.10, where acall cannot tell).
        index = replicate if self.indices is None else self.indices[replicate]
        return self.replicate_fn.error_result(
            replicate, "asyncio.CancelledError", f"replicate {index} raised CancelledError"
        )


class _Watch(RunningReplicate):
    """The clock of one replicate under a timeout.

    Its time is the time since it started less the time that other
    replicates held the loop since then: what it held the loop itself and
    what it waited. It is timed out once that passes the timeout, checked
    each time it gives the loop back and by a timer, which re-arms for what
    is left when others held the loop meanwhile. A component that holds the
    loop longer than the timeout without giving it back is the ``blocker``.
    """

    __slots__ = (
        "before",
        "began",
        "blocker",
        "held",
        "mark",
        "resumed_at",
        "run",
        "task",
        "timed_out",
        "timeout",
        "timer",
    )

    def __init__(self, run: _LoopRun, timeout: float):
        super().__init__()
        self.run = run
        self.timeout = timeout
        self.began = perf_counter()
        self.before = run.held  # the loop time held by replicates before this one began
        self.held = 0.0
        self.resumed_at = 0.0
        #: When the component running now last took the loop; None while the replicate waits.
        self.mark: float | None = None
        self.blocker: tuple[str, object, float] | None = None
        self.timed_out = False
        self.task: asyncio.Task | None = None
        self.timer: asyncio.TimerHandle | None = None

    def enter(self, kind: str, component: object) -> None:
        self._segment(perf_counter())
        self.kind = kind
        self.component = component

    def _segment(self, now: float) -> None:
        """The running component's hold on the loop ends at ``now``."""
        mark = self.mark
        if mark is not None:
            if now - mark > self.timeout and self.blocker is None:
                self.blocker = (self.kind, self.component, now - mark)
            self.mark = now

    def elapsed(self, now: float) -> float:
        return now - self.began - (self.run.held - self.before - self.held)

    def resumed(self) -> None:
        self.resumed_at = self.mark = perf_counter()

    def suspended(self, ended: bool) -> None:
        now = perf_counter()
        self._segment(now)
        self.mark = None
        spent = now - self.resumed_at
        self.held += spent
        self.run.held += spent
        if not self.timed_out and self.elapsed(now) > self.timeout:
            self.timed_out = True
        if not ended and (self.timed_out or self.run.stopping):
            # Lands at the await it gave the loop back at; again at every
            # later one, should a step catch the cancellation and go on.
            assert self.task is not None
            self.task.cancel()

    def follow(self, coro: Any) -> Any:
        """A task the replicate starts (``gather``, ``create_task``, ``wait_for``)
        holds the loop on the replicate's account, not on the others'."""
        followed: Any = _timed(self, coro)
        followed.__qualname__ = getattr(coro, "__qualname__", followed.__qualname__)  # leftover warnings name it
        return followed

    def arm(self, loop: asyncio.AbstractEventLoop) -> None:
        self.timer = loop.call_later(self.timeout, self.check, loop)

    def check(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self.task is not None
        if self.task.done():
            return
        left = self.timeout - self.elapsed(perf_counter())
        if left > 0:  # others held the loop meanwhile: that time was not this replicate's
            self.timer = loop.call_later(left, self.check, loop)
        else:
            self.timed_out = True
            self.task.cancel()

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()


async def _timed(watch: _Watch, call: Any) -> Any:
    return await _Turns(watch, call)


class _Turns:
    """Awaits ``call``, telling ``watch`` each time it takes and gives back the loop."""

    __slots__ = ("call", "watch")

    def __init__(self, watch: _Watch, call: Any):
        self.watch = watch
        self.call = call

    def __await__(self) -> Generator[Any, Any, Any]:
        watch = self.watch
        steps = self.call.__await__()
        value: Any = None
        error: BaseException | None = None
        while True:
            watch.resumed()
            try:
                yielded = steps.send(value) if error is None else steps.throw(error)
            except StopIteration as ended:
                watch.suspended(True)
                return ended.value
            except BaseException:
                watch.suspended(True)
                raise
            watch.suspended(False)
            error = None
            try:
                value = yield yielded
            except GeneratorExit:
                steps.close()
                raise
            except BaseException as thrown:
                value, error = None, thrown


def _name(component: object) -> str:
    return repr(getattr(component, "__qualname__", None) or type(component).__qualname__)


class _StartSpacing:
    """Lets replicates start one at a time, at least ``1 / rate`` seconds apart.

    The gap is measured from when the previous replicate actually started (on
    the loop's clock), not from when it was due, so a late wake-up never lets
    two starts crowd together: the rate is never exceeded, only missed.
    """

    def __init__(self, rate: float):
        self.interval = 1.0 / rate
        self.last: float | None = None
        self.turn: asyncio.Lock | None = None

    async def wait(self) -> None:
        if self.turn is None:
            self.turn = asyncio.Lock()  # made on the loop that uses it
        async with self.turn:
            loop = asyncio.get_running_loop()
            if self.last is not None:
                delay = self.last + self.interval - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            self.last = loop.time()


class _CancelOnCtrlC:
    """While the loop runs in the main thread, Ctrl-C cancels the run's main task.

    Python's own handler would raise KeyboardInterrupt wherever the main
    thread happens to be, possibly inside the loop's machinery; cancelling
    the task lets every replicate unwind at its ``await``. A second Ctrl-C
    raises KeyboardInterrupt at once. (``asyncio.Runner`` does the same from
    Python 3.11 on.)
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task):
        self.loop = loop
        self.task = task
        self.fired = False
        self.previous: Any = None

    def __enter__(self) -> _CancelOnCtrlC:
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            self.previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.fired or self.task.done():
            raise KeyboardInterrupt
        self.fired = True
        self.task.cancel()
        self.loop.call_soon_threadsafe(lambda: None)  # wake the loop if it is waiting

    def __exit__(self, *exc_info: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


class _DaemonThreads(ThreadPoolExecutor):
    """The loop's default executor: each call on a new daemon thread.

    A plain replicate abandoned at a second Ctrl-C cannot be stopped; on a
    ``ThreadPoolExecutor`` thread it would keep the interpreter from exiting
    until it returned. A subclass only because ``loop.set_default_executor``
    accepts nothing else. ``running`` maps the task that submitted a call to
    its future, until the run has taken the result.
    """

    def __init__(self) -> None:
        super().__init__(max_workers=1)  # never used: submit starts threads of its own
        self.running: dict[asyncio.Future, Future] = {}

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        task = asyncio.current_task()
        if task is not None:
            self.running[task] = future

        def work() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)

        threading.Thread(target=work, name="crystallize-async-replicate", daemon=True).start()
        return future


def _cancel_remaining(loop: asyncio.AbstractEventLoop, ours: list[asyncio.Task]) -> None:
    """Cancel whatever is still pending on ``loop`` (tasks the replicates started
    included) and let it unwind, so that closing the loop destroys no pending
    task and leaves no exception unretrieved."""
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.wait(pending))
    for task in {*pending, *ours}:
        if task.done() and not task.cancelled():
            task.exception()
    loop.run_until_complete(loop.shutdown_asyncgens())
