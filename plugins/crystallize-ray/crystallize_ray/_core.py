"""Running replicates on Ray: connecting, shipping the experiment once, batching, faults."""

from __future__ import annotations

import atexit
import os
import socket
import time
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any
from urllib.parse import urlsplit

import ray

from crystallize_core import Capabilities, ConfigurationError, StrategyUnavailableError, WorkerSetupError
from crystallize_core.engine import Backend, inline_payload, run_shipped_span, run_span, user_code_paths

#: What a client sends first on an HTTP/2 connection, and the (empty) settings frame that must follow.
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HTTP2_EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
#: The frame type of the settings frame a gRPC server answers with.
HTTP2_SETTINGS_FRAME = 0x4
TARGET_TASK_SECONDS = 0.1  # Ray's per-task cost is about a millisecond

_started_here = False

#: How Ray reports a task whose worker process or node went away (after its retries).
WORKER_LOST = (
    ray.exceptions.WorkerCrashedError,
    ray.exceptions.NodeDiedError,
    ray.exceptions.OutOfMemoryError,
)


def connect(address: str | None, runtime_env: dict | None, timeout: float) -> bool:
    """Connect to ``address``, ``RAY_ADDRESS``, or a local instance started here.

    An address where nothing answers within ``timeout`` seconds raises
    [`StrategyUnavailableError`][crystallize_core.StrategyUnavailableError] naming it.

    ``runtime_env`` becomes the job's, which is what lets Ray upload local
    folders (``working_dir``, ``py_modules``). An existing connection in this
    process is used as it is; then the return value is False and the caller
    passes ``runtime_env`` with each task instead.
    """
    global _started_here
    if ray.is_initialized():
        return False
    target = address or os.environ.get("RAY_ADDRESS") or None
    job_env = dict(runtime_env or {})
    env_vars = dict(job_env.get("env_vars") or {})
    env_vars.setdefault("PYTHONPATH", os.pathsep.join(user_code_paths()))
    job_env["env_vars"] = env_vars
    if target is None:
        ray.init(include_dashboard=False, runtime_env=job_env)
        _started_here = True
        atexit.register(_shutdown_if_started_here)
        return True
    _check_reachable(target, timeout)
    try:
        ray.init(address=target, runtime_env=job_env)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise StrategyUnavailableError(
            f"the 'ray' strategy cannot connect to the Ray cluster at {target!r}: {exc}"
        ) from None
    return True


def _shutdown_if_started_here() -> None:
    if _started_here and ray.is_initialized():
        ray.shutdown()


