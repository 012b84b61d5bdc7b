"""The progress bar both executor types share."""

from __future__ import annotations


def progress_bar(enabled: bool, total: int):
    """A tqdm bar over ``total`` replicates, or None when disabled or pointless."""
    if not enabled or total <= 1:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="replicates", unit="rep")
