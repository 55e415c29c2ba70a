"""A journal of every change a patch makes, so that it can be undone exactly.

Methods never mutate a model directly: they ask the journal to register a diffusers hook, add a torch
hook, or set an attribute, and the journal records how to take it back. `rollback()` undoes the changes
in reverse order. The same call serves a failed patch (nothing stays half-applied) and `unpatch()` (the
object is left as it was found: no hook, registry, processor or instance attribute remains).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook

from . import compat

_MISSING = object()


class Journal:
    """Records reversible changes. Use as `with Journal() as j: ...`: an exception rolls everything back."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []
        self.closed = False

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.rollback()

    def __len__(self) -> int:
        return len(self._undo)

    def set_attr(self, obj: Any, name: str, value: Any) -> None:
        """Set an instance attribute; undo restores the previous instance value or removes it."""
        previous = obj.__dict__.get(name, _MISSING)
        setattr(obj, name, value)

        def undo() -> None:
            if previous is _MISSING:
                obj.__dict__.pop(name, None)
            else:
                obj.__dict__[name] = previous

        self._undo.append(undo)

    def add_model_hook(self, module: torch.nn.Module, hook: ModelHook, name: str) -> None:
        """Register a diffusers `ModelHook` on `module` through its `HookRegistry`.

        Undo removes the hook and, when the registry is left empty, also the registry and the instance
        `forward` attribute if accel was the one that introduced them. When another library wrapped the
        module's `forward` after accel (accelerate's offload hooks, installed after patching), its wrapper
        stays outermost and is pointed at what lies below accel's hook.
        """
        had_registry = compat.registry_of(module) is not None
        previous_forward = module.__dict__.get("forward", _MISSING)
        registry = HookRegistry.check_if_exists_or_initialize(module)
        try:
            registry.register_hook(hook, name)
        except BaseException:
            if not had_registry and not registry.hooks:
                compat.drop_registry(module)
            raise
        installed = module.__dict__.get("forward")

        def undo() -> None:
            outer = module.__dict__.get("forward")
            registry.remove_hook(name, recurse=False)
            below = module.__dict__.get("forward")
            if outer is not installed and below is not outer:
                # the registry put what was below accel's hook over another library's later wrapper
                compat.keep_outer_wrapper(module, outer, installed, below)
            elif not registry.hooks:
                if previous_forward is _MISSING:
                    module.__dict__.pop("forward", None)
                else:
                    module.__dict__["forward"] = previous_forward
            if not registry.hooks and not had_registry:
                compat.drop_registry(module)

        self._undo.append(undo)

    def add_torch_hook(self, handle: torch.utils.hooks.RemovableHandle) -> None:
        """Take ownership of a handle from `register_forward_(pre_)hook`."""
        self._undo.append(handle.remove)

    def call_on_undo(self, fn: Callable[[], None]) -> None:
        """Run `fn` on rollback (for changes the journal has no dedicated entry for)."""
        self._undo.append(fn)

    def invalidate_hook_caches(self, root: torch.nn.Module) -> None:
        """Mark diffusers' child-registry caches under `root` stale, now and again on undo."""
        compat.invalidate_child_registries(root)
        self._undo.append(lambda: compat.invalidate_child_registries(root))

    def rollback(self) -> None:
        """Undo every change, newest first. Safe to call twice."""
        errors: list[BaseException] = []
        while self._undo:
            undo = self._undo.pop()
            try:
                undo()
            except BaseException as err:  # keep undoing the rest, then report
                errors.append(err)
        self.closed = True
        if errors:
            raise RuntimeError(f"accel: {len(errors)} change(s) could not be undone: {errors[0]!r}") from errors[0]
