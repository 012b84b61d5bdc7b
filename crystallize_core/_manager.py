"""The plugins of one run: registered with pluggy under their names, in the order strategies are asked."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import pluggy

from crystallize_core._plugin_manager import new_plugin_manager
from crystallize_core.errors import ConfigurationError
from crystallize_core.replicate import REPLICATE_HOOKS


def registration_name(plugin: object) -> str:
    """The entry point's name of a strategy loaded by name, else the class name."""
    # Only discovery loads strategies by name: where it was never imported,
    # reading package metadata to name a plugin object is left for later.
    discovery = sys.modules.get("crystallize_core.discovery")
    known = discovery.loaded_name(plugin) if discovery is not None else None
    return known if known is not None else type(plugin).__qualname__


class RunPlugins:
    """The experiment's plugins and the strategy chosen for one run.

    Each is registered with pluggy under its name, with ``#2``, ``#3`` … for
    repeats: a strategy loaded by name under its entry-point name, any other
    plugin under its class name. Which entry point names an object's class is
    found only when someone asks (``name_of``): reading package metadata
    costs a fresh process tens of milliseconds, which a run whose strategy
    object answers never needs to pay. pluggy calls the most recently registered implementation
    first, so the experiment's plugins are registered last to first and the
    chosen strategy after them. Invalid plugins (an unknown hook name, a
    wrong argument name, a wrapper around ``run_experiment_loop``, a chosen
    strategy that implements no strategy hook) are refused here, before any
    work.
    """

    def __init__(self, plugins: Sequence[object], chosen: tuple[object, str] | None = None):
        self.manager = new_plugin_manager()
        self.experiment_plugins = list(plugins)
        self.chosen: object | None = chosen[0] if chosen is not None else None
        self.chosen_from: str | None = chosen[1] if chosen is not None else None
        self._names: dict[int, str] = {}
        for plugin in reversed(self.experiment_plugins):
            self.register(plugin)
        if self.chosen is not None:
            if self.manager.is_registered(self.chosen):  # also an experiment plugin: it must still come first
                self.manager.unregister(self.chosen)
            self.register(self.chosen)
        try:
            self.manager.check_pending()
        except pluggy.PluginValidationError as exc:
            from crystallize_core.discovery import describe  # package metadata: on refusals only

            raise ConfigurationError(
                f"plugin {describe(exc.plugin)} implements a hook Crystallize does not define: {exc}. "
                "The hooks are listed in crystallize_core.hookspecs."
            ) from exc
        if self.chosen is not None and not self.implements(self.chosen, "run_experiment_loop"):
            from crystallize_core.discovery import describe  # package metadata: on refusals only

            raise ConfigurationError(
                f"{describe(self.chosen)}, chosen as the strategy by {self.chosen_from}, implements no "
                "run_experiment_loop hook: it cannot run an experiment. Choose a strategy "
                "(`crystallize strategies` lists them), or add it to Experiment(plugins=[...]) instead"
            )

    def register(self, plugin: object) -> None:
        """Register ``plugin`` under its name; refuse it if pluggy does."""
        name = registration_name(plugin)
        unique, repeat = name, 1
        while self.manager.has_plugin(unique):
            repeat += 1
            unique = f"{name}#{repeat}"
        try:
            self.manager.register(plugin, name=unique)
        except (ValueError, pluggy.PluginValidationError) as exc:
            from crystallize_core.discovery import describe  # package metadata: on refusals only

            raise ConfigurationError(f"plugin {describe(plugin)} cannot be registered: {exc}") from exc
        for impl in self.manager.hook.run_experiment_loop.get_hookimpls():
            if impl.plugin is plugin and (impl.hookwrapper or impl.wrapper):
                from crystallize_core.discovery import describe  # package metadata: on refusals only

                self.manager.unregister(plugin)
                raise ConfigurationError(
                    f"plugin {describe(plugin)} wraps run_experiment_loop, which is not supported: "
                    "use the before_run and after_run hooks instead"
                )

    @property
    def hook(self) -> pluggy.HookRelay:
        return self.manager.hook

    def name_of(self, plugin: object) -> str:
        """The name of ``plugin``: its entry point's name where an entry point
        names its class (package metadata is read the first time), else the
        class name it is registered under."""
        name = self._names.get(id(plugin))
        if name is None:
            from crystallize_core.discovery import identify  # package metadata: when a name is asked

            name = self._names[id(plugin)] = identify(plugin)[0]
        return name

    def implements(self, plugin: object, hook: str) -> bool:
        return any(impl.plugin is plugin for impl in getattr(self.manager.hook, hook).get_hookimpls())

    def strategies(self) -> list[pluggy.HookImpl]:
        """The ``run_experiment_loop`` implementations, in the order they are asked."""
        return list(reversed(self.manager.hook.run_experiment_loop.get_hookimpls()))

    def replicate_plugins(self) -> list[object]:
        """The plugins that implement a replicate-level hook, experiment's first."""
        candidates = [*self.experiment_plugins, self.chosen]
        taking_part = [p for p in candidates if p is not None and any(self.implements(p, h) for h in REPLICATE_HOOKS)]
        return list({id(p): p for p in taking_part}.values())
