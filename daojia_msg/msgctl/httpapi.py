# -*- test-case-name: tests.msgctl.test_httpapi,tests.msgctl.test_tls -*-
"""``msgctl push``, ``msgctl stats`` and ``msgctl store-stats``: the node's
HTTP API (docs/openapi.yaml),
over https with ``--tls`` (the node's certificate verified against ``--ca``).
``push`` sends an ``Idempotency-Key`` (``--idempotency-key``, or a fresh one)
and resends with it after a 504."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.task import deferLater
from twisted.web.client import ResponseNeverReceived

from daojia_msg.config import DEMO_APPS
from daojia_msg.msgctl.common import CONNECT_ERRORS, CliError, Ctx, check_tls, resending, tls_hint
from daojia_msg.tls import TLSError, tls_failure, trust_root


def _api_key(given: str | None, appcode: int) -> str:
    key = given or (DEMO_APPS[appcode].api_key if appcode in DEMO_APPS else None)
    if not key:
        raise CliError(f"--api-key is required: appcode {appcode} is not a demo app (1001, 1002)",
                       2)
    return key


def base_url(ctx: Ctx) -> str:
    """``--http``, or the default (https:// with ``--tls``); TLS options that
    contradict it are refused."""
    a = ctx.args
    check_tls(a)
    url = str(a.http or "127.0.0.1:8080")
    if "://" not in url:  # host:port, as curl takes it
        url = f"{'https' if a.tls else 'http'}://{url}"
    scheme = urlsplit(url).scheme  # lower case
    if scheme not in ("http", "https"):
        raise CliError(f"--http: expected an http:// or https:// URL, got {a.http}", 2)
    url = scheme + url[len(scheme):]
    if a.tls and scheme != "https":
        raise CliError(f"--tls needs an https:// URL, got --http {url}", 2)
    return url.rstrip("/")


def _client(ctx: Ctx) -> Any:
    """treq over an agent that verifies https against ``--ca`` (or the system's CAs)."""
    from treq.client import HTTPClient
    from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

    policy = BrowserLikePolicyForHTTPS()
    if ctx.args.ca:
        try:
            policy = BrowserLikePolicyForHTTPS(trust_root(ctx.args.ca))
        except TLSError as e:
            raise CliError(f"--ca: {e}", 2) from None
    pool = HTTPConnectionPool(ctx.reactor, persistent=False)
    return HTTPClient(Agent(ctx.reactor, contextFactory=policy, pool=pool))


class HttpError(CliError):
    """The API answered with an error ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _timed_out(error: Exception) -> bool:
    """A push answered 504: it may or may not be stored; resend it with its key."""
    return isinstance(error, HttpError) and error.status == 504


async def _http(ctx: Ctx, method: str, path: str, key: str, body: Any = None,
                headers: dict[str, str] | None = None) -> str:
    """One HTTP API request; its body text, or :class:`CliError` with the API's
    error (:class:`HttpError` when it answered one)."""
    url = base_url(ctx) + path
    http = ctx.http if ctx.http is not None else _client(ctx)
    headers = {"Authorization": f"Bearer {key}", **(headers or {})}
    try:
        if body is None:
            response = await http.request(method, url, headers=headers)
        else:
            response = await http.request(method, url, json=body, headers=headers)
        data = await response.content()
    except CONNECT_ERRORS as e:
        raise CliError(f"cannot reach {url}: {str(e).rstrip('.')}") from None
    except Exception as e:
        why = tls_failure(e)
        if why is not None:
            host = urlsplit(url).hostname or ""
            raise CliError(f"cannot reach {url} over TLS: {tls_hint(why, host)}") from None
        if isinstance(e, ResponseNeverReceived):
            tls = "" if url.startswith("https") else ", or https:// with --tls"
            raise CliError(f"cannot reach {url}: the connection closed without an HTTP "
                           f"answer (is --http the node's HTTP API, not its gate{tls}?)") from None
        raise CliError(f"cannot reach {url}: {e.__class__.__name__}: {e}") from None
    text: str = data.decode("utf-8", "replace").strip()
    if not 200 <= response.code < 300:
        try:
            detail = json.loads(text)["error"]
        except (ValueError, KeyError, TypeError):
            detail = text or response.phrase.decode("latin-1")
        raise HttpError(response.code, f"HTTP {response.code}: {detail}")
    return text


async def cmd_push(ctx: Ctx) -> None:
    a = ctx.args
    body: dict[str, Any] = {
        "to_uid": a.to,
        "to_appcode": a.to_appcode,
        "msgtype": a.msgtype,
        "content": " ".join(a.text),
    }
    if a.logid:
        body["logid"] = a.logid
    api_key = _api_key(a.api_key, a.to_appcode)
    idempotent = {"Idempotency-Key": a.idempotency_key or uuid.uuid4().hex}
    ctx.say(await resending(ctx, lambda: _http(ctx, "POST", "/v1/push", api_key, body, idempotent),
                            _timed_out, "with the same Idempotency-Key"))


async def cmd_stats(ctx: Ctx) -> int:
    """Delivery statistics of the key's user system (cluster-wide in a cluster);
    with ``--watch``, again every so many seconds, a failed round said and
    the watch kept up (a node restarting answers again later). Exit status 1
    when the last round failed."""
    a = ctx.args
    if a.watch is None:
        await _stats_once(ctx)
        return 0
    done = 0
    while True:
        clock = time.strftime("%H:%M:%S", time.localtime(ctx.reactor.seconds()))
        ctx.say(f"--- {clock}")
        try:
            await _stats_once(ctx)
            status = 0
        except CliError as e:
            ctx.note(f"*** {e}")
            status = 1
        done += 1
        if a.rounds and done >= a.rounds:
            return status
        await deferLater(ctx.reactor, a.watch, lambda: None)


async def _stats_once(ctx: Ctx) -> None:
    a = ctx.args
    text = await _http(ctx, "GET", "/v1/stats", _api_key(a.api_key, a.appcode))
    if a.json:
        ctx.say(text)
        return
    stats = json.loads(text)
    rate = stats.get("delivery_rate")
    window = stats.get("window_s")
    ctx.say(f"delivery rate: {'-' if rate is None else f'{rate:.2%}'}"
            + (f" (last {window:g} s)" if window else "")
            + f", since the start: {_pct(stats.get('delivery_rate_total'))}")
    names = ("accepted", "pushed", "acked", "repushed", "stored", "pulled", "expired",
             "escalated")
    ctx.say(f"{'appcode':>8} {'msgtype':>8} {'kind':<4} " + " ".join(f"{n:>9}" for n in names)
            + f" {'ack p50 ms':>10} {'ack p99 ms':>10}")
    for r in stats["by_route"]:
        ctx.say(f"{r['appcode']:>8} {r['msgtype']:>8} {r['kind']:<4} "
                + " ".join(f"{r.get(n, 0):>9}" for n in names) + _latency(r.get("ack_latency")))
    t = stats["totals"]
    ctx.say(f"{'total':>8} {'':>8} {'':<4} " + " ".join(f"{t.get(n, 0):>9}" for n in names)
            + _latency(stats.get("ack_latency")))


def _latency(summary: dict[str, Any] | None) -> str:
    """The ACK latency columns: p50 and p99 in ms (bucket bounds), ``-`` if none."""
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:g}"

    summary = summary or {}
    return f" {ms(summary.get('p50_ms')):>10} {ms(summary.get('p99_ms')):>10}"


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.2%}"


async def cmd_store_stats(ctx: Ctx) -> None:
    """The message store's figures (the whole platform's; on MySQL, InnoDB's
    estimates) and the answering node's last purge round."""
    a = ctx.args
    store = json.loads(await _http(ctx, "GET", "/v1/stats", _api_key(a.api_key, a.appcode)))
    store = store.get("store")
    if store is None:
        raise CliError("the node's GET /v1/stats has no \"store\" (a node before the data "
                       "lifecycle?)")
    if a.json:
        ctx.say(json.dumps(store, indent=2))
        return
    sizes = store.get("bytes") or {}
    about = " (estimates)" if store.get("approximate") else ""
    ctx.say(f"{'table':<8} {'rows':>14} {'bytes':>12}{about}")
    for kind in ("pending", "history", "dedup"):
        ctx.say(f"{kind:<8} {_count(store.get(f'{kind}_rows')):>14} {_size(sizes.get(kind)):>12}")
    at = store.get("figures_at_ms")
    # The node reads these at most once per [store] purge_interval_s: say when.
    ctx.say(f"figures read at {_clock(at)} (at most once per purge_interval_s)" if at
            else "figures: not read yet")
    age = store.get("oldest_pending_age_s")
    ctx.say(f"oldest pending message: {'none' if age is None else _age(age) + ' old'}")
    last = store.get("last_purge")
    if last is None:
        ctx.say("last purge: none yet on this node")
        return
    ctx.say(f"last purge on this node: {_clock(last['at_ms'])}: {last['expired']} expired,"
            f" {last['delivered']} delivered, {last['history']} history rows,"
            f" {last.get('dedup', 0)} de-dup keys in {last.get('batches', 0)} batches"
            + (f"; skipped (another node purged them): {', '.join(last['skipped'])}"
               if last.get("skipped") else ""))


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _size(value: int | None) -> str:
    if value is None:
        return "-"
    if value < 1024:
        return f"{value} B"
    size, unit = value / 1024, "KiB"
    for bigger in ("MiB", "GiB", "TiB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{size:.1f} {unit}"


def _age(seconds: float) -> str:
    for unit, length in (("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= length:
            return f"{seconds / length:.1f} {unit}"
    return f"{seconds:.0f} s"


def _clock(at_ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at_ms / 1000))
