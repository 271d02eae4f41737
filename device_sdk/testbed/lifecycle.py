"""What every testbed part does as a context manager: start on entry, stop on exit."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class StartsInContext:
    """Mixin: ``with part:`` starts it (unless it is already running) and always stops it.

    A part supplies ``start()``, ``stop()`` and, when it can be started before
    the ``with``, ``_is_started()``.
    """

    def start(self) -> object:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def _is_started(self) -> bool:
        return False

    def __enter__(self) -> Self:
        if not self._is_started():
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
