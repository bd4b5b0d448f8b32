"""Positions in C2S content, their bounds, and distances."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.core.geo import (
    MAX_POSITION_BYTES,
    PositionError,
    distance_m,
    format_position,
    parse_position,
)


class ParseTests(SynchronousTestCase):
    def test_text_and_json(self) -> None:
        self.assertEqual(parse_position(b"31.2304,121.4737"), (31.2304, 121.4737))
        self.assertEqual(parse_position(b" -33.9 , +18.4 "), (-33.9, 18.4))
        self.assertEqual(parse_position(b"0,0"), (0.0, 0.0))
        self.assertEqual(parse_position(b'{"lat": 31.5, "lon": -121, "speed": 3}'), (31.5, -121.0))
        self.assertEqual(parse_position(format_position(1.5, 2.25)), (1.5, 2.25))

    def test_bounds(self) -> None:
        self.assertEqual(parse_position(b"85.05112878,180"), (85.05112878, 180.0))
        self.assertEqual(parse_position(b"-85.05112878,-180"), (-85.05112878, -180.0))
        for content in (b"85.06,0", b"-90,0", b"0,180.0001", b"0,-181", b"999,0",
                        b'{"lat": 91, "lon": 0}', b'{"lat": 0, "lon": 1e400}',
                        b'{"lat": 0, "lon": -1e999}', b'{"lat": 10000000000000000000000, "lon": 0}'):
            with self.assertRaises(PositionError, msg=content):
                parse_position(content)

    def test_not_positions(self) -> None:
        for content in (b"", b"gps", b"31.2", b"31.2,121.4,5", b"31.2;121.4", b"1e1,2",
                        b"0x1f,2", b"nan,0", b"NaN,NaN", b"inf,0", b"31.2,121.4 #1",
                        b"\xff\xfe", "31,２".encode(), b"[31.2, 121.4]", b'{"lat": 31.2}',
                        b'{"lat": "31.2", "lon": "121.4"}', b'{"lat": true, "lon": 1}',
                        b'{"lat": NaN, "lon": 0}', b'{"lat": Infinity, "lon": 0}',
                        b'{"lat": null, "lon": 0}', b'{"lat": 1, "lon": 2', b"{\xff}",
                        b"1." + b"1" * 21 + b",2"):
            with self.assertRaises(PositionError, msg=content):
                parse_position(content)

    def test_huge_content_is_refused_unread(self) -> None:
        big = b'{"lat": 1, "lon": 2, "pad": "' + b"x" * MAX_POSITION_BYTES + b'"}'
        with self.assertRaises(PositionError) as caught:
            parse_position(big)
        self.assertIn("at most", str(caught.exception))
        with self.assertRaises(PositionError):
            parse_position(b"[" * 100_000)


class DistanceTests(SynchronousTestCase):
    def test_distances(self) -> None:
        self.assertEqual(distance_m(31.0, 121.0, 31.0, 121.0), 0.0)
        # One degree of latitude on Redis' sphere.
        self.assertAlmostEqual(distance_m(0, 0, 1, 0), 111226.29, places=1)
        # Shanghai to Beijing, about 1,067 km.
        self.assertEqual(round(distance_m(31.2304, 121.4737, 39.9042, 116.4074) / 1000), 1068)
        self.assertAlmostEqual(distance_m(0, 179.9, 0, -179.9), distance_m(0, 0, 0, 0.2), places=6)
