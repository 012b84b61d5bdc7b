"""The ``crystallize`` command line: list strategies, run experiments and show saved results.

A mistake in what the user asked for, or an exception in the user's code
while the experiment is imported or built, ends with one line on standard
error naming the file and line in the user's code; ``--traceback`` prints the
whole traceback as well. Exit status:

- 0: done (errors captured inside replicates are part of the result);
- 1: the run failed: ``--fail-fast`` stopped it, or something broke while it ran;
- 2: usage error: the run could not start (a bad target, an exception while
  importing or building the experiment, an unknown strategy, a bad option);
- 130: interrupted by Ctrl-C;
- 141: standard output was closed early (as by ``| head``); nothing more is printed.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crystallize_core._version import __version__
from crystallize_core.errors import (
    ConfigurationError,
    CrystallizeError,
    ExperimentInterrupted,
    ReplicateFailed,
    StrategyContractError,
)

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer killed by a closed pipe

_EXIT_STATUS_HELP = """\
exit status:
  0    done (errors captured inside replicates are part of the result)
  1    the run failed: --fail-fast stopped it, the checkpoint could not save every
       replicate (the output still holds them), or something broke while it ran
  2    usage error: the run could not start (bad target, exception while importing
       or building the experiment, unknown strategy, bad option)
  130  interrupted by Ctrl-C
  141  standard output was closed early (as by `| head`)
