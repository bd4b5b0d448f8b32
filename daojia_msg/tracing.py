# -*- test-case-name: tests.test_tracing -*-
"""Tracing one message across the nodes by its ``logid`` (docs/protocol.md §6.3).

Every log line about a message carries ``logid``, ``msgid``, ``uid`` and
``appcode`` as fields, so one search by logid finds the message's whole path. ``uid``/``appcode`` name the user the line
is about: the sender on the way in (accepted, stored, published; for an app
server's push, which has no sender, the recipient), the recipient from then
on (pushed, re-pushed, left pending, pulled, ACKed, handed to another node);
lines that name both add ``to_uid``/``to_appcode``. This module adds the rest:

- :func:`install` writes every log event, as one JSON object a line, to the
  node's ``log.json_file`` (Twisted's JSON log format: ``RS JSON NL``), with
  ``node``, the id of the node that logged it, added to each event;
- :func:`read_trace` reads such files, from any number of nodes, and returns
  the events of one ``logid`` in time order (``msgctl trace LOGID FILE...``);
- :class:`TraceBuffer` keeps the last events that carry a ``logid`` in memory,
  for the admin manhole's ``trace(logid)``;
- :data:`MESSAGES`: the per-message events of the message path (stored,
  pushed, ACKed, pulled, published, re-pushed) and the session path (each
  successful LOGIN and LOGOUT). They are published here, not to the global
  log: only the JSON trace file and the trace buffer listen, so they never
  fill twistd's text log and cost almost nothing when nobody listens. Warnings and errors about
  a message go to the global log, with its logid; so do refused logins, kicks
  and logins that lost a race.

The node id is known only once the node has started (in a cluster it is
leased): the observers read it from a :class:`NodeRef`, by default the
process-wide :data:`NODE` that :func:`set_node` sets.

An event that already has a ``node`` field (some lines name a peer node as
``{node}``) keeps its text: it is formatted before ``node`` is set to the id of
the node that logged it.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import IO, Any

from constantly import NamedConstant
from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogEvent,
    Logger,
    LogLevel,
    LogPublisher,
    eventAsJSON,
    eventFromJSON,
    formatEvent,
    globalLogPublisher,
)

# Not exported by twisted.logger, but what its eventAsJSON uses to flatten events.
from twisted.logger._flatten import flattenEvent
from zope.interface import implementer

#: What starts each record of Twisted's JSON log format (RFC 7464).
RS = b"\x1e"
#: The fields every trace record has besides those of its event.
RECORD_KEYS = ("time", "level", "namespace", "node", "logid", "text")

_MISSING = object()
_PLAIN = (str, int, float, type(None))
#: The exact types of :data:`_PLAIN` (a bool or an IntEnum is not one of them).
_PLAIN_TYPES = frozenset(_PLAIN)
_REPR_MAX = 200


class NodeRef:
    """The id of the node this process runs; None until it is known."""

    __slots__ = ("id",)

    def __init__(self, node_id: int | None = None) -> None:
        self.id = node_id

    def __repr__(self) -> str:
        return f"NodeRef({self.id!r})"


#: The process's node, read by default by every observer of this module.
NODE = NodeRef()


def set_node(node_id: int | None) -> None:
    """Name this process's node in the events logged from now on."""
    NODE.id = node_id


def with_node(event: LogEvent, node_id: int | None) -> LogEvent:
    """``event`` with ``node`` = ``node_id`` (a copy; ``event`` is left alone).

    An event that already names another node as ``node`` is flattened first,
    so its text still shows that node. With ``node_id`` None, ``event`` itself.
    """
    current = event.get("node", _MISSING)
    if node_id is None or (current is not _MISSING and current == node_id):
        return event
    copy = dict(event)
    if current is not _MISSING:
        if "log_flattened" in copy:
            copy["log_flattened"] = dict(copy["log_flattened"])
        try:
            flattenEvent(copy)
        except Exception:  # unformattable anyway: formatEvent will say so
            pass
    copy["node"] = node_id
    return copy


