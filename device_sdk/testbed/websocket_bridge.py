"""MQTT over WebSockets (``ws``/``wss``) in front of a testbed broker, through websockify.

::

    with WebSocketBridge(hub.host, hub.port, tls=(files.cert_file, files.key_file)) as wss:
        ...   # a device dials wss://<hub FQDN>:<wss.port>/mqtt at wss.host

The bridge is a real, separate process: websockify (Debian package
``websockify``) terminates the WebSocket (and TLS) and opens one TCP
connection to the broker per client, carrying the binary frames' payload both
ways. Give it a certificate for the hub's FQDN from the testbed CA
(``ca.issue_server_certificate([fqdn]).write_to(dir)``) and a client that
verifies that FQDN accepts it, as with the brokers' own TLS listeners.

Why not mosquitto's own ``protocol websockets`` listener: Debian 12's
mosquitto 2.0.11 ignores the listener's bind address (it listened on ``*:P``,
every interface, when given ``listener P 127.0.0.1``), refuses port 0, and
will not start at all when the websockets listener is its only one ("Unable
to start any listening sockets"). A loopback-only testbed cannot use it.

Why websockify is started through a launcher: every websockify release
(0.10.0 in Debian 12) selects only the subprotocol ``binary`` and answers
``400 Invalid protocol selected`` to a client that offers ``mqtt`` alone, as
paho-mqtt and every MQTT client must (MQTT 3.1.1, section 6). It has no
option for this, so the launcher, run by websockify's own Python, makes it
also select ``mqtt`` before it starts. Frames are binary either way.

websockify forks one handler process per connection. It runs in a session
(process group) of its own, and `WebSocketBridge.stop` ends the whole group,
handlers included, and waits until none is left.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import weakref
from collections.abc import Callable
from pathlib import Path

import tenacity

from device_sdk.errors import ConfigError, TestbedError
from device_sdk.testbed.lifecycle import StartsInContext
from device_sdk.testbed.ports import address_family, pick_free_port

__all__ = ["WebSocketBridge", "find_websockify"]

_START_TIMEOUT = 5.0
_STOP_TIMEOUT = 3.0
_KILL_TIMEOUT = 5.0
_PROBE_TIMEOUT = 0.5
_TAIL_LINES = 25

# Run by websockify's interpreter: answer the MQTT subprotocol, then start as
# the ``websockify`` command would, with the arguments that follow ``-c``.
_LAUNCHER = """\
import sys
from websockify import websockifyserver
from websockify.websocketproxy import websockify_init

def select_subprotocol(self, offered):
    for wanted in ("mqtt", "binary"):
        for name in offered:
            if name.strip() == wanted:
                return name
    return ""

