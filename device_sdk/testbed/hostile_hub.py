"""A scripted hostile MQTT hub on loopback: it says exactly the bytes a test tells it to.

A real broker only ever sends valid MQTT. To test what a device does with a hub
that breaks the protocol (a malformed or forbidden packet, a second CONNACK, a
PUBLISH announcing 268 MB, bytes dribbled with pauses), :class:`HostileHub`
accepts the device's connection, waits for its CONNECT and answers with a
script::

    connack = encode_packet(0x20, b"\\x00\\x00")
    with HostileHub([connack, Send(encode_packet(0x20, b"\\x00\\x00"), delay=0.1)]) as hub:
        config = ClientConfig(client_id="dev-1", hubs=(hub.endpoint(),))
        ...  # the device sees a second CONNACK 100 ms after the first

A script is a list of steps (bytes, :class:`Send` with a delay, :class:`Flood`
for a huge announced packet), or a *responder*: a callable given every whole
packet the device sends (its CONNECT first) that returns the steps to answer
with. Everything the device sent is recorded per connection
(:meth:`HostileHub.connections`). With ``upstream=(host, port)`` the hub turns
well-behaved after its scripted connections: later connections are relayed to
a real broker (say a testbed mosquitto), so a test can check the device
recovers from the hostile hub through the same hub address.

Bounded and stoppable: one thread serves one connection at a time; every wait
checks the stop flag at least every 50 ms; each connection ends after
``connection_timeout`` seconds, and recording stops at ``max_record`` bytes per
connection. Loopback only: ``host`` must be a loopback IP literal.
"""

from __future__ import annotations

import ipaddress
import select
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Self

from device_sdk.config import HubEndpoint
from device_sdk.errors import TestbedError
from device_sdk.testbed.lifecycle import StartsInContext
from device_sdk.testbed.ports import address_family

__all__ = [
    "Flood",
    "HostileHub",
    "HubConnection",
    "Responder",
    "Send",
    "Step",
    "encode_packet",
    "split_packets",
]

_POLL = 0.05  # how often every wait looks at the stop flag, in seconds
_CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class Send:
    """Bytes to send after waiting ``delay`` seconds (a pause in the middle of a packet
    makes the device read it in pieces)."""

    data: bytes
    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class Flood:
    """A packet's ``header`` (which may announce up to 268 MB), then up to ``filler``
    zero bytes for as long as the device keeps reading (a send that waits more than
    ``stall`` seconds ends the flood)."""

    header: bytes
    filler: int = 1 << 20
    stall: float = 1.0


Step = bytes | Send | Flood
Responder = Callable[[bytes], Iterable[Step]]


def encode_packet(command: int, body: bytes = b"") -> bytes:
    """An MQTT packet: the ``command`` byte (type and flags), the remaining length, ``body``."""
    length, encoded = len(body), bytearray()
    while True:
        byte, length = length % 128, length // 128
        encoded.append(byte | (0x80 if length else 0))
        if not length:
            return bytes([command]) + bytes(encoded) + body


def split_packets(data: bytes) -> tuple[list[bytes], bytes]:
    """Whole MQTT packets at the start of ``data``, and the bytes left after them."""
    packets: list[bytes] = []
    at = 0
    while at < len(data):
        length, shift, header = 0, 0, 1
        while True:
            if at + header >= len(data) or header > 4:
                return packets, data[at:]
            byte = data[at + header]
            length |= (byte & 0x7F) << shift
            shift, header = shift + 7, header + 1
            if not byte & 0x80:
                break
        if at + header + length > len(data):
            break
        packets.append(data[at : at + header + length])
        at += header + length
    return packets, data[at:]


@dataclass(slots=True)
class HubConnection:
    """One connection the hub accepted: its number, whether it was relayed upstream,
    and what the device sent on it."""

    number: int
    relayed: bool
    received: bytearray = field(default_factory=bytearray)
    closed: bool = False

    def packets(self) -> list[bytes]:
        """The whole packets the device sent on this connection, in order."""
        return split_packets(bytes(self.received))[0]