"""


class UsageError(Exception):
    """A mistake in what the user asked for; reported in one line."""


class RunError(Exception):
    """The run started and then failed; reported in one line.

    ``traceback_text`` is printed with ``--traceback`` when the failure has
    no exception of its own here, as for an error captured in a replicate.
    """

    def __init__(self, message: str, traceback_text: str | None = None):
        super().__init__(message)
        self.traceback_text = traceback_text


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``) and return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    show_traceback = getattr(args, "traceback", False)
    try:
        status = _dispatch(parser, args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return status
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_BROKEN_PIPE
    except UsageError as exc:
        _print_error(exc, show_traceback)
        return EXIT_USAGE
    except RunError as exc:
        _print_error(exc, show_traceback)
        return EXIT_FAILED
    except KeyboardInterrupt:  # outside a run: while importing or building the experiment
        print("\ncrystallize: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.version:
        print(_versions())
        return 0
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.handler(args)
    except (UsageError, RunError, BrokenPipeError, KeyboardInterrupt):
        raise
    except Exception as exc:  # a bug in Crystallize or a plugin: still one line, the rest with --traceback
        raise RunError(_one_line(exc)) from exc


def _print_error(exc: Exception, show_traceback: bool) -> None:
    cause = exc.__cause__
    captured = exc.traceback_text if isinstance(exc, RunError) else None
    if show_traceback:
        import traceback

        if cause is not None:
            traceback.print_exception(type(cause), cause, cause.__traceback__, file=sys.stderr)
        elif captured:
            print(captured.rstrip(), file=sys.stderr)
    # Crystallize's own errors say all there is to say; the user's exceptions have more.
    more = (cause is not None and not isinstance(cause, CrystallizeError)) or captured
    hint = " (--traceback shows the whole traceback)" if more and not show_traceback else ""
    print(f"crystallize: error: {exc}{hint}", file=sys.stderr)


def _discard_stdout() -> None:
    # Whatever is still buffered for the closed pipe would fail again when
    # Python flushes standard output at exit; send it nowhere instead.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (tests capturing output)
        pass


def _one_line(exc: BaseException) -> str:
    """``file:line: Type: first line of the message``, the location being the user's code."""
    # Loaded by the command that uses it: the CLI starts quickly.
    from crystallize_core._usercode import shown_path, user_location

    if isinstance(exc, SyntaxError) and exc.filename and exc.lineno:
        return f"{shown_path(exc.filename)}:{exc.lineno}: syntax error: {exc.msg}"
    location = user_location(exc.__traceback__)
    lines = str(exc).strip().splitlines()
    text = lines[0] + (" [...]" if len(lines) > 1 else "") if lines else ""
    described = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return f"{shown_path(location[0])}:{location[1]}: {described}" if location else described


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crystallize",
        description="Run reproducible experiments with an installable execution strategy.",
        epilog=_EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="store_true", help="print the core's and each strategy's version")
    # On the main parser and on each command, so that it may stand anywhere;
    # SUPPRESS keeps a command's default from overwriting the main parser's value.
    traceback_flag: dict[str, Any] = {
        "action": "store_true",
        "default": argparse.SUPPRESS,
        "help": "on an error, print the whole traceback as well as the one-line message",
    }
    parser.add_argument("--traceback", **traceback_flag)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    listing = commands.add_parser("strategies", help="list installed strategies and their status")
    listing.add_argument("--traceback", **traceback_flag)
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.add_argument(
        "--no-load", action="store_true", help="read metadata only; do not import strategies to check them"
    )
    listing.set_defaults(handler=_cmd_strategies)

    run = commands.add_parser(
        "run",
        help="run an experiment and summarise its result",
        description="Run an experiment and summarise its result.",
        epilog=_RUN_EXAMPLES + "\n" + _EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "target",
        metavar="TARGET",
        help="path/to/file.py:NAME or package.module:NAME (the current directory is importable); "
        "NAME is an Experiment or a function taking no arguments that returns one",
    )
    run.add_argument("--strategy", "-s", metavar="NAME", help="strategy to run it with (default: the fallback)")
    run.add_argument(
        "-o",
        "--option",
        dest="options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a strategy option; VALUE is read as a Python literal where it is one",
    )
    run.add_argument("--replicates", "-n", type=int, metavar="N", help="replicate count (default: the experiment's)")
    run.add_argument("--seed", type=int, metavar="S", help="base seed (adds or replaces the SeedPlugin)")
    run.add_argument(
        "--output",
        metavar="PATH",
        help="write the result to PATH: .json (everything), .jsonl or .csv (one row per replicate, condition and "
        "metric); '-' writes JSON to standard output",
    )
    run.add_argument("--fail-fast", action="store_true", help="stop at the first error inside a replicate")
    run.add_argument("--timeout", type=float, metavar="SECONDS", help="per-replicate time limit")
    run.add_argument(
        "--checkpoint", metavar="PATH", help="save each finished replicate to PATH; rerun to resume from it"
    )
    run.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show progress (a bar on a terminal, plain lines elsewhere) or not; without either, the strategy's "
        "own progress option decides, else a bar on a terminal only",
    )
    run.add_argument(
        "--sweep",
        dest="sweeps",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="add one treatment per value of KEY; repeat for the grid of every combination "
        "(--sweep C=0.1,1 --sweep kernel=rbf,linear: 4 treatments named like 'C=0.1,kernel=rbf')",
    )
    run.add_argument(
        "--treatment",
        dest="treatments",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE,...",
        help="add a treatment with these context values, or replace the experiment's treatment of that name",
    )
    run.add_argument("--plot", metavar="FILE.png", help=_PLOT_HELP)
    run.add_argument("--traceback", **traceback_flag)
    run.set_defaults(handler=_cmd_run)

    show = commands.add_parser(
        "show",
        help="summarise a saved result and compare its treatments with the baseline",
        description="Summarise a result saved by `crystallize run --output` or Result.save, and compare each "
        "treatment with the baseline, replicate by replicate.",
        epilog=_SHOW_EXAMPLES + "\n" + _EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    show.add_argument(
        "path",
        metavar="PATH",
        help="a saved result: .json (everything), .jsonl or .csv (metrics, seeds and conditions only); "
        "'-' reads JSON from standard input",
    )
    show.add_argument(
        "--metric",
        "-m",
        dest="metrics",
        action="append",
        default=[],
        metavar="NAME",
        help="show only this metric; repeat for more (default: every metric)",
    )
    show.add_argument(
        "--compare",
        dest="compare",
        action="append",
        default=[],
        metavar="TREATMENT",
        help="compare only this treatment with the baseline; repeat for more (default: every treatment)",
    )
    show.add_argument(
        "--baseline",
        default=None,
        metavar="NAME",
        help="the condition the treatments are compared with (default: baseline)",
    )
    show.add_argument(
        "--confidence",
        type=float,
        default=0.95,
        metavar="LEVEL",
        help="confidence level of the paired differences' intervals (default: 0.95)",
    )
    show.add_argument("--plot", metavar="FILE.png", help=_PLOT_HELP)
    show.add_argument("--traceback", **traceback_flag)
    show.set_defaults(handler=_cmd_show)
    return parser


_PLOT_HELP = (
    "also draw each condition's mean and each treatment's paired difference from the baseline, with their "
    "intervals, to this image file (.png, .svg, .pdf, ...); needs matplotlib: pip install 'crystallize-core[plot]'"
)

_SHOW_EXAMPLES = """\
examples:
  crystallize show result.json
  crystallize show result.json --metric accuracy --compare C=0.1 --plot accuracy.png
  crystallize run study.py:build --output - | crystallize show -
"""


_RUN_EXAMPLES = """\
values are read as Python literals where they are one (4, 0.1, True, 'x', [1, 2]), else as text.

examples:
  crystallize run study.py:build --strategy parallel -o executor_type=process
  crystallize run study.py:build --sweep C=0.01,0.1,1 --sweep kernel=rbf,linear
  crystallize run study.py:build --treatment big:factor=10,noise=0.5 --seed 7 --output result.json
"""


# --- crystallize --version ---------------------------------------------------


def _versions() -> str:
    # Loaded by the command that uses it: the CLI starts quickly.
    from crystallize_core.discovery import available_strategies

    lines = [f"crystallize-core {__version__}"]
    for info in available_strategies():
        lines.append(f"  {info.name}: {info.distribution or '?'} {info.version or '?'}")
    return "\n".join(lines)


# --- crystallize strategies ----------------------------------------------------


def _cmd_strategies(args: argparse.Namespace) -> int:
    # Loaded by the command that uses it: the CLI starts quickly.
    from crystallize_core.discovery import ENV_BLOCK, ENV_DISABLE_AUTOLOAD, FALLBACK_STRATEGY, available_strategies

    infos = available_strategies(load=not args.no_load)
    if args.json:
        records = [
            {
                "name": i.name,
                "distribution": i.distribution,
                "version": i.version,
                "target": i.target,
                "status": i.status,
                "blocked": i.blocked,
                "error": i.error,
                "fallback": i.is_fallback,
            }
            for i in infos
        ]
        print(json.dumps({"fallback": FALLBACK_STRATEGY, "strategies": records}, indent=2))
        return 0
    header = ("name", "distribution", "version", "target", "status")
    rows = [
        (i.name + (" (fallback)" if i.is_fallback else ""), i.distribution or "?", i.version or "?", i.target, i.status)
        for i in infos
    ]
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    if not infos:
        print("no strategies installed")
    steering = [f"{name}={os.environ[name]}" for name in (ENV_DISABLE_AUTOLOAD, ENV_BLOCK) if os.environ.get(name)]
    if steering:
        print(f"steered by {', '.join(steering)}")
    return 0


# --- crystallize run -------------------------------------------------------------


def _cmd_run(args: argparse.Namespace) -> int:
    added = _treatments_from_options(args.sweeps, args.treatments)  # checked before any import
    _check_output(args.output)
    _check_plot(args.plot)
    document = _set_stdout_aside() if args.output == "-" else None
    try:
        return _run(args, added, document)
    finally:
        if document is not None:
            os.close(document)


def _run(args: argparse.Namespace, added: list[Any], document: int | None) -> int:

    experiment = load_target(args.target)
    try:
        strategy = _chosen_strategy(args)
        plugins = _plugins_with_seed(experiment.plugins, args.seed)
    except CrystallizeError as exc:
        raise UsageError(str(exc)) from exc
    except Exception as exc:  # a strategy that raised something of its own while being built
        raise UsageError(f"building the strategy failed: {_one_line(exc)}") from exc

    # Loaded by the command that uses it: the CLI starts quickly.
    from crystallize_core.experiment import Experiment

    replaced = {t.name for t in added}
    runnable = Experiment(
        experiment.datasource,
        experiment.pipeline,
        plugins=plugins,
        treatments=[*(t for t in experiment.treatments if t.name not in replaced), *added],
        replicates=experiment.replicates,
        fail_fast=args.fail_fast or experiment.fail_fast,
    )
    try:
        result = runnable.run(
            replicates=args.replicates,
            strategy=strategy,
            timeout=args.timeout,
            checkpoint=args.checkpoint,
            progress=args.progress,
        )
    except ReplicateFailed as failed:
        # Loaded by the command that uses it: the CLI starts quickly.
        from crystallize_core._usercode import located, user_location_in_text

        error = failed.error
        where = located(user_location_in_text(error.traceback))
        raise RunError(f"stopped by --fail-fast: {error}{where}", error.traceback) from None
    except ExperimentInterrupted as interrupted:
        partial = interrupted.partial_result
        print(f"\ninterrupted: {partial.replicates if partial else 0} replicate(s) finished", file=sys.stderr)
        if partial is not None:
            _report(partial, args.output, document)
            _write_plot(partial, args.plot, sys.stderr if args.output == "-" else sys.stdout)
        return EXIT_INTERRUPTED
    except StrategyContractError as exc:
        raise RunError(str(exc)) from exc
    except CrystallizeError as exc:  # bad input, refused before any replicate started
        raise UsageError(str(exc)) from exc
    _report(result, args.output, document)
    _write_plot(result, args.plot, sys.stderr if args.output == "-" else sys.stdout)
    unsaved = result.unsaved_replicates
    if unsaved:
        shown = ", ".join(map(str, unsaved[:10])) + (f" and {len(unsaved) - 10} more" if len(unsaved) > 10 else "")
        kept = "--output holds them" if args.output else "give --output to keep them"
        raise RunError(
            f"checkpoint {args.checkpoint!r} could not save {len(unsaved)} replicate(s) ({shown}; the warning above "
            f"says why): {kept}, and a rerun with this checkpoint runs them again"
        )
    return 0


def _treatments_from_options(sweeps: Sequence[str], treatments: Sequence[str]) -> list[Any]:
    """The treatments that ``--sweep`` and ``--treatment`` add, or a UsageError naming the malformed one."""
    # Loaded by the command that uses it: the CLI starts quickly.
    from crystallize_core.discovery import split_top_level
    from crystallize_core.experiment import Treatment
    from crystallize_core.records import BASELINE

    grid: dict[str, list[Any]] = {}
    for item in sweeps:
        key, values = _key_and_values("--sweep", item, item, "expected KEY=VALUE,VALUE,..., e.g. --sweep C=0.01,0.1,1")
        if key in grid:
            raise UsageError(f"--sweep {key}=... is given twice; list every value in one --sweep {key}=V1,V2")
        grid[key] = values
    added: list[Any] = []
    if grid:
        # Loaded by the command that uses it: the CLI starts quickly.
        from crystallize_core.sweep import treatment_grid

        try:
            added = treatment_grid(grid)
        except ConfigurationError as exc:
            raise UsageError(f"--sweep: {exc}") from None
    for item in treatments:
        name, sep, rest = item.partition(":")
        name = name.strip()
        pairs = split_top_level(rest)
        if not sep or not name or "=" in name or not rest.strip():
            raise UsageError(
                f"malformed --treatment {item!r}: expected NAME:KEY=VALUE,KEY=VALUE, e.g. --treatment big:factor=10"
            )
        if name == BASELINE:
            raise UsageError(f"--treatment {name!r}: {BASELINE!r} names the untreated condition; choose another name")
        given: dict[str, Any] = {}
        for pair in pairs:
            if not pair.strip():
                raise UsageError(
                    f"malformed --treatment {item!r}: a KEY=VALUE is empty (two commas in a row, or one at an end)"
                )
            key, (value,) = _key_and_values("--treatment", item, pair, f"{pair.strip()!r} is not KEY=VALUE")
            if key in given:
                raise UsageError(f"malformed --treatment {item!r}: {key!r} is given twice; give each key once")
            given[key] = value
        added.append(Treatment(name, given))
    seen: set[str] = set()
    for treatment in added:
        if treatment.name in seen:
            raise UsageError(f"two treatments given on the command line are named {treatment.name!r}")
        seen.add(treatment.name)
    return added


def _key_and_values(flag: str, item: str, text: str, expected: str) -> tuple[str, list[Any]]:
    """``KEY=VALUE,VALUE,...`` as ``--sweep`` and ``--treatment`` both read it:
    the key and the values, each read as a Python literal where it is one, or a
    UsageError naming ``flag`` and ``item`` (``expected`` says what was expected).

    ``--treatment`` passes one ``KEY=VALUE`` at a time: its commas separate
    keys, which ``split_top_level`` has already done.
    """
    # Loaded by the command that uses it: the CLI starts quickly.
    from crystallize_core.discovery import parse_value, split_top_level

    key, sep, rest = text.partition("=")
    key = key.strip()
    if not sep or not key or "," in key:
        raise UsageError(f"malformed {flag} {item!r}: {expected}")
    values = split_top_level(rest)
    if not rest.strip():
        raise UsageError(f"malformed {flag} {item!r}: {key!r} has no value")
    if any(not value.strip() for value in values):
        raise UsageError(f"malformed {flag} {item!r}: a value is empty (two commas in a row, or one at an end)")
    return key, [parse_value(value.strip()) for value in values]


def _check_output(output: str | None) -> None:
    """Refuse, before any replicate runs, an --output the run could not write."""
    if output is None:
        return
    # Loaded by the command that uses it: the CLI starts quickly.
    from crystallize_core.result import output_format

    if output != "-" and Path(output).is_dir():
        raise UsageError(f"--output {output!r} is a directory; name a file in it")
    try:
        output_format(output)
    except ConfigurationError as exc:
        raise UsageError(f"--output: {exc}") from None
    if output == "-":
        return
    path = Path(output)
    folder = path.parent
    if not folder.is_dir():
        raise UsageError(f"--output folder {str(folder)!r} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"cannot write --output {output!r}: permission denied")


def _set_stdout_aside() -> int:
    """For ``--output -``: point file descriptor 1 at standard error and return
    a private descriptor of the real standard output, for the document alone.

    At the descriptor level, so that what the user's code prints reaches
    standard error whoever writes it: ``print``, ``os.write(1, ...)``, C code,
    and worker processes, which inherit descriptor 1. Descriptor 1 stays on
    standard error until the process ends, so that nothing written later (an
    ``atexit`` handler, a thread still running) lands after the document. The
    private descriptor is not inherited by child processes.
    """
    try:
        sys.stdout.flush()
        document = os.dup(1)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--output -: standard output cannot be written ({exc}); name a file instead") from None
    try:
        os.dup2(2, 1)
    except OSError as exc:
        os.close(document)
        raise UsageError(f"--output -: cannot send printed output to standard error ({exc.strerror})") from None
    try:  # now a line on standard error: show it as it is printed, not in blocks
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    except (AttributeError, ValueError):
        pass
    return document


def _write_document(document: int, text: str) -> None:
    """Write ``text`` to ``document`` whole; a reader gone raises [`BrokenPipeError`][].

    Written with [`os.write`][] until done: a buffered file that has written
    part of it when the pipe closes reports no error and drops the rest.
    """
    data = memoryview(text.encode("utf-8"))
    while data:
        data = data[os.write(document, data) :]


def _report(result: Any, output: str | None, document: int | None = None) -> None:
    # With JSON on standard output, the human summary goes to standard error,
    # after what the user's code printed there.
    sys.stdout.flush()
    shown = sys.stderr if output == "-" else sys.stdout
    print(f"strategy: {result.strategy} {result.strategy_version or ''}".rstrip(), file=shown)
    print(f"replicates: {result.replicates}", file=shown)
    print(result.format_summary(), file=shown)
    for error in result.errors[:5]:
        print(f"  {error}", file=shown)
    if len(result.errors) > 5:
        print(f"  ... and {len(result.errors) - 5} more (see --output)", file=shown)
    if output == "-" and document is not None:
        _write_document(document, result.to_json() + "\n")
    elif output:
        try:
            result.save(output)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise UsageError(f"cannot write --output {output!r}: {exc.strerror or exc}") from None
        if output != "-":
            print(f"result written to {output}", file=shown)


# --- --plot ----------------------------------------------------------------------


def _check_plot(path: str | None) -> None:
    """Refuse, before any work, a --plot that could not be written."""
    if path is None:
        return
    try:
        # Loaded by the option that uses it: matplotlib is large, and optional.
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        raise UsageError(
            "--plot needs matplotlib, which is not installed: pip install 'crystallize-core[plot]'"
        ) from None
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"--plot {path!r} is a directory; name an image file in it")
    kinds = FigureCanvasBase.get_supported_filetypes()
    suffix = target.suffix.lower().lstrip(".")
    if suffix not in kinds:
        raise UsageError(f"--plot {path!r}: name the image with one of .{', .'.join(sorted(kinds))}")
    folder = target.parent
    if not folder.is_dir():
        raise UsageError(f"--plot folder {str(folder)!r} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise UsageError(f"cannot write --plot {path!r}: permission denied")


def _write_plot(result: Any, path: str | None, shown: Any = None, **choices: Any) -> None:
    if path is None:
        return
    try:
        figure = result.plot(**choices)
    except (KeyError, ValueError) as exc:  # nothing to draw: the summary above says what there is
        raise RunError(f"--plot: {exc.args[0] if exc.args else exc}") from None
    try:
        figure.savefig(path)
    except OSError as exc:
        raise RunError(f"cannot write --plot {path!r}: {exc.strerror or exc}") from None
    print(f"plot written to {path}", file=shown or sys.stdout)


# --- crystallize show ------------------------------------------------------------


def _cmd_show(args: argparse.Namespace) -> int:
    # Loaded by the command that uses it: the CLI starts quickly.
    from crystallize_core.records import BASELINE
    from crystallize_core.result import Result

    if not 0.0 < args.confidence < 1.0:
        raise UsageError(f"--confidence must be between 0 and 1, e.g. 0.95; got {args.confidence}")
    _check_plot(args.plot)
    try:
        result = Result.load(args.path)
    except CrystallizeError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot read {args.path!r}: {exc.strerror or exc}") from None
    baseline = args.baseline or BASELINE
    conditions = list(result.conditions)
    metric_names = list(dict.fromkeys(name for by_name in result.metrics.values() for name in by_name))
    for name, given, known in (
        ("--metric", args.metrics, metric_names),
        ("--compare", args.compare, conditions),
        ("--baseline", [baseline], conditions),
    ):
        for item in given:
            if item not in known:
                listed = ", ".join(map(repr, known)) or "none"
                what = "metric" if name == "--metric" else "condition"
                raise UsageError(f"{name} {item!r}: the result has no {what} of that name ({what}s: {listed})")
    metrics = args.metrics or None
    kind = "JSON" if args.path == "-" or args.path.lower().endswith(".json") else "tidy rows"
    print(f"result: {'standard input' if args.path == '-' else args.path}" + ("" if result.complete else " (partial)"))
    if kind == "JSON":
        print(f"strategy: {result.strategy} {result.strategy_version or ''}".rstrip())
    print(f"replicates: {result.replicates}")
    print(result.format_summary(metrics=metrics))
    if kind != "JSON":
        print("(JSON lines and CSV hold no errors, durations, treatment parameters or record of the run)")
    for error in result.errors[:5]:
        print(f"  {error}")
    if len(result.errors) > 5:
        print(f"  ... and {len(result.errors) - 5} more")
    treatments = [c for c in (args.compare or conditions) if c != baseline]
    print()
    print(_comparisons(result, treatments, metrics, baseline, args.confidence))
    _write_plot(
        result,
        args.plot,
        metrics=metrics,
        conditions=args.compare or None,
        baseline=baseline,
        confidence=args.confidence,
    )
    return 0


def _comparisons(result: Any, treatments: list[str], metrics: list[str] | None, baseline: str, level: float) -> str:
    """Each treatment's paired difference from ``baseline``, one line per metric both recorded."""
    # Loaded by the command that uses it: the CLI starts quickly.
    from crystallize_core.summaries import number_text

    header = ("treatment", "metric", "pairs", f"difference from {baseline}", f"{level * 100:.4g}% interval")
    rows = []
    recorded = result.metrics
    for treatment in treatments:
        for metric in recorded.get(treatment, {}):
            if (metrics is None or metric in metrics) and metric in recorded.get(baseline, {}):
                d = result.paired_difference(treatment, metric, baseline, level)
                interval = "-" if d.low is None else f"[{number_text(d.low)}, {number_text(d.high)}]"
                rows.append((treatment, metric, str(d.n), number_text(d.mean, sign=True), interval))
    if not rows:
        return f"no treatment recorded a metric that {baseline!r} recorded too: nothing to compare"
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows])


