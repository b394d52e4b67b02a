from __future__ import annotations

import pytest

from cove.errors import InvalidReference
from cove.spec.reference import parse

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "full", "familiar"),
    [
        ("alpine", "docker.io/library/alpine:latest", "alpine:latest"),
        ("alpine:3.20", "docker.io/library/alpine:3.20", "alpine:3.20"),
        ("library/alpine:3.20", "docker.io/library/alpine:3.20", "alpine:3.20"),
        ("docker.io/alpine", "docker.io/library/alpine:latest", "alpine:latest"),
        ("index.docker.io/library/alpine", "docker.io/library/alpine:latest", "alpine:latest"),
        ("user/app:v1", "docker.io/user/app:v1", "user/app:v1"),
        ("host:5000/a/b:tag", "host:5000/a/b:tag", "host:5000/a/b:tag"),
        ("localhost/app", "localhost/app:latest", "localhost/app:latest"),
        ("localhost:5000/app", "localhost:5000/app:latest", "localhost:5000/app:latest"),
        ("ghcr.io/o/r/x:1.0-rc_1", "ghcr.io/o/r/x:1.0-rc_1", "ghcr.io/o/r/x:1.0-rc_1"),
        (f"alpine@{DIGEST}", f"docker.io/library/alpine@{DIGEST}", f"alpine@{DIGEST}"),
        (f"alpine:3@{DIGEST}", f"docker.io/library/alpine:3@{DIGEST}", f"alpine:3@{DIGEST}"),
        ("a__b/c--d.e", "docker.io/a__b/c--d.e:latest", "a__b/c--d.e:latest"),
        ("[::1]:5000/x", "[::1]:5000/x:latest", "[::1]:5000/x:latest"),
        ("UPPER.io/x", "UPPER.io/x:latest", "UPPER.io/x:latest"),
    ],
)
def test_parse_normalises_like_docker(text: str, full: str, familiar: str) -> None:
    ref = parse(text)
    assert str(ref) == full
    assert ref.familiar() == familiar


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("Alpine", "lowercase"),
        ("a:b:c", "invalid reference format"),
        ("alpine:", "bad tag"),
        (":tag", "no repository"),
        ("a//b", "invalid reference"),
        ("-a", "invalid reference"),
        ("a_", "invalid reference"),
        ("alpine@sha256:abc", "bad digest"),
        ("alpine@md5", "bad digest"),
        ("a:" + "t" * 129, "bad tag"),
        ("x/" + "a" * 260, "too long"),
    ],
)
def test_parse_rejects_invalid(text: str, why: str) -> None:
    with pytest.raises(InvalidReference, match=why):
        parse(text)


def test_no_default_tag() -> None:
    assert parse("alpine", default_tag=False).tag is None
