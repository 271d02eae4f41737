"""Side tasks: one per kind at a time, results posted back, and a kind free again by the
time its result is applied."""

from __future__ import annotations

import threading
from collections.abc import Callable

from device_sdk.engine.side_tasks import SideTasks


def test_a_done_callback_may_start_the_next_task_of_its_kind() -> None:
    # An engine that applies the result at once (here: on the posting thread itself)
    # starts the next run from the callback, as DPS does after a failed run. The kind
    # must already be free then, or the retry is refused and never happens.
    finished = threading.Event()
    started_again: list[bool] = []
    runs: list[int] = []

    def post(callback: Callable[[], None]) -> None:
        callback()

    tasks = SideTasks(post, "test")

    def done(result: int) -> None:
        runs.append(result)
        if len(runs) < 3:
            started_again.append(tasks.start("dps", lambda: len(runs), done))
        else:
            finished.set()

    assert tasks.start("dps", lambda: 0, done)
    assert finished.wait(5.0)
    tasks.join(5.0)
    # Three runs means both restarts were accepted (a refused start runs nothing).
    assert runs == [0, 1, 2]
    assert False not in started_again


def test_one_task_per_kind_at_a_time() -> None:
    release = threading.Event()
    posted: list[Callable[[], None]] = []
    tasks = SideTasks(posted.append, "test")
    assert tasks.start("probe", lambda: release.wait(5.0), lambda _r: None)
    assert not tasks.start("probe", lambda: True, lambda _r: None)
    assert tasks.start("concierge", lambda: True, lambda _r: None)  # another kind runs
    release.set()
    tasks.join(5.0)
    assert len(posted) == 2


def test_a_task_that_raises_posts_its_fault_to_be_raised_on_the_engine_thread() -> None:
    posted: list[Callable[[], None]] = []
    tasks = SideTasks(posted.append, "test")

    def boom() -> int:
        raise ValueError("broken")

    assert tasks.start("probe", boom, lambda _r: None)
    tasks.join(5.0)
    (report,) = posted
    try:
        report()
    except ValueError as exc:
        assert str(exc) == "broken"
    else:
        raise AssertionError("the fault was not raised again")
    assert tasks.start("probe", lambda: 1, lambda _r: None)  # the kind is free again
    tasks.join(5.0)
