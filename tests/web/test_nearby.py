"""``GET /v1/nearby``: the key's user system only, every parameter checked,
nearest first, the limit and its cap."""

from __future__ import annotations

from daojia_msg.config import parse_config
from tests.web.fakes import NOW
from tests.web.helpers import SHOP, TAXI, TWO_SYSTEMS, ApiTestCase, Response

GEO_ROUTES = TWO_SYSTEMS + """
[[routes]]
appcode = 1002
msgtype = 1
topic = "gps"
geo = true

[[routes]]
appcode = 2001
msgtype = 1
topic = "gps"
geo = true
"""

LAT, LON = 31.2304, 121.4737
NEAR = f"lat={LAT}&lon={LON}"


class NearbyTests(ApiTestCase):
    def setUp(self) -> None:
        self.build(parse_config(GEO_ROUTES))

    def report(self, uid: int, east_m: float, appcode: int = 1002) -> None:
        self.node.login(uid, appcode)
        session = self.logic.local[(uid, appcode)]
        self.logic.positions.report(session, b"%.6f,%.6f" % (LAT, LON + east_m / 95_200))

    def nearby(self, query: str, headers: dict[str, str] | None = SHOP) -> Response:
        return self.request("GET", f"/v1/nearby?{query}", headers=headers)

    def test_nearest_first(self) -> None:
        for uid, east_m in ((7, 800), (8, 50), (9, 300), (10, 9000)):
            self.report(uid, east_m)
        self.report(11, 10, appcode=2001)  # another user system's app
        response = self.nearby(f"appcode=1002&{NEAR}&radius_m=1000")
        self.assertEqual(response.status, 200)
        drivers = response.json()["drivers"]
        self.assertEqual([d["uid"] for d in drivers], [8, 9, 7])
        first = drivers[0]
        self.assertEqual(sorted(first), ["distance_m", "lat", "lon", "uid", "updated_ms"])
        self.assertLess(abs(first["distance_m"] - 50), 1)
        self.assertEqual(first["lat"], LAT)
        self.assertEqual(first["updated_ms"], int(NOW * 1000))
        two = self.nearby(f"appcode=1002&{NEAR}&radius_m=1000&limit=2").json()
        self.assertEqual([d["uid"] for d in two["drivers"]], [8, 9])

    def test_limit_default_and_cap(self) -> None:
        for uid in range(1, 131):
            self.report(uid, uid)
        default = self.nearby(f"appcode=1002&{NEAR}&radius_m=50000").json()
        self.assertEqual([d["uid"] for d in default["drivers"]], list(range(1, 21)))
        for limit in ("101", "1000", "9" * 40, "007"):
            capped = self.nearby(f"appcode=1002&{NEAR}&radius_m=50000&limit={limit}").json()
            self.assertEqual(len(capped["drivers"]), min(int(limit), 100), limit)

    def test_another_user_systems_key_is_refused(self) -> None:
        self.report(7, 10)
        self.assertError(self.nearby(f"appcode=1002&{NEAR}&radius_m=100", TAXI),
                         403, "user system")
        self.assertError(self.nearby(f"appcode=1002&{NEAR}&radius_m=100", None),
                         401)
        self.assertError(self.nearby(f"appcode=3003&{NEAR}&radius_m=100"), 400,
                         "no app")
        own = self.nearby(f"appcode=2001&{NEAR}&radius_m=100", TAXI)
        self.assertEqual(own.json(), {"drivers": []})

    def test_bad_parameters(self) -> None:
        for query, contains in (
            (f"{NEAR}&radius_m=100", "appcode"),
            (f"appcode=x&{NEAR}&radius_m=100", "appcode"),
            (f"appcode=1002&lon={LON}&radius_m=100", "lat"),
            (f"appcode=1002&lat={LAT}&radius_m=100", "lon"),
            (f"appcode=1002&{NEAR}", "radius_m"),
            (f"appcode=1002&lat=nan&lon={LON}&radius_m=100", "lat"),
            (f"appcode=1002&lat=inf&lon={LON}&radius_m=100", "lat"),
            (f"appcode=1002&lat=91&lon={LON}&radius_m=100", "lat"),
            (f"appcode=1002&lat={LAT}&lon=-180.5&radius_m=100", "lon"),
            (f"appcode=1002&lat={'1' * 5000}&lon={LON}&radius_m=100", "lat"),
            (f"appcode=1002&{NEAR}&radius_m=0", "radius_m"),
            (f"appcode=1002&{NEAR}&radius_m=-5", "radius_m"),
            (f"appcode=1002&{NEAR}&radius_m=50001", "radius_m"),
            (f"appcode=1002&{NEAR}&radius_m=1e999", "radius_m"),
            (f"appcode=1002&{NEAR}&radius_m=100&limit=0", "limit"),
            (f"appcode=1002&{NEAR}&radius_m=100&limit=-1", "limit"),
            (f"appcode=1002&{NEAR}&radius_m=100&limit=2.5", "limit"),
            (f"appcode=1002&{NEAR}&radius_m=100&limit=000", "limit"),
            (f"appcode=1002&{NEAR}&radius_m=100&radius_m=200", "more than once"),
        ):
            self.assertError(self.nearby(query), 400, contains)

    def test_numbers_as_clients_write_them(self) -> None:
        self.report(7, 10)
        for query in ("lat=3.12304e1&lon=121.4737&radius_m=1e2", "lat=%2B31.2304&lon=121.4737&radius_m=100.",
                      "lat=31.2304&lon=121.4737&radius_m=.1e3"):
            response = self.nearby(f"appcode=1002&{query}")
            self.assertEqual([d["uid"] for d in response.json()["drivers"]], [7], query)
