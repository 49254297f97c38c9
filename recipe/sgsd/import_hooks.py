"""Registrations into verl modules that are expensive to import, applied when verl imports
them (in whichever process), before any caller can look them up: the CPU backend's
engines and rollout, the plugin's LR schedule."""

from __future__ import annotations

import importlib.abc
import sys
import types
from collections.abc import Callable

__all__ = ["PostImportHooks", "post_import_hooks"]


class PostImportHooks(importlib.abc.MetaPathFinder):
    """Run callbacks right after a named module has executed (once per module).

    Registering into verl's FSDP engine or rollout registries requires those modules,
    which take seconds to import; a hook registers when (and in whichever process)
    verl itself imports them, and before any caller can look the registry up.
    """

    def __init__(self) -> None:
        self._callbacks: dict[str, list[Callable[[types.ModuleType], None]]] = {}

    def add(self, module_name: str, callback: Callable[[types.ModuleType], None]) -> None:
        module = sys.modules.get(module_name)
        if module is not None and getattr(module, "__spec__", None) is not None:
            callback(module)  # already imported: apply now
            return
        self._callbacks.setdefault(module_name, []).append(callback)
        if self not in sys.meta_path:
            sys.meta_path.insert(0, self)

    def find_spec(self, fullname, path, target=None):
        callbacks = self._callbacks.get(fullname)
        if not callbacks:
            return None
        spec = None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        del self._callbacks[fullname]
        exec_module = spec.loader.exec_module

        def exec_then_hook(module):
            exec_module(module)
            for callback in callbacks:
                callback(module)

        spec.loader.exec_module = exec_then_hook  # this loader instance serves only this module
        return spec


post_import_hooks = PostImportHooks()  # the one instance every registration uses
