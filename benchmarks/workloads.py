"""The benchmark workloads, written once for every contender.

Each workload has the same work in three shapes: Crystallize components
(``source(ctx)``, ``step(data, ctx)``), a plain function of the replicate
index for ``concurrent.futures`` and joblib, and an ``expected(i)`` to check
every returned value against. Everything is module-level so worker processes
can import it.
"""

from __future__ import annotations

import asyncio
import time

# --- overhead: a one-step pipeline recording one metric -------------------------


def overhead_source(ctx):
    return ctx.replicate


def overhead_step(data, ctx):
    ctx.metrics.add("value", data * 2 + 1)
    return data


def overhead_raw(i: int) -> int:
    return i * 2 + 1


def overhead_expected(i: int) -> int:
    return i * 2 + 1


# --- cpu: about a quarter of a second of pure Python per replicate ---------------

CPU_LOOPS = {"n": 2_000_000}  # calibrated by run.py before measuring


def spin(i: int, loops: int) -> int:
    acc = i
    for k in range(loops):
        acc = (acc * 31 + k) % 1_000_003
    return acc


def calibrate_cpu(seconds: float) -> int:
    """Loops of :func:`spin` that take about ``seconds`` on this machine now."""
    loops = 20_000
    while True:
        began = time.perf_counter()
        spin(0, loops)
        took = time.perf_counter() - began
        if took > 0.02:
            return max(1, int(loops * seconds / took))
        loops *= 4


class CpuSource:
    def __init__(self, loops: int):
        self.loops = loops

    def __call__(self, ctx):
        return spin(ctx.replicate, self.loops)


def cpu_step(data, ctx):
    ctx.metrics.add("value", data)
    return data


class CpuRaw:
    def __init__(self, loops: int):
        self.loops = loops

    def __call__(self, i: int) -> int:
        return spin(i, self.loops)


# --- payload: a 50 MB object held by the experiment, light replicates --------------

PAYLOAD_BYTES = 50 * 1024 * 1024


def make_payload(size: int = PAYLOAD_BYTES) -> bytes:
    return bytes(range(256)) * (size // 256)


class PayloadSource:
    """A datasource holding the payload, as an experiment holding a model or data set would."""

    def __init__(self, payload: bytes):
        self.payload = payload

    def __call__(self, ctx):
        return payload_with(self.payload, ctx.replicate)


def payload_step(data, ctx):
    ctx.metrics.add("value", data)
    return data


def payload_expected(i: int, size: int) -> int:
    return (i * 997 % size) % 256 + size


_payload_global: bytes | None = None


def payload_init(payload: bytes) -> None:
    global _payload_global
    _payload_global = payload


def payload_raw(i: int) -> int:
    return payload_with(_payload_global, i)


def payload_with(payload: bytes, i: int) -> int:
    return payload[i * 997 % len(payload)] + len(payload)


# --- io: replicates that wait ------------------------------------------------------

IO_SECONDS = 0.05


def io_source(ctx):
    time.sleep(IO_SECONDS)
    return ctx.replicate


def io_raw(i: int) -> int:
    time.sleep(IO_SECONDS)
    return i * 2 + 1


# --- numeric: scikit-learn fits and matrix work, BLAS inside ----------------------

NUMERIC_SHAPE = {"rows": 3000, "features": 120}


def numeric_fit(i: int) -> float:
    """Fit a logistic regression on data drawn for replicate ``i`` and solve
    its normal equations: what a typical study's replicate spends in BLAS."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    rows, features = NUMERIC_SHAPE["rows"], NUMERIC_SHAPE["features"]
    rng = np.random.default_rng(i)
    x = rng.standard_normal((rows, features))
    y = (x @ rng.standard_normal(features) + rng.standard_normal(rows) > 0).astype(int)
    model = LogisticRegression(max_iter=300).fit(x, y)
    gram = x.T @ x + np.eye(features)
    beta = np.linalg.solve(gram, x.T @ (2.0 * y - 1.0))
    return round(float(model.score(x, y)) + float(np.sign(beta[0])), 6)


def numeric_source(ctx):
    return ctx.replicate


def numeric_step(data, ctx):
    ctx.metrics.add("value", numeric_fit(data))
    return data


# --- asyncio: replicates that await I/O ----------------------------------------------


async def async_io_source(ctx):
    await asyncio.sleep(IO_SECONDS)
    return ctx.replicate


async def async_io_raw(i: int) -> int:
    await asyncio.sleep(IO_SECONDS)
    return i * 2 + 1
