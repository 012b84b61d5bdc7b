"""Reading back what [`Result.save`][crystallize_core.result.Result.save] wrote.

A JSON document gives the whole result: its conditions in order, every
replicate's seed, metrics (which conditions finished and which metrics each
recorded), errors and duration, and the run's record. JSON lines and CSV hold
the tidy rows only: replicates, seeds, conditions and metric values. A file
that cannot be read that way is a [`ResultFileError`][crystallize_core.errors.ResultFileError]
in one line, naming the file and, where it can, the line.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from crystallize_core._export import DOCUMENT_FORMAT, DOCUMENT_VERSION, OUTPUT_FORMATS, RECORD_FIELDS, output_format
from crystallize_core._values import INF_JSON, NAN_JSON, NEG_INF_JSON, any_int_digits
from crystallize_core._version import __version__
from crystallize_core.errors import ConfigurationError, ResultFileError
from crystallize_core.records import BASELINE, ReplicateError, ReplicateResult

#: How JSON and JSON lines spell the non-finite floats, and how CSV does.
_JSON_FLOATS = {NAN_JSON: math.nan, INF_JSON: math.inf, NEG_INF_JSON: -math.inf}
_CSV_FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
#: Numbers as ``str()`` writes ints and floats, and nothing else (not "1_000", not " 5").
_INT = re.compile(r"-?[0-9]+\Z")
_FLOAT = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?\Z")


def load(path: str | os.PathLike, make: Callable[..., Any]) -> Any:
    """The result saved at ``path``, made with ``make`` (the
    [`Result`][crystallize_core.result.Result] class) as [`Result.load`][crystallize_core.result.Result.load] says."""
    where = "standard input" if str(path) == "-" else repr(str(path))
    chosen = _format_of(path, where)
    text = _read(path)
    if not text.strip() and chosen != "jsonl":  # JSON lines of a result without rows are no lines
        raise ResultFileError(f"cannot read {where} as a saved result: it is empty")
    with any_int_digits:  # ints of any length read back exactly, as they were written
        if chosen == "json":
            return _from_document(_json_document(text, where), where, make)
        rows = _jsonl_rows(text, where) if chosen == "jsonl" else _csv_rows(text, where)
        return _from_rows(rows, where, make)


def _format_of(path: str | os.PathLike, where: str) -> str:
    try:
        return output_format(path)
    except ConfigurationError:
        raise ResultFileError(
            f"cannot tell the format of {where}: Result.load reads what Result.save writes, a file named "
            f"{', '.join(OUTPUT_FORMATS)} (JSON, JSON lines, CSV)"
        ) from None


def _read(path: str | os.PathLike) -> str:
    if str(path) == "-":
        return sys.stdin.read()
    with open(path, "rb") as file:
        data = file.read()
    # Written as UTF-8, file names Python decoded with surrogateescape as their bytes;
    # a spreadsheet that saved it again may have put a byte order mark in front.
    return data.decode("utf-8", "surrogateescape").removeprefix("\ufeff")


def _bad(where: str, what: str) -> ResultFileError:
    return ResultFileError(f"cannot read {where} as a saved result: {what}")


# --- JSON: the whole result ----------------------------------------------------------------------


def _json_document(text: str, where: str) -> dict[str, Any]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _bad(where, f"not a whole JSON document (truncated or corrupt?): {exc}") from None
    except ValueError as exc:  # a number past any limit
        raise _bad(where, f"a value cannot be read: {exc}") from None
    except RecursionError:
        raise _bad(where, "its JSON is nested too deeply to be a saved result") from None
    if not isinstance(document, dict):
        raise _bad(where, f"the JSON is {type(document).__name__ if document is not None else 'null'}, not an object")
    return document


def _from_document(document: dict[str, Any], where: str, make: Callable[..., Any]) -> Any:
    said = document.get("format", DOCUMENT_FORMAT)
    if said != DOCUMENT_FORMAT:
        raise _bad(where, f"its format is {said!r}, not {DOCUMENT_FORMAT!r}")
    version = document.get("format_version", 1)  # saved before documents said their version
    if type(version) is not int or version < 1:
        raise _bad(where, f"its format_version is {version!r}, not a version number")
    if version > DOCUMENT_VERSION:
        raise ResultFileError(
            f"{where} was written by a newer Crystallize (result format version {version}; crystallize-core "
            f"{__version__} reads versions up to {DOCUMENT_VERSION}): upgrade crystallize-core to read it"
        )
    missing = [key for key in ("conditions", "seeds", "metrics") if key not in document]
    if missing:
        raise _bad(where, f"no {', no '.join(map(repr, missing))} in the JSON: not a document Result.save wrote")
    check = _Checker(where)
    conditions = check.strings(document["conditions"], "conditions")
    n = document.get("replicates", len(document["seeds"]) if isinstance(document["seeds"], list) else 0)
    if type(n) is not int or n < 0:
        raise check.bad(f"replicates is {n!r}, not a count")
    seeds = check.ints(document["seeds"], "seeds", n)
    indices = check.ints(document.get("replicate_indices", list(range(n))), "replicate_indices", n)
    durations = check.list_of(document.get("durations", [None] * n), "durations", n)
    columns = _metric_columns(document, check, n)
    layouts = _layouts(document, check, columns, n)
    row_of = {index: position for position, index in enumerate(indices)}
    errors_by_row: dict[int, list[ReplicateError]] = {}
    for number, item in enumerate(check.list_of(document.get("errors", []), "errors")):
        error = check.error(item, number)
        row = row_of.get(error.replicate)
        if row is None:
            raise _bad(where, f"errors[{number}] is of replicate {error.replicate}, which the result does not hold")
        errors_by_row.setdefault(row, []).append(error)
    replicates = [
        ReplicateResult(
            indices[row],
            seeds[row],
            {condition: {name: columns[condition][name][row] for name in names} for condition, names in layout},
            tuple(errors_by_row.get(row, ())),
            check.duration(durations[row], row),
        )
        for row, layout in enumerate(layouts)
    ]
    treatments = check.mapping(document.get("treatments") or {}, "treatments")
    result = make(
        replicates,
        conditions,
        strategy=check.optional(document.get("strategy"), str, "strategy"),
        strategy_version=check.optional(document.get("strategy_version"), str, "strategy_version"),
        complete=document.get("complete", True) is not False,
        base_seed=check.optional(document.get("base_seed"), int, "base_seed"),
        strategy_options=check.mapping(document.get("strategy_options") or {}, "strategy_options"),
        treatments={name: check.mapping(value, f"treatments[{name!r}]") for name, value in treatments.items()},
        started_at=check.time(document.get("started_at"), "started_at"),
        finished_at=check.time(document.get("finished_at"), "finished_at"),
        unsaved_replicates=check.ints(document.get("unsaved_replicates", []), "unsaved_replicates"),
    )
    result._saved_versions = (document.get("crystallize_core_version"), document.get("versions"))
    return result


def _metric_columns(document: dict[str, Any], check: _Checker, n: int) -> dict[str, dict[str, list[Any]]]:
    """Each metric's values as recorded, non-finite floats and literal text told apart."""
    literal = check.mapping(document.get("literal_text") or {}, "literal_text")
    columns: dict[str, dict[str, list[Any]]] = {}
    for condition, by_name in check.mapping(document["metrics"], "metrics").items():
        into = columns[condition] = {}
        for name, values in check.mapping(by_name, f"metrics[{condition!r}]").items():
            values = check.list_of(values, f"metrics[{condition!r}][{name!r}]", n)
            decoded = [_JSON_FLOATS.get(v, v) if type(v) is str else v for v in values]
            for position in check.ints((literal.get(condition) or {}).get(name, []), "literal_text"):
                if 0 <= position < n:
                    decoded[position] = values[position]
            into[name] = decoded
    return columns


