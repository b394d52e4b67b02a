"""The monitor's attach framing (Docker's stdcopy), split as the CLI and the Engine API read it."""

from __future__ import annotations

from cove.containers.attach import split_frames


def frame(stream: int, payload: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload


def test_whole_frames_and_a_partial_rest() -> None:
    data = frame(1, b"out") + frame(2, b"err!") + frame(1, b"tail")[:6]
    frames, rest = split_frames(data)
    assert frames == [(1, frame(1, b"out")), (2, frame(2, b"err!"))]
    assert rest == frame(1, b"tail")[:6]
    # the rest completes with the next read
    more, rest = split_frames(rest + frame(1, b"tail")[6:])
    assert more == [(1, frame(1, b"tail"))] and rest == b""


def test_short_header_and_empty_payload() -> None:
    assert split_frames(b"\x01\x00\x00") == ([], b"\x01\x00\x00")
    assert split_frames(frame(2, b"")) == ([(2, frame(2, b""))], b"")
