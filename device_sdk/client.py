"""The synchronous face: :class:`DeviceClient`.

A thin face over :class:`~device_sdk.engine.Engine`, which holds the whole
recovery path. The asyncio face wraps the same engine.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace
from types import TracebackType
from typing import Literal, cast, overload

from device_sdk.adapters.resolver import Resolver
from device_sdk.config import ClientConfig, check_wait
from device_sdk.core.topics import check_qos, check_topic_filter, check_topic_name, encode_utf8
from device_sdk.engine import Engine, EventCallback, MessageHandler
from device_sdk.errors import ConfigError, DeviceSDKError
from device_sdk.events import Event
from device_sdk.message import Message, PublishProperties
from device_sdk.metrics import Metrics
from device_sdk.outbox import HIGHEST_PRIORITY, MAX_TTL, ROUTINE, Outbox, PublishHandle
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

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        qos: int = 1,
        *,
        retain: bool = False,
        properties: PublishProperties | None = None,
        ttl: float | None = None,
        priority: int = 0,
    ) -> PublishHandle:
        """Queue a message; returns a handle to wait on for its PUBACK.

        ``payload`` is bytes (or a bytearray or memoryview), or str sent as UTF-8.
        ``retain`` asks the hub to keep it for later subscribers (a hub that
        announced Retain Available = 0 fails the handle with RetainNotSupported).
        ``properties`` are MQTT 5 :class:`~device_sdk.message.PublishProperties`;
        MQTT 3.1.1 cannot carry them, so there they raise ConfigError.
        ``ttl`` (seconds) lets the message leave the outbox unsent once it is
        stale: its handle raises MessageExpired, and on MQTT 5 the hub is told
        the time it has left (Message Expiry Interval). A higher ``priority``
        drains before lower ones; order is kept within a priority.
        Anything MQTT cannot carry raises ConfigError here, never later.
        """
        check_topic_name(topic)
        check_qos(qos)
        data = _payload_bytes(payload)
        if retain is False and properties is None and ttl is None and priority == ROUTINE:
            return self._engine.publish(topic, data, qos)  # the common case, checked cheaply
        return self._engine.publish(
            topic,
            data,
            qos,
            retain=_checked_retain(retain),
            properties=self._checked_properties(properties, data),
            ttl=_checked_ttl(ttl),
            priority=_checked_priority(priority),
        )

    def _checked_properties(
        self, properties: PublishProperties | None, payload: bytes
    ) -> PublishProperties | None:
        """The properties to send (None when there are none), or ConfigError."""
        if properties is None:
            return None
        if not isinstance(properties, PublishProperties):
            raise ConfigError("properties", type(properties), "a PublishProperties or None")
        if properties.empty:
            return None
        config = self._engine.config
        if config.mqtt_version == "3.1.1":
            raise ConfigError(
                "properties",
                properties,
                "None: MQTT 3.1.1 cannot carry publish properties (use mqtt_version='5'); "
                "they are refused rather than dropped",
            )
        reserved = config.message_id_property
        if any(name == reserved for name, _value in properties.user_properties):
            raise ConfigError(
                "properties.user_properties",
                reserved,
                f"names other than {reserved!r}, which the SDK sets to the message id",
            )
        if properties.payload_format_utf8:
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ConfigError(
                    "payload", "<bytes>", "UTF-8 text, as properties.payload_format_utf8 says"
                ) from exc
        return properties

    @overload
    def subscribe(
        self,
        topic_filter: str,
        handler: MessageHandler,
        qos: int = 1,
        *,
        as_message: Literal[False] = False,
    ) -> None: ...

    @overload
    def subscribe(
        self,
        topic_filter: str,
        handler: Callable[[Message], None],
        qos: int = 1,
        *,
        as_message: Literal[True],
    ) -> None: ...

    def subscribe(
        self,
        topic_filter: str,
        handler: MessageHandler | Callable[[Message], None],
        qos: int = 1,
        *,
        as_message: bool = False,
    ) -> None:
        """Call ``handler(topic, payload)`` for every matching message, across reconnects.

        With ``as_message=True`` it is called as ``handler(message)`` with a
        :class:`~device_sdk.message.Message`: QoS, retain, the MQTT 5 properties
        (content type, response topic, correlation data, user properties, expiry)
        and the filter it matched. ``$share/{group}/{filter}`` subscribes as one
        of a group that shares the filter's messages. A QoS 1 message is
        acknowledged once every handler it matched returned (or raised), unless
        ``ClientConfig.command_ack`` is ``"on_receipt"``.
        """
        check_topic_filter(topic_filter)
        check_qos(qos)
        if not isinstance(as_message, bool):
            raise ConfigError("as_message", as_message, "True or False")
        if not callable(handler):
            shape = "(message)" if as_message else "(topic, payload)"
            raise ConfigError("handler", handler, f"a callable taking {shape}")
        if as_message:
            self._engine.subscribe(topic_filter, cast(Callable[[Message], None], handler), qos)
        else:
            self._engine.subscribe(
                topic_filter, _topic_and_payload(cast(MessageHandler, handler)), qos
            )

    def unsubscribe(self, topic_filter: str) -> None:
        """Stop ``topic_filter``'s subscription: at once when connected, and it is not
        restored after a reconnect or failover. Unknown filters are ignored."""
        check_topic_filter(topic_filter)
        self._engine.unsubscribe(topic_filter)

    def request(
        self,
        topic: str,
        payload: bytes | str,
        *,
        timeout: float,
        response_topic: str | None = None,
        properties: PublishProperties | None = None,
        qos: int = 1,
    ) -> Message:
        """Publish a request and wait for its response (MQTT 5 request/response).

        The request carries a Response Topic (by default ``{client_id}/responses``,
        subscribed once, at the first request) and a fresh Correlation Data; the
        first message carrying that correlation data is the response. Raises
        ``TimeoutError`` after ``timeout`` seconds (the request stays queued for
        the hub), ConfigError on MQTT 3.1.1, which has no request/response.
        """
        correlation, future = self._send_request(topic, payload, response_topic, properties, qos)
        check_wait("timeout", timeout, none_ok=False)
        try:
            return future.result(timeout)
        except TimeoutError:  # concurrent.futures' is the builtin since Python 3.11
            raise TimeoutError(
                f"no response to the request on {topic!r} within {timeout} s"
            ) from None
        finally:
            self._engine.forget_response(correlation)

    def _send_request(
        self,
        topic: str,
        payload: bytes | str,
        response_topic: str | None,
        properties: PublishProperties | None,
        qos: int,
    ) -> tuple[bytes, Future[Message]]:
        """Subscribe to the response topic if needed, then publish the request (both faces)."""
        config = self._engine.config
        if config.mqtt_version != "5":
            raise ConfigError(
                "mqtt_version",
                config.mqtt_version,
                "'5' for request() (MQTT 3.1.1 has no Response Topic or Correlation Data)",
            )
        if response_topic is None:
            response_topic = f"{config.client_id}/responses"
        check_topic_name(response_topic, field="response_topic")
        if properties is not None and not isinstance(properties, PublishProperties):
            raise ConfigError("properties", properties, "a PublishProperties or None")
        self._engine.subscribe_once(response_topic, _ignore_response)
        import secrets  # hmac and hashlib with it: only request() needs it

        correlation = secrets.token_bytes(16)
        future = self._engine.expect_response(correlation, response_topic)
        sent = replace(
            properties or PublishProperties(),
            response_topic=response_topic,
            correlation_data=correlation,
        )
        try:
            self.publish(topic, payload, qos, properties=sent)
        except BaseException:
            self._engine.forget_response(correlation)
            raise
        return correlation, future

    def reply(self, message: Message, payload: bytes | str, qos: int = 1) -> PublishHandle:
        """Publish ``payload`` as the response to ``message``: to its Response Topic,
        with its Correlation Data. ConfigError when it named no Response Topic."""
        if not isinstance(message, Message):
            raise ConfigError("message", message, "a Message a handler received")
        topic, properties = message.reply_properties()
        return self.publish(topic, payload, qos, properties=properties)

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


def _checked_retain(retain: object) -> bool:
    if not isinstance(retain, bool):
        raise ConfigError("retain", retain, "True or False")
    return retain


def _checked_ttl(ttl: object) -> float | None:
    """None (never expires) or a finite number of seconds above 0."""
    if ttl is None:
        return None
    if (
        not isinstance(ttl, int | float)
        or isinstance(ttl, bool)
        or not math.isfinite(ttl)
        or not 0 < ttl <= MAX_TTL
    ):
        raise ConfigError(
            "ttl", ttl, f"None or a finite number of seconds above 0, at most {MAX_TTL:.0f}"
        )
    return float(ttl)


def _checked_priority(priority: object) -> int:
    low, high = ROUTINE, HIGHEST_PRIORITY
    if not isinstance(priority, int) or isinstance(priority, bool) or not low <= priority <= high:
        raise ConfigError("priority", priority, f"an integer from {low} to {high} (higher first)")
    return priority


def _topic_and_payload(handler: MessageHandler) -> Callable[[Message], None]:
    """A ``(topic, payload)`` handler as the engine calls handlers: with a Message."""

    def call(message: Message) -> None:
        handler(message.topic, message.payload)

    return call


def _ignore_response(_message: Message) -> None:
    """The response topic's handler: request() takes responses by their correlation data."""


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
