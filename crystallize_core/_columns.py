"""Replicate results kept column-wise, so that a million of them stay small.

A ``ResultColumns`` holds what [`ReplicateResult`][]
objects would, without keeping one per replicate: seeds, durations and each
(condition, metric) pair in a ``Column`` of its own, a typed
[`array.array`][array.array] while the values allow it, and for each row the id of its
*shape* (which conditions finished, which metrics each recorded, in which
order, and whether the duration is known), so that a failed condition or a
metric recorded only sometimes costs nothing in the columns. Errors are kept
sparsely, by row. Every value reads back as recorded, ``type()`` included;
what cannot be kept exactly in a typed array is kept in a plain list.

A run fills one as replicates finish, in any order and from any thread of the
driver: row ``i`` is replicate ``i``. ``ResultColumns.finish`` then drops
the rows that never finished; the [`Result`][] reads the
finished columns and rebuilds per-replicate objects only when asked.
"""

from __future__ import annotations

from _thread import LockType, allocate_lock  # not threading: a run's first call would import it
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from crystallize_core.records import ReplicateResult

_new_result = tuple.__new__

#: Typed-array codes of the types whose values an array holds exactly.
_CODES: dict[type, str] = {float: "d", int: "q", bool: "b"}
#: The same for NumPy scalars, by type name: recognised without importing NumPy.
_NUMPY_CODES = {"float64": "d", "float32": "f", "int64": "q", "uint64": "Q"}
if array("i").itemsize == 4:
    _NUMPY_CODES.update(int32="i", uint32="I")
#: What an array cannot take: an int beyond 64 bits, a value of another type.
_REFUSED = (OverflowError, TypeError, ValueError)


def _code_for(kind: type) -> str | None:
    code = _CODES.get(kind)
    if code is None and kind.__module__ == "numpy":
        code = _NUMPY_CODES.get(kind.__name__)
    return code


class Column:
    """One value per row: a typed array while every value written has one type
    that an array holds exactly, else a plain list.

    ``kind`` is that type (None for a list), and ``rebuild`` makes a value of
    it from what the array returns (None where the array returns it as is).
    Rows that were never written hold filler; the shapes say which rows hold
    a value.
    """

    __slots__ = ("data", "kind", "rebuild", "rows")

    def __init__(self, rows: int):
        self.rows = rows
        self.data: array | list | None = None
        self.kind: type | None = None
        self.rebuild: type | None = None

    def set(self, row: int, value: Any) -> None:
        """Write ``value`` at ``row``; the first value of another type, or one
        the array cannot hold, turns the column into a list."""
        kind = type(value)
        data = self.data
        if data is None:
            code = _code_for(kind)
            if code is not None:
                self.data = data = array(code, [0]) * self.rows
                self.kind = kind
                self.rebuild = None if kind is float or kind is int else kind
        if kind is self.kind and data is not None:
            try:
                data[row] = value
                return
            except _REFUSED:
                pass
        self._as_list()
        self.data[row] = value  # type: ignore[index]

    def set_many(self, start: int, values: list) -> None:
        """Write ``values``, all of one type, at rows ``start``, ``start + 1``, ..."""
        kind = type(values[0])
        stop = start + len(values)
        if self.data is None:
            code = _code_for(kind)
            if code is not None:
                self.data = array(code, [0]) * self.rows
                self.kind = kind
                self.rebuild = None if kind is float or kind is int else kind
        data = self.data
        if kind is self.kind and isinstance(data, array):
            try:
                data[start:stop] = array(data.typecode, values)
                return
            except _REFUSED:
                pass
        self._as_list()
        self.data[start:stop] = values  # type: ignore[index,call-overload]

    def _as_list(self) -> None:
        data, rebuild = self.data, self.rebuild
        if data is None:
            values: list = [None] * self.rows
        elif isinstance(data, array):
            values = data.tolist() if rebuild is None else list(map(rebuild, data))
        else:
            return
        self.data = values
        self.kind = self.rebuild = None

    def get(self, row: int) -> Any:
        value = self.data[row]  # type: ignore[index]
        rebuild = self.rebuild
        return value if rebuild is None else rebuild(value)

    def values(self) -> list:
        """Every row's value as recorded (filler where nothing was)."""
        data, rebuild = self.data, self.rebuild
        if data is None:
            return [None] * self.rows
        if isinstance(data, list):
            return list(data)
        return data.tolist() if rebuild is None else list(map(rebuild, data))

    def iterate(self) -> Iterator[Any]:
        data, rebuild = self.data, self.rebuild
        if data is None:
            return iter([None] * self.rows)
        return iter(data) if rebuild is None else map(rebuild, data)

    def select(self, rows: Sequence[int]) -> None:
        """Keep only ``rows``, in that order."""
        data = self.data
        if isinstance(data, array):
            self.data = array(data.typecode, map(data.__getitem__, rows))
        elif data is not None:
            self.data = [data[row] for row in rows]
        self.rows = len(rows)

    def __repr__(self) -> str:
        kind = "list" if self.kind is None else f"array[{self.kind.__name__}]"
        return f"Column({kind}, rows={self.rows})"


