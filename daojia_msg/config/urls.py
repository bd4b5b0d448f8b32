# -*- test-case-name: tests.config.test_urls -*-
"""Backend URLs (Redis, MySQL, buses): parsed and checked, naming the key."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

from daojia_msg.config.model import Config, ConfigError

__all__ = [
    "BUS_SCHEMES",
    "MYSQL_SSL_MODES",
    "MySQLURL",
    "RedisURL",
    "check_bus_url",
    "check_http_url",
    "check_urls",
    "mysql_tls_required",
    "parse_mysql_url",
    "parse_redis_url",
    "shown",
]

BUS_SCHEMES = ("memory", "redis", "amqp", "amqps", "http", "https")


def shown(url: str) -> str:
    """``url`` fit for an error line or a log: any password replaced by ``***``."""
    try:
        u = urlsplit(url)
        password = u.password
    except ValueError:
        return url.partition(":")[0] + ":..."  # unparsable: the scheme only
    if not password:
        return url
    netloc = u.netloc.replace(f":{password}@", ":***@", 1)
    return u._replace(netloc=netloc).geturl()


def check_bus_url(url: str, key: tuple[str, ...]) -> None:
    scheme = url.partition(":")[0]
    if url == "memory:":
        return
    if scheme not in BUS_SCHEMES or scheme == "memory" or "://" not in url:
        # Only the scheme: the rest of a URL may carry a password.
        raise ConfigError(
            f"expected memory:, redis://, amqp(s):// or http(s):// URL, got scheme {scheme!r}",
            key,
        )
    if scheme == "redis":
        parse_redis_url(url, key)


def check_http_url(url: str, key: tuple[str, ...]) -> None:
    """An absolute ``http://`` or ``https://`` URL with a host (an app's
    ``escalation_url``); raises :class:`ConfigError` naming ``key``."""
    try:
        u = urlsplit(url)
        u.port  # noqa: B018 (a port that is not a number raises here)
    except ValueError as e:
        raise ConfigError(f"not an http(s):// URL: {e}", key) from None
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ConfigError(f"expected an http(s)://host[:port]/path URL, got {shown(url)!r}", key)
    if any(c.isspace() for c in url):
        raise ConfigError("a URL has no whitespace", key)


@dataclass(frozen=True, slots=True)
class RedisURL:
    host: str
    port: int
    db: int
    password: str = field(default="", repr=False)


#: ``ssl-mode`` of a ``mysql://`` URL, as the MySQL client's ``--ssl-mode``:
#: ``disabled`` (plain), ``preferred`` (TLS when the server offers it, the
#: certificate not checked: the default), ``required`` (TLS or no connection,
#: the certificate not checked), ``verify_ca`` (and the certificate signed by
#: ``ssl-ca``, else the system's CAs), ``verify_identity`` (and naming the host).
MYSQL_SSL_MODES = ("disabled", "preferred", "required", "verify_ca", "verify_identity")


def mysql_tls_required(ssl_mode: str) -> bool:
    """Whether a connection under ``ssl_mode`` that is not encrypted must be refused."""
    return ssl_mode in MYSQL_SSL_MODES[2:]


@dataclass(frozen=True, slots=True)
class MySQLURL:
    host: str
    port: int
    user: str
    database: str
    password: str = field(default="", repr=False)
    ssl_mode: str = "preferred"
    #: A PEM file of the CA(s) that sign the server's certificate ("": the system's).
    ssl_ca: str = ""


def parse_redis_url(url: str, key: tuple[str, ...] = ("redis", "url")) -> RedisURL:
    """``redis://[:password@]host[:port][/db]``; raises :class:`ConfigError` naming ``key``."""
    try:
        u = urlsplit(url)
        port = u.port or 6379
    except ValueError as e:
        raise ConfigError(f"not a redis:// URL: {e}", key) from None
    if u.scheme != "redis" or not u.hostname:
        raise ConfigError(f"expected redis://[:password@]host[:port][/db], got {shown(url)!r}", key)
    db = u.path.lstrip("/") or "0"
    if not db.isascii() or not db.isdigit():
        raise ConfigError(f"the database must be a number, got {db!r}", key)
    return RedisURL(u.hostname, port, int(db), unquote(u.password or ""))


def parse_mysql_url(url: str, key: tuple[str, ...] = ("mysql", "url")) -> MySQLURL:
    """``mysql://user[:password]@host[:port]/database[?ssl-mode=MODE&ssl-ca=PATH]``;
    raises :class:`ConfigError`. ``MODE`` is one of :data:`MYSQL_SSL_MODES`
    (any case, ``-`` or ``_``); ``ssl-ca`` without ``ssl-mode`` means
    ``verify_ca``, as for the MySQL client."""
    try:
        u = urlsplit(url)
        port = u.port or 3306
    except ValueError as e:
        raise ConfigError(f"not a mysql:// URL: {e}", key) from None
    database = u.path.lstrip("/")
    if u.scheme != "mysql" or not u.hostname or not u.username or not database:
        raise ConfigError(
            f"expected mysql://user[:password]@host[:port]/database, got {shown(url)!r}", key)
    if not all(c.isalnum() or c in "_$" for c in database):
        raise ConfigError(f"the database name must be letters, digits, _ or $, got {database!r}",
                          key)
    mode, ca = _mysql_tls(u.query, key)
    return MySQLURL(u.hostname, port, unquote(u.username), database, unquote(u.password or ""),
                    mode, ca)


def _mysql_tls(query: str, key: tuple[str, ...]) -> tuple[str, str]:
    """``ssl-mode`` and ``ssl-ca`` of a ``mysql://`` URL's query."""
    options: dict[str, str] = {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ConfigError(f"cannot parse the URL's options {query!r}", key) from None
    for name, value in pairs:
        name = name.replace("_", "-").lower()
        if name not in ("ssl-mode", "ssl-ca"):
            raise ConfigError(f"unknown URL option {name!r} (expected ssl-mode, ssl-ca)", key)
        if name in options:
            raise ConfigError(f"URL option {name!r} given twice", key)
        options[name] = value
    ca = options.get("ssl-ca", "")
    mode = options.get("ssl-mode", "verify_ca" if ca else "preferred").replace("-", "_").lower()
    if mode not in MYSQL_SSL_MODES:
        raise ConfigError(f"ssl-mode must be one of {', '.join(MYSQL_SSL_MODES)}, got "
                          f"{options['ssl-mode']!r}", key)
    if "ssl-ca" in options and (not ca or mode not in MYSQL_SSL_MODES[3:]):
        raise ConfigError("ssl-ca needs a file and ssl-mode verify_ca or verify_identity", key)
    return mode, ca


def check_urls(config: Config) -> None:
    """Reject backend URLs this build cannot serve, naming the key."""
    check_bus_url(config.bus.url, ("bus", "url"))
    for name, url in config.buses.items():
        check_bus_url(url, ("buses", name, "url"))
    if config.redis.url:
        parse_redis_url(config.redis.url)
    if config.mysql.url:
        parse_mysql_url(config.mysql.url)
        for i, url in enumerate(config.mysql.databases):
            parse_mysql_url(url, ("mysql", "databases", str(i)))
    elif config.mysql.databases:
        raise ConfigError("needs mysql.url as well", ("mysql", "databases"))