def _layouts(
    document: dict[str, Any], check: _Checker, columns: dict[str, dict[str, list[Any]]], n: int
) -> list[list[tuple[str, list[str]]]]:
    """Per replicate, the conditions it finished and the metrics each recorded, in order."""
    if "layouts" not in document:
        # Saved before documents kept them: a value of None was recorded by no
        # one, and a condition that recorded nothing did not finish. The
        # statistics are the same either way; the tidy rows lack those Nones.
        return [
            [
                (condition, kept)
                for condition, by_name in columns.items()
                if (kept := [name for name, values in by_name.items() if values[row] is not None])
            ]
            for row in range(n)
        ]
    layouts = []
    for number, layout in enumerate(check.list_of(document["layouts"], "layouts")):
        pairs = []
        for pair in check.list_of(layout, f"layouts[{number}]"):
            if not (isinstance(pair, list) and len(pair) == 2):
                raise check.bad(f"layouts[{number}] holds {pair!r}, not [condition, [metric, ...]]")
            condition, names = pair
            if not isinstance(condition, str):
                raise check.bad(f"layouts[{number}] names condition {condition!r}, not a name")
            names = check.strings(names, f"layouts[{number}]")
            unknown = [name for name in names if name not in columns.get(condition, {})]
            if unknown:
                raise check.bad(f"layouts[{number}] names metric {unknown[0]!r} of {condition!r}, which has no values")
            pairs.append((condition, names))
        layouts.append(pairs)
    chosen = check.ints(document.get("layout_of"), "layout_of", n)
    if any(not 0 <= number < len(layouts) for number in chosen):
        raise check.bad(f"layout_of names a layout beyond the {len(layouts)} in layouts")
    return [layouts[number] for number in chosen]


