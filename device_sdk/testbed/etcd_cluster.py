"""A real etcd cluster on loopback, each member on its own address, under the test's control.

::

    with EtcdCluster(members=3) as cluster:
        cluster.endpoints            # ["127.0.0.31:P1", "127.0.0.32:P2", "127.0.0.33:P3"]
        cluster.kill("etcd-1")       # SIGKILL: a member (maybe the leader) crashes
        ...                          # the other two keep a quorum
        cluster.restart_member("etcd-1")   # same data dir: it rejoins and catches up

Each member listens on its own loopback address (127.0.0.31, .32, ... by
default), so a test can blackhole one member's address or port without
touching the others. Every signal goes to the one process this object
started, through ``subprocess.Popen``, which never signals a PID it has
already reaped.

What this module handles, so callers need not (etcd 3.4, Debian's
``etcd-server``):

* Debian's package may also run a system etcd on ``localhost:2379/2380``. It is
  left alone: members here listen on their own addresses and free ports, keep
  their data in a private temp dir and run as children of this process.
* etcd reads its flags from ``ETCD_*`` environment variables too, and refuses
  to start when one shadows a flag we pass. The child environment drops them.
* A member's ``--initial-cluster*`` flags count only while its data dir is
  empty. `start` therefore always bootstraps from empty data dirs with a fresh
  cluster token (a stale member from another run can never join), while
  `restart_member` keeps the data dir, so the member rejoins as itself.
* etcd 3.4 serves its JSON gateway under ``/v3/`` (``/v3beta/`` was 3.3).
  Readiness is checked through that gateway with the standard library, so the
  testbed needs no etcd client library.
* The timeouts are tuned for loopback: a 50 ms heartbeat and a 500 ms election
  timeout, so a lost leader is replaced in about a second.
"""

from __future__ import annotations

import base64
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import tenacity

from device_sdk.errors import ConfigError, TestbedError
from device_sdk.testbed.lifecycle import StartsInContext
from device_sdk.testbed.ports import address_family, pick_free_ports

__all__ = ["EtcdCluster", "EtcdMember", "EtcdTimings", "find_etcd"]

_KILL_TIMEOUT = 5.0
_PROBE_TIMEOUT = 0.5
_TAIL_LINES = 20
_READY_KEY = "/device-sdk-testbed/ready"
# etcd 3.4 runs without this only on amd64, arm64 and ppc64le; elsewhere (a 32-bit
# Raspberry Pi) it wants ETCD_UNSUPPORTED_ARCH set to the Go name of the machine.
_GO_ARCH = {"armv7l": "arm", "armv6l": "arm", "i686": "386", "s390x": "s390x"}


def find_etcd() -> str | None:
    """The etcd server binary (Debian: ``apt-get install etcd-server``), or None."""
    return shutil.which("etcd") or shutil.which("etcd", path="/usr/bin:/usr/local/bin")


@dataclass(frozen=True, slots=True, kw_only=True)
class EtcdTimings:
    """Raft timings and the testbed's own bounds, in milliseconds and seconds.

    ``heartbeat_ms``/``election_ms`` are etcd's ``--heartbeat-interval`` and
    ``--election-timeout`` (etcd wants the election timeout at least 5x the
    heartbeat). ``start_timeout`` bounds the wait for a leader and a first
    write; ``stop_timeout`` the wait after SIGTERM before SIGKILL.
    """

    heartbeat_ms: int = 50
    election_ms: int = 500
    start_timeout: float = 15.0
    stop_timeout: float = 5.0

    def __post_init__(self) -> None:
        if self.heartbeat_ms < 1:
            raise ConfigError("heartbeat_ms", self.heartbeat_ms, "a positive number of ms")
        if self.election_ms < 5 * self.heartbeat_ms:
            raise ConfigError("election_ms", self.election_ms, "at least 5x heartbeat_ms")


