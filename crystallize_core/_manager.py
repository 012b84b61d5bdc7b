"""The plugin manager of one run: which plugins take part, in which order."""

from __future__ import annotations

from collections.abc import Sequence

import pluggy

from crystallize_core import hookspecs
from crystallize_core.discovery import describe
from crystallize_core.errors import ConfigurationError


def new_plugin_manager() -> pluggy.PluginManager:
    """A plugin manager that knows the Crystallize hook specifications."""
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    return manager


def plugin_manager_for_run(plugins: Sequence[object], named: object | None, fallback: object | None):
    """Register the plugins of one run so that pluggy asks them in selection order.

    pluggy calls the most recently registered implementation first, so the
    fallback is registered first and the experiment's first plugin last.
    Invalid plugins (an unknown hook name, a wrong argument name, a wrapper
    around ``run_experiment_loop``) are refused here, before any work.
    """
    manager = new_plugin_manager()
    ordered = [p for p in (fallback, named) if p is not None] + list(reversed(plugins))
    for plugin in ordered:
        try:
            manager.register(plugin, name=f"{type(plugin).__qualname__}@{id(plugin):x}")
        except (ValueError, pluggy.PluginValidationError) as exc:
            raise ConfigurationError(f"plugin {describe(plugin)} cannot be registered: {exc}") from exc
    try:
        manager.check_pending()
    except pluggy.PluginValidationError as exc:
        raise ConfigurationError(
            f"plugin {describe(exc.plugin)} implements a hook Crystallize does not define: {exc}. "
            "The hooks are listed in crystallize_core.hookspecs."
        ) from exc
    for impl in manager.hook.run_experiment_loop.get_hookimpls():
        if impl.hookwrapper or impl.wrapper:
            raise ConfigurationError(
                f"plugin {describe(impl.plugin)} wraps run_experiment_loop, which is not supported: "
                "use the before_run and after_run hooks instead"
            )
    return manager
