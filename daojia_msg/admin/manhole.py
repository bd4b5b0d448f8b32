# -*- test-case-name: tests.admin.test_manhole -*-
"""The admin manhole: a Python prompt inside the node, over telnet, on loopback.

It is off unless ``listen.manhole`` names a listener, and then it refuses to
start without ``admin.manhole_password`` or on an interface other than
loopback (:func:`check_manhole_config`): telnet is clear text, so the password
must never cross a network. Reach it from another machine through SSH::

    ssh -L 7300:127.0.0.1:7300 node-host     # then, locally:
    telnet 127.0.0.1 7300

Log in as ``admin`` (:data:`MANHOLE_USERNAME`) with the configured password.
Three wrong passwords close the connection (one second's pause after each), and
a connection that has not logged in after a minute is closed. Neither the
password nor the typed user name (someone may type the password there) is
ever logged; failed and successful logins are, with the peer address.

The namespace (:class:`AdminNamespace`) offers::

    online(uid)          the sessions of uid, cluster-wide
    kick(uid, appcode)   KICKOUT (reason ADMIN) wherever it is online -> how many
    stats()              the delivery counters, as GET /v1/stats shows them
    nodes()              the live nodes (one node: this one)
    trace(logid)         the log events about logid this node still remembers

``help(online)`` and so on print each one's documentation.

**Answers that take time.** The prompt runs in the reactor thread, so it
cannot wait. When the answer is already there (always on a single node, whose
stores are in memory) a function returns it, and the prompt prints it; when it
failed at once, it raises, and the prompt prints the error. Otherwise (Redis,
another node) it returns the pending Deferred, which Twisted's manhole shows as
``<Deferred #0>``; when it fires, the result appears above the prompt as
``Deferred #0 called back: [...]``, or ``Deferred #0 failed: 'why'`` (``_``
is that Deferred; ``d = online(5)`` keeps it). A coroutine typed at the prompt
is run the same way.

**Nothing that waits.** The whole node waits while a line runs. ``help()``,
``input()``, pagers, pdb, reads of ``sys.stdin``, sleeps over 0.1 s and
``os.system`` are refused or bounded, and ``exit()`` ends the session, not the
node (:mod:`daojia_msg.admin.guard`); a loop that computes for long cannot be
refused: a line that held the node half a second or more says so, and is logged.

Only telnet is offered: Twisted's SSH manhole needs the ``twisted[conch]``
extra (bcrypt, cryptography), and this module imports nothing of it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import inspect
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from time import monotonic
from typing import Any, TypeVar

from twisted.conch import telnet
from twisted.conch.insults import insults
from twisted.conch.manhole import ColoredManhole, ManholeInterpreter
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from daojia_msg.admin.guard import SLOW_LINE_S, LineGuard, Refused, prompt_builtins
from daojia_msg.config import ConfigError
from daojia_msg.core.convert import check_uid
from daojia_msg.core.model import NodeInfo, SessionRecord
from daojia_msg.protocol.codes import KickReason
from daojia_msg.sockets import listens_on_loopback

#: The one user name the manhole accepts.
MANHOLE_USERNAME = "admin"
#: Wrong passwords one connection may try before it is closed.
MAX_FAILURES = 3
#: Seconds between a wrong password and the next ``Username:`` prompt.
FAILURE_DELAY_S = 1.0
#: Seconds a connection may take to log in.
LOGIN_TIMEOUT_S = 60.0

BANNER = (
    "msgplatform admin manhole: a Python prompt inside the node (do not block it).\n"
    "  online(uid)  kick(uid, appcode)  stats()  nodes()  trace(logid)\n"
    "  help(online) for one of them; exit() or Ctrl-D to leave."
)

T = TypeVar("T")

log = Logger()


# -- the namespace ---------------------------------------------------------------


def _now_or_later(d: Deferred[T]) -> T | Deferred[T]:
    """The result of ``d`` if it has one (raising its error), else ``d`` itself."""
    box: list[T | Failure] = []

    def grab(result: T | Failure) -> T | Failure:
        box.append(result)
        return result

    d.addBoth(grab)
    if not box:
        return d
    d.addErrback(lambda _: None)  # raised below: the prompt shows it
    result = box[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result


def no_trace(logid: str) -> list[dict[str, Any]]:
    """The default :class:`AdminNamespace` ``trace``: this node remembers nothing."""
    return []


class AdminNamespace:
    """What an operator may call at the manhole prompt, and nothing of the node itself.

    Each argument is what one function asks of the node; the async ones may
    return a Deferred or be ``async def``:

    - ``lookup_uid(uid)``: the :class:`SessionRecord` s of ``uid``, any appcode,
      cluster-wide (``ISessionStore.lookup_uid``);
    - ``kickout(uid, appcode, reason)``: KICKOUT wherever it is online, how many
      were kicked (``LogicService.kickout``);
    - ``stats()``: the stats snapshot dict (``Stats.snapshot``);
    - ``live_nodes()``: the live :class:`NodeInfo` s (``NodeRegistry.live_nodes``),
      or None on a single node, where ``this_node()`` describes the one node;
    - ``trace(logid)``: the log events about ``logid`` still remembered.
    """

    def __init__(
        self,
        *,
        lookup_uid: Callable[[int], Awaitable[Sequence[SessionRecord]]],
        kickout: Callable[[int, int, KickReason], Awaitable[int]],
        stats: Callable[[], Mapping[str, Any] | Awaitable[Mapping[str, Any]]],
        this_node: Callable[[], Mapping[str, Any]],
        live_nodes: Callable[[], Awaitable[Sequence[NodeInfo]]] | None = None,
        trace: Callable[[str], Sequence[Mapping[str, Any]]] = no_trace,
    ) -> None:
        self._lookup_uid = lookup_uid
        self._kickout = kickout
        self._stats = stats
        self._this_node = this_node
        self._live_nodes = live_nodes
        self._trace = trace

    def namespace(self) -> dict[str, Any]:
        """The manhole's globals: ``online``, ``kick``, ``stats``, ``nodes``, ``trace``."""
        return {
            "online": self.online,
            "kick": self.kick,
            "stats": self.stats,
            "nodes": self.nodes,
            "trace": self.trace,
        }

    def online(self, uid: int) -> Any:
        """online(uid) -> [{"appcode", "node", "since_ms"}, ...]

        Where ``uid`` is logged in, cluster-wide: one entry per appcode, with the
        node holding the connection and the login time (ms since the epoch), as
        GET /v1/sessions answers (but for every user system).
        """
        uid = int(uid)
        check_uid(uid, "uid")
        return _now_or_later(Deferred.fromCoroutine(self._online(uid)))

    async def _online(self, uid: int) -> list[dict[str, int]]:
        records = await self._lookup_uid(uid)
        return [{"appcode": r.appcode, "node": r.node_id, "since_ms": r.since_ms}
                for r in records]

    def kick(self, uid: int, appcode: int) -> Any:
        """kick(uid, appcode) -> how many sessions were kicked (0 or 1)

        Sends KICKOUT with reason ADMIN to ``(uid, appcode)`` on whichever node
        holds it and drops its session, as POST /v1/kickout does.
        """
        uid, appcode = int(uid), int(appcode)
        check_uid(uid, "uid")
        if not 0 < appcode < 2**32:
            raise ValueError("appcode must be from 1 to 4294967295")
        log.info("admin manhole: kick {uid}@{appcode}", uid=uid, appcode=appcode)
        return _now_or_later(Deferred.fromCoroutine(self._kick(uid, appcode)))

    async def _kick(self, uid: int, appcode: int) -> int:
        return await self._kickout(uid, appcode, KickReason.ADMIN)

    def stats(self) -> Any:
        """stats() -> {"totals": {...}, "by_route": [...], "delivery_rate": r}

        The delivery counters (accepted, pushed, acked, repushed, stored, pulled)
        in total and per (appcode, msgtype, kind), with the ACK latency
        (``ack_latency``), as GET /v1/stats shows them (but for every user
        system); ``delivery_rate`` is acked / accepted over the stats window,
        or None before anything was accepted.
        """
        return _now_or_later(Deferred.fromCoroutine(self._stats_now()))

    async def _stats_now(self) -> dict[str, Any]:
        result = self._stats()
        if inspect.isawaitable(result):
            result = await result
        return dict(result)

    def nodes(self) -> Any:
        """nodes() -> [{"node_id", "gate_host", "gate_port", "connections", ...}, ...]

        The live nodes of the cluster with their addresses, connection counts and
        last heartbeat (ms since the epoch), by id; on a single node, this node.
        """
        if self._live_nodes is None:
            return [dict(self._this_node())]
        return _now_or_later(Deferred.fromCoroutine(self._nodes(self._live_nodes)))

    @staticmethod
    async def _nodes(live_nodes: Callable[[], Awaitable[Sequence[NodeInfo]]]
                     ) -> list[dict[str, Any]]:
        return [dataclasses.asdict(info) for info in await live_nodes()]

    def trace(self, logid: str) -> list[dict[str, Any]]:
        """trace(logid) -> [event, ...]

        The log events about ``logid`` (a message's trace id, as the push answer
        or the client gave it) that this node still remembers, oldest first. Only
        this node's recent events: ``msgctl trace`` reads the JSON log files.
        """
        return [dict(event) for event in self._trace(str(logid))]


