# -*- test-case-name: tests.admin.test_guard -*-
"""What keeps a line typed at the admin manhole from stopping the node.

The prompt runs Python in the reactor thread: while a line runs, the node
serves nobody (no frame, no ``/healthz``, no lease renewal). A person who
types ``help()`` there expects an interactive help, which reads the node's own
standard input (its terminal, if it has one) and waits for ever. So:

- The prompt's builtins (:func:`prompt_builtins`, a copy: the node's own
  builtins are untouched) replace ``help`` by one that writes the text back
  without a pager (``help()`` with no argument explains instead of asking),
  ``input`` and ``breakpoint`` by refusals, and ``exit``/``quit`` by calls
  that end the admin session, not the node.
- While a typed line runs (:class:`LineGuard`, on the reactor thread only;
  other threads see the real objects), ``sys.stdin`` refuses to be read,
  ``time.sleep`` longer than :data:`MAX_SLEEP_S` is refused, ``os.system``,
  ``os.popen``, ``getpass.getpass`` and ``sys.breakpointhook`` (pdb) are
  refused, ``pydoc.pager`` writes to the session, and a subprocess is waited
  for at most :data:`MAX_WAIT_S`. So the library code a line calls (pydoc,
  pdb, ``code.interact``) is refused too, with :class:`Refused`.

What cannot be refused: a loop that computes for long, a blocking socket or
lock, ``os.read(0, n)``, ``os._exit``. A line that held the reactor for
:data:`SLOW_LINE_S` or more is reported to the session and logged (without
its text), so the stall at least shows.
"""

from __future__ import annotations

import builtins
import getpass
import io
import os
import pydoc
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

#: Longest ``time.sleep`` a line may do (seconds); longer ones are refused.
MAX_SLEEP_S = 0.1
#: Longest wait for a subprocess (``Popen.wait``, ``communicate``, ``run``).
MAX_WAIT_S = 1.0
#: A line that held the reactor this long (seconds) is reported and logged.
SLOW_LINE_S = 0.5

HELP_TEXT = """\
Interactive help would read the node's own terminal (and stop the node), so
the manhole has none. Ask about one thing instead:

  help(online)   help(kick)   help(stats)   help(nodes)   help(trace)
  help(len)      help("str.split")      help("if")      help("keywords")

Answers that need Redis or another node come back as a Deferred, printed above
the prompt when they fire. exit(), quit() or Ctrl-D end this session (the node
goes on). Anything that waits (input(), long sleeps, pagers, pdb) is refused;
a loop that computes for long still stops the node while it runs."""


class Refused(Exception):
    """A call the manhole does not make: it would stop the node."""


# -- the prompt's builtins -------------------------------------------------------


class ManholeHelp:
    """``help``: pydoc's text for one object or topic, written back whole."""

    def __repr__(self) -> str:
        return "Type help(object) for help about object (the manhole has no interactive help)."

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        if not args and not kwargs:
            print(HELP_TEXT)
            return
        print(help_text(*args, **kwargs), end="")


def help_text(request: Any, **kwargs: Any) -> str:
    """What ``pydoc.help(request)`` would page, as one string.

    ``help("modules")`` is refused: it imports every module it finds.
    """
    if isinstance(request, str) and request.strip().split()[:1] == ["modules"]:
        raise Refused("help('modules') imports every module installed, with the node "
                      "stopped meanwhile: not from the manhole")
    out = io.StringIO()
    helper = pydoc.Helper(input=io.StringIO(), output=out)
    # Some topics ("if", "True") go to pydoc's own pager, not to the output.
    saved = pydoc.pager
    owner = threading.get_ident()
    pydoc.pager = _only_here(lambda: threading.get_ident() == owner,
                             saved, lambda text, *_: out.write(pydoc.plain(text)))
    try:
        helper.help(request, **kwargs)
    finally:
        pydoc.pager = saved
    return out.getvalue()


def refuse_input(prompt: object = "") -> str:
    """``input``: the manhole asks nothing."""
    raise Refused("input() would wait on the node's standard input, not this session: "
                  "the manhole asks nothing interactively (set a variable instead)")


def refuse_breakpoint(*args: Any, **kwargs: Any) -> None:
    """``breakpoint`` and ``sys.breakpointhook``: pdb would stop the whole node."""
    raise Refused("pdb would stop the whole node at its terminal: not from the manhole")


class Leave:
    """``exit`` and ``quit``: end the admin session (the node goes on)."""

    def __init__(self, leave: Callable[[], None]) -> None:
        self._leave = leave

    def __repr__(self) -> str:
        return "Use exit() or Ctrl-D to leave the admin session (the node goes on)."

    def __call__(self, code: object = None) -> None:
        self._leave()
        raise SystemExit(code)


