"""Tests for :mod:`daojia_msg.bench.httpclients`: the push generator's raw HTTP/1.1 client."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.bench.httpclients import HttpConnection, HttpResponseError, RawHttp

R: Any = reactor


class RawHttpTests(SynchronousTestCase):
    """The push generator's HTTP/1.1 client, over a StringTransport."""

    ANSWER = (b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 7\r\n\r\n{\"a\":1}")

    def connect(self) -> tuple[HttpConnection, StringTransport]:
        connection = HttpConnection()
        transport = StringTransport()
        connection.makeConnection(transport)
        return connection, transport

    def test_build(self) -> None:
        http = RawHttp(R, {"http_url": "http://127.0.0.1:8280/", "api_key": "k-1"})
        self.assertEqual(http.build("/v1/push", b"{}"),
                         b"POST /v1/push HTTP/1.1\r\nHost: 127.0.0.1:8280\r\n"
                         b"Authorization: Bearer k-1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 2\r\n\r\n{}")
        with self.assertRaises(ValueError):
            RawHttp(R, {"http_url": "https://example.com", "api_key": "k"})

    def test_answers_byte_by_byte_and_back_to_back(self) -> None:
        connection, transport = self.connect()
        d = connection.request(b"REQ1")
        self.assertEqual(transport.value(), b"REQ1")
        for i in range(len(self.ANSWER) - 1):
            connection.dataReceived(self.ANSWER[i:i + 1])
        self.assertNoResult(d)
        connection.dataReceived(self.ANSWER[-1:])
        self.assertEqual(self.successResultOf(d), (200, b'{"a":1}'))
        # The next answer arrives with part of a third in one read.
        d2 = connection.request(b"REQ2")
        connection.dataReceived(self.ANSWER.replace(b"200 OK", b"404 Not Found") + b"HTTP/1.1")
        self.assertEqual(self.successResultOf(d2), (404, b'{"a":1}'))
        d3 = connection.request(b"REQ3")
        connection.dataReceived(self.ANSWER[8:])
        self.assertEqual(self.successResultOf(d3), (200, b'{"a":1}'))
        self.assertFalse(connection.closed)

    def test_connection_close(self) -> None:
        connection, transport = self.connect()
        d = connection.request(b"REQ")
        connection.dataReceived(b"HTTP/1.1 413 Too Large\r\nConnection: close\r\n"
                                b"Content-Length: 0\r\n\r\n")
        self.assertEqual(self.successResultOf(d), (413, b""))
        self.assertTrue(connection.closed)
        self.assertTrue(transport.disconnecting)

    def test_unreadable_answers(self) -> None:
        for answer in (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                       b"garbage\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"):
            with self.subTest(answer=answer):
                connection, transport = self.connect()
                d = connection.request(b"REQ")
                connection.dataReceived(answer)
                self.failureResultOf(d, HttpResponseError)
                self.assertTrue(transport.disconnecting)

    def test_lost_while_waiting(self) -> None:
        connection, _ = self.connect()
        d = connection.request(b"REQ")
        connection.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(d, ConnectionDone)
        self.assertTrue(connection.closed)

    def test_timeout_drops_the_connection(self) -> None:
        clock = Clock()
        http = RawHttp(clock, {"http_url": "http://127.0.0.1:1", "api_key": "k"}, timeout=5)
        connection, transport = self.connect()
        http.idle.append(connection)
        http.connections.add(connection)
        d = Deferred.fromCoroutine(http.send(b"REQ"))
        clock.advance(5)
        self.failureResultOf(d, defer.TimeoutError)
        self.assertTrue(transport.disconnecting)
        self.assertEqual((http.idle, http.connections), ([], set()))
        connection.connectionLost(Failure(ConnectionDone()))  # no second errback

    def test_reuses_idle_connection(self) -> None:
        http = RawHttp(Clock(), {"http_url": "http://127.0.0.1:1", "api_key": "k"})
        connection, transport = self.connect()
        http.idle.append(connection)
        http.connections.add(connection)
        d = Deferred.fromCoroutine(http.send(b"REQ"))
        self.assertEqual(http.idle, [])
        connection.dataReceived(self.ANSWER)
        self.assertEqual(self.successResultOf(d), (200, b'{"a":1}'))
        self.assertEqual(http.idle, [connection])
