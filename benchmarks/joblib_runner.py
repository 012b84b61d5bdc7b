"""Runs a workload under joblib, in a process of its own.

Usage: python joblib_runner.py WORKLOAD BACKEND N WORKERS [ARG]
Prints JSON: {"seconds": ..., "values": [...]} (values in replicate order).

``import joblib`` imports NumPy, and a process with NumPy loaded pays for it
elsewhere (seeding NumPy's generator, capping BLAS threads in workers): run
here, joblib leaves the contenders measured after it as their users run them.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workloads as w


def main() -> None:
    workload, backend, n, workers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    arg = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    import joblib

    if workload == "payload":
        # What a joblib user writes: the function's arguments carry the object.
        payload = w.make_payload(arg)
        calls = (joblib.delayed(w.payload_with)(payload, i) for i in range(n))
    else:
        fn = {"overhead": w.overhead_raw, "cpu": w.CpuRaw(arg), "io": w.io_raw, "numeric": w.numeric_fit}[workload]
        calls = (joblib.delayed(fn)(i) for i in range(n))
    began = time.perf_counter()
    values = joblib.Parallel(n_jobs=workers, backend=backend, batch_size="auto")(calls)
    print(json.dumps({"seconds": time.perf_counter() - began, "values": values}))


if __name__ == "__main__":
    main()
