"""A real HTTP CONNECT proxy (tinyproxy) on loopback, for the locked-down-network tests.

::

    with HttpProxy(username="gw", password="secret") as proxy:
        config = replace(config, proxy=proxy.settings())
        ...
        assert proxy.connects_seen() >= 1

What this module handles, so callers need not (tinyproxy 1.11, Debian's package):

* Debian's package starts a system tinyproxy on port 8888 with its own config.
  It is left alone: each instance here writes its own config in a private temp
  dir, listens on a free port and runs in the foreground (``-d``) as a child of
  this process, signalled only through its ``Popen``.
* The config names no ``User``/``Group``: tinyproxy then keeps the current user
  (it warns "You SHOULD set a UserName"), so as root it never drops to a user
  that could not write the log in the private temp dir.
* With no ``ConnectPort`` line, tinyproxy allows CONNECT to every port (its
  manual says so); ``connect_ports`` restricts it, as a corporate proxy would.
* tinyproxy resolves target names itself with the system resolver, which does
  not know the testbed's DNS names: give it IP literals, or set
  ``resolve_locally`` in the settings so the device resolves the name.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import tenacity

from device_sdk.errors import TestbedError
from device_sdk.testbed.lifecycle import StartsInContext
from device_sdk.testbed.ports import pick_free_port
from device_sdk.transports import ProxySettings

__all__ = ["HttpProxy", "find_tinyproxy"]

_KILL_TIMEOUT = 5.0
_TAIL_LINES = 20
# tinyproxy's log line for each CONNECT request it reads (LogLevel Info and above).
_CONNECT_LINE = re.compile(r"Request \(file descriptor \d+\): CONNECT ")


def find_tinyproxy() -> str | None:
    """The tinyproxy executable (Debian: ``apt-get install tinyproxy``), or None."""
    return shutil.which("tinyproxy") or shutil.which("tinyproxy", path="/usr/sbin:/usr/bin")


class HttpProxy(StartsInContext):
    """One tinyproxy process on ``host``, with optional Basic authentication.

    ``connect_ports``: the only ports CONNECT may reach (empty: all).
    ``username``/``password``: a ``BasicAuth`` line; every request then needs them.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        username: str | None = None,
        password: str = "",
        connect_ports: Sequence[int] = (),
        max_clients: int = 50,
        start_timeout: float = 10.0,
        stop_timeout: float = 5.0,
        executable: str | None = None,
    ) -> None:
        self._executable = executable or find_tinyproxy()
        if self._executable is None:
            raise TestbedError("tinyproxy is not installed (Debian: apt-get install tinyproxy)")
        if username is not None and (not username.isalnum() or not password.isalnum()):
            # tinyproxy's config syntax takes neither spaces nor quotes here.
            raise TestbedError("tinyproxy BasicAuth needs an alphanumeric user and password")
        self._host = host
        self._port = port if port is not None else pick_free_port((host,))
        self._username = username
        self._password = password
        self._connect_ports = tuple(connect_ports)
        self._max_clients = max_clients
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self.work_dir = Path(tempfile.mkdtemp(prefix="device-sdk-tinyproxy-"))
        self.config_file = self.work_dir / "tinyproxy.conf"
        self.log_file = self.work_dir / "tinyproxy.log"
        self.stderr_file = self.work_dir / "tinyproxy.stderr"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        return self._port

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._is_started() and self._proc is not None else None

    def settings(self, **overrides: object) -> ProxySettings:
        """ProxySettings for this proxy (its credentials too); ``overrides`` replace fields."""
        fields: dict[str, object] = {"host": self._host, "port": self._port}
        if self._username is not None:
            fields.update(username=self._username, password=self._password)
        fields.update(overrides)
        return ProxySettings(**fields)  # type: ignore[arg-type]

    def connects_seen(self) -> int:
        """How many CONNECT requests tinyproxy has logged (it logs each as it reads it)."""
        return len(_CONNECT_LINE.findall(self.log_text()))

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _is_started(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start tinyproxy and return once it accepts connections."""
        if self._is_started():
            raise TestbedError(f"tinyproxy on port {self._port} is already running")
        self.work_dir.mkdir(parents=True, exist_ok=True)  # stop() removed it
        self.config_file.write_text(self._config())
        with self.stderr_file.open("ab") as stderr:
            self._proc = subprocess.Popen(
                [str(self._executable), "-d", "-c", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=subprocess.STDOUT,
                cwd=self.work_dir,
                start_new_session=True,
            )
        try:
            self._wait_until_accepting()
        except BaseException:
            self._kill()
            raise

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``stop_timeout``; removes the work dir. Idempotent."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self._stop_timeout)
            except subprocess.TimeoutExpired:
                self._kill()
        self._proc = None
        shutil.rmtree(self.work_dir, ignore_errors=True)

    def _kill(self) -> None:
        proc = self._proc
        if proc is None:
            return
        proc.kill()  # a no-op once reaped: Popen never signals a recycled PID
        try:
            proc.wait(timeout=_KILL_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            raise TestbedError(f"tinyproxy (pid {proc.pid}) survived SIGKILL") from exc

    def _config(self) -> str:
        lines = [
            f"Listen {self._host}",
            f"Port {self._port}",
            f"Allow {self._host}",
            f"MaxClients {self._max_clients}",
            "Timeout 60",
            f'LogFile "{self.log_file}"',
            "LogLevel Info",
        ]
        lines += [f"ConnectPort {port}" for port in self._connect_ports]
        if self._username is not None:
            lines.append(f"BasicAuth {self._username} {self._password}")
        return "\n".join(lines) + "\n"

    def _accepting(self) -> bool:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            code = proc.returncode if proc is not None else None
            raise TestbedError(f"tinyproxy exited with status {code}\n{self._tail()}")
        try:
            with socket.create_connection((self._host, self._port), timeout=0.5):
                return True
        except OSError:
            return False

    def _wait_until_accepting(self) -> None:
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_delay(self._start_timeout),
            wait=tenacity.wait_fixed(0.01),
            retry=tenacity.retry_if_result(lambda ready: not ready),
        )
        try:
            retrying(self._accepting)
        except tenacity.RetryError as exc:
            raise TestbedError(
                f"tinyproxy did not accept on {self._host}:{self._port} within "
                f"{self._start_timeout:g} s\n{self._tail()}"
            ) from exc

    def _tail(self) -> str:
        try:
            stderr = self.stderr_file.read_text(errors="replace")
        except FileNotFoundError:
            stderr = ""
        log = "\n".join(self.log_text().splitlines()[-_TAIL_LINES:])
        err = "\n".join(stderr.splitlines()[-_TAIL_LINES:])
        return f"--- {self.log_file} ---\n{log}\n--- {self.stderr_file} ---\n{err}"
