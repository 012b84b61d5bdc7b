"""Runs a workload under crystallize-ml 0.27, inside its own virtual environment.

Usage: python ml_runner.py WORKLOAD MODE N WORKERS REPEAT [ARG]
Prints JSON: {"times": [...], "values": [...]} (values of the last run, in replicate order).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workloads
from crystallize import (
    Experiment,
    ParallelExecution,
    SerialExecution,
    data_source,
    pipeline_step,
)
from crystallize.datasources.datasource import DataSource


@data_source
def overhead_source(ctx):
    return ctx.get("replicate", 0)


@data_source
def io_source(ctx):
    time.sleep(workloads.IO_SECONDS)
    return ctx.get("replicate", 0)


@data_source
def cpu_source(ctx, loops: int = 1):
    return workloads.spin(ctx.get("replicate", 0), loops)


@pipeline_step()
def double_plus_one(data, ctx):
    return data, {"value": data * 2 + 1}


@pipeline_step()
def identity(data, ctx):
    return data, {"value": data}


class PayloadSource(DataSource):
    """A datasource object holding the payload, as an experiment holding a model or data set would."""

    def __init__(self, payload: bytes):
        self.payload = payload

    def fetch(self, ctx):
        return workloads.payload_with(self.payload, ctx.get("replicate", 0))


def build(workload: str, mode: str, n: int, workers: int, arg: int):
    serial = mode == "serial"
    execution = SerialExecution() if serial else ParallelExecution(executor_type=mode, max_workers=workers)
    if workload == "overhead":
        source, step = overhead_source(), double_plus_one()
    elif workload == "io":
        source, step = io_source(), double_plus_one()
    elif workload == "cpu":
        source, step = cpu_source(loops=arg), identity()
    elif workload == "payload":
        source, step = PayloadSource(workloads.make_payload(arg)), identity()
    else:
        raise SystemExit(f"unknown workload {workload}")
    return Experiment.builder(workload).datasource(source).add_step(step).plugins([execution]).replicates(n).build()


def main() -> None:
    workload, mode, n, workers, repeat = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
    arg = int(sys.argv[6]) if len(sys.argv) > 6 else 0
    times, values = [], []
    for _ in range(repeat):
        experiment = build(workload, mode, n, workers, arg)
        began = time.perf_counter()
        result = experiment.run()
        times.append(time.perf_counter() - began)
        values = list(result.metrics.baseline.metrics["value"])
    print(json.dumps({"times": times, "values": values}))


if __name__ == "__main__":
    main()
