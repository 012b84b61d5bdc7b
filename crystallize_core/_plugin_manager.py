"""pluggy's plugin manager for the Crystallize hooks, made cheap to build.

A run builds one for its plugins and each replicate function one for its
replicate hooks, in the driver and in every worker, so the cost of
registering plugins is paid often; this module keeps it small.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pluggy

from crystallize_core import hookspecs


class _PluginManager(pluggy.PluginManager):
    """pluggy's manager, remembering which attributes of a class are hooks.

    Every run registers its plugins with a new manager, and pluggy inspects
    each attribute of each plugin statically (``inspect.getattr_static``) to
    find its hooks: most of a short run's cost. A class's answer is kept, and
    asked again only for attributes an instance holds itself; modules and
    classes registered as plugins are inspected every time.
    """

    #: Answers by class, for at most ``MAX_CLASSES`` classes (a dict, not
    #: a weak one: importing weakref would cost a process's first run more).
    _class_answers: dict[type, dict[str, Any]] = {}
    _spec_answers: dict[str, Any] = {}
    MAX_CLASSES = 256

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        if isinstance(plugin, (type, ModuleType)) or name in _instance_dict(plugin):
            return super().parse_hookimpl_opts(plugin, name)
        answers = self._class_answers.get(type(plugin))
        if answers is None:
            if len(self._class_answers) >= self.MAX_CLASSES:  # classes made on the fly, as tests do
                self._class_answers.clear()
            answers = self._class_answers.setdefault(type(plugin), {})
        if name not in answers:
            answers[name] = super().parse_hookimpl_opts(plugin, name)
        opts = answers[name]
        return None if opts is None else dict(opts)  # pluggy normalizes the options in place

    def parse_hookspec_opts(self, module_or_class: Any, name: str) -> Any:
        if module_or_class is not hookspecs:
            return super().parse_hookspec_opts(module_or_class, name)
        if not hasattr(vars(hookspecs).get(name), _SPEC_MARKER):  # imports, classes: looked at cheaply
            return None
        if name not in self._spec_answers:
            self._spec_answers[name] = super().parse_hookspec_opts(module_or_class, name)
        opts = self._spec_answers[name]
        return None if opts is None else dict(opts)


_SPEC_MARKER = hookspecs.PROJECT_NAME + "_spec"


def _instance_dict(plugin: object) -> dict[str, Any]:
    try:
        found = object.__getattribute__(plugin, "__dict__")
    except AttributeError:
        return {}
    return found if isinstance(found, dict) else {}


def new_plugin_manager() -> pluggy.PluginManager:
    """A plugin manager that knows the Crystallize hook specifications."""
    manager = _PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    return manager
