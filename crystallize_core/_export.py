"""How a [`Result`][crystallize_core.result.Result] is written: the output formats,
tidy rows as CSV (safe to open in a spreadsheet) or JSON, timestamps and the
versions a saved result records. A value that cannot be written costs only
itself, named in one warning."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import Any

from crystallize_core._values import INF, MISSING, NAN, NON_NUMERIC, classify, plain
from crystallize_core._version import __version__
from crystallize_core.errors import ConfigurationError, logger

#: The file formats [`Result.save`][crystallize_core.result.Result.save] writes, by file name extension.
OUTPUT_FORMATS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
#: The columns of [`Result.to_records`][crystallize_core.result.Result.to_records], in order.
RECORD_FIELDS = ("replicate", "seed", "condition", "metric", "value")
#: What a saved JSON document says it is (its ``format`` key), and the version
#: of its layout (``format_version``): a document without them is version 1.
#: Version 2 adds ``layouts``, ``layout_of`` and ``literal_text``.
DOCUMENT_FORMAT = "crystallize-result"
DOCUMENT_VERSION = 2


def output_format(path: str | os.PathLike) -> str:
    """The format [`Result.save`][crystallize_core.result.Result.save] writes to
    ``path``: ``"json"``, ``"jsonl"`` or ``"csv"``.

    ``"-"`` means JSON on standard output. Raises
    [`ConfigurationError`][] for any other extension.
    """
    if str(path) == "-":
        return "json"
    suffix = os.path.splitext(str(path))[1].lower()
    found = OUTPUT_FORMATS.get(suffix)
    if found is None:
        raise ConfigurationError(
            f"cannot tell the output format of {str(path)!r}: name the file with one of "
            f"{', '.join(OUTPUT_FORMATS)} (JSON, JSON lines, CSV), or '-' for JSON on standard output"
        )
    return found


def csv_text(records: list[dict[str, Any]]) -> str:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    # The writer quotes a cell holding "\n" but not one holding a lone "\r",
    # which readers take for the end of a line: such rows are quoted whole.
    quoting_all = csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_ALL)
    writer.writerow(RECORD_FIELDS)
    unwritable = Unwritable()
    for row in records:
        cells = [
            row["replicate"],
            row["seed"],
            csv_text_cell(str(row["condition"])),
            csv_text_cell(str(row["metric"])),
            unwritable.convert(_csv_value, row["value"], row["replicate"], row["condition"], row["metric"]),
        ]
        (quoting_all if any("\r" in str(cell) for cell in cells[2:]) else writer).writerow(cells)
    unwritable.report()
    return buffer.getvalue()


def plain_rows(records: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    unwritable = Unwritable()
    for row in records:
        value = unwritable.convert(plain, row["value"], row["replicate"], row["condition"], row["metric"])
        yield {**{key: plain(item) for key, item in row.items() if key != "value"}, "value": value}
    unwritable.report()


class Unwritable:
    """Metric values that cannot be written (a ``repr`` that raises, a list
    holding itself): each costs only itself, written as null, and one warning
    names them, rather than the whole output failing."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    def convert(self, convert: Callable[[Any], Any], value: Any, replicate: int, condition: str, name: str) -> Any:
        try:
            return convert(value)
        except Exception as exc:  # RecursionError and MemoryError included: the value, not the run
            self.failures.append(
                f"metric {name!r} of replicate {replicate}, condition {condition!r} ({type(exc).__name__}: {exc})"
            )
            return None

    def report(self) -> None:
        failures = self.failures
        if failures:
            shown = "; ".join(failures[:3]) + (f"; and {len(failures) - 3} more" if len(failures) > 3 else "")
            logger().warning(
                "%d metric value(s) cannot be written and are left out (empty) of the output: %s", len(failures), shown
            )
            self.failures = []


#: What a spreadsheet may read as the start of a formula (OWASP's list), and
#: the quote that neutralises it, which is itself escaped so that it reads back.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")


def csv_text_cell(text: str) -> str:
    """``text`` as a CSV cell that no spreadsheet runs as a formula.

    Text starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return
    gets a single quote in front, as OWASP recommends against CSV injection;
    so does text starting with a quote, so that dropping the first character
    of any text cell starting with ``'`` gives back what was recorded. Numbers
    are never passed here: ``-1.5`` stays a number.
    """
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def _csv_value(value: Any) -> str:
    kind, _ = classify(value)
    if kind == MISSING:
        return ""
    made = plain(value)
    if kind == NAN:
        return "nan"
    if kind == INF and isinstance(made, str):  # a float infinity, not a huge integer
        return "-inf" if made.startswith("-") else "inf"
    if kind != NON_NUMERIC:  # a number, written as one
        return str(made)
    if isinstance(made, (list, dict)):
        return json.dumps(made, allow_nan=False)
    return csv_text_cell(str(made))


def iso_time(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    import datetime

    return datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc).isoformat()


def installed_versions() -> dict[str, str]:
    """The versions of Python and of every installed Crystallize distribution
    (the core and each distribution that provides a strategy)."""
    import platform
    from importlib import metadata

    versions = {"python": platform.python_version(), "crystallize-core": __version__}
    for entry_point in metadata.entry_points(group="crystallize.strategies"):
        distribution = getattr(entry_point, "dist", None)
        if distribution is not None:
            versions.setdefault(distribution.metadata["Name"], distribution.version)
    return versions