def prompt_builtins(leave: Callable[[], None]) -> dict[str, Any]:
    """The builtins of one manhole session: the node's, with what would block
    replaced (``help``, ``input``, ``breakpoint``) and ``exit``/``quit`` calling
    ``leave``. A copy: the node's own builtins stay as they are."""
    names = dict(vars(builtins))
    names.update(help=ManholeHelp(), input=refuse_input, breakpoint=refuse_breakpoint,
                 exit=Leave(leave), quit=Leave(leave))
    return names


# -- while a line runs -------------------------------------------------------------

_STDIN = ("sys.stdin is the node's standard input, not this session's: "
          "the manhole does not read it")
#: What a guarded standard input still tells (nothing is read).
_STDIN_INFO = frozenset({"encoding", "errors", "name", "mode", "closed", "newlines",
                         "line_buffering"})


class _NoStdin:
    """``sys.stdin`` while a line runs: refuses to be read on the reactor
    thread, is the real one on any other thread and once the line is done."""

    def __init__(self, real: Any, guard: LineGuard) -> None:
        self._real = real
        self._guard = guard

    def __getattr__(self, name: str) -> Any:
        if not self._guard.here() or name in _STDIN_INFO:
            return getattr(self._real, name)
        if name == "isatty":  # pydoc: the plain pager
            return lambda: False
        raise Refused(_STDIN)

    def __iter__(self) -> Any:
        if self._guard.here():
            raise Refused(_STDIN)
        return iter(self._real)


def _only_here(here: Callable[[], bool], real: Callable[..., Any],
               instead: Callable[..., Any]) -> Callable[..., Any]:
    """``instead`` when ``here()``, else ``real``."""

    def call(*args: Any, **kwargs: Any) -> Any:
        if here():
            return instead(*args, **kwargs)
        return real(*args, **kwargs)

    return call


def _refuse(what: str) -> Callable[..., Any]:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise Refused(what)

    return refuse


def _bounded_sleep(real: Callable[[float], None]) -> Callable[[float], None]:
    def sleep(seconds: float) -> None:
        if seconds > MAX_SLEEP_S:
            raise Refused(f"time.sleep({seconds!r}) would stop the node for that long "
                          f"(the manhole allows {MAX_SLEEP_S} s): use "
                          "twisted.internet.task.deferLater(reactor, seconds, f)")
        real(seconds)

    return sleep


def _bound(timeout: float | None) -> float:
    return MAX_WAIT_S if timeout is None else min(timeout, MAX_WAIT_S)


def _bounded_wait(real: Callable[..., Any]) -> Callable[..., Any]:
    def wait(self: subprocess.Popen[Any], timeout: float | None = None) -> Any:
        return real(self, timeout=_bound(timeout))

    return wait


def _bounded_communicate(real: Callable[..., Any]) -> Callable[..., Any]:
    def communicate(self: subprocess.Popen[Any], input: Any = None,
                    timeout: float | None = None) -> Any:
        return real(self, input, timeout=_bound(timeout))

    return communicate


def _plain_pager(text: str, *_: object) -> None:
    sys.stdout.write(pydoc.plain(text))


_SHELL = ("{} waits for the command with the node stopped (and shares its terminal): "
          "use subprocess.run([...], capture_output=True, timeout=1), or "
          "twisted.internet.utils.getProcessOutput, which does not wait")

#: (object, attribute, what replaces it on the reactor thread given the real one).
_PATCHES: list[tuple[Any, str, Callable[[Any], Callable[..., Any]]]] = [
    (sys, "breakpointhook", lambda real: refuse_breakpoint),
    (time, "sleep", _bounded_sleep),
    (os, "system", lambda real: _refuse(_SHELL.format("os.system()"))),
    (os, "popen", lambda real: _refuse(_SHELL.format("os.popen()"))),
    (getpass, "getpass", lambda real: _refuse("getpass() reads the node's terminal: "
                                              "not from the manhole")),
    (pydoc, "pager", lambda real: _plain_pager),
    (subprocess.Popen, "wait", _bounded_wait),
    (subprocess.Popen, "communicate", _bounded_communicate),
]


class LineGuard:
    """While one typed line runs (a context manager): the refusals and bounds
    of this module's docstring, on the thread that entered it. The real
    objects are put back on exit, and whatever the line kept of the stand-ins
    (``from time import sleep``) behaves as the real one from then on."""

    def __init__(self) -> None:
        self._saved: list[tuple[Any, str, Any]] = []
        self._owner: int | None = None

    def here(self) -> bool:
        """True inside the line, on its thread."""
        return self._owner == threading.get_ident()

    def __enter__(self) -> LineGuard:
        self._owner = threading.get_ident()
        saved = self._saved
        for name in ("stdin", "__stdin__"):
            real = getattr(sys, name)
            saved.append((sys, name, real))
            setattr(sys, name, _NoStdin(real, self))
        for obj, name, instead in _PATCHES:
            real = getattr(obj, name)
            saved.append((obj, name, real))
            setattr(obj, name, _only_here(self.here, real, instead(real)))
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._owner = None
        saved, self._saved = self._saved, []
        for obj, name, real in reversed(saved):
            setattr(obj, name, real)