# -- the prompt ------------------------------------------------------------------


class _AdminInterpreter(ManholeInterpreter):
    """Twisted's interpreter, which also runs a coroutine typed at the prompt (and
    shows its result, at once or as a pending Deferred), and which does not
    leave a failed pending Deferred to be logged as an unhandled error in the
    node's log (the prompt already showed the failure).

    Each line runs under a :class:`LineGuard`; ``SystemExit`` (``exit()``,
    ``sys.exit()``) ends the session instead of reaching the reactor; a
    :class:`Refused` call shows as one line, not a traceback.
    """

    handler: AdminManhole

    def runcode(self, code: Any) -> None:
        started = monotonic()
        try:
            with LineGuard():
                super().runcode(code)
        except SystemExit:
            self.handler.leave()
        held = monotonic() - started
        if held >= SLOW_LINE_S:
            self.write(f"(this line held the whole node for {held:.1f} s)\n")
            log.warn("admin manhole: a typed line held the reactor for {seconds:.1f} s",
                     seconds=held)

    def showtraceback(self) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, Refused):
            self.write(f"Refused: {error}\n")
        else:
            super().showtraceback()

    def displayhook(self, obj: object) -> None:
        if inspect.iscoroutine(obj):
            try:
                obj = _now_or_later(Deferred.fromCoroutine(obj))
            except Exception:
                self.showtraceback()
                return
        pending = isinstance(obj, Deferred) and not obj.called
        super().displayhook(obj)
        if pending:
            assert isinstance(obj, Deferred)
            obj.addErrback(lambda _: None)


