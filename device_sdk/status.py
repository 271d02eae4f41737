"""Status files for gateway fleets: the metrics snapshot as JSON, and for Prometheus.

A running client writes its :class:`~device_sdk.metrics.Metrics` snapshot to a
small JSON file that ``device-sdk status`` (and any script) can read, and
optionally in the Prometheus text exposition format for node_exporter's
textfile collector, which is how gateway fleets are usually monitored::

    node_exporter --collector.textfile.directory=/var/lib/node_exporter/textfile

Both files are replaced atomically (a temporary file in the same directory,
fsync, rename, fsync of the directory), so a reader sees the old snapshot or
the new one, never half of one. node_exporter requires exactly that, and
ignores our temporary files because their names do not end in ``.prom``.
`StatusWriter` rewrites them periodically from a background thread.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from device_sdk.atomic_file import write_file_atomically
from device_sdk.errors import ConfigError, DeviceSDKError
from device_sdk.metrics import Metrics

__all__ = [
    "StatusReport",
    "StatusWriter",
    "prometheus_text",
    "read_status",
    "write_prometheus",
    "write_status",
]

_log = logging.getLogger(__name__)
STATUS_FORMAT = 1
# Far larger than any snapshot; a bound stops `status` reading a wrong, huge file.
_MAX_STATUS_BYTES = 1 << 20
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

# (metric name, Metrics field, help). Counters get the conventional _total suffix.
_COUNTERS = (
    ("device_sdk_connect_attempts_total", "attempts", "Connect attempts to any hub."),
    ("device_sdk_connects_total", "connects", "Links established (CONNACK success)."),
    ("device_sdk_disconnects_total", "disconnects", "Established links that ended."),
    ("device_sdk_failovers_total", "failovers", "Moves to another hub after failures."),
    ("device_sdk_failbacks_total", "failbacks", "Returns to the home hub."),
    ("device_sdk_dns_queries_total", "dns_queries", "DNS queries sent for hub names."),
    ("device_sdk_concierge_updates_total", "concierge_updates", "Concierge documents accepted."),
    (
        "device_sdk_concierge_rejections_total",
        "concierge_rejections",
        "Concierge documents rejected (security events).",
    ),
    ("device_sdk_messages_published_total", "published", "Messages accepted by publish()."),
    ("device_sdk_messages_acknowledged_total", "acknowledged", "Messages the hub acknowledged."),
    ("device_sdk_messages_dropped_total", "dropped", "Messages dropped by the outbox policy."),
    ("device_sdk_messages_rejected_total", "rejected", "Messages the hub refused in a PUBACK."),
    (
        "device_sdk_messages_undeliverable_total",
        "undeliverable",
        "Messages a hub could never take (size, QoS, poison); they left the outbox.",
    ),
    (
        "device_sdk_protocol_errors_total",
        "protocol_errors",
        "Links dropped because the hub broke MQTT.",
    ),
    (
        "device_sdk_callback_errors_total",
        "callback_errors",
        "Application callbacks that raised (contained and logged).",
    ),
    (
        "device_sdk_internal_faults_total",
        "internal_faults",
        "Faults in device_sdk's own code on the engine thread (each restarts the link).",
    ),
    (
        "device_sdk_transport_fallbacks_total",
        "transport_fallbacks",
        "Connects on a way in other than the hub's first (e.g. wss:443 with 8883 blocked).",
    ),
    (
        "device_sdk_transport_returns_total",
        "transport_returns",
        "Links moved back to the hub's first way in once it answered again.",
    ),
)
_GAUGES = (
    ("device_sdk_outbox_depth", "queue_depth", "Messages waiting for a PUBACK."),
    (
        "device_sdk_last_recovery_seconds",
        "last_recovery_seconds",
        "Last outage: from losing the link to the first PUBACK on the next one.",
    ),
    (
        "device_sdk_last_reconnect_seconds",
        "last_reconnect_seconds",
        "Last outage: from losing the link to the next CONNACK.",
    ),
    (
        "device_sdk_ack_deadline_seconds",
        "ack_deadline_seconds",
        "Current RTT-derived ack/ping deadline.",
    ),
)


# --------------------------------------------------------------------------- JSON


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusReport:
    """What a status file holds: the snapshot, when it was written, by which process."""

    metrics: Metrics
    written_at: float
    pid: int
    extra: Mapping[str, object]

    def age(self, now: float | None = None) -> float:
        """Seconds since the file was written (a stale file means a stuck or dead client)."""
        return (time.time() if now is None else now) - self.written_at


def write_status(
    path: Path | str, metrics: Metrics, *, extra: Mapping[str, object] | None = None
) -> None:
    """Write ``metrics`` (and JSON-serialisable ``extra``) to ``path`` as JSON, atomically."""
    document = {
        "format": STATUS_FORMAT,
        "written_at": time.time(),
        "pid": os.getpid(),
        "metrics": dataclasses.asdict(metrics),
        "extra": dict(extra or {}),
    }
    data = json.dumps(document, indent=2, sort_keys=True).encode() + b"\n"
    _replace_file_0644(Path(path), data)


def read_status(path: Path | str) -> StatusReport:
    """Read a status file written by `write_status`; DeviceSDKError when it is not one.

    Metrics fields this version does not know are ignored, so an older
    ``device-sdk status`` can read a newer client's file.
    """
    path = Path(path)
    try:
        with path.open("rb") as file:
            data = file.read(_MAX_STATUS_BYTES + 1)
    except OSError as exc:
        raise DeviceSDKError(f"cannot read the status file {path}: {exc.strerror}") from exc
    try:
        return _parse_status(data)
    except (ValueError, TypeError, KeyError) as exc:
        raise DeviceSDKError(f"{path} is not a device-sdk status file ({exc})") from None


def _parse_status(data: bytes) -> StatusReport:
    if len(data) > _MAX_STATUS_BYTES:
        raise ValueError("too large")
    document = json.loads(data)
    if not isinstance(document, dict) or document.get("format") != STATUS_FORMAT:
        raise ValueError(f"format is not {STATUS_FORMAT}")
    metrics = _metrics_from(document["metrics"])
    written_at, pid, extra = document["written_at"], document["pid"], document["extra"]
    if not isinstance(written_at, int | float) or not isinstance(pid, int):
        raise ValueError("written_at or pid has the wrong type")
    if not isinstance(extra, dict):
        raise ValueError("extra is not an object")
    return StatusReport(
        metrics=metrics, written_at=float(written_at), pid=pid, extra=MappingProxyType(extra)
    )


# What a Metrics field of each annotated type may hold in the file (bool is never a number).
_ACCEPTS: Mapping[str, tuple[type, ...]] = {
    "int": (int,),
    "str": (str,),
    "str | None": (str, type(None)),
    "float | None": (int, float, type(None)),
}


def _metrics_from(raw: object) -> Metrics:
    """The Metrics in a file; a field missing (an older writer) keeps its default."""
    if not isinstance(raw, dict):
        raise ValueError("metrics is not an object")
    values: dict[str, object] = {}
    for field in dataclasses.fields(Metrics):
        if field.name in raw:
            value = raw[field.name]
            accepts = _ACCEPTS.get(str(field.type), (object,))
            if isinstance(value, bool) or not isinstance(value, accepts):
                raise ValueError(f"metrics.{field.name} = {value!r} has the wrong type")
            values[field.name] = value
    return Metrics(**values)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- Prometheus


def prometheus_text(metrics: Metrics, *, labels: Mapping[str, str] | None = None) -> str:
    """``metrics`` in the Prometheus text exposition format (version 0.0.4).

    ``labels`` (e.g. ``{"device": "gw-17"}``) go on every sample. A gauge whose
    value is unknown (None) has HELP and TYPE lines but no sample: Prometheus
    has no null, and 0 would be a lie.
    """
    base = _label_pairs(labels or {})
    lines: list[str] = []
    for name, field, text in _COUNTERS:
        lines += _family(name, "counter", text, [(base, getattr(metrics, field))])
    for name, field, text in _GAUGES:
        value = getattr(metrics, field)
        lines += _family(name, "gauge", text, [] if value is None else [(base, value)])
    connected = [(base, 0 if metrics.current_hub is None else 1)]
    lines += _family("device_sdk_connected", "gauge", "1 while connected to a hub.", connected)
    hub = [] if metrics.current_hub is None else [((*base, ("hub", metrics.current_hub)), 1)]
    lines += _family("device_sdk_current_hub", "gauge", "The hub connected to now.", hub)
    way = metrics.current_transport
    current = (
        [] if way is None or metrics.current_hub is None else [((*base, ("transport", way)), 1)]
    )
    lines += _family(
        "device_sdk_current_transport", "gauge", "The way in of the current link.", current
    )
    failed = [(base, 1 if metrics.engine_state == "failed" else 0)]
    lines += _family(
        "device_sdk_engine_failed",
        "gauge",
        "1 once the client stopped for good (EngineFailed, or the retry policy gave up).",
        failed,
    )
    return "\n".join(lines) + "\n"


def write_prometheus(
    path: Path | str, metrics: Metrics, *, labels: Mapping[str, str] | None = None
) -> None:
    """Write ``metrics`` for node_exporter's textfile collector, atomically.

    The name must end in ``.prom``: the collector reads only those files.
    """
    path = Path(path)
    _check_prom_path(path)
    _replace_file_0644(path, prometheus_text(metrics, labels=labels).encode())


def _check_prom_path(path: Path) -> None:
    if path.suffix != ".prom":
        raise ConfigError("prometheus_path", str(path), "a file name ending in .prom")


_Labels = tuple[tuple[str, str], ...]


def _family(name: str, kind: str, text: str, samples: Sequence[tuple[_Labels, float]]) -> list[str]:
    """One metric family: HELP and TYPE lines, then its samples."""
    lines = [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
    for pairs, value in samples:
        rendered = ",".join(f'{key}="{_escape(val)}"' for key, val in pairs)
        lines.append(
            f"{name}{{{rendered}}} {_number(value)}" if pairs else f"{name} {_number(value)}"
        )
    return lines


def _label_pairs(labels: Mapping[str, str]) -> _Labels:
    for name in labels:
        # Names starting with __ are reserved for Prometheus itself.
        if not _LABEL_NAME.match(name) or name.startswith("__") or name == "hub":
            raise ConfigError("labels", name, "a label name [a-zA-Z_][a-zA-Z0-9_]*, not __* or hub")
    return tuple(sorted((name, str(value)) for name, value in labels.items()))


def _escape(value: str) -> str:
    """Label value escaping of the exposition format: backslash, quote, newline."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")
    return repr(value) if isinstance(value, float) else str(int(value))


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# --------------------------------------------------------------------------- atomic files


