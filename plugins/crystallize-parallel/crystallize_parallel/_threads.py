"""Replicates on a thread pool.

Each worker thread claims the next few replicate indices from a shared
counter until none is left, so a run holds ``max_workers`` futures however
many replicates it has, and costs no future, queue or wake-up per replicate.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any

from crystallize_parallel._progress import progress_bar

MAX_CLAIM = 64
CLAIMS_PER_WORKER = 16


def run_on_threads(replicate_fn: Callable[[int], Any], total: int, workers: int, progress: bool) -> list:
    results: list = [None] * total
    claim_lock = threading.Lock()
    # Claiming a few indices at a time keeps the lock cold for tiny replicates,
    # while leaving every thread many claims, so none idles at the end.
    chunk = max(1, min(MAX_CLAIM, total // (workers * CLAIMS_PER_WORKER)))
    spans = iter(range(0, total, chunk))
    stopping = threading.Event()
    bar = progress_bar(progress, total)

    def drain() -> None:
        try:
            while not stopping.is_set():
                with claim_lock:
                    start = next(spans, None)
                if start is None:
                    return
                for replicate in range(start, min(start + chunk, total)):
                    if stopping.is_set():
                        return
                    results[replicate] = replicate_fn(replicate)
                    if bar is not None:
                        bar.update()
        except BaseException:  # e.g. fail_fast: the other threads start nothing new
            stopping.set()
            raise

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="crystallize-replicate")
    try:
        futures = [pool.submit(drain) for _ in range(workers)]
        wait(futures, return_when=FIRST_EXCEPTION)
        for future in futures:
            future.result()
    except BaseException as stopped:
        # Ctrl-C or an exception that escaped replicate_fn: start nothing new;
        # replicates already running cannot be interrupted and finish first.
        stopping.set()
        pool.shutdown(wait=True, cancel_futures=True)
        if isinstance(stopped, KeyboardInterrupt):
            stopped.completed = [r for r in results if r is not None]
        raise
    finally:
        pool.shutdown(wait=True)
        if bar is not None:
            bar.close()
    return results
