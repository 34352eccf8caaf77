"""The base of proxytune's typed results: frozen dataclasses whose dict and JSON forms are generated.

Every result that crosses a layer (a prediction, a tuning run's stages, its cost) is a frozen dataclass
deriving from :class:`Record`. Code reads attributes; :meth:`Record.to_dict` gives the plain form that
``--json`` prints and the run files store, generated from the fields so the two cannot disagree.

In 0.1.0 these results were plain dicts, and user code may still subscript them
(``result.prediction["lr"]``). :class:`Record` keeps that working for one more release (removed in 0.3.0):
subscripting reads the entry (a nested result stays typed) and warns (:class:`DeprecationWarning`); use the
attribute instead.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator
from typing import Any


def plain(value: Any) -> Any:
    """``value`` with every :class:`Record` inside replaced by its dict form, tuples by lists."""
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


class Record:
    """Mixin of the typed results: a generated ``to_dict`` and, for one release, read-only subscripting."""

    def fields_for_dict(self) -> dict[str, Any]:
        """The entries of the dict form, in order, before :func:`plain`; a subclass whose dict form differs
        from its fields (an entry present only when set, a derived entry) overrides this."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        """The plain form (dicts, lists, numbers, strings; other objects as they are) that JSON output uses."""
        return {k: plain(v) for k, v in self.fields_for_dict().items()}

    # ---- deprecated dict access, kept for one release
    def _entries(self) -> dict[str, Any]:
        """The old dict's entries: each field as the object it is (an optimum stays an Optimum, a nested result
        stays typed and subscriptable), plus the derived entries of the dict form."""
        warnings.warn(f"subscripting a {type(self).__name__} is deprecated and goes in 0.3.0: read its attributes "
                      "(or call .to_dict())", DeprecationWarning, stacklevel=3)
        raw = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        return {k: raw.get(k, v) for k, v in self.fields_for_dict().items()}

    def __getitem__(self, key: str) -> Any:
        return self._entries()[key]

    def get(self, key: str, default: Any = None) -> Any:
        """Deprecated dict access: the entry ``key``, or ``default``."""
        return self._entries().get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._entries()

    def keys(self) -> Iterator[str]:
        """Deprecated dict access: the keys of the dict form."""
        return iter(self._entries())
