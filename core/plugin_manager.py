"""The plugin manager: loads plugins, fills registries, calls hooks with blame.

A fresh :class:`PluginManager` is built per run (no module-level state). Plugins
come from the ``tuneforge.plugins`` entry-point group; built-ins are declared in
our own ``pyproject.toml`` exactly like a third-party package declares its own.

Environment variables:

* ``TUNEFORGE_LOAD_PLUGINS=a,b`` load only these entry points (empty: load none).
* ``TUNEFORGE_DISABLE_PLUGINS=a,b`` skip these entry points.
* ``TUNEFORGE_TRACE_HOOKS=1`` log which plugin answered which hook.

Hooks are called through pluggy (so ``tryfirst``/``trylast``, hook wrappers and
monitoring apply). An exception escaping a hook, or (inside :meth:`PluginManager.blaming`)
any code of a plugin's task, adapter or tracker, is re-raised as a :class:`PluginError`
naming the plugin; ``TUNEFORGE_TRACEBACK=1`` makes the CLI print the traceback.
Registering a plugin object that is already registered (a module the entry point
loaded, listed again in ``plugins:`` or passed to ``tf_run``) is a no-op.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from tuneforge import hookspecs
from tuneforge.errors import PluginError, TuneforgeError, did_you_mean
from tuneforge.registry import Registry

ENTRY_POINT_GROUP = "tuneforge.plugins"
log = logging.getLogger(__name__)

#: hook name -> registry attribute filled by it (declared in :mod:`tuneforge.hookspecs`)
COMPOSITION_HOOKS = {name: hook.registry for name, hook in hookspecs.COMPOSITION_HOOKS.items()}


@dataclass
class PluginInfo:
    name: str
    module: str
    distribution: str | None = None
    version: str | None = None
    hooks: list[str] = field(default_factory=list)


def _adder(registry: Registry[Any], plugin: str) -> hookspecs.Register[Any]:
    """The ``register`` callback handed to one plugin's composition hook."""

    def register(name: str, obj: Any) -> None:
        registry.add(name, obj, plugin=plugin)

    return register


