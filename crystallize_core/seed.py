"""Seeding: one seed per replicate, shared by the baseline and every treatment."""

from __future__ import annotations

import random
import sys
from collections.abc import Callable, Iterable
from typing import Any

from crystallize_core.errors import ConfigurationError, ReproducibilityWarning, warn_at_user_code
from crystallize_core.hookspecs import hookimpl
from crystallize_core.replicate import derive_seed, random_seed

_modules = sys.modules


def _random_seeder() -> Callable[[int], None]:
    """``random.seed`` for an int, or its C part called directly where that
    leaves the generator in the same state on this interpreter (checked once):
    the Python-level checks of ``random.seed`` cost about a microsecond, paid
    before every condition of every replicate."""
    generator = getattr(random, "_inst", None)
    seed_c = getattr(random.Random.__mro__[1], "seed", None)  # _random.Random.seed
    if not isinstance(generator, random.Random) or seed_c is None:
        return random.seed

    def seed_fast(seed: int) -> None:
        if type(seed) is not int:  # random.seed hashes a str or bytes seed its own way
            random.seed(seed)
            return
        seed_c(generator, seed)
        generator.gauss_next = None  # type: ignore[attr-defined]

    saved = random.getstate()
    try:
        random.seed(2**40 + 7)
        expected = random.getstate()
        random.gauss(0.0, 1.0)  # leaves a second normal deviate waiting, which seeding must clear
        seed_fast(2**40 + 7)
        same = random.getstate() == expected
    except Exception:
        same = False
    finally:
        random.setstate(saved)
    return seed_fast if same else random.seed


#: The seed of the condition that ran last in this process: what NumPy's global
#: generator gets if a replicate imports NumPy (see _SeedNumpyOnImport).
_last_seed: list[int] = [0]


class _SeedNumpyOnImport:
    """A meta path finder that seeds NumPy's global generator as soon as NumPy
    is imported, with ``_last_seed``: a step that imports NumPy itself
    draws from the same state as one whose module imported it first, so the
    conditions of a replicate stay paired. It acts once, then leaves."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "numpy":
            return None
        import importlib.util  # here: only when NumPy is being imported

        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)  # the finders after this one
        loader = getattr(spec, "loader", None)
        execute = getattr(loader, "exec_module", None)
        if execute is None:
            return spec

        def execute_then_seed(module: Any) -> None:
            execute(module)
            import numpy.random

            numpy.random.seed(_last_seed[0])

        loader.exec_module = execute_then_seed  # type: ignore[union-attr]
        return spec


#: The finder, once installed in this process.
_numpy_watch: list[_SeedNumpyOnImport] = []


#: The seeder, chosen at first use. A list, not a module-level function: a
#: checkpoint's fingerprint of SeedPlugin follows the functions its methods
#: name, and must not change when this is filled in.
_seeder: list[Callable[[int], None]] = []


class SeedPlugin:
    """Give replicate ``i`` the seed ``derive_seed(seed, i)`` and seed global state with it.

    The seed depends on the base ``seed`` and the replicate index only, so
    every strategy sees the same seeds, and the baseline and each treatment of
    a replicate share one (paired comparisons). ``seed=None`` draws a base seed
    once, when the plugin is created; it is kept in ``seed``. A run that
    resumes from a checkpoint reuses the base seed drawn for the checkpoint.

    Where the replicate runs, before *each* condition (the baseline and every
    treatment), ``seed_fn(seed)`` is called with the replicate's seed if given;
    otherwise, with ``auto_seed=True``, the global [`random`][] module and
    NumPy's global generator are seeded with it (NumPy is never imported for
    this: if a replicate imports it, it is seeded as it is imported). Every
    condition of a replicate so starts from the same random state: a treatment
    that changes nothing draws the same numbers as the baseline. Seeding global
    state is only reproducible when each replicate has its process to itself:
    under threads prefer ``ctx.rng``.
    """

    def __init__(self, seed: int | None = None, auto_seed: bool = True, seed_fn: Callable[[int], None] | None = None):
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ConfigurationError(f"SeedPlugin seed must be an int or None, not {type(seed).__name__}")
        if seed_fn is not None and not callable(seed_fn):
            raise ConfigurationError("SeedPlugin seed_fn must be callable with the replicate's seed")
        self.seed: int = random_seed() if seed is None else seed
        #: Whether ``seed`` was drawn rather than given.
        self.seed_drawn = seed is None
        self.auto_seed = bool(auto_seed)
        self.seed_fn = seed_fn

    @property
    def seeds_global_state(self) -> bool:
        """Whether this plugin touches process-global random state."""
        return self.seed_fn is not None or self.auto_seed

    @hookimpl
    def replicate_seed(self, replicate: int) -> int:
        return derive_seed(self.seed, replicate)

    # Every argument of the hook, though it uses one: the run then calls this
    # method as it is, without an adapter, before every condition of every replicate.
    @hookimpl
    def before_condition(self, replicate: int, condition: str, seed: int) -> None:
        if self.seed_fn is not None:
            self.seed_fn(seed)
        elif self.auto_seed:
            if not _seeder:
                _seeder.append(_random_seeder())
            _seeder[0](seed)
            numpy = _modules.get("numpy")
            if numpy is not None:
                numpy.random.seed(seed)
            else:
                _last_seed[0] = seed
                if not _numpy_watch:
                    _numpy_watch.append(_SeedNumpyOnImport())
                    sys.meta_path.insert(0, _numpy_watch[0])

    def __repr__(self) -> str:
        return f"SeedPlugin(seed={self.seed}, auto_seed={self.auto_seed}, seed_fn={self.seed_fn!r})"


def warn_if_seeding_globally(plugins: Iterable[object], where: str, instead: str = "processes") -> None:
    """Warn, at the user's call, when a plugin seeds global random state that
    replicates running at once in one process would share (``where`` names
    the way they run, e.g. ``"executor_type='thread'"``; ``instead`` the
    way to run them in processes)."""
    seeding = [plugin for plugin in plugins if getattr(plugin, "seeds_global_state", False)]
    if not seeding:
        return
    warn_at_user_code(
        f"{type(seeding[0]).__name__} seeds the global random state, which replicates running at once under "
        f"{where} share, so results are not reproducible. Draw random numbers from ctx.rng (or ctx.numpy_rng) "
        f"and use SeedPlugin(seed, auto_seed=False) without a seed_fn, or use {instead}.",
        ReproducibilityWarning,
    )
