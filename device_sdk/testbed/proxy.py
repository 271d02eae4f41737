"""A fault-injecting TCP proxy on loopback: forward, blackhole, drop SYNs or reset a hub's traffic.

Clients dial the proxy; the proxy dials the target (a broker) once per client
connection and copies bytes both ways. A test then changes the mode:

* `FaultProxy.blackhole`: nothing moves in either direction and nothing is
  closed (no FIN, no RST), like a firewall silently dropping packets. The
  proxy simply stops reading and writing; bytes in flight wait in kernel
  buffers, as unacknowledged segments wait in a real sender's retransmission
  queue, and flow again after `restore` (exactly what TCP delivers once a
  firewall rule is lifted, if neither end gave up first). Without root the
  kernel still completes new TCP handshakes, so a new connection succeeds and
  then hears nothing; it is dialled upstream only after `restore`, unless the
  client has given up by then (`drop_syns` completes none).
* `FaultProxy.drop_syns`: a port behind a firewall that drops SYNs (8883
  blocked, say): a new connection never completes its TCP handshake, so a
  Happy-Eyeballs race cannot mistake it for a winner, and existing
  connections are blackholed as above. Without root this is the listener's
  accept queue made full: the proxy stops accepting, sets the backlog to 0
  (Linux lets ``listen()`` be called again on a listening socket to change
  it) and connects filler sockets of its own until one's handshake does not
  complete, proof that the kernel now drops SYNs to the port. A connection
  whose handshake completed before the switch waits in the queue, like a
  blackholed one. `restore` closes the fillers, sets the backlog back and
  accepts again; the fillers' queued connections are recognised by their
  addresses and discarded, never dialled upstream nor counted.
* `FaultProxy.reset`: every connection is closed with RST on both sides, and
  new ones are accepted and reset at once.
* `FaultProxy.restore`: forward again.

With ``ProxySpec.link`` set, forwarded bytes cross a shaped link instead of
loopback (latency with jitter, a bandwidth cap, stalls; see
:mod:`device_sdk.testbed.link_shaper`): each connection gets its own shaping,
seeded from ``ProxySpec.seed`` and its number, and bytes are held until their
delivery time, in order, never dropped. Held bytes count against
``buffer_limit``, so a slow link slows the sender down as TCP would. A
blackhole freezes held bytes too; they are delivered after `restore`.

One module past 500 lines on purpose: every mode and the shaping act on the
same pipes from the same selector thread, and split apart they would share
its private state. The shaping arithmetic itself lives in link_shaper.

A mode method returns once the proxy thread has applied the mode, so no byte
is forwarded after `blackhole()` returns. A peer's RST is passed on as RST and
a peer's FIN as FIN (half-close is kept). One thread serves every connection
through a selector; `stop` is prompt and bounded.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import queue
import random
import select
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from types import TracebackType
from typing import Self

from device_sdk.errors import ConfigError, TestbedError
from device_sdk.testbed.link_shaper import DirectionShaper, HeldBytes, LinkProfile, StallSchedule
from device_sdk.testbed.loop_thread import LoopThread, SelectorLoop
from device_sdk.testbed.ports import address_family, bind_socket

__all__ = ["FaultProxy", "ProxyMode", "ProxySpec"]

_COMMAND_TIMEOUT = 5.0
_STOP_TIMEOUT = 5.0
_CHUNK = 65536
_BACKLOG = 128
# A filler whose handshake has not completed after this long had its SYN
# dropped. (A slow one is harmless: with backlog 0, one queued filler is enough.)
_FILLER_SETTLE = 0.05
_FILLER_LIMIT = 8
_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
# SO_LINGER on with a zero timeout: close() sends RST and drops unsent data.
_LINGER_RESET = struct.pack("ii", 1, 0)


class ProxyMode(enum.Enum):
    """What the proxy does with traffic."""

    FORWARD = "forward"
    BLACKHOLE = "blackhole"
    DROP_SYN = "drop_syn"
    RESET = "reset"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxySpec:
    """Where the proxy listens and what it forwards to.

    ``listen_port=0`` picks a free port. ``buffer_limit`` caps the bytes held
    per direction before the proxy stops reading from the sender, so a slow
    reader slows the writer down as it would without a proxy. ``link`` shapes
    every connection as that kind of link (None: loopback as it is), with
    random draws seeded from ``seed``.
    """

    target_host: str
    target_port: int
    listen_host: str = "127.0.0.1"
    listen_port: int = 0
    buffer_limit: int = 256 * 1024
    link: LinkProfile | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        address_family(self.target_host)
        address_family(self.listen_host)
        if not 1 <= self.target_port <= 65535:
            raise ConfigError("target_port", self.target_port, "1 to 65535")
        if not 0 <= self.listen_port <= 65535:
            raise ConfigError("listen_port", self.listen_port, "0 (pick a free port) to 65535")
        if self.buffer_limit < 1:
            raise ConfigError("buffer_limit", self.buffer_limit, "a positive number of bytes")


class FaultProxy:
    """A TCP proxy in front of one target whose faults a test switches at run time."""

    def __init__(self, spec: ProxySpec) -> None:
        self.spec = spec
        self._port = spec.listen_port
        self._mode = ProxyMode.FORWARD
        self._accepted_earlier = 0  # by runs before the current start()
        self._loop: _ProxyLoop | None = None
        self._thread: LoopThread | None = None

    @property
    def host(self) -> str:
        return self.spec.listen_host

    @property
    def port(self) -> int:
        """The port clients dial (known once started when created with ``listen_port=0``)."""
        return self._port

    @property
    def target(self) -> tuple[str, int]:
        return self.spec.target_host, self.spec.target_port

    @property
    def mode(self) -> ProxyMode:
        return self._mode if self._loop is None else self._loop.mode

    @property
    def accepted_connections(self) -> int:
        """How many client connections the proxy has accepted, over all its runs."""
        return self._accepted_earlier + (0 if self._loop is None else self._loop.accepted)

    @property
    def open_connections(self) -> int:
        """How many client connections are open right now (held ones included)."""
        return 0 if self._loop is None else self._loop.open_pipes

    def start(self) -> None:
        """Listen and start the proxy thread."""
        if self._thread is not None:
            raise TestbedError(f"proxy on {self.host}:{self.port} already started")
        listener = bind_socket(self.host, self._port, socket.SOCK_STREAM)
        listener.listen(_BACKLOG)
        self._port = listener.getsockname()[1]
        self._loop = _ProxyLoop(self.spec, listener, self._mode)
        self._thread = LoopThread(self._loop, f"fault-proxy-{self._port}")

    def stop(self, timeout: float = _STOP_TIMEOUT) -> None:
        """Close every connection and the listener; waits at most ``timeout``. Idempotent."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        thread.stop(timeout, "proxy")
        self._mode = loop.mode
        self._accepted_earlier += loop.accepted
        self._thread = self._loop = None

    def __enter__(self) -> Self:
        if self._thread is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def blackhole(self) -> None:
        """Stop all traffic silently, for existing and new connections."""
        self._switch(ProxyMode.BLACKHOLE)

    def drop_syns(self) -> None:
        """Let no new TCP handshake complete (SYNs dropped); blackhole existing connections."""
        self._switch(ProxyMode.DROP_SYN)

    def reset(self) -> None:
        """Reset every connection (RST both ways) and reset new ones at once."""
        self._switch(ProxyMode.RESET)

    def restore(self) -> None:
        """Forward again; connections held by a blackhole resume where they stopped."""
        self._switch(ProxyMode.FORWARD)

    def _switch(self, mode: ProxyMode) -> None:
        if self._loop is None:
            self._mode = mode  # takes effect at start()
        else:
            self._loop.call(partial(self._loop.apply_mode, mode))


