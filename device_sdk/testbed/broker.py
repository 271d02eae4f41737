"""A real mosquitto broker on a loopback address, under the test's full control.

::

    with MosquittoBroker(BrokerSpec(name="hub-a", host="127.0.0.2")) as hub:
        ...                     # dial hub.host:hub.port
        hub.kill()              # the crash: SIGKILL, no goodbye to the clients
        hub.restart()           # same host, same ports
        hub.hang()              # SIGSTOP: sockets stay open, nothing answers
        hub.resume()
        assert len(hub.connection_attempts()) == 2

Every signal goes to the one process this object started, through
``subprocess.Popen``, which never signals a PID it has already reaped (so a
recycled PID is never hit).

Gotchas this module handles, so callers need not:

* mosquitto started as root drops privileges to the ``mosquitto`` user before
  it opens its log file; in a private (0700) temp dir that fails and it
  silently logs errors to stderr only. The config says ``user root`` when we
  are root, so the broker keeps access to its own files.
* A SIGSTOPped process handles SIGTERM only once continued, so `stop` sends
  SIGCONT after SIGTERM to a hung broker.
* While hung, the kernel still completes TCP handshakes into the listen
  backlog: clients see ``connect()`` succeed and then silence, exactly like a
  hung hub. Those connections are accepted (and logged) after `resume`.
* mosquitto line-buffers its log file, but it logs a connection only when its
  event loop accepts it, a moment after the client's ``connect()`` returned.
  `connection_attempts` therefore first makes its own sentinel connection to
  every listener and waits for the sentinel's log line: accept queues are
  FIFO, so every earlier connection is then in the log. Sentinels (and the
  readiness probes of `start`, which likewise wait for their own line) are
  left out of the results.
* On a TLS listener mosquitto runs the first ``SSL_accept`` step inside its
  accept: a connection that is already closed by then is logged as "Client
  connection from <ip> failed: ..." (no port, no "New connection" line) and
  is not counted. Any client that starts a handshake is counted.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import tenacity

from device_sdk.errors import ConfigError, TestbedError
from device_sdk.testbed.ports import address_family, pick_free_ports

__all__ = [
    "BrokerSpec",
    "BrokerTls",
    "ClientConnected",
    "ConnectionAttempt",
    "MosquittoBroker",
    "find_mosquitto",
    "mosquitto_password_hash",
]

# Debian installs the broker in /usr/sbin, which is not on a normal user's PATH.
_EXTRA_SEARCH_PATH = ("/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin")
DEFAULT_LOG_TYPES = ("error", "warning", "notice", "information")
_LOG_TYPES = frozenset(
    {"debug", "error", "warning", "notice", "information", "subscribe", "unsubscribe", "all"}
)
_PROBE_TIMEOUT = 0.5
_LOG_SYNC_TIMEOUT = 2.0
_KILL_TIMEOUT = 5.0
_TAIL_LINES = 25

_NEW_CONNECTION = re.compile(
    r"New connection from (?P<host>\S+):(?P<port>\d+) on port (?P<lp>\d+)\."
)
# Both kinds of line, in log order: an accepted connection, or a TLS handshake
# that failed inside mosquitto's accept (which logs neither port then).
_ATTEMPT = re.compile(
    _NEW_CONNECTION.pattern
    + r"|Client connection from (?P<tls_host>\S+) failed: (?P<tls_error>.*)\."
)
_NEW_CLIENT = re.compile(
    r"New client connected from (?P<host>\S+):(?P<port>\d+) as (?P<id>.*?) "
    r"\(p(?P<proto>\d+), c(?P<clean>\d), k(?P<keepalive>\d+)(?:, u'(?P<user>.*)')?\)\."
)


def find_mosquitto() -> str | None:
    """Path of the mosquitto binary, or ``None`` when it is not installed."""
    return _find_tool("mosquitto")


def _find_tool(name: str) -> str | None:
    found = shutil.which(name)
    return found or shutil.which(name, path=os.pathsep.join(_EXTRA_SEARCH_PATH))


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerTls:
    """A TLS listener: PEM certificate and key files (see `device_sdk.testbed.pki`).

    ``port=0`` picks a free port when the broker is created. ``client_ca_file``
    makes the listener require a client certificate issued by that CA (mutual
    TLS, as AWS IoT Core and X.509 devices on Azure IoT Hub use it), and take
    the certificate's subject CN as the client's user name, so a test can see
    which certificate a device presented (:meth:`MosquittoBroker.clients_connected`).
    """

    cert_file: Path | str
    key_file: Path | str
    port: int = 0
    client_ca_file: Path | str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerSpec:
    """What one mosquitto broker looks like.

    ``port=0`` (and ``tls.port=0``) pick free ports when the broker is
    created; they then stay fixed across restarts. ``users`` switches
    anonymous access off: only these user names and passwords may connect.
    ``log_types`` are mosquitto ``log_type`` values; ``("all",)`` adds a line
    per packet, which slows a throughput run. ``tcp_nodelay`` (on by default,
    unlike mosquitto's own default) keeps small replies such as a CONNACK
    from waiting ~40 ms behind a delayed ACK. ``extra_config`` lines go into
    the global section of the generated config, verbatim.
    """

    name: str
    host: str = "127.0.0.1"
    port: int = 0
    tls: BrokerTls | None = None
    users: Mapping[str, str] | None = None
    log_types: tuple[str, ...] = DEFAULT_LOG_TYPES
    tcp_nodelay: bool = True
    extra_config: tuple[str, ...] = ()
    start_timeout: float = 5.0
    stop_timeout: float = 3.0
    executable: str | None = None

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", self.name):
            raise ConfigError("name", self.name, "letters, digits, '.', '_' and '-'")
        address_family(self.host)  # raises for anything but an IP literal
        ports = {"port": self.port} | ({"tls.port": self.tls.port} if self.tls else {})
        for label, port in ports.items():
            if not 0 <= port <= 65535:
                raise ConfigError(label, port, "0 (pick a free port) to 65535")
        if not self.log_types or not set(self.log_types) <= _LOG_TYPES:
            raise ConfigError("log_types", self.log_types, f"some of {sorted(_LOG_TYPES)}")
        for user in self.users or {}:
            if not user or ":" in user or "\n" in user:
                raise ConfigError("users", user, "non-empty names without ':' or newlines")
        if any("\n" in line for line in self.extra_config):
            raise ConfigError("extra_config", self.extra_config, "one config line per item")


@dataclass(frozen=True, slots=True)
class ConnectionAttempt:
    """A TCP connection that reached the broker, from its log.

    Usually a "New connection from <host>:<port> on port <listener>." line.
    When a TLS client aborts its handshake so fast that it fails inside
    mosquitto's accept (a certificate the client rejects, on loopback), the
    line is "Client connection from <host> failed: <reason>." instead:
    ``peer_port`` and ``listener_port`` are then None and ``tls_error`` holds
    the reason. (OpenSSL may queue more than one error for one handshake, so
    such an attempt can rarely appear twice: counts err on the high side.)
    """

    peer_host: str
    peer_port: int | None
    listener_port: int | None
    tls_error: str | None = None


@dataclass(frozen=True, slots=True)
class ClientConnected:
    """A client whose MQTT CONNECT succeeded ("New client connected from ...")."""

    peer_host: str
    peer_port: int
    client_id: str
    protocol_level: int
    username: str | None = field(default=None)


class MosquittoBroker:
    """One mosquitto process on a loopback address, with plain and optional TLS listeners.

    The broker lives in ``work_dir`` (config, password file, log); without
    one, a private temp dir is created and removed by `close`. Use it as a
    context manager: entering starts it, leaving stops it and cleans up.
    """

    def __init__(self, spec: BrokerSpec, *, work_dir: Path | str | None = None) -> None:
        self.spec = spec
        self._executable = spec.executable or find_mosquitto()
        if self._executable is None:
            raise TestbedError("mosquitto is not installed (Debian: apt-get install mosquitto)")
        self._port, self._tls_port = _resolve_ports(spec)
        self._owns_work_dir = work_dir is None
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix=f"device-sdk-{spec.name}-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.config_file = self.work_dir / "mosquitto.conf"
        self.log_file = self.work_dir / "mosquitto.log"
        self.stderr_file = self.work_dir / "mosquitto.stderr"
        self._proc: subprocess.Popen[bytes] | None = None
        self._hung = False
        self._closed = False
        # Our own probe and sentinel connections, left out of connection_attempts().
        self._own_peers: Counter[tuple[str, int]] = Counter()

    # -- addresses and state -------------------------------------------------

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def host(self) -> str:
        return self.spec.host

    @property
    def port(self) -> int:
        """The plain MQTT listener's port (fixed for the broker's lifetime)."""
        return self._port

    @property
    def tls_port(self) -> int | None:
        """The TLS listener's port, or ``None`` without a TLS listener."""
        return self._tls_port

    @property
    def pid(self) -> int | None:
        """PID of the running process, ``None`` when not running."""
        return self._proc.pid if self.is_running and self._proc else None

    @property
    def is_running(self) -> bool:
        """True while the process exists, hung or not."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def is_hung(self) -> bool:
        return self.is_running and self._hung

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """Start mosquitto and return once every listener accepts TCP connections."""
        if self._closed:
            raise TestbedError(f"broker {self.name} is closed")
        if self.is_running:
            raise TestbedError(f"broker {self.name} is already running (pid {self.pid})")
        self._write_config()
        with self.stderr_file.open("ab") as stderr:
            self._proc = subprocess.Popen(
                [str(self._executable), "-c", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=subprocess.STDOUT,
                cwd=self.work_dir,
                start_new_session=True,  # a ^C in the terminal must not reach it first
                env=_child_environment(),
            )
        self._hung = False
        try:
            self._wait_until(self._listeners_accept, self.spec.start_timeout, "listeners to open")
        except BaseException:
            self.kill()
            raise

    def stop(self) -> None:
        """Stop gracefully (SIGTERM, then SIGKILL after ``stop_timeout``). Idempotent."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            self._forget_process()
            return
        proc.send_signal(signal.SIGTERM)
        if self._hung:
            # A stopped process acts on SIGTERM only once it is continued.
            proc.send_signal(signal.SIGCONT)
        try:
            proc.wait(timeout=self.spec.stop_timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self._forget_process()

    def kill(self) -> None:
        """Crash the broker: SIGKILL, then wait (bounded) until it has exited."""
        proc = self._proc
        if proc is None:
            return
        proc.kill()  # no-op when it has already been reaped
        try:
            proc.wait(timeout=_KILL_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            raise TestbedError(f"broker {self.name} (pid {proc.pid}) survived SIGKILL") from exc
        self._forget_process()

    def hang(self) -> None:
        """Freeze the broker with SIGSTOP and return once it is stopped.

        Its sockets stay open and the kernel still accepts new TCP connections
        into the listen backlog, but no MQTT packet is answered: a hung hub.
        """
        proc = self._require_running("hang")
        proc.send_signal(signal.SIGSTOP)
        # SIGSTOP takes effect when the target is next scheduled, not at kill(2).
        self._wait_until(lambda: _is_stopped(proc.pid), _KILL_TIMEOUT, "SIGSTOP to take effect")
        self._hung = True

    def resume(self) -> None:
        """Undo `hang` with SIGCONT (which takes effect at once, unlike SIGSTOP)."""
        proc = self._require_running("resume")
        proc.send_signal(signal.SIGCONT)
        self._hung = False

    def restart(self) -> None:
        """Start again on the same host and ports, stopping first if still running."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the broker and remove the temp work dir it created. Idempotent."""
        self.stop()
        if self._owns_work_dir and not self._closed:
            shutil.rmtree(self.work_dir, ignore_errors=True)
        self._closed = True

    def __enter__(self) -> Self:
        if not self.is_running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the log -------------------------------------------------------------

    def connection_attempts(self) -> list[ConnectionAttempt]:
        """Every TCP connection this broker accepted, across restarts, oldest first.

        While the broker runs and is not hung, the list includes every
        connection made before this call (see the module docstring). Our own
        readiness probes and sentinels are not included.
        """
        self._sync_log()
        attempts = [_attempt(m) for m in _matches(_ATTEMPT, self.log_text())]
        return _without_own(attempts, self._own_peers)

    def clients_connected(self) -> list[ClientConnected]:
        """Every successful MQTT CONNECT, across restarts, oldest first."""
        self._sync_log()
        return [
            ClientConnected(m["host"], int(m["port"]), m["id"], int(m["proto"]), m["user"])
            for m in _matches(_NEW_CLIENT, self.log_text())
        ]

    def log_text(self) -> str:
        """The broker's whole log file ('' before the first start)."""
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = _TAIL_LINES) -> str:
        """The last lines of the log and of stderr, for error messages."""
        stderr = self.stderr_file.read_text(errors="replace") if self.stderr_file.exists() else ""
        log = "\n".join(self.log_text().splitlines()[-lines:])
        err = "\n".join(stderr.splitlines()[-lines:])
        return f"--- {self.log_file} ---\n{log}\n--- {self.stderr_file} ---\n{err}"

    # -- internals -----------------------------------------------------------

    def _listener_ports(self) -> list[int]:
        return [self._port] + ([self._tls_port] if self._tls_port is not None else [])

    def _listeners_accept(self) -> bool:
        return all(self._probe(port) for port in self._listener_ports())

    def _ensure_alive(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            code = proc.returncode if proc else None
            tail = self.log_tail()
            raise TestbedError(f"mosquitto {self.name} exited with status {code}\n{tail}")

    def _probe(self, port: int) -> bool:
        """Connect to one listener and hold the connection until the broker has logged it.

        False when the connection is refused (the listener is not open yet).
        The connection must stay open: on a TLS listener mosquitto logs "New
        connection" only if the socket is still open when its loop accepts it.
        """
        self._ensure_alive()
        try:
            sock = socket.create_connection((self.host, port), timeout=_PROBE_TIMEOUT)
        except OSError:
            return False
        with sock:
            local: tuple[str, int] = sock.getsockname()[:2]
            self._own_peers[local] += 1

            def logged() -> bool:
                # Also fails fast when the port belongs to someone else and
                # our mosquitto exited with "Address already in use".
                self._ensure_alive()
                return self._times_logged(local) >= self._own_peers[local]

            what = f"the broker to log our connection from {local[0]}:{local[1]}"
            self._wait_until(logged, _LOG_SYNC_TIMEOUT, what)
        return True

    def _times_logged(self, peer: tuple[str, int]) -> int:
        attempts = _matches(_NEW_CONNECTION, self.log_text())
        return sum(1 for m in attempts if (m["host"], int(m["port"])) == peer)

    def _sync_log(self) -> None:
        if not self.is_running or self._hung:
            return  # nothing more can reach the log until it runs again
        for port in self._listener_ports():
            self._probe(port)

    def _wait_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_delay(timeout),
            wait=tenacity.wait_fixed(0.005),
            retry=tenacity.retry_if_result(lambda done: not done),
        )
        try:
            retrying(predicate)
        except tenacity.RetryError as exc:
            raise TestbedError(
                f"broker {self.name}: timed out after {timeout:g} s waiting for {what}\n"
                f"{self.log_tail()}"
            ) from exc

    def _require_running(self, action: str) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            raise TestbedError(f"cannot {action} broker {self.name}: it is not running")
        return self._proc

    def _forget_process(self) -> None:
        self._proc = None
        self._hung = False

    def _write_config(self) -> None:
        lines = _global_config(self.spec, self.log_file)
        if self.spec.users is not None:
            password_file = self.work_dir / "passwords"
            _write_password_file(password_file, self.spec.users)
            lines += ["allow_anonymous false", f"password_file {password_file}"]
        else:
            lines.append("allow_anonymous true")
        lines += [*self.spec.extra_config, f"listener {self._port} {self.host}"]
        if self.spec.tls is not None:
            lines += [
                f"listener {self._tls_port} {self.host}",
                f"certfile {Path(self.spec.tls.cert_file).resolve()}",
                f"keyfile {Path(self.spec.tls.key_file).resolve()}",
            ]
            if self.spec.tls.client_ca_file is not None:
                lines += [
                    "require_certificate true",
                    f"cafile {Path(self.spec.tls.client_ca_file).resolve()}",
                    "use_identity_as_username true",
                ]
        self.config_file.write_text("\n".join(lines) + "\n")


def _resolve_ports(spec: BrokerSpec) -> tuple[int, int | None]:
    wanted = [spec.port] + ([spec.tls.port] if spec.tls else [])
    fixed = [port for port in wanted if port]
    fresh = iter(pick_free_ports(wanted.count(0), [spec.host], exclude=fixed))
    resolved = [port or next(fresh) for port in wanted]
    if len(set(resolved)) != len(resolved):
        raise ConfigError("tls.port", resolved[-1], "a port other than `port`")
    return resolved[0], (resolved[1] if spec.tls else None)


def _global_config(spec: BrokerSpec, log_file: Path) -> list[str]:
    lines = [f"# generated by device_sdk.testbed for broker {spec.name}"]
    if os.geteuid() == 0:
        # Otherwise mosquitto drops to user "mosquitto" before opening its log
        # and password files, which live in our private dir.
        lines.append("user root")
    lines += [
        "persistence false",
        f"log_dest file {log_file}",
        *(f"log_type {kind}" for kind in spec.log_types),
        "connection_messages true",
        "log_timestamp true",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        f"set_tcp_nodelay {'true' if spec.tcp_nodelay else 'false'}",
    ]
    return lines


def _write_password_file(path: Path, users: Mapping[str, str]) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    tool = _find_tool("mosquitto_passwd")
    with os.fdopen(descriptor, "w") as handle:
        if tool is None:
            handle.writelines(
                f"{user}:{mosquitto_password_hash(pw)}\n" for user, pw in users.items()
            )
            return
    # Prefer the broker's own tool: it writes whatever format this mosquitto expects.
    for user, password in users.items():
        _run_tool([tool, "-b", str(path), user, password])


def _run_tool(argv: list[str]) -> None:
    try:
        subprocess.run(argv, check=True, capture_output=True, timeout=10, stdin=subprocess.DEVNULL)
    except subprocess.CalledProcessError as exc:
        output = (exc.stderr or b"").decode(errors="replace") + (exc.stdout or b"").decode()
        raise TestbedError(f"{argv[0]} failed with status {exc.returncode}: {output}") from exc
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TestbedError(f"{argv[0]} could not run: {exc}") from exc


def mosquitto_password_hash(password: str, *, salt: bytes | None = None, rounds: int = 101) -> str:
    """Hash a password the way ``mosquitto_passwd`` does (``$7$``: PBKDF2-HMAC-SHA512).

    Used when the ``mosquitto_passwd`` tool is missing.
    """
    salt = os.urandom(12) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, rounds, dklen=64)
    return f"$7${rounds}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def _attempt(match: re.Match[str]) -> ConnectionAttempt:
    if match["tls_host"] is not None:
        return ConnectionAttempt(match["tls_host"], None, None, tls_error=match["tls_error"])
    return ConnectionAttempt(match["host"], int(match["port"]), int(match["lp"]))


def _is_stopped(pid: int) -> bool:
    # WNOWAIT leaves the child waitable, so Popen still reaps it later as usual.
    result = os.waitid(os.P_PID, pid, os.WSTOPPED | os.WNOHANG | os.WNOWAIT)
    return result is not None and result.si_code == os.CLD_STOPPED


def _matches(pattern: re.Pattern[str], text: str) -> Iterable[re.Match[str]]:
    return pattern.finditer(text)


def _without_own(
    attempts: list[ConnectionAttempt], own: Counter[tuple[str, int]]
) -> list[ConnectionAttempt]:
    # Skip the earliest lines from each of our own local addresses: a later
    # client may reuse the same ephemeral port and must still be counted.
    remaining = Counter(own)
    kept = []
    for attempt in attempts:
        if attempt.peer_port is not None:
            peer = (attempt.peer_host, attempt.peer_port)
            if remaining[peer] > 0:
                remaining[peer] -= 1
                continue
        kept.append(attempt)
    return kept


# systemd hands a service these; a broker that inherits them would report itself to the
# service manager as the service (mosquitto speaks sd_notify), which it is not.
_SERVICE_MANAGER_VARIABLES = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
)


def _child_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _SERVICE_MANAGER_VARIABLES}