class EtcdMember:
    """One etcd process: its name, addresses, data dir and log, signalled only by its PID."""

    def __init__(
        self, *, name: str, host: str, client_port: int, peer_port: int, work_dir: Path
    ) -> None:
        self.name = name
        self.host = host
        self.port = client_port
        self.peer_port = peer_port
        self.data_dir = work_dir / f"{name}.data"
        self.log_file = work_dir / f"{name}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def client_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"

    @property
    def endpoint(self) -> str:
        """``host:port`` of the client listener, the form ``etcd://`` store URLs list."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """PID of the running process, ``None`` when not running."""
        return self._proc.pid if self._proc is not None and self.is_running else None

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def launch(self, argv: list[str]) -> None:
        if self.is_running:
            raise TestbedError(f"etcd member {self.name} is already running (pid {self.pid})")
        with self.log_file.open("ab") as log:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir.parent,
                start_new_session=True,  # a ^C in the terminal must not reach it first
                env=_child_environment(),
            )

    def stop(self, timeout: float) -> None:
        """SIGTERM, then SIGKILL when it has not exited within ``timeout``. Idempotent."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            self._proc = None
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self._proc = None

    def kill(self) -> None:
        """Crash the member: SIGKILL, then wait (bounded) until it has exited."""
        proc = self._proc
        if proc is None:
            return
        proc.kill()  # no-op when it has already been reaped
        try:
            proc.wait(timeout=_KILL_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            raise TestbedError(f"etcd {self.name} (pid {proc.pid}) survived SIGKILL") from exc
        self._proc = None

    def ensure_alive(self) -> None:
        """Raise with the log tail when the process has exited on its own."""
        proc = self._proc
        if proc is not None and proc.poll() is not None:
            raise TestbedError(
                f"etcd {self.name} exited with status {proc.returncode}\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = _TAIL_LINES) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            text = ""
        return f"--- {self.log_file} ---\n" + "\n".join(text.splitlines()[-lines:])


class EtcdCluster(StartsInContext):
    """``members`` etcd processes bootstrapped as one cluster on loopback.

    Member *i* (named ``etcd-1``, ``etcd-2``, ...) listens on
    ``host_base`` + (``first_octet`` + *i*), with a client and a peer port
    picked when the cluster is created; both stay fixed across restarts.
    Data dirs and logs live in ``work_dir``; without one, a private temp dir
    is created and removed by `stop`.
    """

    def __init__(
        self,
        members: int = 3,
        *,
        host_base: str = "127.0.0.",
        first_octet: int = 31,
        work_dir: Path | str | None = None,
        timings: EtcdTimings = EtcdTimings(),
        executable: str | None = None,
    ) -> None:
        if not 1 <= members <= 9:
            raise ConfigError("members", members, "1 to 9")
        self._executable = executable or find_etcd()
        if self._executable is None:
            raise TestbedError("etcd is not installed (Debian: apt-get install etcd-server)")
        self.timings = timings
        self._own_dir = work_dir is None
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="device-sdk-etcd-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._members = {
            m.name: m for m in _plan_members(members, host_base, first_octet, self.work_dir)
        }
        self.cluster_token = ""

    # -- addresses ---------------------------------------------------------------------------

    @property
    def members(self) -> list[EtcdMember]:
        return list(self._members.values())

    def member(self, name: str) -> EtcdMember:
        try:
            return self._members[name]
        except KeyError:
            raise TestbedError(f"no etcd member {name!r}; have {list(self._members)}") from None

    @property
    def endpoints(self) -> list[str]:
        """Every member's ``host:port``, in member order (running or not)."""
        return [m.endpoint for m in self._members.values()]

    @property
    def client_urls(self) -> list[str]:
        return [m.client_url for m in self._members.values()]

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        """Bootstrap a fresh cluster; return once it has a leader and a write was committed."""
        self.stop_members()
        self.cluster_token = f"device-sdk-{secrets.token_hex(6)}"
        self.work_dir.mkdir(parents=True, exist_ok=True)  # stop() may have removed it
        for member in self._members.values():
            shutil.rmtree(member.data_dir, ignore_errors=True)
        try:
            for member in self._members.values():
                member.launch(self._argv(member))
            self.wait_ready()
        except BaseException:
            self.stop_members()
            raise
        return self

    def _is_started(self) -> bool:
        return any(m.is_running for m in self._members.values())

    def stop(self) -> None:
        """Stop every member, then remove the temp dir this cluster created. Idempotent."""
        self.stop_members()
        if self._own_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def stop_members(self) -> None:
        for member in self._members.values():
            member.stop(self.timings.stop_timeout)

    def stop_member(self, name: str) -> None:
        """Stop one member gracefully (SIGTERM, then SIGKILL after ``stop_timeout``)."""
        self.member(name).stop(self.timings.stop_timeout)

    def kill(self, name: str) -> None:
        """Crash one member with SIGKILL."""
        self.member(name).kill()

    def restart_member(self, name: str) -> None:
        """Start a stopped (or killed) member again on its data dir; return once it serves.

        It rejoins as the same member and catches up from the leader. Ready means
        it answers through its own gateway and knows a leader; a linearizable read
        through it then sees every write the cluster committed before.
        """
        member = self.member(name)
        member.stop(self.timings.stop_timeout)
        member.launch(self._argv(member))
        self._wait(lambda: _knows_leader(member), f"{name} to rejoin and see a leader")

    def wait_ready(self) -> None:
        """Wait (bounded) until every running member sees a leader and a write commits."""
        running = [m for m in self._members.values() if m.is_running]
        if not running:
            raise TestbedError("etcd cluster: no member is running")
        self._wait(lambda: all(_knows_leader(m) for m in running), "a leader on every member")
        self._wait(lambda: _put(running[0], _READY_KEY, self.cluster_token), "a first write")

    def leader(self) -> str | None:
        """Name of the member that is leader now, as a running member reports it, or None."""
        for member in self._members.values():
            status = _status(member) if member.is_running else None
            if status and status.get("leader") == status.get("header", {}).get("member_id"):
                return member.name
        return None

    # -- internals ---------------------------------------------------------------------------

    def _argv(self, member: EtcdMember) -> list[str]:
        everyone = ",".join(f"{m.name}={m.peer_url}" for m in self._members.values())
        return [
            str(self._executable),
            f"--name={member.name}",
            f"--data-dir={member.data_dir}",
            f"--listen-client-urls={member.client_url}",
            f"--advertise-client-urls={member.client_url}",
            f"--listen-peer-urls={member.peer_url}",
            f"--initial-advertise-peer-urls={member.peer_url}",
            f"--initial-cluster={everyone}",
            f"--initial-cluster-token={self.cluster_token}",
            "--initial-cluster-state=new",
            f"--heartbeat-interval={self.timings.heartbeat_ms}",
            f"--election-timeout={self.timings.election_ms}",
            "--logger=zap",
            "--log-outputs=stderr",
        ]

    def _wait(self, predicate: Callable[[], bool], what: str) -> None:
        def check() -> bool:
            for member in self._members.values():
                member.ensure_alive()  # a member that died fails the wait at once
            return predicate()

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_delay(self.timings.start_timeout),
            wait=tenacity.wait_fixed(0.02),
            retry=tenacity.retry_if_result(lambda done: not done),
        )
        try:
            retrying(check)
        except tenacity.RetryError as exc:
            tails = "\n".join(m.log_tail() for m in self._members.values())
            raise TestbedError(
                f"etcd cluster: timed out after {self.timings.start_timeout:g} s "
                f"waiting for {what}\n{tails}"
            ) from exc


