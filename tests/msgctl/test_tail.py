"""``msgctl tail``'s lines: a C2S envelope's fields, a JSON entry as JSON."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from daojia_msg.bus.envelope import JSON, decode_envelope
from daojia_msg.msgctl.tail import format_envelope
from daojia_msg.protocol.pb import msgplatform_pb2 as pb


class FormatTests(SynchronousTestCase):
    def test_a_c2s_envelope(self) -> None:
        payload = pb.Message(msgid=5, from_uid=7, from_appcode=1002, msgtype=1,
                             content=b"31.2,121.4\xff", kind=pb.C2S).SerializeToString()
        self.assertEqual(format_envelope(decode_envelope("gps", payload, "L5")),
                         "[gps] msgid=5 from=7@1002 msgtype=1 logid=L5 31.2,121.4\\xff")

    def test_an_offer_outcome_is_json(self) -> None:
        """Not an empty Message (``msgid=0 from=0@0``) with the JSON lost."""
        payload = b'{"offer_id": "917354068370784256", "state": "accepted", "winner_uid": 101}'
        envelope = decode_envelope("offers", payload, "cbb18aa32800000", JSON)
        self.assertEqual(format_envelope(envelope),
                         '[offers] logid=cbb18aa32800000 {"offer_id":"917354068370784256",'
                         '"state":"accepted","winner_uid":101}')