websockifyserver.CompatibleWebSocket.select_subprotocol = select_subprotocol
sys.argv[0] = "websockify"
websockify_init()
"""


def find_websockify() -> str | None:
    """Path of the websockify command, or ``None`` when it is not installed."""
    return shutil.which("websockify") or shutil.which("websockify", path="/usr/bin")


class WebSocketBridge(StartsInContext):
    """A websockify process: WebSocket clients on ``host:port``, TCP to ``target``.

    ``listen_port=0`` picks a free port when the bridge is created; it stays
    fixed across restarts. ``tls`` is ``(cert_file, key_file)`` in PEM: the
    bridge then speaks ``wss`` only (TLS 1.2 or newer). The log (websockify's
    verbose output, one line per connection) lives in ``work_dir``; without
    one, in a temp dir removed when the bridge is garbage-collected.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        tls: tuple[Path | str, Path | str] | None = None,
        work_dir: Path | str | None = None,
        executable: str | None = None,
    ) -> None:
        address_family(target_host)  # raises for anything but an IP literal
        address_family(listen_host)
        if not 1 <= target_port <= 65535:
            raise ConfigError("target_port", target_port, "1 to 65535")
        if not 0 <= listen_port <= 65535:
            raise ConfigError("listen_port", listen_port, "0 (pick a free port) to 65535")
        self._tls = None if tls is None else _existing_pair(tls)
        self._target = (target_host, target_port)
        self._host = listen_host
        self._port = listen_port or pick_free_port([listen_host])
        self._interpreter = _interpreter_of(executable or find_websockify())
        if work_dir is None:
            work_dir = tempfile.mkdtemp(prefix="device-sdk-websockify-")
            weakref.finalize(self, shutil.rmtree, work_dir, ignore_errors=True)
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.log_file = self.work_dir / f"websockify-{self._port}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        """The port WebSocket clients dial (fixed for the bridge's lifetime)."""
        return self._port

    @property
    def target(self) -> tuple[str, int]:
        return self._target

    @property
    def tls(self) -> bool:
        """True when the bridge speaks ``wss`` (TLS), False for plain ``ws``."""
        return self._tls is not None

    @property
    def pid(self) -> int | None:
        """PID of the running websockify (also its process group), ``None`` when stopped."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def start(self) -> None:
        """Start websockify and return once its port accepts TCP connections."""
        if self._proc is not None:
            raise TestbedError(f"websocket bridge on {self._host}:{self._port} already started")
        with self.log_file.open("ab") as log:
            self._proc = subprocess.Popen(
                [self._interpreter, "-c", _LAUNCHER, *self._arguments()],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.work_dir,
                start_new_session=True,  # its own group, so stop() finds every handler
            )
        try:
            self._wait_until(self._accepts, _START_TIMEOUT, "its port to accept")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """End websockify and every handler it forked; bounded, idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        group = proc.pid
        if proc.returncode is None:
            # Not reaped yet, so the PID (and the group named after it) is still ours.
            _signal_group(group, signal.SIGTERM)
        try:
            proc.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            _signal_group(group, signal.SIGKILL)
            proc.wait(timeout=_KILL_TIMEOUT)
        # Handlers outlive the main process when it exits first; a group with a
        # live member cannot have its ID reused, so signalling it stays safe.
        try:
            self._wait_until(lambda: not _live_members(group), _STOP_TIMEOUT, "handlers to end")
        except TestbedError:
            _signal_group(group, signal.SIGKILL)
            self._wait_until(lambda: not _live_members(group), _KILL_TIMEOUT, "SIGKILL")

    def _is_started(self) -> bool:
        return self._proc is not None

    def log_tail(self, lines: int = _TAIL_LINES) -> str:
        """The last lines of websockify's output, for error messages."""
        try:
            text = self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            text = ""
        return f"--- {self.log_file} ---\n" + "\n".join(text.splitlines()[-lines:])

    def _arguments(self) -> list[str]:
        arguments = ["--verbose"]
        if self._tls is not None:
            cert_file, key_file = self._tls
            arguments += [
                f"--cert={cert_file}",
                f"--key={key_file}",
                "--ssl-only",
                "--ssl-version=tlsv1_2",
            ]
        return [
            *arguments,
            f"[{self._host}]:{self._port}",
            f"[{self._target[0]}]:{self._target[1]}",
        ]

    def _accepts(self) -> bool:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            code = None if proc is None else proc.returncode
            raise TestbedError(f"websockify exited with status {code}\n{self.log_tail()}")
        try:
            socket.create_connection((self._host, self._port), timeout=_PROBE_TIMEOUT).close()
        except OSError:
            return False
        return True

    def _wait_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_delay(timeout),
            wait=tenacity.wait_fixed(0.01),
            retry=tenacity.retry_if_result(lambda done: not done),
        )
        try:
            retrying(predicate)
        except tenacity.RetryError as exc:
            raise TestbedError(
                f"websocket bridge on {self._host}:{self._port}: timed out after "
                f"{timeout:g} s waiting for {what}\n{self.log_tail()}"
            ) from exc


def _existing_pair(tls: tuple[Path | str, Path | str]) -> tuple[Path, Path]:
    cert_file, key_file = (Path(name).resolve() for name in tls)
    for label, path in (("tls cert_file", cert_file), ("tls key_file", key_file)):
        if not path.is_file():
            raise ConfigError(label, str(path), "an existing PEM file")
    return cert_file, key_file


def _interpreter_of(command: str | None) -> str:
    """The Python that runs the websockify command (from its ``#!`` line)."""
    if command is None:
        raise TestbedError("websockify is not installed (Debian: apt-get install websockify)")
    try:
        with open(command, "rb") as script:
            first = script.readline(512)
    except OSError as exc:
        raise TestbedError(f"cannot read the websockify command {command}: {exc}") from exc
    words = first[2:].decode(errors="replace").split() if first.startswith(b"#!") else []
    if words and Path(words[0]).name == "env" and len(words) > 1:
        words = words[1:]
    if not words or "python" not in Path(words[0]).name:
        raise TestbedError(f"{command} is not the Python websockify (no python #! line)")
    return shutil.which(words[0]) or words[0]


def _signal_group(group: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, sig)


def _live_members(group: int) -> list[int]:
    """PIDs in process group ``group`` that are not zombies (Linux ``/proc``)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # it ended while we looked
        # Fields after the command name, which may itself hold spaces or ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == group and fields[0] != "Z":
            members.append(int(entry.name))
    return members