# --------------------------------------------------------------------------- periodic writer


class StatusWriter:
    """Rewrites the status file (and the .prom file) every ``interval`` seconds.

    ``client_metrics`` is usually ``client.metrics``. One daemon thread waits on
    an Event between writes, so `stop` ends it at once; a final snapshot is
    written on the way out. A failed write is logged and retried next interval:
    a full disk must never take the client down.
    """

    def __init__(
        self,
        client_metrics: Callable[[], Metrics],
        path: Path | str,
        prometheus_path: Path | str | None = None,
        interval: float = 10.0,
        *,
        labels: Mapping[str, str] | None = None,
        extra: Callable[[], Mapping[str, object]] | None = None,
    ) -> None:
        if not _finite(interval) or interval <= 0:
            raise ConfigError("status.interval", interval, "seconds > 0")
        self._metrics = client_metrics
        self._path = Path(path)
        self._prometheus_path = None if prometheus_path is None else Path(prometheus_path)
        if self._prometheus_path is not None:
            _check_prom_path(self._prometheus_path)
        self._labels = dict(labels or {})
        _label_pairs(self._labels)
        self._extra = extra
        self._interval = float(interval)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.writes = 0
        self.last_error: BaseException | None = None

    def start(self) -> StatusWriter:
        """Write once now, then every interval in the background."""
        if self._thread is not None:
            raise DeviceSDKError("this StatusWriter was already started")
        self._thread = threading.Thread(target=self._run, name="device-sdk-status", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (after a final write) and wait up to ``timeout`` for it."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> StatusWriter:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def write_once(self) -> None:
        """Take one snapshot and write it (raises what the write raises)."""
        metrics = self._metrics()
        extra = {} if self._extra is None else self._extra()
        write_status(self._path, metrics, extra=extra)
        if self._prometheus_path is not None:
            write_prometheus(self._prometheus_path, metrics, labels=self._labels)
        self.writes += 1

    def _run(self) -> None:
        self._write_logged()
        while not self._stopping.wait(self._interval):
            self._write_logged()
        self._write_logged()  # the final snapshot: the file shows the state at stop

    def _write_logged(self) -> None:
        try:
            self.write_once()
        except Exception as exc:  # disk full, read-only fs, a failing metrics source
            self.last_error = exc
            _log.warning("could not write the status file %s: %s", self._path, exc)


def _replace_file_0644(path: Path, data: bytes) -> None:
    # 0644, not the 0600 default: node_exporter usually runs as another user.
    write_file_atomically(path, data, mode=0o644)