def _plan_members(count: int, host_base: str, first_octet: int, work_dir: Path) -> list[EtcdMember]:
    planned = []
    for index in range(count):
        host = f"{host_base}{first_octet + index}"
        address_family(host)  # raises for anything but an IP literal
        client_port, peer_port = pick_free_ports(2, [host])
        planned.append(
            EtcdMember(
                name=f"etcd-{index + 1}",
                host=host,
                client_port=client_port,
                peer_port=peer_port,
                work_dir=work_dir,
            )
        )
    return planned


def _gateway(member: EtcdMember, path: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
    """POST to the member's JSON gateway; None when it does not answer (yet) or refuses."""
    request = urllib.request.Request(
        f"{member.client_url}/v3/{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=_PROBE_TIMEOUT) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer
    except (OSError, ValueError):  # refused, timed out, HTTP error, or not JSON yet
        return None


def _status(member: EtcdMember) -> dict[str, Any] | None:
    return _gateway(member, "maintenance/status", {})


def _knows_leader(member: EtcdMember) -> bool:
    status = _status(member)
    # The gateway writes uint64 fields as strings; "0" (or no field) means no leader.
    return status is not None and str(status.get("leader", "0")) != "0"


def _put(member: EtcdMember, key: str, value: str) -> bool:
    body = {"key": _b64(key), "value": _b64(value)}
    return _gateway(member, "kv/put", body) is not None


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _child_environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
    arch = _GO_ARCH.get(platform.machine())
    if arch is not None:
        env["ETCD_UNSUPPORTED_ARCH"] = arch
    return env
