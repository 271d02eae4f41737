"""When repeated faults of our own code stop the engine for good: a pure rule.

The engine thread catches everything at one boundary (see
:mod:`device_sdk.engine.supervision`). A fault of the link or of what a hub
sent is part of normal life: the link drops and recovery goes on. A fault in
the application's callbacks is contained where they run. A fault in device_sdk's
own code (or in a part plugged into it, such as a custom outbox) restarts the
link, because a fresh link rebuilds every piece of per-link state from the
outbox; but if it keeps happening, restarting is a loop that hides a broken
device. :class:`FaultLog` says when to stop instead: ``max_faults`` internal
faults within ``window`` seconds.

Why stopping is right then: a stopped engine is *visible* (EngineFailed on
every call, the status file, the Prometheus gauge, a systemd watchdog that is
no longer fed), and the process restart that follows loses nothing thanks to
the durable outbox. A device that silently loops is worse than one that restarts.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from device_sdk.errors import ConfigError


@dataclass(frozen=True, slots=True, kw_only=True)
class SupervisionPolicy:
    """How many internal faults within how many seconds make the engine stop for good."""

    max_faults: int = 5
    window: float = 600.0

    def __post_init__(self) -> None:
        faults = self.max_faults
        if isinstance(faults, bool) or not isinstance(faults, int) or not 1 <= faults <= 1000:
            raise ConfigError("supervision.max_faults", faults, "an integer from 1 to 1000")
        window = self.window
        if isinstance(window, bool) or not isinstance(window, int | float):
            raise ConfigError("supervision.window", window, "seconds > 0, finite")
        if not 0 < window < float("inf"):
            raise ConfigError("supervision.window", window, "seconds > 0, finite")


class FaultLog:
    """The recent internal faults; ``record`` says whether the engine must stop."""

    def __init__(self, policy: SupervisionPolicy) -> None:
        self._policy = policy
        self._times: deque[float] = deque(maxlen=policy.max_faults)

    def record(self, now: float) -> bool:
        """One more fault at ``now``. True when ``max_faults`` fell within ``window``."""
        self._times.append(now)
        full = len(self._times) == self._policy.max_faults
        return full and now - self._times[0] <= self._policy.window

    @property
    def policy(self) -> SupervisionPolicy:
        return self._policy

    @property
    def recent(self) -> int:
        """Faults remembered (at most ``max_faults``)."""
        return len(self._times)