class AdminManhole(ColoredManhole):
    """Twisted's coloured Python prompt, with a banner and :class:`_AdminInterpreter`."""

    def __init__(self, namespace: Mapping[str, Any], banner: str = BANNER) -> None:
        super().__init__(dict(namespace))
        self.banner = banner
        self._left = False

    def connectionMade(self) -> None:
        super().connectionMade()
        namespace = self.namespace
        assert namespace is not None
        # Its own builtins: help, input, exit... that do not stop the node.
        namespace["__builtins__"] = prompt_builtins(self.leave)
        self.interpreter = _AdminInterpreter(self, namespace)

    def leave(self) -> None:
        """End this admin session (``exit()``, ``quit()``, ``sys.exit()``)."""
        if not self._left:
            self._left = True
            self.terminal.write(b"Bye (the node goes on).")
            self.terminal.nextLine()
            self.terminal.loseConnection()

    def initializeScreen(self) -> None:
        self.terminal.reset()
        self.terminal.write(self.banner.encode("utf-8"))
        self.terminal.nextLine()
        self.terminal.write(self.ps[self.pn])
        self.setInsertMode()


_NEGOTIATION_ERRORS = (telnet.OptionRefused, telnet.AlreadyNegotiating, telnet.AlreadyEnabled,
                       telnet.AlreadyDisabled)


def _ignore(failure: Failure) -> None:
    """A telnet option the client refused or never answered: harmless."""


class _Bootstrap(telnet.TelnetBootstrapProtocol):
    """Twisted's bootstrap (terminal options, then the prompt), quiet about
    clients that refuse an option or never answer: Twisted logs those as
    failures, which would fill the node's log with tracebacks."""

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.negotiationMap[telnet.NAWS] = self.telnet_NAWS
        transport.negotiationMap[telnet.LINEMODE] = self.telnet_LINEMODE
        for opt in (telnet.LINEMODE, telnet.NAWS, telnet.SGA):
            transport.do(opt).addErrback(_ignore)
        transport.will(telnet.ECHO).addErrback(_ignore)
        self.protocol = self.protocolFactory(*self.protocolArgs, **self.protocolKwArgs)
        self.protocol.makeConnection(self)

    def write(self, data: bytes) -> None:
        # The terminal ends lines with CR LF and the telnet transport makes each
        # LF into CR LF once more (Twisted's bootstrap, twice): send CR LF.
        self.transport.write(data.replace(b"\r\n", b"\n"))  # type: ignore[union-attr]