@implementer(ILogObserver)
class NodeFields:
    """Passes every event on to ``observer`` with ``node`` added (see :func:`with_node`)."""

    def __init__(self, observer: ILogObserver, node: NodeRef = NODE) -> None:
        self.observer = observer
        self.node = node

    def __call__(self, event: LogEvent) -> None:
        self.observer(with_node(event, self.node.id))


# -- writing -----------------------------------------------------------------------------


def _fallback(event: LogEvent) -> LogEvent:
    """What can be kept of an event that :func:`eventAsJSON` cannot encode
    (a circular value, a format naming a missing field): its plain fields and
    its text, as formatted here."""
    text = formatEvent(event)  # never raises
    kept: dict[str, Any] = {k: v for k, v in event.items()
                            if not k.startswith("log_") and isinstance(v, _PLAIN)}
    for key in ("log_time", "log_namespace", "log_level"):
        if key in event:
            kept[key] = event[key]
    kept["log_format"] = text.replace("{", "{{").replace("}", "}}")
    return kept


def json_record(event: LogEvent) -> str:
    """One event as a record of Twisted's JSON log format (``RS JSON NL``).

    Values JSON cannot hold are written as ``{"unpersistable": true}`` and bytes
    as latin-1 text (both by :func:`eventAsJSON`); an event it cannot encode
    at all is written with its plain fields and its text. Mutates ``event``
    (flattens it), so pass a copy.
    """
    try:
        text = eventAsJSON(event)
    except Exception:
        text = eventAsJSON(_fallback(event))
    return f"\x1e{text}\n"


@implementer(ILogObserver)
class JsonLogObserver:
    """Appends every event, with ``node``, to the file ``path`` (JSON lines,
    flushed after each): Twisted's ``jsonFileLogObserver``, robust to events it
    could not encode. A failed write (disk full) is raised once, so the other
    observers report it, then ignored until writes work again."""

    def __init__(self, path: str, node: NodeRef = NODE) -> None:
        self.path = path
        self.node = node
        self._file: IO[str] = open(path, "a", encoding="utf-8", buffering=1)
        self._write = FileLogObserver(self._file, json_record)
        self._failing = False

    def __call__(self, event: LogEvent) -> None:
        if self._file.closed:
            return
        copy = with_node(event, self.node.id)
        if copy is event:
            copy = dict(event)
        if "log_flattened" in copy:  # eventAsJSON adds to it: not the caller's
            copy["log_flattened"] = dict(copy["log_flattened"])
        try:
            self._write(copy)
        except OSError:
            if self._failing:
                return
            self._failing = True
            raise
        self._failing = False

    def close(self) -> None:
        self._file.close()


def json_log_observer(path: str, node: NodeRef = NODE) -> JsonLogObserver:
    """An observer appending JSON lines with ``node`` to ``path``; ``close()`` it when done."""
    return JsonLogObserver(path, node)


def install(
    path: str, publishers: Iterable[Any] | None = None, node: NodeRef = NODE
) -> Callable[[], None]:
    """Log every event of ``publishers`` (default: the global log and
    :data:`MESSAGES`) to ``path`` as JSON lines; returns the function that
    stops that and closes the file. Raises OSError when ``path`` cannot be
    opened for appending."""
    sources: list[Any] = (list(publishers) if publishers is not None
                          else [globalLogPublisher, MESSAGES])
    observer = json_log_observer(path, node)
    for publisher in sources:
        publisher.addObserver(observer)

    def remove() -> None:
        for publisher in sources:
            publisher.removeObserver(observer)
        observer.close()

    return remove