def _chosen_strategy(args: argparse.Namespace) -> object | None:
    # Loaded by the command that uses it: the CLI starts quickly.
    from crystallize_core._run import ENV_STRATEGY
    from crystallize_core.discovery import (
        FALLBACK_STRATEGY,
        load_strategy,
        naming_origin,
        parse_strategy_spec,
        parse_value,
    )

    extra: dict[str, Any] = {}
    for item in args.options:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise UsageError(f"malformed option {item!r}: expected -o KEY=VALUE, e.g. -o max_workers=4")
        extra[key.strip()] = parse_value(value.strip())
    from_env = os.environ.get(ENV_STRATEGY, "").strip()
    if args.strategy:
        spec, origin = args.strategy, "--strategy"
    elif from_env:
        spec, origin = from_env, ENV_STRATEGY
    elif extra:
        spec, origin = FALLBACK_STRATEGY, None
    else:
        return None  # the experiment's own plugins, then the fallback
    with naming_origin(origin):
        name, options = parse_strategy_spec(spec)
        options.update(extra)
        return load_strategy(name, **options)


def _plugins_with_seed(plugins: Sequence[object], seed: int | None) -> list[object]:
    if seed is None:
        return list(plugins)
    # Loaded by the command that uses it: the CLI starts quickly.
    from crystallize_core.seed import SeedPlugin

    kept = [p for p in plugins if not isinstance(p, SeedPlugin)]
    previous = next((p for p in plugins if isinstance(p, SeedPlugin)), None)
    replacement = (
        SeedPlugin(seed)
        if previous is None
        else SeedPlugin(seed, auto_seed=previous.auto_seed, seed_fn=previous.seed_fn)
    )
    return [replacement, *kept]