class _Checker:
    """Checks of a document's parts, each a ``ResultFileError`` naming the part."""

    def __init__(self, where: str):
        self.where = where

    def bad(self, what: str) -> ResultFileError:
        return _bad(self.where, what)

    def list_of(self, value: Any, name: str, length: int | None = None) -> list[Any]:
        if not isinstance(value, list):
            raise self.bad(f"{name} is {_kind(value)}, not a list")
        if length is not None and len(value) != length:
            raise self.bad(f"{name} holds {len(value)} values for {length} replicates (truncated or edited?)")
        return value

    def ints(self, value: Any, name: str, length: int | None = None) -> list[int]:
        values = self.list_of(value, name, length)
        for item in values:
            if type(item) is not int:
                raise self.bad(f"{name} holds {item!r}, not an integer")
        return values

    def strings(self, value: Any, name: str) -> list[str]:
        values = self.list_of(value, name)
        for item in values:
            if not isinstance(item, str):
                raise self.bad(f"{name} holds {item!r}, not a name")
        return values

    def mapping(self, value: Any, name: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.bad(f"{name} is {_kind(value)}, not an object")
        return value

    def optional(self, value: Any, kind: type, name: str) -> Any:
        if value is not None and (type(value) is not kind):
            raise self.bad(f"{name} is {value!r}, not {'a name' if kind is str else 'an integer'}")
        return value

    def duration(self, value: Any, row: int) -> float | None:
        if value is None or (type(value) in (int, float) and value >= 0):
            return value
        raise self.bad(f"durations[{row}] is {value!r}, not seconds")

    def time(self, value: Any, name: str) -> float | None:
        if value is None:
            return None
        import datetime  # only results that are read back parse times

        try:
            return datetime.datetime.fromisoformat(value).timestamp()
        except (TypeError, ValueError):
            raise self.bad(f"{name} is {value!r}, not an ISO 8601 time") from None

    def error(self, item: Any, number: int) -> ReplicateError:
        fields = ReplicateError._fields
        if not isinstance(item, dict) or set(item) != set(fields):
            raise self.bad(f"errors[{number}] is not an error with the keys {', '.join(fields)}")
        replicate, condition = item["replicate"], item["condition"]
        texts = [item[key] for key in fields[2:]]
        if type(replicate) is not int or not (condition is None or isinstance(condition, str)):
            raise self.bad(f"errors[{number}] names replicate {replicate!r}, condition {condition!r}")
        if not all(isinstance(text, str) for text in texts):
            raise self.bad(f"errors[{number}] holds a value that is not text")
        return ReplicateError(replicate, condition, *texts)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


# --- JSON lines and CSV: the tidy rows ----------------------------------------------------------


def _from_rows(rows: Iterable[tuple[int, int, int, str, str, Any]], where: str, make: Callable[..., Any]) -> Any:
    """A result of tidy rows ``(line, replicate, seed, condition, metric, value)``:
    replicates and conditions in the order they first appear, the baseline first."""
    replicates: dict[int, tuple[int, dict[str, dict[str, Any]]]] = {}
    conditions = {BASELINE: None}
    for line, replicate, seed, condition, metric, value in rows:
        entry = replicates.get(replicate)
        if entry is None:
            entry = replicates[replicate] = (seed, {})
        elif entry[0] != seed:
            raise _bad(where, f"line {line}: replicate {replicate} has seed {seed} here and {entry[0]} above")
        by_name = entry[1].setdefault(condition, {})
        if metric in by_name:
            raise _bad(where, f"line {line}: metric {metric!r} of condition {condition!r}, replicate {replicate} again")
        by_name[metric] = value
        conditions.setdefault(condition, None)
    results = [ReplicateResult(index, seed, metrics) for index, (seed, metrics) in replicates.items()]
    return make(results, list(conditions))


def _jsonl_rows(text: str, where: str) -> Iterator[tuple[int, int, int, str, str, Any]]:
    for line, part in enumerate(text.splitlines(), 1):
        if not part.strip():
            continue
        try:
            row = json.loads(part)
        except ValueError as exc:
            raise _bad(where, f"line {line} is not a JSON object (truncated or corrupt?): {exc}") from None
        except RecursionError:
            raise _bad(where, f"line {line} is nested too deeply to be a row") from None
        if not isinstance(row, dict) or set(row) != set(RECORD_FIELDS):
            raise _bad(where, f"line {line} is not a row with the keys {', '.join(RECORD_FIELDS)}")
        replicate, seed, condition, metric, value = (row[key] for key in RECORD_FIELDS)
        if type(replicate) is not int or type(seed) is not int:
            raise _bad(where, f"line {line}: replicate {replicate!r} and seed {seed!r} must be integers")
        if not isinstance(condition, str) or not isinstance(metric, str):
            raise _bad(where, f"line {line}: condition {condition!r} and metric {metric!r} must be names")
        yield line, replicate, seed, condition, metric, _JSON_FLOATS.get(value, value) if type(value) is str else value


def _csv_rows(text: str, where: str) -> Iterator[tuple[int, int, int, str, str, Any]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header != list(RECORD_FIELDS):
            raise _bad(where, f"its first line is not the header {','.join(RECORD_FIELDS)}")
        for cells in reader:
            line = reader.line_num
            if not cells:
                continue
            if len(cells) != len(RECORD_FIELDS):
                raise _bad(where, f"line {line} has {len(cells)} fields, not {len(RECORD_FIELDS)} (truncated?)")
            replicate, seed, condition, metric, value = cells
            if not (_INT.match(replicate) and _INT.match(seed)):
                raise _bad(where, f"line {line}: replicate {replicate!r} and seed {seed!r} must be integers")
            yield line, int(replicate), int(seed), _csv_text(condition), _csv_text(metric), _csv_value(value)
    except csv.Error as exc:
        raise _bad(where, f"line {reader.line_num} is not CSV (truncated or corrupt?): {exc}") from None


def _csv_text(cell: str) -> str:
    """A text cell as recorded: ``csv_text_cell`` put a quote in front of any
    text starting with a quote or a formula's first character."""
    return cell[1:] if cell.startswith("'") else cell


def _csv_value(cell: str) -> Any:
    """A value cell as the CSV writer wrote it: empty for None, numbers as
    ``str()`` writes them, ``nan``/``inf``/``-inf``, ``True``/``False``,
    lists and mappings as JSON, and text (quoted in front where a spreadsheet
    would take it for a formula)."""
    if not cell:
        return None
    if cell.startswith("'"):
        return cell[1:]
    if _INT.match(cell):
        return int(cell)
    if _FLOAT.match(cell):
        return float(cell)
    special = _CSV_FLOATS.get(cell)
    if special is not None:
        return special
    if cell in ("True", "False"):
        return cell == "True"
    if cell[0] in "[{":
        try:
            return json.loads(cell)
        except (ValueError, RecursionError):  # text that only starts like JSON
            return cell
    return cell
