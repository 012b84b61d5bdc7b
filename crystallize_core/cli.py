"""The ``crystallize`` command line: list strategies and run experiments.

User mistakes (a bad target, an unknown strategy, a bad option) end with a
one-line message on standard error and exit status 2, never a traceback.
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

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """A mistake in what the user asked for; reported in one line."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.version:
        print(_versions())
        return 0
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.handler(args)
    except UsageError as exc:
        print(f"crystallize: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crystallize",
        description="Run reproducible experiments with an installable execution strategy.",
    )
    parser.add_argument("--version", action="store_true", help="print the core's and each strategy's version")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    listing = commands.add_parser("strategies", help="list installed strategies and their status")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.add_argument(
        "--no-load", action="store_true", help="read metadata only; do not import strategies to check them"
    )
    listing.set_defaults(handler=_cmd_strategies)

    run = commands.add_parser("run", help="run an experiment and summarise its result")
    run.add_argument("target", metavar="TARGET", help="path/to/file.py:NAME or package.module:NAME")
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
    run.add_argument("--output", metavar="PATH", help="write the whole result as JSON to PATH")
    run.add_argument("--fail-fast", action="store_true", help="stop at the first error inside a replicate")
    run.add_argument("--timeout", type=float, metavar="SECONDS", help="per-replicate time limit")
    run.add_argument(
        "--checkpoint", metavar="PATH", help="save each finished replicate to PATH; rerun to resume from it"
    )
    run.add_argument(
        "--no-progress", action="store_true", help="show no progress (a bar on a terminal, plain lines elsewhere)"
    )
    run.set_defaults(handler=_cmd_run)
    return parser


# --- crystallize --version ---------------------------------------------------


def _versions() -> str:
    import crystallize_core
    from crystallize_core.discovery import available_strategies

    lines = [f"crystallize-core {crystallize_core.__version__}"]
    for info in available_strategies():
        lines.append(f"  {info.name}: {info.distribution or '?'} {info.version or '?'}")
    return "\n".join(lines)


# --- crystallize strategies ----------------------------------------------------


def _cmd_strategies(args: argparse.Namespace) -> int:
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
    from crystallize_core.errors import CrystallizeError, ExperimentInterrupted, ReplicateFailed

    try:
        experiment = load_target(args.target)
        strategy = _chosen_strategy(args)
        plugins = _plugins_with_seed(experiment.plugins, args.seed)
    except CrystallizeError as exc:
        raise UsageError(str(exc)) from None

    from crystallize_core.experiment import Experiment

    runnable = Experiment(
        experiment.datasource,
        experiment.pipeline,
        plugins=plugins,
        treatments=experiment.treatments,
        replicates=experiment.replicates,
        fail_fast=args.fail_fast or experiment.fail_fast,
    )
    try:
        result = runnable.run(
            replicates=args.replicates,
            strategy=strategy,
            timeout=args.timeout,
            checkpoint=args.checkpoint,
            progress=not args.no_progress,
        )
    except ReplicateFailed as failed:
        print(f"crystallize: stopped by --fail-fast: {failed.error}", file=sys.stderr)
        print(failed.error.traceback, file=sys.stderr)
        return EXIT_FAILED
    except ExperimentInterrupted as interrupted:
        partial = interrupted.partial_result
        print(f"\ninterrupted: {partial.replicates if partial else 0} replicate(s) finished", file=sys.stderr)
        if partial is not None:
            _report(partial, args.output)
        return EXIT_INTERRUPTED
    except CrystallizeError as exc:  # raised before any replicate started
        raise UsageError(str(exc)) from None
    _report(result, args.output)
    return 0


def _report(result: Any, output: str | None) -> None:
    print(f"strategy: {result.strategy} {result.strategy_version or ''}".rstrip())
    print(f"replicates: {result.replicates}")
    print(result.format_summary())
    for error in result.errors[:5]:
        print(f"  {error}")
    if len(result.errors) > 5:
        print(f"  ... and {len(result.errors) - 5} more (see --output)")
    if output:
        import crystallize_core

        document = {"crystallize_core_version": crystallize_core.__version__, **result.to_dict()}
        try:
            Path(output).write_text(json.dumps(document, indent=2, default=repr) + "\n")
        except OSError as exc:
            raise UsageError(f"cannot write --output {output!r}: {exc.strerror or exc}") from None
        print(f"result written to {output}")


def _chosen_strategy(args: argparse.Namespace) -> object | None:
    from crystallize_core.discovery import (
        FALLBACK_STRATEGY,
        load_strategy,
        parse_strategy_spec,
        parse_value,
        strategy_from_env,
    )

    if args.strategy:
        name, options = parse_strategy_spec(args.strategy)
    else:
        from_env = strategy_from_env()
        if from_env is None and not args.options:
            return None  # the experiment's own plugins, then the fallback
        name, options = from_env if from_env else (FALLBACK_STRATEGY, {})
    for item in args.options:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise UsageError(f"malformed option {item!r}: expected -o KEY=VALUE, e.g. -o max_workers=4")
        options[key.strip()] = parse_value(value.strip())
    return load_strategy(name, **options)


def _plugins_with_seed(plugins: Sequence[object], seed: int | None) -> list[object]:
    if seed is None:
        return list(plugins)
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
    """The :class:`Experiment` that ``target`` names.

    ``target`` is ``path/to/file.py:NAME`` or ``package.module:NAME``; NAME is
    an Experiment or a function taking no arguments that returns one.
    """
    from crystallize_core.experiment import Experiment

    location, sep, attribute = target.rpartition(":")
    if not sep or not location or not attribute:
        raise UsageError(f"target {target!r} must look like path/to/file.py:NAME or package.module:NAME")
    module = _import_file(location) if location.endswith(".py") or os.sep in location else _import_module(location)
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
        value = value()
    if not isinstance(value, Experiment):
        raise UsageError(f"{target} is a {type(value).__name__}, not an Experiment (or a function returning one)")
    return value


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
    except SyntaxError as exc:
        raise UsageError(f"{exc.filename}:{exc.lineno}: syntax error: {exc.msg}") from None
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            raise UsageError(f"cannot import {shown!r}: no module named {exc.name!r}") from None
        raise UsageError(f"importing {shown} failed: {type(exc).__name__}: {exc}") from None
    except Exception as exc:
        raise UsageError(f"importing {shown} failed: {type(exc).__name__}: {exc}") from None