def load_target(target: str) -> Any:
    """The [`Experiment`][] that ``target`` names.

    ``target`` is ``path/to/file.py:NAME`` or ``package.module:NAME``; NAME is
    an Experiment or a function taking no arguments that returns one. As with
    ``python -m``, the current directory is importable. An exception raised
    while importing the module or building the experiment becomes a
    ``UsageError`` naming the file and line in the user's code.
    """
    # Loaded by the command that uses it: the CLI starts quickly.
    from crystallize_core.experiment import Experiment

    location, sep, attribute = target.rpartition(":")
    if not sep or not location or not attribute:
        raise UsageError(f"target {target!r} must look like path/to/file.py:NAME or package.module:NAME")
    if location.endswith(".py") or os.sep in location:
        module = _import_file(location)
    else:
        _current_directory_importable()
        module = _import_module(location)
    try:
        value = getattr(module, attribute)
    except AttributeError:
        raise UsageError(f"{location} has no attribute {attribute!r}") from None
    if callable(value) and not isinstance(value, Experiment):
        import inspect

        try:
            inspect.signature(value).bind()
        except TypeError:
            raise UsageError(f"{target} must be an Experiment or a function taking no arguments") from None
        except ValueError:  # no signature to check: just call it
            pass
        try:
            value = value()
        except SystemExit as exc:
            raise UsageError(
                f"building the experiment with {target} failed: {_exit_called(exc)} while building it; "
                "return the Experiment instead of ending the program"
            ) from None
        except Exception as exc:
            raise UsageError(f"building the experiment with {target} failed: {_one_line(exc)}") from exc
    if not isinstance(value, Experiment):
        raise UsageError(f"{target} is a {type(value).__name__}, not an Experiment (or a function returning one)")
    return value