@dataclass(slots=True)
class _Command:
    """A call for the proxy thread, and how the caller learns it ran (or failed)."""

    command: Callable[[], None]
    done: threading.Event = field(default_factory=threading.Event)
    failure: Exception | None = None


class _Side:
    """One socket of a proxied connection and the bytes waiting to be written to it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.outbox = bytearray()
        self.eof = False  # the peer sent FIN: nothing more to read
        self.shut = False  # we sent FIN: nothing more to write
        self.link: HeldBytes | None = None  # shaped bytes on their way to this side

    @property
    def pending(self) -> int:
        """Bytes on their way to this socket: held by the link or waiting to be written."""
        return len(self.outbox) + (0 if self.link is None else self.link.size)

    def release(self, now: float) -> bool:
        """Move the shaped bytes that are due into the outbox; whether any moved."""
        due = b"" if self.link is None else self.link.take_due(now)
        self.outbox += due
        return bool(due)


class _Pipe:
    """A client connection and, once dialled, its upstream connection."""

    def __init__(self, client: socket.socket, link: LinkProfile | None, rng: random.Random) -> None:
        self.client = _Side(client)
        self.upstream: _Side | None = None
        self.connecting = False
        self._link = link
        self._rng = rng
        if link is not None:
            self._stalls = StallSchedule(link, rng, time.monotonic())
            shaper = DirectionShaper(link, link.downlink_bps, rng, self._stalls)
            self.client.link = HeldBytes(shaper)

    def attach_upstream(self, sock: socket.socket) -> _Side:
        self.upstream = _Side(sock)
        if self._link is not None:
            link = self._link
            shaper = DirectionShaper(link, link.uplink_bps, self._rng, self._stalls)
            self.upstream.link = HeldBytes(shaper)
        return self.upstream

    def sides(self) -> list[_Side]:
        return [self.client] if self.upstream is None else [self.client, self.upstream]

    def other(self, side: _Side) -> _Side | None:
        return self.upstream if side is self.client else self.client

    @property
    def finished(self) -> bool:
        return all(side.eof and side.shut and not side.pending for side in self.sides())


class _ProxyLoop(SelectorLoop):
    """The proxy thread: a selector over the listener, every pipe's sockets and a waker."""

    def __init__(self, spec: ProxySpec, listener: socket.socket, mode: ProxyMode) -> None:
        self.spec = spec
        self.mode = mode
        self.accepted = 0
        self.open_pipes = 0
        self._listener = listener
        self._pipes: set[_Pipe] = set()
        self._fillers: list[socket.socket] = []
        self._filler_peers: set[tuple[str, int]] = set()
        self._commands: queue.SimpleQueue[_Command] = queue.SimpleQueue()
        super().__init__()
        for sock, handler in ((listener, self._accept), (self._wake_reader, self._run_commands)):
            sock.setblocking(False)
            self._selector.register(sock, _READ, handler)
        if mode is ProxyMode.DROP_SYN:
            self._close_port()  # before the thread starts, so this thread may do it

    # -- called from other threads -------------------------------------------

    def call(self, command: Callable[[], None]) -> None:
        """Run ``command`` on the proxy thread and wait (bounded) until it has run."""
        queued = _Command(command)
        self._commands.put(queued)
        self.wake()
        if not queued.done.wait(_COMMAND_TIMEOUT):
            raise TestbedError("the proxy thread did not respond within 5 s")
        if queued.failure is not None:
            raise TestbedError(f"the proxy could not switch: {queued.failure}") from queued.failure

    # -- the loop ------------------------------------------------------------

    def run(self) -> None:
        """Serve as `SelectorLoop.run` does, waking also when shaped bytes fall due."""
        try:
            while not self._stopping.is_set():
                for key, mask in self._selector.select(self._until_next_delivery()):
                    key.data(mask)
                self._deliver_due()
        finally:
            self._shut_down()

    def _until_next_delivery(self) -> float | None:
        if self.mode is not ProxyMode.FORWARD:
            return None  # held bytes stay frozen until restore() (a command wakes us)
        due = [s.link.next_due for p in self._pipes for s in p.sides() if s.link and s.link.size]
        return min((max(0.0, d - time.monotonic()) for d in due if d is not None), default=None)

    def _deliver_due(self) -> None:
        if self.mode is not ProxyMode.FORWARD:
            return
        now = time.monotonic()
        for pipe in list(self._pipes):
            for side in pipe.sides():
                if pipe in self._pipes and side.release(now):
                    self._on_released(pipe, side)

    def _on_released(self, pipe: _Pipe, side: _Side) -> None:
        try:
            _flush(side, pipe.other(side))
        except OSError:
            self._abort(pipe)
            return
        if pipe.finished:
            self._close(pipe)
        else:
            self._refresh(pipe)

    def apply_mode(self, mode: ProxyMode) -> None:
        if self.mode is ProxyMode.DROP_SYN and mode is not ProxyMode.DROP_SYN:
            self._open_port()
        elif mode is ProxyMode.DROP_SYN and self.mode is not ProxyMode.DROP_SYN:
            self._close_port()
        self.mode = mode
        for pipe in list(self._pipes):
            if mode is ProxyMode.RESET:
                self._abort(pipe)
            elif mode is ProxyMode.FORWARD and pipe.upstream is None:
                self._dial_held(pipe)
            else:
                self._refresh(pipe)

    def _run_commands(self, _mask: int) -> None:
        with contextlib.suppress(BlockingIOError):
            self._wake_reader.recv(4096)
        while True:
            try:
                queued = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                queued.command()
            except (OSError, TestbedError) as exc:
                queued.failure = exc  # the caller raises it; the proxy keeps serving
            finally:
                queued.done.set()

    def _accept(self, _mask: int) -> None:
        try:
            sock, address = self._listener.accept()
        except BlockingIOError:
            return
        if address[:2] in self._filler_peers:
            self._filler_peers.discard(address[:2])
            sock.close()  # one of our own fillers from a drop_syns(): never forwarded
            return
        self.accepted += 1
        sock.setblocking(False)
        if self.mode is ProxyMode.RESET:
            _close_with_reset(sock)
            return
        rng = random.Random(f"{self.spec.seed}:{self.accepted}")
        pipe = _Pipe(sock, self.spec.link, rng)
        self._pipes.add(pipe)
        self.open_pipes = len(self._pipes)
        if self.mode is ProxyMode.FORWARD:
            self._dial(pipe)

    # -- dropping SYNs ---------------------------------------------------------

    def _close_port(self) -> None:
        """Fill the accept queue so the kernel drops every new SYN to the listener."""
        self._selector.unregister(self._listener)  # accepting would make room again
        self._listener.listen(0)
        address = self._listener.getsockname()
        for _ in range(_FILLER_LIMIT):
            filler = socket.socket(self._listener.family, socket.SOCK_STREAM)
            self._fillers.append(filler)
            filler.setblocking(False)
            filler.connect_ex(address)
            if not _handshake_completes(filler, _FILLER_SETTLE):
                return  # this SYN was dropped: the queue is full
        self._open_port()  # leave the proxy as it was: forwarding mode unchanged
        raise TestbedError(f"the accept queue of port {address[1]} never filled up")

    def _open_port(self) -> None:
        # Only a filler whose handshake completed waits in the queue to be discarded;
        # the one whose SYN was dropped left nothing there.
        self._filler_peers.update(f.getsockname()[:2] for f in self._fillers if _connected(f))
        # Close every filler before the backlog grows, so no late SYN retry of a
        # dropped one completes afterwards and is taken for a client.
        self._close_fillers()
        self._listener.listen(_BACKLOG)
        self._selector.register(self._listener, _READ, self._accept)

    def _close_fillers(self) -> None:
        for filler in self._fillers:
            filler.close()
        self._fillers.clear()

    def _dial_held(self, pipe: _Pipe) -> None:
        # A connection accepted during a blackhole is dialled now, like a SYN
        # retransmitted after a firewall rule is lifted; unless the client has
        # already given up, in which case nothing ever reaches the target.
        if _peer_gone(pipe.client.sock):
            self._close(pipe)
        else:
            self._dial(pipe)

    def _dial(self, pipe: _Pipe) -> None:
        target = (self.spec.target_host, self.spec.target_port)
        upstream = socket.socket(address_family(self.spec.target_host), socket.SOCK_STREAM)
        upstream.setblocking(False)
        pipe.attach_upstream(upstream)
        status = upstream.connect_ex(target)
        if status not in (0, errno.EINPROGRESS):
            self._abort(pipe)  # the target refused: the client sees a reset
            return
        pipe.connecting = status != 0
        self._refresh(pipe)

    # -- moving bytes --------------------------------------------------------

    def _on_event(self, pipe: _Pipe, side: _Side, mask: int) -> None:
        if pipe not in self._pipes or self.mode is not ProxyMode.FORWARD:
            # A stale event from the same select() batch as a mode change or a
            # close: acting on it would move bytes the test believes stopped.
            return
        try:
            if side is pipe.upstream and pipe.connecting:
                self._finish_connect(pipe, side)
            else:
                if mask & _WRITE:
                    _flush(side, pipe.other(side))
                if mask & _READ:
                    self._receive(pipe, side)
        except OSError:
            self._abort(pipe)  # a reset or broken pipe on one side resets the other too
            return
        if pipe.finished:
            self._close(pipe)
        elif pipe in self._pipes:
            self._refresh(pipe)

    def _finish_connect(self, pipe: _Pipe, upstream: _Side) -> None:
        status = upstream.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if status:
            raise ConnectionRefusedError(status, "upstream connect failed")
        pipe.connecting = False

    def _receive(self, pipe: _Pipe, side: _Side) -> None:
        other = pipe.other(side)
        assert other is not None  # we read only once the upstream exists
        try:
            data = side.sock.recv(_CHUNK)
        except BlockingIOError:
            return
        if data and other.link is not None:
            other.link.add(data, time.monotonic())
            other.release(time.monotonic())  # anything due already (a zero-delay link)
            _flush(other, side)
        elif data:
            other.outbox += data
            _flush(other, side)
        else:
            side.eof = True
            _flush(other, side)  # passes the FIN on once the outbox is empty

    def _refresh(self, pipe: _Pipe) -> None:
        """Register each socket of the pipe for exactly the events it can act on now."""
        for side in pipe.sides():
            wanted = self._interest(pipe, side)
            key = self._selector.get_map().get(side.sock)
            if key is None:
                if wanted:
                    self._selector.register(side.sock, wanted, partial(self._on_event, pipe, side))
            elif not wanted:
                self._selector.unregister(side.sock)
            elif wanted != key.events:
                self._selector.modify(side.sock, wanted, key.data)

    def _interest(self, pipe: _Pipe, side: _Side) -> int:
        if self.mode is not ProxyMode.FORWARD:
            return 0  # blackholed: neither read nor write, so nothing moves
        if pipe.connecting:
            return _WRITE if side is pipe.upstream else 0
        other = pipe.other(side)
        if other is None:
            return 0
        can_take = not side.eof and other.pending < self.spec.buffer_limit
        return (_READ if can_take else 0) | (_WRITE if side.outbox else 0)

    # -- closing -------------------------------------------------------------

    def _close(self, pipe: _Pipe) -> None:
        self._forget(pipe)
        for side in pipe.sides():
            side.sock.close()

    def _abort(self, pipe: _Pipe) -> None:
        self._forget(pipe)
        for side in pipe.sides():
            _close_with_reset(side.sock)

    def _forget(self, pipe: _Pipe) -> None:
        for side in pipe.sides():
            if side.sock in self._selector.get_map():
                self._selector.unregister(side.sock)
        self._pipes.discard(pipe)
        self.open_pipes = len(self._pipes)

    def _shut_down(self) -> None:
        for pipe in list(self._pipes):
            self._close(pipe)
        self._close_fillers()
        self._selector.close()
        self._listener.close()
        self._wake_reader.close()
        while True:  # release callers whose command will never run
            try:
                queued = self._commands.get_nowait()
            except queue.Empty:
                break
            queued.done.set()


def _flush(side: _Side, source: _Side | None) -> None:
    """Write what ``side`` has waiting; send FIN once its source has ended and all is written."""
    if side.outbox:
        try:
            sent = side.sock.send(side.outbox)
        except BlockingIOError:
            return
        del side.outbox[:sent]
    if not side.pending and source is not None and source.eof and not side.shut:
        side.sock.shutdown(socket.SHUT_WR)
        side.shut = True


def _handshake_completes(sock: socket.socket, timeout: float) -> bool:
    """True once the non-blocking ``connect`` of ``sock`` has succeeded within ``timeout``."""
    _readable, writable, _failed = select.select([], [sock], [], timeout)
    if not writable:
        return False
    status = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if status:
        raise TestbedError(f"a filler connection failed: {errno.errorcode.get(status, status)}")
    return True


def _connected(sock: socket.socket) -> bool:
    try:
        sock.getpeername()
    except OSError:
        return False  # still in SYN_SENT
    return True


def _close_with_reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    sock.close()


def _peer_gone(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False  # open, nothing sent yet
    except OSError:
        return True
