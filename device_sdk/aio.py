"""The asyncio face: :class:`AsyncDeviceClient`.

It wraps a :class:`~device_sdk.client.DeviceClient`, and so the one
:class:`~device_sdk.engine.Engine` behind it: the recovery path, the outbox and
the validation of topics exist once, and both faces run them. This module adds
only the bridge between the engine's threads and the event loop:

* engine and callback threads touch the loop in one way only,
  ``loop.call_soon_threadsafe``; everything else happens on the loop thread
  (PUBACKs resolve futures, events and messages feed :class:`AsyncStream`);
* the two steps that block (waiting for the first CONNACK, joining the engine's
  threads on close) each run on a short-lived thread named ``device-sdk-aio-*``,
  so the loop never blocks and the loop's default executor is never borrowed;
* with a durable outbox, ``await publish()`` stores the message on one
  ``device-sdk-aio-*-store`` thread, so an fsync on a slow SD card never stalls
  the loop; it ends on close.

This module must not import paho, dnspython, tenacity or any part of the
recovery path; ``tests/unit/test_one_engine.py`` checks that.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import Callable
from concurrent.futures import Future as ConcurrentFuture
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Generic, TypeVar, TypeVarTuple

from device_sdk.adapters.resolver import Resolver
from device_sdk.client import DeviceClient
from device_sdk.config import ClientConfig, check_wait
from device_sdk.core.topics import check_qos, check_topic_filter
from device_sdk.errors import ClientClosed, ConfigError, DeviceSDKError
from device_sdk.events import Event
from device_sdk.message import Message, PublishProperties
from device_sdk.metrics import Metrics
from device_sdk.outbox import MemoryOutbox, Outbox, PublishHandle
from device_sdk.streams import DEFAULT_MAX_QUEUED, Fanout, StreamBuffer, StreamEnded

__all__ = ["AsyncDeviceClient", "AsyncStream", "Message"]

# One thread stores messages for ``await publish()`` with a durable outbox: one, so
# that messages are stored in the order publish() was called, as on the loop itself.
_STORE_THREADS = 1

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class AsyncDeviceClient:
    """A device's connection to its hubs, for asyncio. The same engine as DeviceClient.

    ::

        async with AsyncDeviceClient(config) as client:      # connects
            await client.publish("telemetry", b"21.5")       # returns on PUBACK
            async for message in client.messages("commands/#"):
                ...

    Leaving the ``async with`` block (normally, by an exception or because the
    task was cancelled) closes the client: every engine thread ends, pending
    publishes raise :class:`~device_sdk.errors.ClientClosed`, and every
    :meth:`messages` and :meth:`events` iterator stops.
    """

    def __init__(
        self,
        config: ClientConfig,
        *,
        resolver: Resolver | None = None,
        outbox: Outbox | None = None,
    ) -> None:
        self._client = DeviceClient(config, resolver=resolver, outbox=outbox)
        self._events: Fanout[Event] = Fanout()
        self._client.add_event_listener(self._events.send)
        self._all_messages: Fanout[Message] = Fanout()
        # Per subscription filter; touched only on the loop thread. The engine's
        # handler for a filter holds its Fanout directly, never this dict.
        self._by_filter: dict[str, Fanout[Message]] = {}
        self._subscribed: dict[str, int] = {}
        self._closed: asyncio.Future[None] | None = None
        # A durable outbox commits (and may fsync) in put(): keep that off the loop.
        self._store_off_loop = (
            config.outbox.path is not None
            if outbox is None
            else not isinstance(outbox, MemoryOutbox)
        )
        self._store: ThreadPoolExecutor | None = None

    @property
    def config(self) -> ClientConfig:
        return self._client.config

    async def connect(self, timeout: float | None = 30.0) -> None:
        """Start the engine and wait, without blocking the loop, for the first CONNACK.

        Raises :class:`~device_sdk.errors.NotConnected` after ``timeout`` (the
        engine keeps trying, as with DeviceClient) or
        :class:`~device_sdk.errors.RecoveryFailed` when the retry policy gives up.
        """
        check_wait("timeout", timeout, none_ok=True)  # here, not on the connecting thread
        await _off_loop(f"{self._thread_prefix}-connect", lambda: self._client.connect(timeout))

    def publish_nowait(
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
        """Queue a message and return at once; :meth:`acknowledged` awaits its PUBACK.

        Like every publish, it is sent and resent across reconnects until the
        hub acknowledges it. With the durable outbox this returns after the
        SQLite commit, on the calling thread (:meth:`publish` commits off the loop).
        ``retain``, ``properties``, ``ttl`` and ``priority`` are as for
        :meth:`DeviceClient.publish <device_sdk.client.DeviceClient.publish>`.
        """
        if retain is False and properties is None and ttl is None and priority == 0:
            return self._client.publish(topic, payload, qos)
        return self._client.publish(
            topic, payload, qos, retain=retain, properties=properties, ttl=ttl, priority=priority
        )

    async def publish(
        self,
        topic: str,
        payload: bytes | str,
        qos: int = 1,
        *,
        retain: bool = False,
        properties: PublishProperties | None = None,
        ttl: float | None = None,
        priority: int = 0,
    ) -> None:
        """Queue a message and return once the hub acknowledged it (QoS 1).

        Cancelling the wait does not withdraw the message: it stays in the
        outbox and is still delivered. Bound the wait with ``asyncio.timeout``.
        With the durable outbox the message is stored on a worker thread, so a
        slow disk never blocks the event loop. The options are as for
        :meth:`publish_nowait`; a message whose ``ttl`` passes first raises
        MessageExpired here.
        """
        put = functools.partial(
            self.publish_nowait,
            topic,
            payload,
            qos,
            retain=retain,
            properties=properties,
            ttl=ttl,
            priority=priority,
        )
        if not self._store_off_loop or self._closed is not None:
            handle = put()  # closed: raises ClientClosed
        else:
            if self._store is None:
                self._store = ThreadPoolExecutor(
                    _STORE_THREADS, thread_name_prefix=f"{self._thread_prefix}-store"
                )
            loop = asyncio.get_running_loop()
            try:
                handle = await loop.run_in_executor(self._store, put)
            except RuntimeError as exc:  # the executor shut down: close() began meanwhile
                raise ClientClosed("the client closed; the message was not accepted") from exc
        await self.acknowledged(handle)

    async def acknowledged(self, handle: PublishHandle) -> None:
        """Wait for ``handle``'s PUBACK; raises its PublishError (ClientClosed, dropped)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        # Runs on the engine thread that completes the handle: hand over, nothing more.
        handle.add_done_callback(lambda done: _call_soon(loop, _settle_ack, future, done))
        await future

    async def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Ask the hubs for ``topic_filter``, now and after every reconnect.

        Its messages go to the :meth:`messages` iterators for this filter and
        to those for every subscription. Subscribing to a filter again with the
        same QoS changes nothing. (It does not wait for the SUBACK: the
        subscription is sent ahead of any later publish on the same link.)
        """
        self._check_subscription(topic_filter, qos)
        self._ensure_subscribed(topic_filter, qos)

    async def unsubscribe(self, topic_filter: str) -> None:
        """Stop ``topic_filter``'s subscription, now and after every reconnect.

        Its :meth:`messages` iterators stay open and receive nothing more until
        the filter is subscribed again. (It does not wait for the UNSUBACK.)
        """
        check_topic_filter(topic_filter)
        self._client.unsubscribe(topic_filter)
        self._subscribed.pop(topic_filter, None)

    async def request(
        self,
        topic: str,
        payload: bytes | str,
        *,
        timeout: float,
        response_topic: str | None = None,
        properties: PublishProperties | None = None,
        qos: int = 1,
    ) -> Message:
        """Publish a request and await its response (MQTT 5); see
        :meth:`DeviceClient.request <device_sdk.client.DeviceClient.request>`.

        Raises ``TimeoutError`` after ``timeout`` seconds, ConfigError on MQTT 3.1.1.
        """
        check_wait("timeout", timeout, none_ok=False)

        def send() -> tuple[bytes, ConcurrentFuture[Message]]:
            return self._client._send_request(topic, payload, response_topic, properties, qos)

        if self._store_off_loop and self._closed is None:  # a durable outbox may fsync
            correlation, response = await _off_loop(f"{self._thread_prefix}-request", send)
        else:
            correlation, response = send()
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.wrap_future(response)
        except TimeoutError:
            raise TimeoutError(
                f"no response to the request on {topic!r} within {timeout} s"
            ) from None
        finally:
            self._client._engine.forget_response(correlation)

    async def reply(self, message: Message, payload: bytes | str, qos: int = 1) -> None:
        """Publish ``payload`` as the response to ``message`` (its Response Topic and
        Correlation Data) and return on its PUBACK; ConfigError when it named none."""
        if not isinstance(message, Message):
            raise ConfigError("message", message, "a Message from messages()")
        topic, properties = message.reply_properties()
        await self.publish(topic, payload, qos, properties=properties)

    def messages(
        self,
        topic_filter: str | None = None,
        *,
        qos: int = 1,
        max_queued: int = DEFAULT_MAX_QUEUED,
    ) -> AsyncStream[Message]:
        """Iterate over messages delivered for ``topic_filter`` (None: every subscription).

        Each is a :class:`~device_sdk.message.Message`: topic, payload, QoS,
        retain, the MQTT 5 properties, and the ``subscription`` it came for.
        With a filter, the iterator is attached before subscribing, so not even
        a retained message is missed; the subscription outlives the iterator.
        Overlapping subscriptions deliver a message once per matching filter,
        as MQTT does. The iterator ends when the client closes; a reader more
        than ``max_queued`` messages behind loses the oldest (see
        :mod:`device_sdk.streams` for why it never blocks the engine).
        """
        loop = asyncio.get_running_loop()
        if topic_filter is None:
            return AsyncStream(self._all_messages, loop, max_queued, "messages")
        self._check_subscription(topic_filter, qos)  # before a stream is attached
        stream = AsyncStream(
            self._fanout_for(topic_filter), loop, max_queued, f"messages on {topic_filter}"
        )
        self._ensure_subscribed(topic_filter, qos)
        return stream

    def events(self, *, max_queued: int = DEFAULT_MAX_QUEUED) -> AsyncStream[Event]:
        """Iterate over connection events from now on; ends when the client closes.

        Create it before ``async with`` (or :meth:`connect`) to see the first
        attempts and the first ``Connected`` too.
        """
        loop = asyncio.get_running_loop()
        return AsyncStream(self._events, loop, max_queued, "events")

    def metrics(self) -> Metrics:
        return self._client.metrics()

    @property
    def healthy(self) -> bool:
        """See :attr:`DeviceClient.healthy <device_sdk.client.DeviceClient.healthy>`."""
        return self._client.healthy

    @property
    def failure(self) -> DeviceSDKError | None:
        """See :attr:`DeviceClient.failure <device_sdk.client.DeviceClient.failure>`."""
        return self._client.failure

    async def close(self, timeout: float = 5.0) -> None:
        """Disconnect, stop every engine thread (bounded by ``timeout``) and end the iterators.

        Safe to call again, and to cancel: the closing thread finishes its work
        even if the task awaiting it is cancelled.
        """
        check_wait("timeout", timeout, none_ok=False)  # before anything is stopped
        if self._closed is None:
            fanouts: list[Fanout[Event] | Fanout[Message]] = [self._events, self._all_messages]
            fanouts += self._by_filter.values()

            store = self._store

            def close_all() -> None:
                if store is not None:  # stores under way finish first: they were accepted
                    store.shutdown(wait=True)
                self._client.close(timeout)
                for fanout in fanouts:  # after the engine: its last items come first
                    fanout.close()

            self._closed = _off_loop(f"{self._thread_prefix}-close", close_all)
        await asyncio.shield(self._closed)

    async def __aenter__(self) -> AsyncDeviceClient:
        try:
            await self.connect()
        except BaseException:
            await self.close()  # __aexit__ will not run: nothing may outlive this block
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- loop-thread helpers ----------------------------------------------------------------

    @property
    def _thread_prefix(self) -> str:
        return f"device-sdk-aio-{self._client.config.client_id}"

    @staticmethod
    def _check_subscription(topic_filter: str, qos: int) -> None:
        # Before the filter is used as a key or its QoS compared: an unhashable filter
        # or qos=True (== 1) must be refused, not raise TypeError or pass as a repeat.
        check_topic_filter(topic_filter)
        check_qos(qos)

    def _fanout_for(self, topic_filter: str) -> Fanout[Message]:
        check_topic_filter(topic_filter)  # first: a bad filter must not get a fanout
        fanout = self._by_filter.get(topic_filter)
        if fanout is None:
            fanout = self._by_filter[topic_filter] = Fanout()
            if self._closed is not None:
                fanout.close()  # created after close: its iterators end at once
        return fanout

    def _ensure_subscribed(self, topic_filter: str, qos: int) -> None:
        if self._subscribed.get(topic_filter) == qos:
            return
        self._client.subscribe(topic_filter, self._handler_for(topic_filter), qos, as_message=True)
        self._subscribed[topic_filter] = qos

    def _handler_for(self, topic_filter: str) -> Callable[[Message], None]:
        fanout, every_message = self._fanout_for(topic_filter), self._all_messages

        def deliver(message: Message) -> None:
            # On the engine's callback thread; the streams' sinks only call_soon_threadsafe.
            # It returns once the message is handed over, so with command_ack =
            # "after_handler" a QoS 1 message is acknowledged when it is queued for the
            # iterators, not when the application has read it.
            fanout.send(message)
            every_message.send(message)

        return deliver


class AsyncStream(Generic[T]):
    """An async iterator over events or messages; ends when its client closes.

    Engine threads feed it only through ``loop.call_soon_threadsafe``; its
    buffer and waiter live on the loop thread. One task reads a stream at a
    time (create another stream for another reader). ``async with`` or
    :meth:`aclose` detaches it early. ``dropped`` counts items lost because the
    reader fell more than ``max_queued`` behind.
    """

    def __init__(
        self, source: Fanout[T], loop: asyncio.AbstractEventLoop, max_queued: int, label: str
    ) -> None:
        self._buffer: StreamBuffer[T] = StreamBuffer(max_queued, label)
        self._loop = loop
        self._waiter: asyncio.Future[None] | None = None
        self._source = source
        source.attach(self)

    @property
    def dropped(self) -> int:
        return self._buffer.dropped

    # Sink: called on engine threads (or the closing thread). Hand over, nothing more.

    def put(self, item: T) -> None:
        _call_soon(self._loop, self._arrived, item)

    def end(self) -> None:
        _call_soon(self._loop, self._ended)

    # On the loop thread.

    def _arrived(self, item: T) -> None:
        self._buffer.push(item)
        self._wake()

    def _ended(self) -> None:
        self._buffer.end()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def __aiter__(self) -> AsyncStream[T]:
        return self

    async def __anext__(self) -> T:
        if not self._buffer.ready():
            if self._waiter is not None:
                raise RuntimeError("another task is already reading this stream")
            self._waiter = self._loop.create_future()
            try:
                await self._waiter  # woken only by an item or the end: ready() holds after
            finally:
                self._waiter = None
        try:
            return self._buffer.take()
        except StreamEnded:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        """Stop receiving; a pending or later ``__anext__`` ends the iteration."""
        self._source.detach(self)
        self._buffer.end(discard=True)
        self._wake()

    async def __aenter__(self) -> AsyncStream[T]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


# -- the bridge: the only ways other threads reach the loop ----------------------------------


def _call_soon(
    loop: asyncio.AbstractEventLoop, callback: Callable[[*Ts], object], *args: *Ts
) -> None:
    """From any thread: run ``callback(*args)`` on the loop.

    A closed loop means nobody is listening any more (the application left the
    loop without closing the client); the engine thread must not die of that.
    """
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, *args)


def _settle_ack(future: asyncio.Future[None], handle: PublishHandle) -> None:
    if future.done():
        return  # the awaiting task was cancelled; the message itself is still delivered
    if handle.error is not None:
        future.set_exception(handle.error)
    else:
        future.set_result(None)


def _off_loop(name: str, work: Callable[[], T]) -> asyncio.Future[T]:
    """Run blocking ``work`` on a thread of its own; the future settles on the loop.

    A fresh, named thread rather than the loop's executor: it ends with its
    work, and the leak test can see that it did.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def run() -> None:
        try:
            result = work()
        except Exception as exc:
            _call_soon(loop, _settle_failed, future, exc)
        else:
            _call_soon(loop, _settle_done, future, result)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


def _settle_done(future: asyncio.Future[T], result: T) -> None:
    if not future.done():
        future.set_result(result)


def _settle_failed(future: asyncio.Future[T], error: Exception) -> None:
    if not future.done():
        future.set_exception(error)