class MessageEvents:
    """The publisher of per-message events; it passes them on only while an
    observer listens (checking that is the whole cost when none does).

    A :class:`TraceBuffer` that observes it is a *sink*: the loggers of
    :meth:`logger` hand it an event's fields directly, without building a
    log event (a message logs three events on its way, stored, pushed and
    ACKed, and the buffer listens on every node). Other observers get the
    log event, as from any :class:`~twisted.logger.Logger`.
    """

    def __init__(self) -> None:
        self.publisher = LogPublisher()
        self.listeners = 0
        #: The trace buffers listening (see :meth:`TraceBuffer.keep`).
        self.sinks: list[TraceBuffer] = []
        #: The listeners that take log events (not sinks).
        self.observers: list[ILogObserver] = []

    def __call__(self, event: LogEvent) -> None:
        if self.listeners:
            for sink in self.sinks:
                sink(event)
            if self.observers:
                self.publisher(event)

    def logger(self, namespace: str) -> Logger:
        return _MessageLogger(namespace=namespace, observer=self)  # type: ignore[arg-type]

    def addObserver(self, observer: ILogObserver) -> None:
        if isinstance(observer, TraceBuffer):
            self.sinks.append(observer)
        else:
            self.publisher.addObserver(observer)
            self.observers.append(observer)
        self.listeners += 1

    def removeObserver(self, observer: ILogObserver) -> None:
        if isinstance(observer, TraceBuffer):
            if observer not in self.sinks:
                return
            self.sinks.remove(observer)
        else:
            if observer not in self.observers:
                return
            self.publisher.removeObserver(observer)
            self.observers.remove(observer)
        self.listeners -= 1


class _MessageLogger(Logger):
    """A :class:`~twisted.logger.Logger` of :data:`MESSAGES`: its events go
    to the trace buffers as fields (:meth:`TraceBuffer.keep`) and, only when
    other observers listen, as log events. Its callers pass a level of
    their own (``debug``, ``info``...), so it does not look the level up."""

    def emit(self, level: NamedConstant, format: str | None = None, **kwargs: object) -> None:
        self._emit(level, format, kwargs)

    def debug(self, format: str | None = None, **kwargs: object) -> None:
        self._emit(LogLevel.debug, format, kwargs)

    def info(self, format: str | None = None, **kwargs: object) -> None:
        self._emit(LogLevel.info, format, kwargs)

    def _emit(self, level: NamedConstant, format: str | None, fields: dict[str, Any]) -> None:
        # ``fields`` is the call's own ``**kwargs``: the sinks may keep it as it is.
        events: MessageEvents = self.observer  # type: ignore[assignment]
        if not events.listeners:
            return
        when = time.time()
        for sink in events.sinks:
            sink.keep(self.namespace, level, format, fields, when)
        if events.observers:
            events.publisher(dict(fields, log_logger=self, log_level=level,
                                  log_namespace=self.namespace, log_source=self.source,
                                  log_format=format, log_time=when))


#: Where the message path is logged (see the module docstring).
MESSAGES = MessageEvents()


# -- records: one event as a plain dict ---------------------------------------------------


def _level_name(level: object) -> str:
    name = getattr(level, "name", None)
    if isinstance(level, NamedConstant) and name and getattr(LogLevel, name, None) is level:
        return name
    if isinstance(level, str):
        return level
    return "-"


def _plain(value: object) -> Any:
    """A value a record can hold: plain values as they are, others as short text."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    try:
        text = repr(value)
    except Exception:
        text = f"<unrepresentable {type(value).__name__}>"
    return text if len(text) <= _REPR_MAX else text[: _REPR_MAX - 3] + "..."


def record(event: LogEvent) -> dict[str, Any]:
    """An event (logged, or read back by :func:`read_trace`) as a plain dict:
    its fields, and ``time`` (epoch seconds), ``level``, ``namespace``,
    ``node``, ``logid`` and ``text`` (formatted by :func:`formatEvent`)."""
    out: dict[str, Any] = {k: _plain(v) for k, v in event.items() if not k.startswith("log_")}
    when = event.get("log_time")
    out.update(
        time=float(when) if isinstance(when, int | float) else None,
        level=_level_name(event.get("log_level")),
        namespace=str(event.get("log_namespace") or "-"),
        node=out.get("node"),
        logid=out.get("logid"),
        text=formatEvent(event),
    )
    return out


def _clean(text: str) -> str:
    """One line of printable text: control characters escaped (fields such as
    a client_msg_id come from clients)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


