"""Set-up of the worker processes of a LocalCluster that the ``dask`` strategy starts (a dask preload)."""

from __future__ import annotations

import signal
from typing import Any


def dask_setup(worker: Any) -> None:
    """Ignore SIGINT: Ctrl-C in a terminal reaches the whole process group, and
    the driver decides what stops; it closes the cluster, workers included."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