def _current_directory_importable() -> None:
    # `python -m` puts the current directory first on sys.path; the
    # `crystallize` script's own folder is there instead.
    here = os.getcwd()
    if "" not in sys.path and here not in sys.path:
        sys.path.insert(0, here)


def _import_file(location: str):
    path = Path(location)
    if not path.is_file():
        raise UsageError(f"no such file: {location}")
    # Imported under its own name with its folder on sys.path, so that worker
    # processes can import it again to unpickle its functions.
    folder, name = str(path.resolve().parent), path.stem
    if folder not in sys.path:
        sys.path.insert(0, folder)
    existing = sys.modules.get(name)
    if existing is not None and Path(getattr(existing, "__file__", "") or "").resolve() != path.resolve():
        raise UsageError(f"{location}: a module named {name!r} is already imported from elsewhere; rename the file")
    return _import_module(name, shown=location)


def _import_module(name: str, shown: str | None = None):
    shown = shown or name
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise UsageError(f"cannot import {shown!r}: no module named {exc.name!r}") from None
        raise UsageError(f"importing {shown} failed: {_one_line(exc)}") from exc
    except SystemExit as exc:
        raise UsageError(
            f"importing {shown} failed: {_exit_called(exc)} while being loaded; "
            "put the code that ends the program under `if __name__ == '__main__':`"
        ) from None
    except Exception as exc:
        raise UsageError(f"importing {shown} failed: {_one_line(exc)}") from exc


def _exit_called(exc: SystemExit) -> str:
    """``file:line: the target called sys.exit(CODE)``, the location being the user's code.

    A target that ends the program has run nothing: that is never success,
    nor a status of the target's own choosing.
    """
    # Loaded by the command that uses it: the CLI starts quickly.
    from crystallize_core._usercode import shown_path, user_location

    location = user_location(exc.__traceback__)
    where = f"{shown_path(location[0])}:{location[1]}: " if location else ""
    return f"{where}the target called sys.exit({exc.code!r})"
