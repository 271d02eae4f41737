"""The one engine behind both client faces.

One engine thread owns everything that touches the network: the failover
machine, the current link, the liveness watchdog and the outbox drain. The
faces (:class:`~device_sdk.client.DeviceClient`, and the asyncio face that
wraps it) only hand it messages and commands and wait on handles, so the
recovery path exists exactly once.

Each reconnect cycle is a tenacity ``Retrying`` whose attempts are the steps
of the recovery path, in order, every time:

1. the pure :class:`~device_sdk.core.failover.FailoverMachine` names the hub;
2. the hub's FQDN is resolved fresh (no cache anywhere);
3. the credential provider is asked for this hub's identity, fresh;
4. each resolved address is dialled while TLS verifies the FQDN;
5. the CONNACK (or the failure) is classified and fed back to the machine
   (a refused identity is asked for afresh before the hub is shunned);
6. the retry policy, a value, decides the delay; tenacity executes it.

While connected, an identity due for renewal is replaced make before break
(``_renew``): a second link with a fresh one, then the first is closed.

Why one module of this size: the recovery cycle, the serve loop, migration and
the supervision boundary all drive the same per-engine state (the current
session, the planned attempt, the backoff, the status condition) on the one
engine thread, and the boundary must see every step of them. What needs none
of that state lives beside it: the books of one link (``link_session``), the
hub sources, the dialer, the pure fault rule (``core/supervision``). The
supervision methods could move into a mixin; that would split the state, not
the logic, so they stay here.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import random
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace

import tenacity

from device_sdk import events
from device_sdk.adapters.cancel import CancelToken
from device_sdk.adapters.paho_link import PahoLink, Received
from device_sdk.adapters.resolver import FreshResolver, Resolver
from device_sdk.config import ClientConfig, HubEndpoint, OutboxSettings
from device_sdk.core import failover as fsm
from device_sdk.core.outcomes import FailureKind
from device_sdk.core.retry import Backoff
from device_sdk.core.supervision import FaultLog
from device_sdk.core.topics import topic_matches
from device_sdk.engine.dialer import Dialer, LinkFactory
from device_sdk.engine.dispatch import AckWhenHandled, CallbackDispatcher, call_handler
from device_sdk.engine.hub_sources import HubSources
from device_sdk.engine.link_session import LinkEnd, LinkSession, PoisonWatch, SessionServices
from device_sdk.engine.renewal import RefusedIdentities, RenewalPlan
from device_sdk.engine.side_tasks import SideTasks
from device_sdk.engine.supervision import handle_faults_reported_to
from device_sdk.engine.way_back import WayBack
from device_sdk.errors import (
    ConfigError,
    ConnectError,
    ConnectRefused,
    ConnectTimeout,
    CredentialExpired,
    DeviceSDKError,
    EngineFailed,
    HubBusy,
    LinkLost,
    NotConnected,
    PermanentRefusal,
    PoisonMessage,
    ProtocolError,
    RecoveryFailed,
    Redirected,
    TlsError,
)
from device_sdk.message import Message, PublishProperties
from device_sdk.metrics import Metrics, MetricsRecorder
from device_sdk.outbox import MemoryOutbox, OutboundMessage, Outbox, PublishHandle
from device_sdk.transports import Transport

log = logging.getLogger("device_sdk")

EventCallback = Callable[[events.Event], None]
MessageHandler = Callable[[str, bytes], None]
MessageCallback = Callable[[Message], None]  # what the engine calls: the faces adapt

# How many attempt causes a NotConnected or RecoveryFailed carries: the latest ones.
_KEPT_ATTEMPT_ERRORS = 32

# The longest single wait of a backoff sleep; a longer backoff waits again.
_LONGEST_WAIT = 86_400.0

# The engine wakes at least this often while connected, so paho's own
# housekeeping (keepalive bookkeeping) runs even on a silent link.
_MAX_IDLE_WAIT = 1.0

# How often expired messages (publish(ttl=...)) are taken out of the outbox, connected
# or not: a handle fails within about this long after its message's expiry.
_EXPIRY_SWEEP_INTERVAL = 1.0


class Engine:
    """Keeps one device connected to the best hub it can reach, and drains its outbox."""

    def __init__(
        self,
        config: ClientConfig,
        *,
        resolver: Resolver | None = None,
        outbox: Outbox | None = None,
        link_factory: LinkFactory = PahoLink,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        # Cut short by close(): DNS waits, connect races, TLS handshakes, CONNACK waits.
        self._cancel = CancelToken()
        # "is None", not "or": a plugged-in part that happens to be falsy (an empty
        # container-like outbox) must still be the one used.
        self._resolver = (
            FreshResolver(config.dns, cancel=self._cancel) if resolver is None else resolver
        )
        self._outbox = open_outbox(config.outbox) if outbox is None else outbox
        # Only an outbox that may drop is asked after every publish (it costs a lock).
        self._watch_drops = outbox is not None or config.outbox.overflow == "drop_oldest"
        self._drops_reported = 0
        self._rng = random.Random() if rng is None else rng
        self._machine = fsm.FailoverMachine(config.hub_names, config.failover)
        self._backoff = Backoff.start()
        self._metrics = MetricsRecorder()
        self._listeners: list[EventCallback] = []
        self._subscriptions: dict[str, tuple[int, MessageCallback]] = {}
        # Filters unsubscribed while no link could carry the UNSUBSCRIBE: a resumed
        # session on the hub still holds them, so they are unsubscribed on connect.
        self._forgotten: set[str] = set()
        # Requests waiting for their response, by correlation data (request()), with
        # the topic the response must come on.
        self._requests: dict[bytes, tuple[str, Future[Message]]] = {}
        self._lock = threading.Lock()
        self._commands: deque[Callable[[PahoLink], None]] = deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_pending = False
        self._puts = 0  # publish() calls so far (approximate under races: only compared)
        self._puts_seen = 0  # ... as of the engine's last wait
        self._next_sweep = 0.0  # when the outbox is next asked for expired messages
        self._batching = False  # see _batch_while_streaming
        self._io_mask = 0  # what the selector watches on the link's socket
        self._closing = threading.Event()
        # Guards _is_connected and _is_finished; notified whenever either changes.
        self._status = threading.Condition()
        self._is_connected = False
        self._is_finished = False
        self._fatal: DeviceSDKError | None = None
        self._faults = FaultLog(config.supervision)
        # MQTT 5 hubs refuse a message in its PUBACK, or announce their limits in CONNACK.
        self._poison = PoisonWatch(config.poison_after) if config.mqtt_version == "3.1.1" else None
        # The causes of the current cycle's attempts, for NotConnected/RecoveryFailed. Bounded:
        # an outage can last days, and every exception holds its traceback's frames.
        self._cycle_errors: deque[ConnectError] = deque(maxlen=_KEPT_ATTEMPT_ERRORS)
        self._cycle_attempts = 0
        self._next: fsm.Attempt | None = None
        self._attempt_no = 0
        self._waited = 0.0
        self._session: LinkSession | None = None
        self._resumable: LinkSession | None = None  # its paho session may be resumed
        self._outage_started: float | None = None
        # The current link's identity: when to renew it, when to announce its expiry.
        self._renewal = RenewalPlan()
        # Hubs that refused our credentials since we last connected to them: the next
        # attempt asks the provider for a fresh identity, and a second refusal is final.
        self._refused = RefusedIdentities()
        # Callbacks for the engine thread, posted by side tasks (probes, concierge).
        self._mailbox: deque[Callable[[], None]] = deque()
        self._interrupt = threading.Event()  # cuts a backoff sleep short when mail arrives
        self._side = SideTasks(self._post, f"device-sdk-{config.client_id}")
        self._dispatcher = CallbackDispatcher(
            f"device-sdk-callbacks-{config.client_id}", on_fault=self._application_fault
        )
        self._sources = HubSources(
            config,
            machine=self._machine,
            resolver=self._resolver,
            rng=self._rng,
            side=self._side,
            metrics=self._metrics,
            emit=self._emit,
            follow=self._feed,
            cancel=self._cancel,
        )
        self._dialer = Dialer(
            config,
            resolver=self._resolver,
            link_factory=link_factory,
            metrics=self._metrics,
            emit=self._emit,
            cancel=self._cancel,
        )
        self._way_back = WayBack(
            config,
            side=self._side,
            resolver=self._resolver,
            rng=self._rng,
            cancel=self._cancel,
            on_open=self._first_way_open,
        )
        self._services = SessionServices(
            config=config,
            outbox=self._outbox,
            metrics=self._metrics,
            emit=self._emit,
            deliver=self._deliver,
        )
        self._thread = threading.Thread(
            target=self._run, name=f"device-sdk-engine-{config.client_id}", daemon=True
        )

    # -- the thread-safe surface the faces use ---------------------------------------------

    def start(self) -> None:
        with self._status:
            if self._is_finished or self._thread.is_alive():
                return
        self._thread.start()

    def wait_connected(self, timeout: float | None) -> None:
        """Block until connected. Raises RecoveryFailed or NotConnected."""
        with self._status:
            self._status.wait_for(lambda: self._is_connected or self._is_finished, timeout)
            if self._is_connected:
                return
            if self._fatal is not None:
                raise self._fatal
            if self._is_finished:
                raise RecoveryFailed("the client is closed", list(self._cycle_errors))
        raise NotConnected(
            f"not connected within {timeout} s; still trying in the background",
            attempts=list(self._cycle_errors),
        )

    def _set_status(self, *, connected: bool | None = None, finished: bool | None = None) -> None:
        with self._status:
            if connected is not None:
                self._is_connected = connected
            if finished is not None:
                self._is_finished = finished
            self._status.notify_all()

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        *,
        retain: bool = False,
        properties: PublishProperties | None = None,
        ttl: float | None = None,
        priority: int = 0,
    ) -> PublishHandle:
        if self._fatal is not None:
            raise self._fatal  # the retry policy gave up: nothing would ever send it
        if retain or properties is not None or ttl is not None or priority:
            message = self._put_with_options(
                topic,
                payload,
                qos,
                retain=retain,
                properties=properties,
                ttl=ttl,
                priority=priority,
            )
        else:  # the short form: an application's own Outbox written before the options works
            message = self._outbox.put(topic, payload, qos)
        self._metrics.add(published=1)
        self._puts += 1
        if self._watch_drops:
            self._report_drops()
        self._wake()
        assert message.handle is not None
        return message.handle

    def _put_with_options(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        *,
        retain: bool,
        properties: PublishProperties | None,
        ttl: float | None,
        priority: int,
    ) -> OutboundMessage:
        try:
            return self._outbox.put(
                topic,
                payload,
                qos,
                retain=retain,
                properties=properties,
                ttl=ttl,
                priority=priority,
            )
        except TypeError as exc:
            if _takes_options(self._outbox):
                raise  # not a signature mismatch: a fault of the outbox, passed on as it is
            raise ConfigError(
                "outbox",
                type(self._outbox).__name__,
                "an Outbox whose put() takes retain=, properties=, ttl= and priority= "
                "(this one takes only topic, payload and qos)",
            ) from exc

    def _sweep_expired(self, now: float) -> None:
        """Take the messages whose TTL passed out of the outbox, at most once a second.

        Why here and while backing off too: a device offline for an hour must not
        keep stale readings (nor their waiting handles) until it reconnects. The
        outbox fails their handles with MessageExpired; this counts and announces.
        """
        self._next_sweep = now + _EXPIRY_SWEEP_INTERVAL
        expire = getattr(self._outbox, "expire", None)  # an application's older Outbox has none
        if expire is None:
            return
        expired = expire(time.time())
        if expired:
            self._metrics.add(expired=len(expired))
            self._emit(events.MessagesExpired(at=now, count=len(expired)))
            self._emit(events.QueueDepth(at=now, depth=self._outbox.depth()))

    def _report_drops(self) -> None:
        with self._lock:
            total = self._outbox.dropped()
            new, self._drops_reported = (
                total - self._drops_reported,
                max(total, self._drops_reported),
            )
        if new > 0:
            self._emit(events.MessagesDropped(at=time.monotonic(), count=new))

    def subscribe(self, topic: str, handler: MessageCallback, qos: int) -> None:
        with self._lock:
            self._subscriptions[topic] = (qos, handler)
            self._forgotten.discard(topic)
        self._command(lambda link: link.subscribe(topic, qos))

    def subscribe_once(self, topic: str, handler: MessageCallback) -> None:
        """Subscribe at QoS 1 unless ``topic`` is subscribed already (request()'s responses)."""
        with self._lock:
            if topic in self._subscriptions:
                return
        self.subscribe(topic, handler, 1)

    def unsubscribe(self, topic: str) -> None:
        """Forget ``topic``'s subscription: sent now when connected, never restored."""
        with self._lock:
            known = self._subscriptions.pop(topic, None) is not None
            if known:
                self._forgotten.add(topic)
        if known:
            self._command(lambda link: self._unsubscribe_now(link, topic))

    def _unsubscribe_now(self, link: PahoLink, topic: str) -> None:
        with self._lock:
            if topic not in self._forgotten:
                return  # subscribed again meanwhile: that SUBSCRIBE is already sent
            self._forgotten.discard(topic)
        link.unsubscribe(topic)

    def expect_response(self, correlation_data: bytes, response_topic: str) -> Future[Message]:
        """A future the first message on ``response_topic`` carrying ``correlation_data``
        resolves (request()). The topic matters: a device subscribed to its own request
        topic receives the request itself, with the same correlation data."""
        future: Future[Message] = Future()
        with self._lock:
            self._requests[correlation_data] = (response_topic, future)
        return future

    def forget_response(self, correlation_data: bytes) -> None:
        with self._lock:
            self._requests.pop(correlation_data, None)

    def add_listener(self, callback: EventCallback) -> None:
        with self._lock:
            self._listeners.append(callback)

    def metrics(self) -> Metrics:
        return self._metrics.snapshot(
            queue_depth=self._outbox.depth(), dropped=self._outbox.dropped()
        )

    def close(self, timeout: float = 5.0) -> None:
        """Disconnect cleanly and stop every thread this engine started (bounded)."""
        self._closing.set()
        self._cancel.cancel()  # whatever the engine thread is waiting on ends now
        self._interrupt.set()  # ... including a backoff sleep
        self._wake()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        self._side.join(timeout)
        self._outbox.close()
        self._dispatcher.close(timeout)
        self._wake_r.close()
        self._wake_w.close()
        self._cancel.close()
        if self._fatal is None:
            self._metrics.set(engine_state="closed")
        self._set_status(connected=False, finished=True)

    @property
    def finished(self) -> bool:
        """True once the engine thread has ended (closed, or stopped for good)."""
        with self._status:
            return self._is_finished

    @property
    def failure(self) -> DeviceSDKError | None:
        """Why the engine stopped for good (EngineFailed or RecoveryFailed), or None."""
        return self._fatal

    # -- engine thread: the recovery cycle --------------------------------------------------

    def _run(self) -> None:
        try:
            with handle_faults_reported_to(self._application_fault):
                self._supervised()
        except (RecoveryFailed, EngineFailed) as exc:
            self._stop_for_good(exc)
        except BaseException as exc:  # a fault while handling a fault: still never silent
            log.critical("device_sdk engine thread failed", exc_info=exc)
            failed = EngineFailed(f"the engine thread failed: {type(exc).__name__}: {exc}", [exc])
            failed.__cause__ = exc
            self._stop_for_good(failed)
        finally:
            self._set_status(connected=False, finished=True)

    def _supervised(self) -> None:
        """The engine loop inside its one supervision boundary.

        Faults of a link or of its input never reach here: the link adapter turns
        them into a dropped link (a ProtocolError), and the recovery path goes on.
        Application callbacks are contained where they run. Whatever else is
        raised here is a fault of our own code (or of a plugged-in part, such as a
        custom outbox): it is logged with its traceback, counted, emitted as an
        EngineFault event, and the link is restarted from the outbox; repeated
        faults stop the engine for good, visibly (see core/supervision.py).
        """
        link: PahoLink | None = None
        attempt: fsm.Attempt | None = None
        started = False
        while not self._closing.is_set():
            try:
                if not started:
                    self._sources.start()
                    self._sources.ask_concierge()
                    attempt = self._single(self._machine.handle(fsm.Start(), time.monotonic()))
                    started = True
                link, attempt = self._step(link, attempt)
            except (RecoveryFailed, EngineFailed):
                raise
            except Exception as exc:
                if self._closing.is_set():
                    return
                attempt, link = self._survive(exc, link), None
                started = True
            if link is None and attempt is None:
                return

    def _step(
        self, link: PahoLink | None, attempt: fsm.Attempt | None
    ) -> tuple[PahoLink | None, fsm.Attempt | None]:
        """Recover a link if there is none, then serve it until it ends."""
        if link is None:
            if attempt is None:
                return None, None
            link = self._recover(attempt)
            if link is None:
                return None, None
        end = self._serve(link)
        if end is None:
            return None, None
        if end.migrate is not None:
            return self._migrate(link, end.migrate)
        if end.renew:
            return self._renew(link, way_back=end.way_back)
        return None, self._after_link(link, end)

    def _survive(self, error: Exception, link: PahoLink | None) -> fsm.Attempt:
        """Contain a fault of our own code: drop the link, then recover after a backoff."""
        now = time.monotonic()
        stop = self._faults.record(now)
        self._metrics.add(internal_faults=1)
        log.error("device_sdk internal fault on the engine thread", exc_info=error)
        self._emit(
            events.EngineFault(at=now, error=error, faults=self._faults.recent, terminal=stop)
        )
        if stop:
            policy = self._faults.policy
            raise EngineFailed(
                f"{policy.max_faults} internal faults within {policy.window:g} s; "
                f"the last: {type(error).__name__}: {error}",
                [error],
            ) from error
        self._drop_after_fault(link, error, now)
        return self._restart_attempt(now)

    def _drop_after_fault(self, link: PahoLink | None, error: Exception, now: float) -> None:
        """Close every link the fault may have left half-handled; nothing is resumed."""
        session, self._session, self._resumable = self._session, None, None
        for open_link in {link, session.link if session is not None else None} - {None}:
            with contextlib.suppress(Exception):
                open_link.abort()  # type: ignore[union-attr]
        with self._lock:
            self._commands.clear()  # subscriptions are restored from the registry
        was_connected = self._is_connected
        self._set_status(connected=False)
        if was_connected:
            hub = self._machine.current_hub
            self._outage_started = now
            self._metrics.set(current_hub=None)
            self._metrics.add(disconnects=1)
            reason = f"restarting the link after an internal fault: {type(error).__name__}"
            self._emit(events.Disconnected(at=now, hub=hub, error=LinkLost(reason, hub=hub)))

    def _restart_attempt(self, now: float) -> fsm.Attempt:
        """Where to go after a fault: as after a lost link, and never without a backoff."""
        phase = self._machine.phase
        actions: tuple[fsm.Action, ...] = ()
        if phase is fsm.Phase.IDLE:
            actions = self._machine.handle(fsm.Start(), now)
        elif phase is fsm.Phase.CONNECTED:
            lost = fsm.LinkDown(hub=self._machine.current_hub, unresponsive=False)
            actions = self._machine.handle(lost, now)
        planned = self._single(actions) or self._next
        hub = planned.hub if planned is not None else self._machine.current_hub
        # Backed off, so a fault that recurs on every attempt cannot spin the CPU.
        self._backoff = self._backoff.failed()
        return fsm.Attempt(hub, fsm.Delay.BACKOFF, "restart after an internal fault")

    def _stop_for_good(self, error: DeviceSDKError) -> None:
        """The terminal state: every handle, publish(), wait() and connect() raises ``error``."""
        self._fatal = error
        self._metrics.set(engine_state="failed", current_hub=None)
        log.error("device_sdk stopped for good: %s", error)
        if isinstance(error, EngineFailed):
            for open_link in {self._session.link if self._session else None} - {None}:
                with contextlib.suppress(Exception):
                    open_link.abort()  # type: ignore[union-attr]
            self._session = None
            with contextlib.suppress(Exception):
                close_outbox(self._outbox, error)

    def _application_fault(self, error: BaseException) -> None:
        """An application callback raised: it was logged where it ran; count it."""
        self._metrics.add(callback_errors=1)

    def _recover(self, attempt: fsm.Attempt) -> PahoLink | None:
        self._next = attempt
        self._cycle_errors.clear()
        self._cycle_attempts = 0
        self._sources.ask_concierge()  # in parallel with the first attempt: never a delay
        retrying = tenacity.Retrying(
            sleep=self._sleep,
            wait=self._wait_before_next,
            stop=self.config.retry.tenacity_stop() | tenacity.stop_when_event_set(self._closing),
            retry=tenacity.retry_if_exception_type(ConnectError),
            reraise=True,
        )
        try:
            if attempt.delay is not fsm.Delay.NONE:
                # tenacity waits only between the attempts of one cycle; the machine
                # may ask for a backoff before the first one too (a link that ended
                # soon after its CONNACK, a restart after a fault): without this, a
                # hub that accepts and drops at once would be redialled in a hot loop.
                self._sleep(self._wait_before_next(None))
            elif self._outage_started is not None:
                # A lost link (not the start): a fleet loses it all at once when a hub
                # dies, so its first attempts are spread (retry.first_attempt_spread),
                # and over the busy window when the hub dropped us saying it was busy.
                self._waited = self.config.retry.first_attempt_delay(self._rng, self._backoff)
                self._sleep(self._waited)
            return retrying(self._attempt_once)
        except ConnectError as exc:
            if self._closing.is_set():
                return None
            raise RecoveryFailed(
                f"gave up after {self._cycle_attempts} attempts: {exc}", list(self._cycle_errors)
            ) from exc

    def _wait_before_next(self, _state: tenacity.RetryCallState | None) -> float:
        assert self._next is not None
        self._waited, self._backoff = self.config.retry.next_delay(
            self._backoff, self._next.delay, self._rng
        )
        return self._waited

    def _sleep(self, seconds: float) -> None:
        """Back off, but wake for close() and for mail that changes the next attempt."""
        started = time.monotonic()
        deadline = started + seconds
        planned = self._next
        while not self._closing.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            now = time.monotonic()
            if now >= self._next_sweep:
                self._sweep_expired(now)  # TTLs run out during an outage too
            # Event.wait refuses more than threading.TIMEOUT_MAX (OverflowError): a policy
            # may allow years. Waking once a day to wait again costs nothing; waking for
            # the expiry sweep once a second costs little more.
            wait = min(remaining, _LONGEST_WAIT, max(0.0, self._next_sweep - now))
            if not self._interrupt.wait(wait):
                continue
            if self._closing.is_set():
                return
            self._interrupt.clear()
            self._run_mailbox()
            if self._next is not planned:
                # e.g. the concierge or DPS named another hub: go there now. The
                # Attempting event then reports the wait that really passed.
                self._waited = time.monotonic() - started
                return

    def _attempt_once(self) -> PahoLink | None:
        self._run_mailbox()
        self._sources.refresh_srv()
        self._cancel.check()
        assert self._next is not None
        hub = self._sources.endpoint(self._next.hub)
        self._attempt_no += 1
        self._metrics.add(attempts=1)
        self._emit(
            events.Attempting(
                at=time.monotonic(), hub=hub.name, attempt=self._attempt_no, delay=self._waited
            )
        )
        self._waited = 0.0
        try:
            link = self._open_link(hub)
        except ConnectError as exc:
            if not self._closing.is_set():
                self._attempt_failed(hub, exc)
            raise
        try:
            self._on_connected(link)
        except BaseException:
            link.abort()  # not handed to anyone yet: the fault must not leak its socket
            raise
        return link

    def _open_link(self, hub: HubEndpoint) -> PahoLink:
        return self._dialer.open(
            hub, resume=self._resumable_link(hub), after_refusal=self._refused.ask_fresh(hub.name)
        )

    def _resumable_link(self, hub: HubEndpoint) -> PahoLink | None:
        """The last link's paho session, when it is worth resuming on this hub."""
        session = self._resumable
        if session is None or session.link.hub.name != hub.name:
            self._resumable = None
            return None
        return session.link

    def _attempt_failed(self, hub: HubEndpoint, error: ConnectError) -> None:
        now = time.monotonic()
        if isinstance(error, CredentialExpired):
            self._refused.refused(hub.name)  # the provider must be asked for a fresh one
        self._cycle_errors.append(error)
        self._cycle_attempts += 1
        self._emit(events.AttemptFailed(at=now, hub=hub.name, address=error.address, error=error))
        if isinstance(error, Redirected):
            self._backoff = self._backoff.failed()
            target = self._sources.hub_for_reference(error.server_reference)
            actions = self._machine.handle(fsm.Redirect(hub=hub.name, target=target), now)
        else:
            kind = self._failure_kind(hub, error)
            self._backoff = self._backoff.failed(busy=kind is FailureKind.BUSY)
            actions = self._machine.handle(fsm.AttemptFailed(hub=hub.name, kind=kind), now)
        # An empty answer means "carry on as you were": keep the attempt already planned.
        self._next = self._single(actions) or self._next

    def _failure_kind(self, hub: HubEndpoint, error: ConnectError) -> FailureKind:
        """The machine's view of a failed attempt; a refused identity is renewed first."""
        kind = _failure_kind(error)
        if not isinstance(error, ConnectRefused):
            return kind
        provider = hub.credentials if hub.credentials is not None else self.config.credentials
        renewable = provider is not None and bool(provider.renewable)
        kind, final = self._refused.classify(
            hub.name, kind, reason_code=error.reason_code, renewable=renewable
        )
        if final:
            self._sources.refused_us(hub.name)  # e.g. DPS: the device may belong elsewhere now
        return kind

    def _single(self, actions: tuple[fsm.Action, ...]) -> fsm.Attempt | None:
        """Announce the machine's events and return the attempt it asks for."""
        attempt: fsm.Attempt | None = None
        now = time.monotonic()
        for action in actions:
            if isinstance(action, fsm.Attempt):
                attempt = action
            elif isinstance(action, fsm.FailedOver):
                self._metrics.add(failovers=1)
                self._sources.failed_over(action.from_hub)
                self._emit(
                    events.FailedOver(
                        at=now, from_hub=action.from_hub, to_hub=action.to_hub, reason=action.reason
                    )
                )
            elif isinstance(action, fsm.FailedBack):
                self._metrics.add(failbacks=1)
                self._emit(
                    events.FailedBack(at=now, from_hub=action.from_hub, to_hub=action.to_hub)
                )
        return attempt

    # -- engine thread: serving one link ----------------------------------------------------

    def _on_connected(
        self, link: PahoLink, *, renewal: bool = False, way_back: bool = False
    ) -> None:
        now = time.monotonic()
        self._on_way(link, now)
        if not renewal:  # a renewal is not a new connection: the machine stays where it is
            self._machine.handle(fsm.Connected(hub=link.hub.name), now)
            self._backoff = self._backoff.link_up(now)
            self._sources.connected(now)
        self._refused.connected(link.hub.name)
        self._renewal.plan(self._dialer.last_identity, mono=now, wall=time.time())
        carried = self._resumable.inflight if self._resumable is not None else {}
        self._resumable = None
        self._session = LinkSession(
            link,
            self._services,
            inflight=carried,
            outage_started=self._outage_started,
            now=now,
        )
        if way_back:
            pass  # the caller announces it
        elif renewal:
            self._metrics.add(credential_renewals=1)
            identity = self._dialer.last_identity
            expires = identity.expires_at if identity is not None else None
            self._emit(
                events.CredentialsRenewed(
                    at=now, hub=link.hub.name, address=link.address, expires_at=expires
                )
            )
        else:
            self._connected_now(link, now)
        with self._lock:
            subscriptions = [(topic, qos) for topic, (qos, _h) in self._subscriptions.items()]
            self._commands.clear()  # subscriptions are restored below, from the registry
            forgotten, self._forgotten = self._forgotten, set()
        if link.session_present:  # the hub kept the session, and the filters in it
            for topic in sorted(forgotten):
                link.unsubscribe(topic)
        for topic, qos in subscriptions:
            link.subscribe(topic, qos)
        birth = self.config.birth
        if birth is not None:  # "online", before the outbox drains on this link
            link.announce(birth.topic, birth.payload, birth.qos, birth.retain)
        link.start_reporting(self._session)

    def _connected_now(self, link: PahoLink, now: float) -> None:
        outage = None if self._outage_started is None else now - self._outage_started
        self._outage_started = None
        self._metrics.add(connects=1)
        self._metrics.set(current_hub=link.hub.name, last_reconnect_seconds=outage)
        self._set_status(connected=True)
        self._emit(
            events.Connected(
                at=now,
                hub=link.hub.name,
                address=link.address,
                session_present=link.session_present,
                outage_seconds=outage,
                transport=link.transport.label,
            )
        )

    def _on_way(self, link: PahoLink, now: float) -> None:
        """Name the link's way in; on a fallback one, count it and probe the first."""
        hub = self._sources.endpoint(link.hub.name) if link.hub.name in self._machine.hubs else None
        self._way_back.connected(hub or link.hub, link.transport, now)
        self._metrics.set(current_transport=link.transport.label)
        if link.transport != link.hub.ways_in[0]:
            self._metrics.add(transport_fallbacks=1)

    def _first_way_open(self, hub: str, way: Transport) -> None:
        """The way-back probe found the hub's first way in open: move the link back to it."""
        session = self._session
        if session is None or session.end is not None or session.link.hub.name != hub:
            return
        self._dialer.forget_preference(hub)
        session.end = LinkEnd(reason=f"returning to {way.label}", renew=True, way_back=True)

    def _serve(self, link: PahoLink) -> LinkEnd | None:
        """Serve ``link`` until it ends (returned) or the client closes (None)."""
        session = self._session
        assert session is not None and session.link is link
        with selectors.DefaultSelector() as selector:
            selector.register(self._wake_r, selectors.EVENT_READ)
            selector.register(link.fileno(), selectors.EVENT_READ)
            self._io_mask = selectors.EVENT_READ
            while session.end is None and not self._closing.is_set():
                self._serve_once(session, selector)
        if self._closing.is_set():
            link.disconnect()
            self._set_status(connected=False)
            return None
        assert session.end is not None
        if session.end.migrate is None and not session.end.renew:
            link.abort()  # a no-op when the link closed itself; the migration keeps it until then
        return session.end

    def _migrate(
        self, old: PahoLink, migrate: fsm.Migrate
    ) -> tuple[PahoLink | None, fsm.Attempt | None]:
        """Make before break: connect to the new hub, then leave the old one.

        Messages in flight on the old link go back in line and are sent first on
        the new one, with their ids, so nothing is lost or reordered. If the new
        hub cannot be reached, the device stays on the old link.
        """
        now = time.monotonic()
        self._emit(
            events.Migrating(
                at=now, from_hub=migrate.from_hub, to_hub=migrate.to_hub, reason=migrate.reason
            )
        )
        target = self._sources.endpoint(migrate.to_hub)
        self._metrics.add(attempts=1)
        try:
            new = self._open_link(target)
        except ConnectError as exc:
            return self._migration_failed(old, target, exc)
        old.disconnect()  # its in-flight messages go back in line, ahead of the rest
        self._resumable = None
        self._on_connected(new)
        return new, None

    def _renew(
        self, old: PahoLink, *, way_back: bool = False
    ) -> tuple[PahoLink | None, fsm.Attempt | None]:
        """Make before break: a new link to the same hub with a fresh identity, then
        close the old one. Its in-flight messages go back in line, ahead of the rest.

        Not a failure and not a failover: no backoff, nothing fed to the machine.
        If the new link cannot be opened, the old one serves on (its identity is
        still valid) and the renewal is tried again later, before the expiry.
        ``way_back``: the same, to return to the hub's first way in (the dialer
        races the ways in their configured order again).
        """
        hub = self._sources.endpoint(old.hub.name) if old.hub.name in self._machine.hubs else None
        session = self._session
        assert session is not None
        session.end = None
        if hub is None:
            self._renewal.clear()  # the hub was withdrawn: the machine moves us soon anyway
            return old, None
        if not way_back:
            self._emit(events.RenewingCredentials(at=time.monotonic(), hub=hub.name))
        try:
            new = self._dialer.open(hub)
        except ConnectError as exc:
            if self._closing.is_set():
                return old, None
            now = time.monotonic()
            if way_back:
                self._way_back.connected(hub, old.transport, now)  # probe again later
            else:
                self._renewal.postpone(now)
            self._emit(events.AttemptFailed(at=now, hub=hub.name, address=exc.address, error=exc))
            return old, None
        old.disconnect()  # its in-flight messages go back in line, ahead of the rest
        self._resumable = None
        self._on_connected(new, renewal=True, way_back=way_back)
        if way_back and new.transport != old.transport:
            self._metrics.add(transport_returns=1)
            self._emit(
                events.TransportReturned(
                    at=time.monotonic(),
                    hub=hub.name,
                    address=new.address,
                    from_transport=old.transport.label,
                    to_transport=new.transport.label,
                )
            )
        return new, None

    def _migration_failed(
        self, old: PahoLink, target: HubEndpoint, error: ConnectError
    ) -> tuple[PahoLink | None, fsm.Attempt | None]:
        now = time.monotonic()
        self._emit(
            events.AttemptFailed(at=now, hub=target.name, address=error.address, error=error)
        )
        actions = self._machine.handle(
            fsm.AttemptFailed(hub=target.name, kind=self._failure_kind(target, error)), now
        )
        attempt = self._single(actions)
        if old.hub.name in self._machine.hubs:
            self._machine.handle(fsm.Connected(hub=old.hub.name), now)
            assert self._session is not None
            self._session.end = None
            return old, None  # still healthy: carry on where we were
        old.disconnect()  # the old hub was withdrawn: follow the machine
        self._session = None
        self._set_status(connected=False)
        self._outbox.rewind()
        return None, attempt

    def _serve_once(self, session: LinkSession, selector: selectors.BaseSelector) -> None:
        link = session.link
        # From here on a publish() or a command sends a wake-up byte; one that came
        # while the last cycle ran did not need to, as this drain takes it.
        self._wake_pending = False
        self._run_mailbox()
        self._run_commands(link)
        published = self._puts != self._puts_seen
        streaming = published and bool(session.inflight)  # new messages while others fly
        session.drain()
        now = time.monotonic()
        if now >= self._next_sweep:
            self._sweep_expired(now)
        next_check = session.check_liveness(now)
        if session.end is not None or next_check is None:
            return
        self._check_identity(session, now)
        mask = selectors.EVENT_READ | (selectors.EVENT_WRITE if link.want_write() else 0)
        if mask != self._io_mask:  # a system call saved on nearly every cycle
            selector.modify(link.fileno(), mask)
            self._io_mask = mask
        buffered = link.has_buffered_input()
        readable, writable = buffered, False
        timeout = 0.0 if buffered else self._sleep_until(next_check, now)
        self._batch_while_streaming(session, published=published, streaming=streaming)
        for key, ready in selector.select(timeout):
            if key.fileobj is self._wake_r:
                with contextlib.suppress(BlockingIOError):
                    self._wake_r.recv(4096)
            else:
                readable = buffered or bool(ready & selectors.EVENT_READ)
                writable = bool(ready & selectors.EVENT_WRITE)
        if session.end is None:
            link.service(readable=readable, writable=writable)
        now = time.monotonic()
        self._sources.tick(now)
        self._way_back.tick(now)

    def _check_identity(self, session: LinkSession, now: float) -> None:
        """Announce an identity's coming expiry; end the link for renewal when it is due."""
        expires = self._renewal.warning_due(now)
        if expires is not None:
            hub = session.link.hub.name
            left = expires - time.time()
            self._emit(events.CredentialExpiring(at=now, hub=hub, expires_at=expires, seconds=left))
        if self._renewal.renewal_due(now):
            session.end = LinkEnd(reason="renewing credentials before they expire", renew=True)

    def _batch_while_streaming(
        self, session: LinkSession, *, published: bool, streaming: bool
    ) -> None:
        """While the application publishes in a stream, let messages and PUBACKs pile up a moment.

        Why: otherwise the engine wakes for every publish() and every PUBACK and
        sends one PUBLISH per wake-up, and each wake-up takes the GIL from the
        publishing thread just as it returns from its outbox commit; with a
        durable outbox that hand-off costs more than the commit. Pausing for
        ``publish_batch_delay`` lets the publisher store several messages, and
        the engine then sends them (and handles the PUBACKs that came meanwhile)
        in one go, as Nagle's algorithm does for small TCP segments.

        When: batching starts once publish() is called while earlier messages
        are still in flight (``streaming``), and stops as soon as a pause passes
        without a publish() (the application is waiting for its PUBACKs, or has
        stopped). So a lone message, or an application that waits for each
        PUBACK before the next publish(), never waits; and a full window is never
        held back, because the pause also needs room in the window.
        """
        self._batching = self._batching or streaming
        delay = self.config.publish_batch_delay
        if self._batching and published and delay > 0 and session.inflight and session.has_room():
            before = self._puts
            time.sleep(delay)
            self._batching = self._puts != before
        self._puts_seen = self._puts

    def _sleep_until(self, next_check: float, now: float) -> float:
        """How long the loop may wait: until the watchdog, a probe or a concierge poll is due."""
        due = min(self._sources.next_due(), self._renewal.next_due(), self._way_back.next_due())
        wake_at = min(next_check, due, now + _MAX_IDLE_WAIT)
        return max(0.0, wake_at - now)

    def _run_commands(self, link: PahoLink) -> None:
        while True:
            with self._lock:
                if not self._commands:
                    return
                command = self._commands.popleft()
            command(link)

    def _after_link(self, link: PahoLink, end: LinkEnd) -> fsm.Attempt | None:
        now = time.monotonic()
        session = self._session
        poison = None
        if self._poison is not None and session is not None:
            poison = self._poison.link_ended(session, end)
        if self.config.session_expiry and not end.fresh_session and poison is None:
            self._resumable = session  # its session (and in-flight messages) may resume
        if poison is not None and session is not None:
            session.give_up(poison, self._poison_error(link, poison))
        self._session = None
        self._set_status(connected=False)
        self._metrics.set(current_hub=None)
        self._outage_started = now
        self._backoff = self._backoff.link_down(now, self.config.retry, busy=end.busy)
        if end.refused:  # e.g. a token the hub now takes for expired: ask for a fresh one
            self._refused.refused(link.hub.name)
        self._metrics.add(disconnects=1)
        error: LinkLost
        if end.protocol_error:
            self._metrics.add(protocol_errors=1)
            error = ProtocolError(end.reason, hub=link.hub.name)
        else:
            error = LinkLost(end.reason, hub=link.hub.name, unresponsive=end.unresponsive)
        self._emit(events.Disconnected(at=now, hub=link.hub.name, error=error))
        self._emit(events.QueueDepth(at=now, depth=self._outbox.depth()))
        if end.redirect:
            target = self._sources.hub_for_reference(end.server_reference)
            actions = self._machine.handle(fsm.Redirect(hub=link.hub.name, target=target), now)
        else:
            actions = self._machine.handle(
                fsm.LinkDown(hub=link.hub.name, unresponsive=end.unresponsive), now
            )
        return self._single(actions)

    def _poison_error(self, link: PahoLink, message: OutboundMessage) -> PoisonMessage:
        return PoisonMessage(
            f"{link.hub.name} dropped the link {self.config.poison_after} times in a row "
            "right after this message (MQTT 3.1.1 has no other way to refuse one)",
            hub=link.hub.name,
            message_id=message.message_id,
            topic=message.topic,
        )

    def _deliver(self, received: Received) -> None:
        """Hand a received message to every matching handler, on the callback thread.

        Its PUBACK (QoS 1) is sent at once with ``command_ack = "on_receipt"``, or
        when no handler matched; else once every handler returned (see
        :class:`~device_sdk.engine.dispatch.AckWhenHandled`).
        """
        session = self._session
        message, mid = received.message, received.mid
        topic = message.topic
        self._settle_request(message)
        with self._lock:
            handlers = [
                (flt, h)
                for flt, (_q, h) in self._subscriptions.items()
                if topic_matches(flt, topic)
            ]
        ack = None
        if message.qos > 0 and session is not None:
            if handlers and self.config.command_ack == "after_handler":
                ack = AckWhenHandled(len(handlers), lambda: self._post_ack(session, mid, message))
            else:
                session.link.ack(mid, message.qos)
        for flt, handler in handlers:
            delivered = replace(message, subscription=flt)
            # Dropped (the handlers are far behind): not acknowledged on this link, so a
            # resumed session delivers it again rather than lose it.
            self._dispatcher.submit(call_handler(handler, delivered, ack))

    def _settle_request(self, message: Message) -> None:
        correlation = message.properties.correlation_data
        if correlation is None:
            return
        with self._lock:
            waiting = self._requests.get(correlation)
            if waiting is None or waiting[0] != message.topic:
                return
            del self._requests[correlation]
        if not waiting[1].done():
            waiting[1].set_result(message)

    def _post_ack(self, session: LinkSession, mid: int, message: Message) -> None:
        """From the last handler's thread: acknowledge on the engine thread, on its link."""
        self._post(lambda: self._send_ack(session, mid, message.qos))

    def _send_ack(self, session: LinkSession, mid: int, qos: int) -> None:
        # Only on the connection the message came on: a packet id means nothing on
        # another, and the hub delivers an unacknowledged message again on a resumed
        # session anyway. (A resumed link is the same PahoLink but a new LinkSession.)
        if self._session is session and session.end is None:
            session.link.ack(mid, qos)

    # -- what the machine asks for between attempts ------------------------------------------

    def _feed(self, event: fsm.Input) -> None:
        """Hand the machine an input from a side source (concierge, SRV, probe)."""
        self._follow(self._machine.handle(event, time.monotonic()))

    def _follow(self, actions: tuple[fsm.Action, ...]) -> None:
        """Carry out what the machine asked for outside an attempt's own result."""
        attempt = self._single(actions)
        if attempt is not None:
            self._next = attempt  # the recovery cycle picks it up at its next step
        for action in actions:
            if isinstance(action, fsm.Migrate) and self._session is not None:
                self._session.end = LinkEnd(reason=action.reason, migrate=action)

    # -- plumbing ---------------------------------------------------------------------------

    def _post(self, callback: Callable[[], None]) -> None:
        """From any thread: run ``callback`` on the engine thread soon."""
        with self._lock:
            self._mailbox.append(callback)
        self._interrupt.set()
        self._wake()

    def _run_mailbox(self) -> None:
        while True:
            with self._lock:
                if not self._mailbox:
                    return
                callback = self._mailbox.popleft()
            callback()

    def _command(self, command: Callable[[PahoLink], None]) -> None:
        with self._lock:
            if self._session is None:
                return  # applied from the registry on the next connect
            self._commands.append(command)
        self._wake()

    def _wake(self) -> None:
        if self._wake_pending:
            return  # already on its way (a racy read: at worst one extra byte is sent)
        with self._lock:
            if self._wake_pending:
                return
            self._wake_pending = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def _emit(self, event: events.Event) -> None:
        level = (
            logging.WARNING
            if isinstance(event, events.AttemptFailed | events.Disconnected)
            else logging.INFO
        )
        log.log(level, "%s", event.describe())
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            self._dispatcher.submit(lambda cb=listener: cb(event))  # type: ignore[misc]


def _failure_kind(error: ConnectError) -> FailureKind:
    if isinstance(error, PermanentRefusal | TlsError):
        return FailureKind.PERMANENT
    if isinstance(error, ConnectTimeout):
        return FailureKind.UNRESPONSIVE
    if isinstance(error, HubBusy):
        return FailureKind.BUSY
    return FailureKind.TRANSIENT


def _takes_options(outbox: Outbox) -> bool:
    """True when ``outbox.put`` accepts the publish options as keywords."""
    try:
        parameters = inspect.signature(outbox.put).parameters
    except (TypeError, ValueError):
        return True  # cannot tell: assume it does, so its own TypeError is passed on
    names = {"retain", "properties", "ttl", "priority"}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return True
    return names <= parameters.keys()


def close_outbox(outbox: Outbox, error: DeviceSDKError) -> None:
    """Close ``outbox`` so that its waiting handles raise ``error``.

    An application's own Outbox may predate the ``error`` argument: it is then
    closed the old way, and its handles raise ClientClosed.
    """
    try:
        outbox.close(error=error)
    except TypeError:
        outbox.close()


def open_outbox(settings: OutboxSettings) -> Outbox:
    """The outbox the settings ask for: in memory, or durable SQLite at ``settings.path``."""
    if settings.path is None:
        return MemoryOutbox(
            max_messages=settings.max_messages,
            max_bytes=settings.max_bytes,
            overflow=settings.overflow,
        )
    from device_sdk.adapters.sqlite_outbox import SqliteOutbox

    return SqliteOutbox(
        settings.path,
        max_messages=settings.max_messages,
        max_bytes=settings.max_bytes,
        overflow=settings.overflow,
        synchronous=settings.synchronous,
    )