class _Ended(Exception):
    """The connection being served is over (closed by the device, timed out, stopping)."""


class HostileHub(StartsInContext):
    """A loopback MQTT peer that plays a script instead of speaking MQTT.

    ``script``: steps played after the device's CONNECT (or at once, with
    ``wait_for_connect=False``), or a :data:`Responder`. ``after_script``:
    ``"close"`` the connection or ``"hold"`` it open (still recording) once a
    list script is played. The first ``scripted_connections`` connections get
    the script; later ones are relayed to ``upstream`` when given, else closed.
    """

    def __init__(
        self,
        script: Sequence[Step] | Responder,
        *,
        host: str = "127.0.0.1",
        upstream: tuple[str, int] | None = None,
        scripted_connections: int = 1,
        after_script: Literal["close", "hold"] = "hold",
        wait_for_connect: bool = True,
        connection_timeout: float = 30.0,
        max_record: int = 1 << 20,
    ) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise TestbedError(f"a hostile hub listens on loopback only, not {host!r}")
        self.host = host
        self.port = 0
        self._script = script
        self._upstream = upstream
        self._scripted = scripted_connections
        self._after_script = after_script
        self._wait_for_connect = wait_for_connect
        self._connection_timeout = connection_timeout
        self._max_record = max_record
        self._lock = threading.Lock()
        self._accepted = threading.Condition(self._lock)
        self._connections: list[HubConnection] = []
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        listener = socket.socket(address_family(self.host), socket.SOCK_STREAM)
        try:
            listener.bind((self.host, 0))
            listener.listen(8)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        self._listener, self.port = listener, listener.getsockname()[1]
        self._thread = threading.Thread(
            target=self._serve, name=f"hostile-hub-{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, close every socket and join the thread."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TestbedError(f"hostile hub on port {self.port} did not stop in {timeout} s")
        if self._listener is not None:
            self._listener.close()

    # -- what tests use ----------------------------------------------------------------------

    def endpoint(self, name: str = "hostile") -> HubEndpoint:
        """The HubEndpoint a device uses for this hub (plain MQTT, at its IP literal)."""
        return HubEndpoint(name=name, fqdn=self.host, port=self.port, tls=None)

    def connections(self) -> list[HubConnection]:
        """The connections accepted so far (each still filling while it is served)."""
        with self._lock:
            return list(self._connections)

    def wait_for_connections(self, count: int, timeout: float) -> list[HubConnection]:
        """Wait until ``count`` connections were accepted; TestbedError after ``timeout``."""
        with self._accepted:
            if not self._accepted.wait_for(lambda: len(self._connections) >= count, timeout):
                raise TestbedError(
                    f"hostile hub: {len(self._connections)} of {count} connections "
                    f"within {timeout} s"
                )
            return list(self._connections)

    # -- the serving thread ------------------------------------------------------------------

    def _serve(self) -> None:
        assert self._listener is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            while not self._stopping.is_set():
                if not selector.select(_POLL):
                    continue
                try:
                    sock, _peer = self._listener.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                with sock:
                    self._serve_one(sock)

    def _serve_one(self, sock: socket.socket) -> None:
        with self._accepted:
            number = len(self._connections)
            relayed = number >= self._scripted and self._upstream is not None
            connection = HubConnection(number=number, relayed=relayed)
            self._connections.append(connection)
            self._accepted.notify_all()
        if number >= self._scripted and self._upstream is None:
            connection.closed = True
            return
        sock.setblocking(False)
        session = _Session(self, sock, connection, time.monotonic() + self._connection_timeout)
        try:
            if relayed:
                assert self._upstream is not None
                session.relay(self._upstream)
            else:
                session.play(self._script)
        except (_Ended, OSError):
            pass
        finally:
            connection.closed = True


class _Session:
    """Serving one connection: reads are recorded, writes honour delays and the deadline."""

    def __init__(
        self, hub: HostileHub, sock: socket.socket, connection: HubConnection, deadline: float
    ) -> None:
        self._hub = hub
        self._sock = sock
        self._connection = connection
        self._deadline = deadline
        self._unparsed = b""

    def _check(self) -> float:
        """Seconds left for this connection; _Ended when it is over."""
        left = self._deadline - time.monotonic()
        if left <= 0 or self._hub._stopping.is_set():
            raise _Ended
        return left

    def _read_some(self, wait: float) -> list[bytes]:
        """Read what the device sent within ``wait`` seconds; the whole packets it completed."""
        readable, _w = _select([self._sock], [], min(wait, _POLL, self._check()))
        if not readable:
            return []
        data = self._sock.recv(_CHUNK)
        if not data:
            raise _Ended
        room = self._hub._max_record - len(self._connection.received)
        self._connection.received += data[: max(0, room)]
        packets, self._unparsed = split_packets(self._unparsed + data)
        return packets

    def _pause(self, seconds: float) -> list[bytes]:
        """Wait ``seconds`` while recording; the packets the device completed meanwhile."""
        until, packets = time.monotonic() + seconds, []
        while (left := until - time.monotonic()) > 0:
            packets += self._read_some(left)
        return packets

    def _send(self, data: bytes, stall: float = 5.0) -> None:
        view, stall_until = memoryview(data), time.monotonic() + stall
        while view:
            _r, writable = _select([], [self._sock], min(_POLL, self._check()))
            if writable:
                view, stall_until = view[self._sock.send(view[:_CHUNK]) :], time.monotonic() + stall
            elif time.monotonic() > stall_until:
                raise _Ended  # the device stopped reading

    def _step(self, step: Step) -> list[bytes]:
        packets: list[bytes] = []
        if isinstance(step, Send):
            packets = self._pause(step.delay)
            self._send(step.data)
        elif isinstance(step, Flood):
            self._send(step.header)
            self._flood(step)
        else:
            self._send(step)
        return packets

    def _flood(self, flood: Flood) -> None:
        filler = bytes(min(_CHUNK, flood.filler))
        left = flood.filler
        while left > 0:
            self._send(filler[:left], stall=flood.stall)
            left -= len(filler)

    def _first_packets(self) -> list[bytes]:
        packets: list[bytes] = []
        while not packets:
            packets = self._read_some(self._check())
        return packets

    def play(self, script: Sequence[Step] | Responder) -> None:
        packets = self._first_packets() if self._hub._wait_for_connect else []
        if callable(script):
            self._respond(script, packets)
            return
        for step in script:
            self._step(step)
        if self._hub._after_script == "close":
            self._pause(0.02)  # let the last bytes reach the device before the FIN
            return
        while True:
            self._read_some(self._check())

    def _respond(self, responder: Responder, packets: list[bytes]) -> None:
        while True:
            for packet in packets:
                for step in responder(packet):
                    self._step(step)
            packets = self._read_some(self._check())

    def relay(self, upstream: tuple[str, int]) -> None:
        """Be a well-behaved hub: relay both ways to ``upstream``, recording the device."""
        remaining = self._check()
        with socket.create_connection(upstream, timeout=min(remaining, 5.0)) as server:
            server.setblocking(False)
            while True:
                readable, _w = _select([self._sock, server], [], min(_POLL, self._check()))
                if server in readable:
                    data = server.recv(_CHUNK)
                    if not data:
                        raise _Ended
                    _send_all(self._sock, data)
                if self._sock in readable:
                    self._read_and_forward(server)

    def _read_and_forward(self, server: socket.socket) -> None:
        data = self._sock.recv(_CHUNK)
        if not data:
            raise _Ended
        room = self._hub._max_record - len(self._connection.received)
        self._connection.received += data[: max(0, room)]
        _send_all(server, data)


def _select(
    read: list[socket.socket], write: list[socket.socket], timeout: float
) -> tuple[list[socket.socket], list[socket.socket]]:
    readable, writable, _errors = select.select(read, write, [], max(0.0, timeout))
    return readable, writable


def _send_all(sock: socket.socket, data: bytes, timeout: float = 5.0) -> None:
    """Send everything, waiting at most ``timeout`` seconds (a peer that stopped reading)."""
    sock.settimeout(timeout)
    try:
        sock.sendall(data)
    finally:
        sock.setblocking(False)