def format_time(when: float | None) -> str:
    """``2026-11-26T15:31:27.123Z`` (UTC), or ``-``."""
    if when is None:
        return "-"
    try:
        stamp = datetime.fromtimestamp(when, UTC)
    except (OverflowError, OSError, ValueError):
        return "-"
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_line(rec: dict[str, Any]) -> str:
    """A record as one line: time, node, level, namespace, text."""
    node = rec.get("node")
    namespace = str(rec.get("namespace") or "-").removeprefix("daojia_msg.")
    return _clean(f"{format_time(rec.get('time'))} node={'-' if node is None else node} "
                  f"{rec.get('level') or '-'} {namespace}: {rec.get('text', '')}")


# -- in memory: the last events with a logid -----------------------------------------------


class _Kept:
    """One event kept by a :class:`TraceBuffer`: plain values only."""

    __slots__ = ("logid", "time", "level", "namespace", "node", "fmt", "fields", "text")

    def __init__(self, event: LogEvent, logid: Any, node: int | None) -> None:
        fields: dict[str, Any] = {}
        plain = True
        for key, value in event.items():
            if key.startswith("log_"):
                continue
            if isinstance(value, _PLAIN):
                fields[key] = value
            else:
                plain = False
                fields[key] = _plain(value)
        fmt = event.get("log_format")
        self.logid = logid
        self.time = event.get("log_time")
        self.level = _level_name(event.get("log_level"))
        self.namespace = str(event.get("log_namespace") or "-")
        self.node = node
        self.fields = fields
        self.fmt: str | None = fmt if isinstance(fmt, str) else None
        # Formatting waits for find() when the plain fields are all the format needs.
        lazy = plain and self.fmt is not None and "{log_" not in self.fmt \
            and "log_flattened" not in event
        self.text: str | None = None if lazy else formatEvent(event)

    @classmethod
    def of_fields(cls, namespace: str, level: NamedConstant, fmt: str | None,
                  fields: dict[str, Any], when: float, logid: Any,
                  node: int | None) -> _Kept:
        """What ``__init__`` keeps of the event ``fields`` would make (the
        fields of a :class:`_MessageLogger` call), without making it when
        every value is plain (the usual case)."""
        plain = fmt is not None and "{log_" not in fmt
        if plain:
            for value in fields.values():
                if type(value) not in _PLAIN_TYPES:
                    plain = False
                    break
        if not plain:
            event = dict(fields, log_level=level, log_namespace=namespace,
                         log_format=fmt, log_time=when)
            return cls(event, logid, node)
        kept = cls.__new__(cls)
        kept.logid = logid
        kept.time = when
        kept.level = level.name
        kept.namespace = namespace
        kept.node = node
        kept.fields = fields  # the logger's own dict (see _MessageLogger._emit)
        kept.fmt = fmt
        kept.text = None  # formatted by record(), from the plain fields
        return kept

    def record(self) -> dict[str, Any]:
        text = self.text
        if text is None:
            text = formatEvent({**self.fields, "log_format": self.fmt})
        # A field named log_* (plain, kept by of_fields) is no field of the record.
        out = {k: v for k, v in self.fields.items() if not k.startswith("log_")}
        out.update(time=self.time, level=self.level, namespace=self.namespace, node=self.node,
                   logid=self.logid, text=text)
        return out