def _env_list(name: str) -> list[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return [item.strip() for item in value.split(",") if item.strip()]


class PluginManager:
    """A typed wrapper around :class:`pluggy.PluginManager` with tuneforge's registries."""

    def __init__(self) -> None:
        self._pm = pluggy.PluginManager(hookspecs.PROJECT)
        self._pm.add_hookspecs(hookspecs)
        self._info: dict[str, PluginInfo] = {}
        self._registries_built = False
        self.registries: dict[str, Registry[Any]] = {
            hook.registry: Registry(hook.kind) for hook in hookspecs.COMPOSITION_HOOKS.values()
        }
        if os.environ.get("TUNEFORGE_TRACE_HOOKS", "") not in ("", "0"):
            self._pm.add_hookcall_monitoring(_trace_call, lambda *_: None)

    def __getattr__(self, name: str) -> Registry[Any]:
        """The registry a composition hook fills: ``pm.tasks``, ``pm.metrics``, ..."""
        registries = self.__dict__.get("registries", {})
        if name in registries:
            return registries[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # -- loading ---------------------------------------------------------------

    @classmethod
    def default(cls, extra_modules: Iterable[str] = ()) -> PluginManager:
        """Entry-point plugins (filtered by the env vars) plus ``extra_modules``."""
        pm = cls()
        pm.load_entry_points()
        for module in extra_modules:
            pm.load_module(module)
        return pm

    def load_entry_points(self) -> None:
        only = _env_list("TUNEFORGE_LOAD_PLUGINS")
        disabled = set(_env_list("TUNEFORGE_DISABLE_PLUGINS") or [])
        found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
        for name in only or []:
            if name not in found:
                raise PluginError(
                    f"TUNEFORGE_LOAD_PLUGINS names '{name}'{did_you_mean(name, found)}, which is not an "
                    f"installed plugin; installed: {', '.join(sorted(found)) or 'none'}"
                )
        for name, ep in sorted(found.items()):
            if (only is not None and name not in only) or name in disabled:
                continue
            self._load_entry_point(ep)

    def _load_entry_point(self, ep: EntryPoint) -> None:
        try:
            obj = ep.load()
        except Exception as exc:
            raise PluginError(f"plugin '{ep.name}' ({ep.value}) failed to import: {exc}") from exc
        dist = getattr(ep, "dist", None)
        self.register(
            obj,
            name=ep.name,
            distribution=dist.metadata["Name"] if dist is not None else None,
            version=dist.version if dist is not None else None,
        )

    def load_module(self, dotted: str) -> None:
        """Register a plugin module by import path (the config's ``plugins:`` list)."""
        try:
            module = importlib.import_module(dotted)
        except ImportError as exc:
            raise PluginError(f"plugin module '{dotted}' cannot be imported: {exc}") from exc
        self.register(module, name=dotted)

    def register(
        self,
        plugin: ModuleType | object,
        name: str | None = None,
        *,
        distribution: str | None = None,
        version: str | None = None,
    ) -> str:
        """Register a plugin object or module; returns the name it is known by.

        A plugin already registered (under any name) is left as it is, so a module that its
        entry point loaded may be listed again in ``plugins:`` or passed to ``tf_run``."""
        if self._pm.is_registered(plugin):
            return str(self._pm.get_name(plugin))
        if self._registries_built:
            raise PluginError(
                f"plugin '{name or _default_name(plugin)}' is registered after the registries were built; "
                "register every plugin before the first run or build_registries()"
            )
        name = name or _default_name(plugin)
        if self._pm.has_plugin(name):
            raise PluginError(f"a plugin named '{name}' is already registered; register this one under another name")
        try:
            self._pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            detail = " ".join(str(exc).split())
            raise PluginError(f"plugin '{name}' is invalid: {detail}") from exc
        hooks = sorted(
            hc.name for hc in (self._pm.get_hookcallers(plugin) or []) if hc.name.startswith("tf_")
        )
        module = plugin.__name__ if isinstance(plugin, ModuleType) else type(plugin).__module__
        self._info[name] = PluginInfo(name, module, distribution, version, hooks)
        return name

    def fork(self) -> PluginManager:
        """A new manager with the same plugins registered and its registries not built: the
        fresh manager each run gets, keeping what a caller (or a test) registered."""
        new = PluginManager()
        for name, plugin in self._pm.list_name_plugin():
            info = self._info.get(name)
            if info is not None:
                new.register(plugin, name=name, distribution=info.distribution, version=info.version)
        return new

    def unregister(self, name: str) -> None:
        self._pm.unregister(name=name)
        self._info.pop(name, None)

    @property
    def plugins(self) -> list[PluginInfo]:
        return [self._info[n] for n in sorted(self._info)]

    # -- registries ------------------------------------------------------------

    def build_registries(self) -> PluginManager:
        """Run every composition hook once. Idempotent.

        Each implementation is called through pluggy on its own (its plugin's subset of the
        hook), so the ``register`` callback it gets records which plugin registered what."""
        if self._registries_built:
            return self
        for hook_name, attr in COMPOSITION_HOOKS.items():
            caller = getattr(self._pm.hook, hook_name)
            impls = [impl for impl in caller.get_hookimpls() if not impl.hookwrapper and not impl.wrapper]
            for impl in reversed(impls):  # pluggy's calling order: the last registered first
                others = [other.plugin for other in impls if other is not impl]
                subset = self._pm.subset_hook_caller(hook_name, remove_plugins=others)
                self._call(subset, hook_name, {"register": _adder(self.registries[attr], impl.plugin_name)})
        self._registries_built = True
        return self

    # -- calling hooks -----------------------------------------------------------

    def call(self, hook_name: str, **kwargs: Any) -> list[Any]:
        """Call an observer hook on every plugin (through pluggy); errors name the plugin."""
        if hook_name not in self.hook_names():
            raise PluginError(f"unknown hook '{hook_name}'{did_you_mean(hook_name, self.hook_names())}")
        return list(self._call(getattr(self._pm.hook, hook_name), hook_name, kwargs))

    def _call(self, caller: pluggy.HookCaller, hook_name: str, kwargs: dict[str, Any]) -> Any:
        try:
            return caller(**kwargs)
        except TuneforgeError as exc:
            plugin = _raising_plugin(exc, caller)
            if plugin is None or (isinstance(exc, PluginError) and f"plugin '{plugin}'" in str(exc)):
                raise
            raise type(exc)(f"plugin '{plugin}' ({hook_name}): {exc}") from exc
        except Exception as exc:
            plugin = _raising_plugin(exc, caller)
            if plugin is None:
                raise
            raise PluginError(f"plugin '{plugin}' raised {type(exc).__name__} in {hook_name}: {exc}") from exc

    # -- blame for plugin code outside hooks --------------------------------------

    def _plugin_modules(self) -> dict[str, str]:
        """Module name -> plugin name, for plugin modules and the modules of what they registered."""
        owners = {info.module: info.name for info in self._info.values()}
        for registry in self.registries.values():
            for entry in registry.entries():
                module = getattr(entry.obj, "__module__", None)
                if isinstance(module, str) and module not in owners and entry.plugin in self._info:
                    owners[module] = entry.plugin
        return owners

    def blame(self, exc: BaseException) -> PluginError | None:
        """A :class:`PluginError` naming the plugin whose code raised ``exc`` (the innermost
        plugin frame of its traceback), or None when no plugin code is on it."""
        files = {
            getattr(sys.modules.get(module), "__file__", None): plugin for module, plugin in self._plugin_modules().items()
        }
        for frame in reversed(traceback.extract_tb(exc.__traceback__)):
            plugin = files.get(frame.filename)
            if plugin is not None:
                where = f"{frame.name} ({Path(frame.filename).name}:{frame.lineno})"
                return PluginError(
                    f"plugin '{plugin}' raised {type(exc).__name__} in {where}: {exc}. This is a bug in the "
                    f"plugin or bad input it did not check; set TUNEFORGE_TRACEBACK=1 for the traceback, or "
                    f"disable it with TUNEFORGE_DISABLE_PLUGINS={plugin}"
                )
        return None

    @contextlib.contextmanager
    def blaming(self) -> Iterator[None]:
        """Re-raise an exception from plugin code run inside this block as a :class:`PluginError`."""
        try:
            yield
        except TuneforgeError:
            raise
        except Exception as exc:
            culprit = self.blame(exc)
            if culprit is None:
                raise
            raise culprit from exc

    @staticmethod
    def hook_names() -> list[str]:
        return sorted([*hookspecs.COMPOSITION_HOOKS, *hookspecs.OBSERVER_HOOKS])


def _trace_call(hook_name: str, impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, Any]) -> None:
    for impl in reversed(impls):  # the order pluggy calls them in
        log.info("hook %s -> plugin %s", hook_name, impl.plugin_name)


def _default_name(plugin: object) -> str:
    return getattr(plugin, "__name__", None) or type(plugin).__name__


def _raising_plugin(exc: BaseException, caller: pluggy.HookCaller) -> str | None:
    """The plugin whose implementation of ``caller``'s hook raised ``exc``: the innermost frame
    of the traceback that runs one of its implementations (a hook wrapper that the exception
    passed through is further out), or None when pluggy itself raised."""
    owners = {getattr(impl.function, "__code__", None): impl.plugin_name for impl in caller.get_hookimpls()}
    plugin = None
    tb = exc.__traceback__
    while tb is not None:
        plugin = owners.get(tb.tb_frame.f_code, plugin)
        tb = tb.tb_next
    return plugin
