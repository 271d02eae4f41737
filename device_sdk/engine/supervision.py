"""Where application callbacks that run on the engine thread report their faults.

Most application code runs on the callback thread (:mod:`.dispatch`), which
contains and counts its faults. One kind runs on the engine thread itself:
``PublishHandle.add_done_callback`` callbacks, called as the PUBACK is handled,
deep inside paho's read loop. A fault there must not unwind through paho and
end the engine thread, and it is the application's fault, not the link's: the
handle logs it with its traceback and reports it here, to the engine whose
thread is running, which counts it. The engine's own loop boundary is in
:meth:`device_sdk.engine.recovery.Engine._supervised`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

FaultSink = Callable[[BaseException], None]

_local = threading.local()


@contextlib.contextmanager
def handle_faults_reported_to(sink: FaultSink) -> Iterator[None]:
    """While inside, faults of handle callbacks on this thread are reported to ``sink``."""
    previous = getattr(_local, "sink", None)
    _local.sink = sink
    try:
        yield
    finally:
        _local.sink = previous


def report_callback_fault(error: BaseException) -> None:
    """Tell the engine running on this thread, if any, that an application callback raised."""
    sink: FaultSink | None = getattr(_local, "sink", None)
    if sink is not None:
        with contextlib.suppress(Exception):
            sink(error)