@implementer(ILogObserver)
class TraceBuffer:
    """Keeps the last ``size`` events that carry a ``logid`` (older ones are
    dropped), as plain values: no reference to the objects they were logged
    with. ``find(logid)`` gives those of one message, oldest first, as
    records (see :func:`record`); ``node`` is this node's id when logged."""

    def __init__(self, size: int = 10000, node: NodeRef = NODE) -> None:
        if size < 1:
            raise ValueError("a TraceBuffer holds at least one event")
        self.size = size
        self.node = node
        self._events: deque[_Kept] = deque(maxlen=size)

    def __len__(self) -> int:
        return len(self._events)

    def __call__(self, event: LogEvent) -> None:
        logid = event.get("logid")
        if logid:
            self._events.append(_Kept(event, logid, self.node.id))

    def keep(self, namespace: str, level: NamedConstant, fmt: str | None,
             fields: dict[str, Any], when: float) -> None:
        """Keep the event a :data:`MESSAGES` logger logs with these
        ``fields`` (no log event made: see :class:`MessageEvents`)."""
        logid = fields.get("logid")
        if logid:
            self._events.append(_Kept.of_fields(namespace, level, fmt, fields, when, logid,
                                                self.node.id))

    def find(self, logid: str) -> list[dict[str, Any]]:
        """The records of the events with this ``logid`` still kept, oldest first."""
        return [kept.record() for kept in self._events.copy() if kept.logid == logid]

    def attach(self, publishers: Iterable[Any] | None = None) -> Callable[[], None]:
        """Observe ``publishers`` (default: the global log and :data:`MESSAGES`);
        returns the function that stops that."""
        sources: list[Any] = (list(publishers) if publishers is not None
                              else [globalLogPublisher, MESSAGES])
        for publisher in sources:
            publisher.addObserver(self)

        def detach() -> None:
            for publisher in sources:
                publisher.removeObserver(self)

        return detach


# -- reading JSON log files -----------------------------------------------------------------


class Trace(list[LogEvent]):
    """The events of one logid, in time order; ``skipped``: by file, how many
    records that mention the logid could not be read (truncated, corrupt)."""

    def __init__(self, events: Iterable[LogEvent] = ()) -> None:
        super().__init__(events)
        self.skipped: dict[str, int] = {}


def _parse(raw: bytes) -> LogEvent | None:
    try:
        event = eventFromJSON(raw.decode("utf-8"))
    except Exception:  # not UTF-8, not JSON, a bad object hook value...
        return None
    return event if isinstance(event, dict) else None


def _time_of(event: LogEvent) -> float:
    when = event.get("log_time")
    return float(when) if isinstance(when, int | float) else 0.0


def _scan(path: str, logid: str, needles: tuple[bytes, ...]) -> tuple[list[LogEvent], int]:
    """The events of ``logid`` in one file, and how many records naming it were unreadable."""
    found: list[LogEvent] = []
    bad = 0
    with open(path, "rb") as f:
        for line in f:
            if not any(n in line for n in needles):
                continue  # most lines: no need to parse them
            # RS starts each record; a record cut short (a crash mid-write)
            # runs into the next one on the same line.
            for raw in line.split(RS):
                if not raw.strip() or not any(n in raw for n in needles):
                    continue
                event = _parse(raw)
                if event is None:
                    bad += 1
                elif event.get("logid") == logid:
                    found.append(event)
    return found, bad


def read_trace(
    logid: str,
    paths: Iterable[str],
    on_error: Callable[[str, OSError], object] | None = None,
) -> Trace:
    """The events with this ``logid`` in the JSON log files ``paths`` (from any
    nodes), sorted by ``log_time`` (events of the same time keep their order).

    Reads Twisted's JSON log format, and plain JSON lines too. Records that
    mention the logid but cannot be read are skipped and counted in
    ``skipped``. A file that cannot be read raises OSError, or, with
    ``on_error``, is reported to ``on_error(path, error)`` and skipped.
    """
    needles = tuple(dict.fromkeys(
        json.dumps(logid, ensure_ascii=escaped).encode() for escaped in (True, False)
    ))
    events: list[LogEvent] = []
    trace = Trace()
    for path in dict.fromkeys(paths):
        try:
            found, bad = _scan(path, logid, needles)
        except OSError as e:
            if on_error is None:
                raise
            on_error(path, e)
            continue
        events.extend(found)
        if bad:
            trace.skipped[path] = bad
    events.sort(key=_time_of)
    trace.extend(events)
    return trace
