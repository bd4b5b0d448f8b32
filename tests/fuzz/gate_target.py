"""The atheris target: any bytes into the codec and into one gate connection,
checked by :mod:`tests.fuzz.harness` (an exception is a finding).

Run it for a fixed budget with ``tools/fuzz.sh [RUNS]``, or::

    python -m tests.fuzz.gate_target --write-seeds DIR     # a starting corpus
    python -m tests.fuzz.gate_target -atheris_runs=1000000 DIR

(any libFuzzer flag works; a file argument replays one input, fresh).
``--replay FILE...`` runs inputs without atheris (``tests/fuzz/test_gate_target.py``
replays the seeds and every input kept in ``tests/fuzz/regressions/``).

An input is a small header, then the stream (:func:`parse`):

- byte 0: bits 0-1 log in first (none, uid 42, uid 43, both: the second
  refused), bit 2 "records" mode, bits 3-5 how many cuts, bits 6-7 the seconds
  that pass after each chunk (0, 1, 11, 200);
- two bytes per cut: where the stream is split into chunks;
- the rest: the stream as it is, or in records mode a list of
  ``[cmd][flags][length][body]`` records that become well-formed frames (the
  session's uid and app unless ``flags`` says otherwise, ``flags`` as the
  msgtype's low bits), so fuzzed bodies reach the handlers behind the header
  checks.

Connections share one stack (in-memory stores, a fake clock), renewed every
:data:`RENEW_EVERY` inputs; the clock jumps an hour between inputs, so rate
limits and login throttles start afresh.
"""

from __future__ import annotations

import contextlib
import os
import struct
import sys
from typing import Any

try:
    import atheris
except ImportError:  # replaying inputs needs no atheris (tools/requirements-fuzz.txt)
    atheris = None

#: Run as the fuzzer (not imported by the tests, not writing seeds or
#: replaying): instrument the product's code for atheris's coverage.
FUZZING = (__name__ == "__main__" and atheris is not None
           and not {"--write-seeds", "--replay"} & set(sys.argv[1:2]))

with (atheris.instrument_imports(include=["daojia_msg"]) if FUZZING
      else contextlib.nullcontext()):
    from daojia_msg.protocol.codec import FrameDecoder, encode
    from daojia_msg.protocol.pb import msgplatform_pb2 as pb
    from tests.fuzz.harness import (
        APPCODE,
        UIDS,
        Violation,
        decode,
        decode_chunked,
        feed_gate,
        login_frame,
        memory_stack,
        split,
    )

ADVANCES = (0.0, 1.0, 11.0, 200.0)
RENEW_EVERY = 5000
_stack: list[Any] = []
_count = [0]


def stack() -> Any:
    if not _stack or _count[0] % RENEW_EVERY == 0:
        _stack[:] = [memory_stack()]
    _count[0] += 1
    st = _stack[0]
    st.clock.advance(3600)
    return st


def parse(data: bytes, st: Any) -> tuple[list[bytes], list[float]]:
    """The chunks and the clock advances an input stands for."""
    if not data:
        return [], []
    flags, rest = data[0], data[1:]
    ncuts = (flags >> 3) & 7
    cuts = [int.from_bytes(rest[i:i + 2], "big") for i in range(0, 2 * ncuts, 2)]
    rest = rest[2 * ncuts:]
    head = b""
    logins = [[], [UIDS[0]], [UIDS[1]], list(UIDS)][flags & 3]
    for n, uid in enumerate(logins):
        head += login_frame(st, uid, 900_000 + n)
    uid = logins[0] if logins else UIDS[0]
    body = records(rest, uid) if flags & 4 else rest
    chunks = split(head + body, cuts)
    return chunks, [ADVANCES[flags >> 6]] * len(chunks)


def records(data: bytes, uid: int) -> bytes:
    """``[cmd][flags][length][body]`` records as frames: the header is
    ``uid``'s in app 1001 unless ``flags`` bit 7 (then uid 7, app 1002)."""
    out = []
    i = seq = 0
    while i + 3 <= len(data):
        cmd, fl, length = data[i], data[i + 1], data[i + 2]
        body = data[i + 3:i + 3 + length]
        i += 3 + length
        seq += 1
        who, app = (7, 1002) if fl & 0x80 else (uid, APPCODE)
        out.append(encode(cmd, app, fl & 0x7F, who, seq, body))
    return b"".join(out)


def TestOneInput(data: bytes) -> None:
    st = stack()
    chunks, advances = parse(data, st)
    max_body = st.config.limits.max_body
    # The codec: any split decodes as the whole stream does.
    whole = FrameDecoder(max_body)
    whole.feed(b"".join(chunks))
    expected, error = decode(whole)
    got, got_error = decode_chunked(chunks, max_body)
    if got != expected or type(got_error) is not type(error):
        raise Violation(f"split {len(chunks)} ways the stream decodes otherwise")
    # The gate.
    feed_gate(st, chunks, advances)


def seeds() -> dict[str, bytes]:
    """A starting corpus: each command well formed after a login, a relogin,
    a broken stream."""
    rec = struct.Struct("BBB")

    def record(cmd: int, body: bytes = b"", fl: int = 7) -> bytes:
        return rec.pack(cmd, fl, len(body)) + body

    c2c = pb.C2CRequest(to_uid=UIDS[1], to_appcode=APPCODE, content=b"hi",
                        client_msg_id="m-1").SerializeToString()
    return {
        "keepalive": bytes([0b101]) + record(6),
        "c2c": bytes([0b101]) + record(5, c2c) + record(5, c2c),
        "c2c-split": bytes([0b10101, 0, 40, 0, 70]) + record(5, c2c),
        "ack-pull-history": bytes([0b101]) + record(8, pb.Ack(msgids=[1, 2]).SerializeToString())
        + record(9, pb.PullRequest(limit=5).SerializeToString())
        + record(10, pb.HistoryRequest(peer_uid=UIDS[1]).SerializeToString()),
        "c2s": bytes([0b101]) + record(3, pb.C2SRequest(content=b"x").SerializeToString()),
        "logout": bytes([0b101]) + record(2) + record(6),
        "relogin": bytes([0b111]) + record(6),
        "idle": bytes([0b11000101]) + record(6),
        "raw": bytes([0b001]) + encode(6, APPCODE, 0, UIDS[0], 1, b""),
        "garbage": bytes([0]) + b"GET / HTTP/1.1\r\n\r\n",
    }


def write_seeds(directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    for name, data in seeds().items():
        with open(os.path.join(directory, f"seed-{name}"), "wb") as f:
            f.write(data)


def replay(paths: list[str]) -> None:
    """Run each input once (on a fresh stack each): raises what a finding raises."""
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        _stack.clear()
        TestOneInput(data)


def main(argv: list[str]) -> None:
    if len(argv) == 3 and argv[1] == "--write-seeds":
        write_seeds(argv[2])
    elif len(argv) >= 2 and argv[1] == "--replay":
        replay(argv[2:])
        print(f"replayed {len(argv) - 2} inputs: no finding")
    elif atheris is None:
        sys.exit("atheris is not installed: pip install -r tools/requirements-fuzz.txt")
    else:
        atheris.Setup(argv, TestOneInput)
        atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