def _check_reachable(address: str, timeout: float) -> None:
    """Fail within ``timeout`` seconds, naming the address, when nothing listens there."""
    if address in ("auto", "local"):
        return
    parts = urlsplit(address if "://" in address else f"ray://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if not host or not port:
        raise ConfigurationError(f"Ray address {address!r} must look like host:port or ray://host:port")
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((host, port), timeout=timeout) as connection:
            # Ray's own connection retries for minutes where something listens
            # but does not answer: ask for the HTTP/2 greeting every gRPC
            # server (a Ray head's, a Ray client server's) sends at once.
            connection.settimeout(max(0.001, deadline - time.monotonic()))
            if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
                _tls_answers(connection, host)  # a TLS server answers a handshake, not a greeting
                return
            connection.sendall(HTTP2_PREFACE + HTTP2_EMPTY_SETTINGS)
            header = connection.recv(9)
    except OSError as exc:
        raise StrategyUnavailableError(
            f"the 'ray' strategy cannot reach the Ray cluster at {address!r} within {timeout:g} s: "
            f"{exc.strerror or exc or type(exc).__name__}. Is the head node running (`ray start --head`) and the "
            "address right?"
        ) from None
    if len(header) < 4 or header[3] != HTTP2_SETTINGS_FRAME:
        raise StrategyUnavailableError(
            f"the 'ray' strategy reached {address!r}, but what answers there is not a Ray cluster (no gRPC "
            "greeting). Is the address the head node's GCS port (6379 by default) or its client port (10001)?"
        )


def _tls_answers(connection: socket.socket, host: str) -> None:
    """Return once a TLS server at the other end of ``connection`` answered a
    handshake, in whatever way (a certificate Ray's own client would check, or
    a refusal of ours); raise the socket's timeout where nothing answers."""
    import ssl

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # only whether something answers matters here
    try:
        context.wrap_socket(connection, server_hostname=host).close()
    except ssl.SSLError:  # it answered, with a refusal: a server that wants a client certificate, say
        pass


# --- in a Ray worker ----------------------------------------------------------

_cached: tuple[str, Callable[[int], Any]] | None = None


def _replicate_fn(holder: list) -> Callable[[int], Any]:
    # The reference travels inside a list so that Ray does not resolve (and
    # unpickle) it for every task; each worker process fetches it once, and
    # Ray maps NumPy buffers in it from the node's shared object store
    # instead of copying them into every worker.
    global _cached
    (reference,) = holder
    key = reference.hex()
    if _cached is None or _cached[0] != key:
        try:
            replicate_fn = ray.get(reference)
        except (ray.exceptions.RaySystemError, SystemExit):  # how an object that failed to unpickle here shows
            raise WorkerSetupError(traceback.format_exc()) from None
        _cached = (key, replicate_fn)
    return _cached[1]


@ray.remote
def _run_span(key: str, shipped: bytes | list, start: int, stop: int) -> tuple[list | bytes, float]:
    # ``shipped``: the pickled replicate function when small, else a
    # reference to it in the object store, inside a list.
    if isinstance(shipped, bytes):
        return run_shipped_span(key, shipped, start, stop)  # type: ignore[return-value]
    return run_span(_replicate_fn(shipped), start, stop, serialize=True)


# --- in the driver ------------------------------------------------------------


class RayBackend(Backend):
    """Batches of replicates as Ray tasks, for one run.

    Ray reruns a task whose worker or node died up to ``max_retries`` times
    itself; a batch lost after that is split into single replicates, and a
    single replicate lost after that is recorded as ``WorkerDied``. Ctrl-C
    cancels every task with ``force=True``, which kills the workers running
    them. A running task cannot be stopped within a bound, so no timeout.
    """

    capabilities = Capabilities(cancellation=True, retries_dead_workers=True, ships_work=True)
    failure_scope = "task"
    target_batch_seconds = TARGET_TASK_SECONDS

    def __init__(self, strategy: Any):
        self.strategy = strategy
        self.running: dict[Future, ray.ObjectRef] = {}

    def start(self, run: Any, replicate_fn: Callable[[int], Any]) -> int:
        strategy = self.strategy
        job_has_env = connect(strategy.address, strategy.runtime_env, strategy.connect_timeout)
        options: dict[str, Any] = {
            "num_cpus": strategy.num_cpus,
            "num_gpus": strategy.num_gpus,
            "max_retries": strategy.task_retries,
            "retry_exceptions": False,  # errors in user code are captured, never retried
        }
        if strategy.resources:
            options["resources"] = strategy.resources
        if strategy.runtime_env and not job_has_env:
            options["runtime_env"] = strategy.runtime_env
        self.task = _run_span.options(**options)
        slots = _slots(strategy)
        # A small experiment goes with every task (Ray inlines small
        # arguments): no object-store round trip per run. A large one goes to
        # the object store as an object, not as bytes, so that its arrays
        # are shared by the workers of a node rather than copied into each.
        payload = inline_payload(replicate_fn)
        self.shipped: bytes | list = payload if payload is not None else [ray.put(replicate_fn)]
        self.key = uuid.uuid4().hex
        return slots

    def submit(self, span: range) -> Future:
        reference = self.task.remote(self.key, self.shipped, span.start, span.stop)
        future = reference.future()
        self.running[future] = reference
        future.add_done_callback(self._forget)
        return future

    def _forget(self, future: Future) -> None:
        self.running.pop(future, None)

    def worker_lost(self, exc: BaseException) -> str | None:
        if not isinstance(exc, WORKER_LOST):
            return None
        detail = str(exc).splitlines()[0] if str(exc) else "no detail"
        return f"{type(exc).__name__}: {detail}; Ray's own retries were spent"

    def escaped(self, exc: BaseException) -> BaseException:
        if isinstance(exc, ray.exceptions.RayTaskError):
            return exc.cause or exc  # only the core's own stops (fail_fast) get here
        return exc

    def stop_all(self) -> None:
        for reference in list(self.running.values()):
            ray.cancel(reference, force=True)

    def shutdown(self, wait: bool = True) -> None:
        self.stop_all()
        self.running.clear()


def _slots(strategy: Any) -> int:
    """How many tasks the cluster can run at once, by the scarcest resource asked for.

    A request no node can meet is refused here: Ray would otherwise wait
    for it forever.
    """
    available = ray.cluster_resources()
    asked = {"CPU": strategy.num_cpus, "GPU": strategy.num_gpus, **(strategy.resources or {})}
    counts = {name: int(available.get(name, 0) // amount) for name, amount in asked.items() if amount > 0}
    lacking = [
        f"{name} {asked[name]:g} (cluster total: {available.get(name, 0):g})" for name, n in counts.items() if n < 1
    ]
    if lacking:
        raise ConfigurationError(
            f"each task asks for more than the Ray cluster has: {', '.join(lacking)}. Lower the request, "
            "or add nodes that have it"
        )
    return max(1, min(counts.values(), default=1))