class _Shape:
    """Which conditions a row's result holds, which metrics each recorded, in
    which order, and whether its duration is known."""

    __slots__ = ("columns", "conditions", "id", "layout", "timed", "untimed", "width")

    def __init__(self, id: int, timed: bool, conditions: tuple[tuple[str, tuple[tuple[str, Column], ...]], ...]):
        self.id = id
        self.timed = timed
        self.untimed = not timed
        self.width = len(conditions)
        self.conditions = conditions
        #: Per condition, its columns in the order the metrics were recorded.
        self.columns = tuple(tuple(column for _, column in pairs) for _, pairs in conditions)
        #: Per condition: its name, its metrics' names and their columns.
        self.layout = tuple(
            (condition, tuple(name for name, _ in pairs), columns)
            for (condition, pairs), columns in zip(conditions, self.columns)
        )


class ResultColumns(Sequence):
    """Replicate results in columns; a sequence of [`ReplicateResult`][], rebuilt on access.

    ``ResultColumns(rows)`` is filled during a run by ``add``, row ``i``
    taking replicate ``i``, from any thread; ``finish`` closes it.
    ``of`` keeps given results in the given order.
    """

    def __init__(self, rows: int):
        self._rows = rows
        #: Each row's shape id; 0 for a row that holds no result yet.
        self._shape_of: bytearray | array = bytearray(rows)
        self._shapes: list[_Shape | None] = [None]
        self._shape_ids: dict[tuple, int] = {}
        self._columns: dict[tuple[str, str], Column] = {}
        self._seeds = Column(rows)
        self._durations = Column(rows)
        #: Row -> its errors, for the rows that have any.
        self._errors: dict[int, Any] = {}
        #: Row -> its result as given, for results of an unusual form (a
        #: subclass, a mapping that is not a dict): returned as they came.
        self._whole: dict[int, Any] = {}
        #: The replicate index of each row: None while row i is replicate i and
        #: rows may still be missing; a range, an array or a Column once known.
        self._indices: range | array | Column | None = None
        self._lock: LockType | None = allocate_lock()
        #: Even while no column changes shape; see ``add``.
        self._epoch = 0
        self._closed = False
        self._order: dict[str, dict[str, Column]] | None = None
        #: The shape of the row written last: the next row's, most likely.
        self._last: _Shape | None = None
        #: The result ``add`` took last: what a lazy strategy hands the core next.
        self.last: Any = None

    @classmethod
    def of(cls, results: Sequence[ReplicateResult]) -> ResultColumns:
        """The columns of ``results``, one row each, in the order given."""
        made = cls(len(results))
        indices = made._indices = Column(len(results))
        for row, result in enumerate(results):
            made._put(row, result)
            indices.set(row, result[0])
        made._closed = True
        made._lock = None
        return made

    # --- filling -------------------------------------------------------------------

    def add(self, result: ReplicateResult, new: bool = False) -> None:
        """Keep the result of a finished replicate, in the row of its index.

        A later result of the same replicate replaces the first, unless
        ``new`` says to keep the first. Ignored once closed, or outside the
        rows. Any thread may call it.

        This is the driver's hot path, written for few bytecodes, fewer
        allocations and no lock: most rows have the shape of the row before,
        so the metrics are written as that shape says, checking each name and
        type on the way; anything else (a new shape, a value that changes a
        column's type, a replicate seen before) takes the locked path. A
        thread on the fast path writes only its own row, and writes it again
        under the lock if another thread reshaped a column meanwhile (an odd
        epoch means one is doing so), so a lock never convoys worker threads.
        """
        row = result[0]
        if type(row) is not int or not 0 <= row < self._rows or self._closed:
            return
        epoch = self._epoch
        shape = self._last
        if new or epoch & 1 or shape is None or self._shape_of[row]:
            self._add_locked(row, result, new)
            return
        try:
            _, seed, metrics, errors, duration = result
        except ValueError:  # a tuple from an older worker, without a duration
            self._add_locked(row, result, new)
            return
        if (
            type(result) is not ReplicateResult
            or type(metrics) is not dict
            or type(errors) is not tuple
            or len(metrics) != shape.width
            or (duration is None) is not shape.untimed
        ):
            self._add_locked(row, result, new)
            return
        layout = shape.layout
        position = 0
        for condition in metrics:  # indexing, not zip(): every allocation shows here
            expected, names, columns = layout[position]
            position += 1  # noqa: SIM113  (enumerate() would allocate)
            values = metrics[condition]
            if condition != expected or type(values) is not dict or len(values) != len(names):
                self._add_locked(row, result, new)
                return
            index = 0
            for name in values:
                column = columns[index]
                value = values[name]
                if name != names[index] or type(value) is not column.kind:
                    self._add_locked(row, result, new)
                    return
                index += 1  # noqa: SIM113
                try:
                    column.data[row] = value  # type: ignore[index]
                except _REFUSED:  # an int past 64 bits: the column becomes a list, under the lock
                    self._add_locked(row, result, new)
                    return
        column = self._seeds
        if type(seed) is not column.kind:
            self._add_locked(row, result, new)
            return
        try:
            column.data[row] = seed  # type: ignore[index]
        except _REFUSED:
            self._add_locked(row, result, new)
            return
        if duration is not None:
            column = self._durations
            if type(duration) is not column.kind:
                self._add_locked(row, result, new)
                return
            column.data[row] = duration  # type: ignore[index]
        if errors:
            self._errors[row] = errors
        self._shape_of[row] = shape.id  # last: a row is complete once it has a shape
        self.last = result
        if self._epoch != epoch:  # a column was reshaped while this row was written: write it again, alone
            self._add_locked(row, result, False)

    def _add_locked(self, row: int, result: Any, new: bool) -> None:
        lock = self._lock
        if lock is None:  # finished: a straggler from a thread that kept running
            return
        with lock:
            if self._closed or (new and self._shape_of[row]):
                return
            self._epoch += 1  # odd while columns may change under the fast path
            try:
                self._put(row, result)
            finally:
                self._epoch += 1
            self.last = result

    def add_many(self, results: Iterable[ReplicateResult]) -> None:
        for result in results:
            self.add(result)

    def add_columns(self, batch: tuple) -> bool:
        """Keep a batch made by ``pack_columns``, unless one of its rows
        already holds a result (then return False: add its rows one by one)."""
        _, start, conditions, seeds, durations, values = batch
        stop = start + len(seeds)
        lock = self._lock
        if lock is None or not 0 <= start < stop <= self._rows:
            return False
        with lock:
            if self._closed or any(self._shape_of[start:stop]):
                return False
            self._epoch += 1  # columns may change shape: the fast path must not trust them meanwhile
            try:
                shape = self._last = self._shape_of_key((durations is None, *conditions))
                shape_of = self._shape_of  # only now: the 256th shape widens it
                columns = [column for per_condition in shape.columns for column in per_condition]
                for column, column_values in zip(columns, values):
                    column.set_many(start, column_values)
                self._seeds.set_many(start, seeds)
                if durations is not None:
                    self._durations.set_many(start, durations)
                filled = bytes((shape.id,)) if isinstance(shape_of, bytearray) else array("I", (shape.id,))
                shape_of[start:stop] = filled * (stop - start)  # last: a row is complete once it has a shape
            finally:
                self._epoch += 1
        return True

    def missing(self) -> list[int]:
        """The replicates without a result, in order (before ``finish``)."""
        return [row for row, shape in enumerate(self._shape_of) if not shape]

    def complete(self) -> bool:
        """Whether every row holds a result."""
        return not self._shape_of.count(0)

    def _put(self, row: int, result: Any) -> None:
        """Write a result of any form at ``row``."""
        try:
            _, seed, metrics, errors, duration = result
        except ValueError:  # a tuple from an older worker, without a duration
            seed, metrics, errors, duration = result[1], result[2], result[3] if len(result) > 3 else (), None
            whole = True
        else:
            whole = type(result) is not ReplicateResult or type(metrics) is not dict or type(errors) is not tuple
        if self._shape_of[row]:  # a replicate reported again: forget the first
            self._errors.pop(row, None)
            self._whole.pop(row, None)
        shape = self._last = self._shape(metrics, duration)
        for columns, values in zip(shape.columns, metrics.values()):
            for column, value in zip(columns, values.values()):
                column.set(row, value)
        self._seeds.set(row, seed)
        if duration is not None:
            self._durations.set(row, duration)
        if errors:
            self._errors[row] = errors
        if whole:
            self._whole[row] = result
        self._shape_of[row] = shape.id  # last: a row is complete once it has a shape

    def _shape(self, metrics: Any, duration: Any) -> _Shape:
        """The shape of a result with ``metrics`` and ``duration``, made if new."""
        return self._shape_of_key((duration is None, *[(c, tuple(values)) for c, values in metrics.items()]))

    def _shape_of_key(self, key: tuple[Any, ...]) -> _Shape:
        """The shape ``(untimed, (condition, metric names), ...)``, made if new."""
        shape_id = self._shape_ids.get(key)
        if shape_id is not None:
            return self._shapes[shape_id]  # type: ignore[return-value]
        conditions = []
        for condition, names in key[1:]:
            pairs = []
            for name in names:
                column = self._columns.get((condition, name))
                if column is None:
                    column = self._columns[(condition, name)] = Column(self._rows)
                pairs.append((name, column))
            conditions.append((condition, tuple(pairs)))
        shape_id = len(self._shapes)
        if shape_id == 256 and isinstance(self._shape_of, bytearray):  # past one byte per row
            self._shape_of = array("I", iter(self._shape_of))
        shape = _Shape(shape_id, not key[0], tuple(conditions))
        self._shapes.append(shape)
        self._shape_ids[key] = shape_id
        return shape

    def finish(self) -> ResultColumns:
        """Close the columns to further results and keep only the rows that
        hold one, in replicate order; return them."""
        lock = self._lock
        if lock is not None:
            with lock:
                self._closed = True
            self._lock = None
            self.last = self._last = None
        if self._indices is not None:
            return self
        if self.complete():
            self._indices = range(self._rows)
            return self
        kept = array("q", (row for row, shape in enumerate(self._shape_of) if shape))
        shape_of = self._shape_of
        selected = map(shape_of.__getitem__, kept)
        self._shape_of = bytearray(selected) if isinstance(shape_of, bytearray) else array("I", selected)
        for column in (self._seeds, self._durations, *self._columns.values()):
            column.select(kept)
        self._errors = {bisect_left(kept, row): errors for row, errors in sorted(self._errors.items())}
        self._whole = {bisect_left(kept, row): result for row, result in self._whole.items()}
        self._rows = len(kept)
        self._indices = kept
        return self

    # --- reading -------------------------------------------------------------------

    def __len__(self) -> int:
        return self._rows

    def __getitem__(self, row):
        if isinstance(row, slice):
            return [self.result(r) for r in range(self._rows)[row]]
        if row < 0:
            row += self._rows
        if not 0 <= row < self._rows:
            raise IndexError("replicate result index out of range")
        return self.result(row)

    def __iter__(self) -> Iterator[ReplicateResult]:
        return map(self.result, range(self._rows))

    def result(self, row: int) -> ReplicateResult:
        """The result at ``row``, as it was recorded."""
        shape_id = self._shape_of[row]
        if not shape_id:
            raise LookupError(f"no result was recorded for replicate {row}")
        if self._whole:
            whole = self._whole.get(row)
            if whole is not None:
                return whole
        shape = self._shapes[shape_id]
        metrics = {
            condition: {name: column.get(row) for name, column in pairs}
            for condition, pairs in shape.conditions  # type: ignore[union-attr]
        }
        duration = self._durations.get(row) if shape.timed else None  # type: ignore[union-attr]
        return _new_result(
            ReplicateResult,
            (self.replicate_at(row), self._seeds.get(row), metrics, self._errors.get(row, ()), duration),
        )

    def replicate_at(self, row: int) -> int:
        """The replicate index of ``row``."""
        indices = self._indices
        if indices is None:
            return row
        return indices.get(row) if isinstance(indices, Column) else indices[row]

    def indices(self) -> list[int]:
        """Each row's replicate index."""
        indices = self._indices
        if indices is None:
            return list(range(self._rows))
        if isinstance(indices, Column):
            return indices.values()
        return list(indices) if isinstance(indices, range) else indices.tolist()

    def seeds(self) -> list[int]:
        return self._seeds.values()

    def durations(self) -> list[float | None]:
        values = self._durations.values()
        untimed = [shape_id for shape_id in self._used() if not self._shapes[shape_id].timed]  # type: ignore[union-attr]
        if untimed:
            shape_of, shapes = self._shape_of, self._shapes
            values = [value if shapes[s].timed else None for value, s in zip(values, shape_of)]
        return values

    def errors(self) -> list:
        """Every row's errors, in row order."""
        return [error for row in sorted(self._errors) for error in self._errors[row]]

    def metric_columns(self) -> dict[str, dict[str, Column]]:
        """Per condition, its metrics' columns, each in the order of its first
        appearance, scanning rows in order (conditions and metrics no row
        holds are left out)."""
        if self._order is None:
            order: dict[str, dict[str, Column]] = {}
            for shape_id in sorted(self._used(), key=self._first_row):
                for condition, pairs in self._shapes[shape_id].conditions:  # type: ignore[union-attr]
                    by_name = order.setdefault(condition, {})
                    for name, column in pairs:
                        by_name.setdefault(name, column)
            self._order = order
        return self._order

    def layouts(self) -> tuple[list[tuple[tuple[str, tuple[str, ...]], ...]], list[int]]:
        """What each row recorded, which the aligned metric lists cannot say
        (a failed condition and a metric recorded as None both read None there):
        the distinct layouts, each ``((condition, metric names), ...)`` in the
        order recorded, numbered by first row; and each row's layout number."""
        numbered: dict[tuple, int] = {}
        number_of: dict[int, int] = {}
        for shape_id in sorted(self._used(), key=self._first_row):
            layout = tuple((condition, names) for condition, names, _ in self._shapes[shape_id].layout)  # type: ignore[union-attr]
            number_of[shape_id] = numbered.setdefault(layout, len(numbered))
        return list(numbered), [number_of[shape_id] for shape_id in self._shape_of]

    def column_values(self, column: Column) -> list:
        """``column``'s value for each row, None where the row recorded none."""
        values = column.values()
        present = self._presence(column)
        if present is None:
            return values
        return [value if present[s] else None for value, s in zip(values, self._shape_of)]

    def iterate_values(self, column: Column) -> Iterator[Any]:
        """``column_values`` one at a time, without building the list."""
        present = self._presence(column)
        if present is None:
            return column.iterate()
        return (value if present[s] else None for value, s in zip(column.iterate(), self._shape_of))

    def _presence(self, column: Column) -> bytearray | None:
        """By shape id, whether rows of that shape hold ``column``; None when all rows do."""
        present = bytearray(len(self._shapes))
        for shape_id in range(1, len(self._shapes)):
            if any(column in columns for columns in self._shapes[shape_id].columns):  # type: ignore[union-attr]
                present[shape_id] = 1
        if all(present[shape_id] for shape_id in self._used()):
            return None
        return present

    def _used(self) -> list[int]:
        """The ids of the shapes some row has."""
        shape_of = self._shape_of
        return [shape_id for shape_id in range(1, len(self._shapes)) if shape_id in shape_of]

    def _first_row(self, shape_id: int) -> int:
        shape_of = self._shape_of
        return shape_of.find(shape_id) if isinstance(shape_of, bytearray) else shape_of.index(shape_id)

    def recorded(self, replicates: Sequence[int]) -> RecordedResults:
        """The results of ``replicates`` (row = replicate), read from here when iterated."""
        return RecordedResults(self, replicates)

    # --- pickling ------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_lock"] = None
        state["_order"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if not self._closed:
            self._lock = allocate_lock()

    def __repr__(self) -> str:
        return f"ResultColumns(rows={self._rows}, columns={len(self._columns)}, shapes={len(self._shapes) - 1})"


class RecordedResults(Sequence):
    """The results of a run's replicates that the core already holds, in order.

    What the dispatch engine returns when every result reached the driver's
    monitor: it keeps nothing of its own, and the core, seeing its own
    columns, reads nothing back. Anyone else iterating it gets each
    [`ReplicateResult`][], rebuilt from the columns.
    """

    def __init__(self, columns: ResultColumns, replicates: Sequence[int]):
        self.columns = columns
        self.replicates = replicates

    def __len__(self) -> int:
        return len(self.replicates)

    def __getitem__(self, position):
        if isinstance(position, slice):
            return [self.columns.result(r) for r in self.replicates[position]]
        return self.columns.result(self.replicates[position])

    def __iter__(self) -> Iterator[ReplicateResult]:
        return map(self.columns.result, self.replicates)

    def __repr__(self) -> str:
        return f"RecordedResults({len(self.replicates)} replicates)"


#: The first item of a batch packed by ``pack_columns``.
COLUMNS = "crystallize:columns"


def pack_columns(results: Sequence[Any]) -> tuple | None:
    """``results`` column by column, for sending to the driver, when they are
    consecutive replicates without errors, of one shape, whose metrics are
    Python floats, ints or bools, each metric of one type throughout; else
    None. Such a batch pickles, unpickles and is kept (``ResultColumns.add_columns``)
    at a fraction of the cost of its rows; ``unpack_columns`` gives them back.
    """
    if len(results) < 2 or type(results[0]) is not ReplicateResult:
        return None
    start, _, metrics, errors, duration = results[0]
    if errors or type(start) is not int or type(metrics) is not dict:
        return None
    conditions = tuple((condition, tuple(values)) for condition, values in metrics.items())
    kinds = [type(value) for values in metrics.values() for value in values.values()]
    if any(kind not in _CODES for kind in kinds):
        return None
    timed = duration is not None
    seeds: list[int] = []
    durations: list[Any] = []
    columns: list[list] = [[] for _ in kinds]
    replicate = start
    for result in results:
        if type(result) is not ReplicateResult:
            return None
        index, seed, metrics, errors, duration = result
        if (
            index != replicate
            or errors
            or type(seed) is not int
            or type(metrics) is not dict
            or (duration is not None) is not timed
        ):
            return None
        if tuple((condition, tuple(values)) for condition, values in metrics.items()) != conditions:
            return None
        column = 0
        for values in metrics.values():
            for value in values.values():
                if type(value) is not kinds[column]:
                    return None
                columns[column].append(value)
                column += 1
        seeds.append(seed)
        if timed:
            durations.append(duration)
        replicate += 1
    return (COLUMNS, start, conditions, seeds, durations if timed else None, columns)


def unpack_columns(batch: tuple) -> list[tuple]:
    """The rows of a batch made by ``pack_columns``, as ``pack_results`` makes them."""
    _, start, conditions, seeds, durations, columns = batch
    rows = []
    for offset, seed in enumerate(seeds):
        values = iter([column[offset] for column in columns])
        metrics = {condition: {name: next(values) for name in names} for condition, names in conditions}
        rows.append((start + offset, seed, metrics, (), None if durations is None else durations[offset]))
    return rows
