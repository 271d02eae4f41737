"""The synchronous face: :class:`DeviceClient`.

A thin face over :class:`~device_sdk.engine.Engine`, which holds the whole
recovery path. The asyncio face wraps the same engine.
"""

from __future__ import annotations

from types import TracebackType

from device_sdk.adapters.resolver import Resolver
from device_sdk.config import ClientConfig, check_wait
from device_sdk.core.topics import check_qos, check_topic_filter, check_topic_name, encode_utf8
from device_sdk.engine import Engine, EventCallback, MessageHandler
from device_sdk.errors import ConfigError, DeviceSDKError
from device_sdk.events import Event
from device_sdk.metrics import Metrics
from device_sdk.outbox import Outbox, PublishHandle
from device_sdk.streams import DEFAULT_MAX_QUEUED, BlockingStream, Fanout


class DeviceClient:
    """A device's connection to its hubs, kept alive through outages and failovers.

    Use it as a context manager::

        with DeviceClient(config) as client:          # connects
            client.publish("telemetry", b"21.5").wait(10)

    ``publish()`` never blocks on the network: the message goes to the outbox
    and is sent, and sent again after any reconnect, until its PUBACK arrives.
    """

    def __init__(
        self,
        config: ClientConfig,
        *,
        on_event: EventCallback | None = None,
        resolver: Resolver | None = None,
        outbox: Outbox | None = None,
    ) -> None:
        if not isinstance(config, ClientConfig):
            raise ConfigError("config", config, "a ClientConfig")
        if on_event is not None and not callable(on_event):
            raise ConfigError("on_event", on_event, "a callable taking an event, or None")
        _check_plugin("outbox", outbox, _OUTBOX_METHODS)
        _check_plugin("resolver", resolver, ("resolve_fresh",))
        self._engine = Engine(config, resolver=resolver, outbox=outbox)
        # One engine listener feeds every events() iterator (see device_sdk.streams).
        self._events: Fanout[Event] = Fanout()
        self._engine.add_listener(self._events.send)
        if on_event is not None:
            self._engine.add_listener(on_event)

    @property
    def config(self) -> ClientConfig:
        return self._engine.config

    def connect(self, timeout: float | None = 30.0) -> None:
        """Start the engine and wait until the first hub accepts us.

        Raises :class:`~device_sdk.errors.NotConnected` after ``timeout`` (the
        engine keeps trying), or :class:`~device_sdk.errors.RecoveryFailed` when
        the retry policy gives up. Both carry every attempt's cause.
        """
        check_wait("timeout", timeout, none_ok=True)  # before the engine starts
        self._engine.start()
        self._engine.wait_connected(timeout)

    def publish(self, topic: str, payload: bytes | str, qos: int = 1) -> PublishHandle:
        """Queue a message; returns a handle to wait on for its PUBACK.

        ``payload`` is bytes (or a bytearray or memoryview), or str sent as UTF-8.
        A topic or payload MQTT cannot carry raises ConfigError here, never later.
        """
        check_topic_name(topic)
        check_qos(qos)
        return self._engine.publish(topic, _payload_bytes(payload), qos)

    def subscribe(self, topic_filter: str, handler: MessageHandler, qos: int = 1) -> None:
        """Call ``handler(topic, payload)`` for every matching message, across reconnects."""
        check_topic_filter(topic_filter)
        check_qos(qos)
        if not callable(handler):
            raise ConfigError("handler", handler, "a callable taking (topic, payload)")
        self._engine.subscribe(topic_filter, handler, qos)

    def add_event_listener(self, callback: EventCallback) -> None:
        """Also call ``callback(event)`` for every connection event."""
        if not callable(callback):
            raise ConfigError("callback", callback, "a callable taking an event")
        self._engine.add_listener(callback)

    def events(
        self, timeout: float | None = None, *, max_queued: int = DEFAULT_MAX_QUEUED
    ) -> BlockingStream[Event]:
        """Iterate over connection events from now on::

            for event in client.events(timeout=30):
                print(event.describe())

        The iteration ends when the client closes (after the events before it),
        or after ``timeout`` seconds without an event (``None``: never). Create
        the iterator before ``connect()`` to see the first attempts too. A
        reader more than ``max_queued`` events behind loses the oldest ones,
        counted in the iterator's ``dropped``; the engine never waits for it.
        """
        check_wait("timeout", timeout, none_ok=True)
        label = f"events of {self._engine.config.client_id}"
        return BlockingStream(self._events, timeout=timeout, max_items=max_queued, label=label)

    def metrics(self) -> Metrics:
        return self._engine.metrics()

    @property
    def healthy(self) -> bool:
        """True while the engine runs (connected or recovering); False once it stopped
        for good (see :attr:`failure`) or the client was closed."""
        return self._engine.failure is None and not self._engine.finished

    @property
    def failure(self) -> DeviceSDKError | None:
        """Why the client stopped for good, or None: :class:`~device_sdk.errors.EngineFailed`
        after repeated internal faults, or RecoveryFailed when the retry policy gave up.
        Every call then raises it; a supervisor should restart the process."""
        return self._engine.failure

    def close(self, timeout: float = 5.0) -> None:
        """Disconnect and stop every thread. Unacknowledged handles raise ClientClosed."""
        check_wait("timeout", timeout, none_ok=False)  # before anything is stopped
        self._engine.close(timeout)
        self._events.close()  # after the engine: its last events reach the iterators first

    def __enter__(self) -> DeviceClient:
        try:
            self.connect()
        except BaseException:
            self.close()  # __exit__ will not run: do not leave the engine behind
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# What the engine calls on every outbox (Outbox is a Protocol, so checked by shape).
_OUTBOX_METHODS = ("put", "take_unsent", "ack", "rewind", "depth", "dropped", "close")


def _check_plugin(name: str, plugin: object, methods: tuple[str, ...]) -> None:
    """A plugged-in part lacking a method fails here, not later on the engine thread."""
    if plugin is None:
        return
    missing = [method for method in methods if not callable(getattr(plugin, method, None))]
    if missing:
        raise ConfigError(name, plugin, f"None or an object with the methods {', '.join(methods)}")


def _payload_bytes(payload: object) -> bytes:
    """The bytes of a payload; anything else than bytes-like or str is a ConfigError.

    ``bytes(payload)`` alone would also take an int, and allocate that many zeros.
    """
    if isinstance(payload, str):
        return encode_utf8("payload", payload)
    if isinstance(payload, bytes | bytearray | memoryview):
        try:
            return bytes(payload)
        except ValueError as exc:  # a released memoryview
            raise ConfigError("payload", payload, "a readable bytes-like object") from exc
    raise ConfigError("payload", type(payload), "bytes, bytearray, memoryview or str")