@implementer(ICredentialsChecker)
class _PasswordChecker:
    """One user name and password, compared in constant time (as SHA-256 digests,
    so not even their lengths show)."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, username: str, password: str) -> None:
        self._username = hashlib.sha256(username.encode("utf-8")).digest()
        self._password = hashlib.sha256(password.encode("utf-8")).digest()

    def requestAvatarId(self, credentials: IUsernamePassword) -> Deferred[bytes | tuple[()]]:
        username = credentials.username
        user_ok = hmac.compare_digest(hashlib.sha256(username).digest(), self._username)
        password_ok = hmac.compare_digest(hashlib.sha256(credentials.password).digest(),
                                          self._password)
        if user_ok & password_ok:
            return succeed(username)
        return fail(UnauthorizedLogin())


@implementer(IRealm)
class _ManholeRealm:
    def __init__(self, namespace: Mapping[str, Any], banner: str) -> None:
        self.namespace = namespace
        self.banner = banner

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any
                      ) -> tuple[Any, Any, Callable[[], None]]:
        if telnet.ITelnetProtocol not in interfaces:
            raise NotImplementedError("the admin manhole speaks telnet only")
        protocol = _Bootstrap(insults.ServerProtocol, AdminManhole, self.namespace, self.banner)
        return telnet.ITelnetProtocol, protocol, lambda: None


def _describe(address: IAddress) -> str:
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if host is not None:
        return f"{host}:{port}"
    return str(getattr(address, "name", None) or address)


class _Login(telnet.AuthenticatingTelnetProtocol):
    """Twisted's telnet login, made sturdier.

    Twisted's own re-prompts for ever, logs refused telnet options as failures,
    and never logs in a client that refuses (or ignores) its ECHO negotiation.
    This one: logs in whatever the client says about ECHO; accepts CR, CR NUL or
    LF as the end of a line; pauses ``failure_delay`` after a wrong password and
    closes after ``max_failures`` of them; closes a connection that has not
    logged in within ``login_timeout``; hands input typed ahead of the prompt to
    the prompt.
    """

    def __init__(self, portal: Portal, clock: IReactorTime, max_failures: int,
                 failure_delay: float, login_timeout: float) -> None:
        super().__init__(portal)
        self.clock = clock
        self.max_failures = max_failures
        self.failure_delay = failure_delay
        self.login_timeout = login_timeout
        self.failures = 0
        self._timeout: IDelayedCall | None = None
        self._reprompt: IDelayedCall | None = None
        self._lost = False

    @property
    def _telnet(self) -> Any:
        """The :class:`telnet.TelnetTransport` (ECHO negotiation, CR LF on write)."""
        return self.transport

    @property
    def peer(self) -> str:
        return _describe(self._telnet.getPeer())

    def connectionMade(self) -> None:
        self._timeout = self.clock.callLater(self.login_timeout, self._timed_out)
        super().connectionMade()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        self._cancel_timers()
        super().connectionLost(reason)

    def _cancel_timers(self) -> None:
        for call in (self._timeout, self._reprompt):
            if call is not None and call.active():
                call.cancel()
        self._timeout = self._reprompt = None

    def dataReceived(self, data: bytes) -> None:
        # The telnet layer made CR LF into LF and CR NUL into CR; a client in
        # character mode ends the password with CR NUL.
        super().dataReceived(data.replace(b"\r", b"\n"))

    def rawDataReceived(self, data: bytes) -> None:
        if self.protocol is not None:
            self.protocol.dataReceived(data)

    def telnet_User(self, line: bytes) -> str:
        self.username = line
        self._telnet.will(telnet.ECHO).addErrback(_ignore)  # hide the password
        self._telnet.write(b"Password: ")
        return "Password"

    def telnet_Password(self, line: bytes) -> None:
        username, password = self.username, line
        del self.username
        self.state = "Discard"
        # Local echo back on first (the prompt echoes what is typed); a client
        # that refused ECHO or never answered (nc) is logged in all the same.
        d = self._telnet.wont(telnet.ECHO)

        def echo_settled(result: object) -> None:
            if isinstance(result, Failure) and not result.check(*_NEGOTIATION_ERRORS):
                return  # the connection was lost
            self._login(username, password)

        d.addBoth(echo_settled)

    def _login(self, username: bytes, password: bytes) -> None:
        if self._lost:
            return
        d = self.portal.login(UsernamePassword(username, password), None, telnet.ITelnetProtocol)
        d.addCallbacks(self._cbLogin, self._ebLogin)

    def _cbLogin(self, ial: Any) -> None:
        if self._lost:
            return
        self._cancel_timers()
        log.info("admin manhole: login from {peer}", peer=self.peer)
        super()._cbLogin(ial)
        self.setRawMode()
        ahead = self.clearLineBuffer()
        if ahead and self.protocol is not None:
            self.protocol.dataReceived(ahead)

    def _ebLogin(self, failure: Failure) -> None:
        if self._lost:
            return
        if not failure.check(UnauthorizedLogin):
            log.failure("admin manhole: login error", failure)
        self.failures += 1
        log.warn("admin manhole: failed login from {peer} ({failures} of {max_failures})",
                 peer=self.peer, failures=self.failures, max_failures=self.max_failures)
        self._telnet.write(b"\nAuthentication failed\n")
        if self.failures >= self.max_failures:
            self._telnet.write(b"Too many failed logins: closing.\n")
            self._telnet.loseConnection()
        elif self.failure_delay > 0:
            self._reprompt = self.clock.callLater(self.failure_delay, self._ask_user)
        else:
            self._ask_user()

    def _ask_user(self) -> None:
        self._reprompt = None
        self._telnet.write(b"Username: ")
        self.state = "User"

    def _timed_out(self) -> None:
        self._timeout = None
        log.info("admin manhole: {peer} did not log in in time", peer=self.peer)
        self.state = "Discard"
        self._telnet.write(b"\nLogin timed out.\n")
        self._telnet.loseConnection()


class ManholeFactory(ServerFactory):
    """Telnet connections to the admin manhole: login first, then the prompt."""

    noisy = False

    def __init__(self, portal: Portal, clock: IReactorTime, max_failures: int,
                 failure_delay: float, login_timeout: float) -> None:
        self.portal = portal
        self.clock = clock
        self.max_failures = max_failures
        self.failure_delay = failure_delay
        self.login_timeout = login_timeout

    def buildProtocol(self, addr: IAddress | None) -> telnet.TelnetTransport:
        protocol = telnet.TelnetTransport(_Login, self.portal, self.clock,
                                          self.max_failures, self.failure_delay,
                                          self.login_timeout)
        protocol.factory = self
        return protocol


def make_manhole_factory(
    namespace: Mapping[str, Any],
    password: str,
    reactor: IReactorTime,
    *,
    username: str = MANHOLE_USERNAME,
    banner: str = BANNER,
    max_failures: int = MAX_FAILURES,
    failure_delay: float = FAILURE_DELAY_S,
    login_timeout: float = LOGIN_TIMEOUT_S,
) -> ManholeFactory:
    """The telnet manhole: ``username`` and ``password`` log in to a Python prompt
    whose globals are a copy of ``namespace`` (each connection its own copy).

    ``reactor`` times the pause after a wrong password and the login timeout.
    Raises :class:`ValueError` without a password (check the config with
    :func:`check_manhole_config` first, for an error that names the key).
    """
    if not password:
        raise ValueError("the admin manhole refuses to start without a password")
    checker = _PasswordChecker(username, password)
    portal = Portal(_ManholeRealm(namespace, banner), [checker])
    return ManholeFactory(portal, reactor, max_failures, failure_delay, login_timeout)


# -- config ----------------------------------------------------------------------


def check_manhole_config(listen_manhole: str, password: str) -> None:
    """Refuse a manhole without a password, or on an interface other than loopback.

    ``listen_manhole`` is ``listen.manhole`` ("" = no manhole: nothing to check);
    it must be ``tcp:PORT:interface=127.0.0.1`` (any loopback address, ``::1``
    with ``tcp6:``) or ``unix:PATH`` (``unix:PATH:mode=600`` keeps other local
    users from even trying). A non-loopback listener is an error, not a
    warning: telnet sends the password and everything typed in clear text.
    Raises :class:`ConfigError` naming ``admin.manhole_password`` or
    ``listen.manhole``.
    """
    if not listen_manhole:
        return
    if not password:
        raise ConfigError("required when listen.manhole is set (in a config file, or as "
                          "--manhole-password-file): the manhole refuses to start without a "
                          "password", ("admin", "manhole_password"))
    try:
        local = listens_on_loopback(listen_manhole)
    except Exception as e:  # ValueError, KeyError... IndexError (systemd: without fds)
        raise ConfigError(f"not a valid endpoint description {listen_manhole!r}: {e}",
                          ("listen", "manhole")) from None
    if local:
        return
    raise ConfigError("the manhole speaks clear-text telnet: bind it to loopback "
                      "(tcp:PORT:interface=127.0.0.1) or a unix: socket, and reach it "
                      "through ssh", ("listen", "manhole"))
