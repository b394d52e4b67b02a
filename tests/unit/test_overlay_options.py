"""The overlay helper's pure parts: option strings, fsconfig steps, the depth limit."""

from __future__ import annotations

import pytest

from cove.errors import Unsupported
from cove.sys import overlay
from cove.sys import syscalls as sc


def test_legacy_options_writable_and_read_only() -> None:
    data = overlay.legacy_options(["a", "b"], "u", "w", False)
    assert data == "lowerdir=a:b,upperdir=u,workdir=w"
    assert overlay.legacy_options(["a", "b"], None, None, False) == "lowerdir=a:b"
    assert overlay.legacy_options(["a"], "u", "w", True).endswith(",workdir=w,userxattr")


def test_fsconfig_steps_one_lowerdir_plus_per_layer_top_first() -> None:
    steps = overlay.fsconfig_steps(["top", "mid", "bottom"], "u", "w", True)
    assert steps == [
        (sc.FSCONFIG_SET_STRING, "lowerdir+", "top"),
        (sc.FSCONFIG_SET_STRING, "lowerdir+", "mid"),
        (sc.FSCONFIG_SET_STRING, "lowerdir+", "bottom"),
        (sc.FSCONFIG_SET_STRING, "upperdir", "u"),
        (sc.FSCONFIG_SET_STRING, "workdir", "w"),
        (sc.FSCONFIG_SET_FLAG, "userxattr", None),
    ]
    assert [k for _, k, _ in overlay.fsconfig_steps(["a", "b"], None, None, False)] == [
        "lowerdir+",
        "lowerdir+",
    ]


def test_legacy_fd_names_fit_a_page_at_max_depth() -> None:
    # the fallback names every layer /proc/self/fd/N: the worst case, fds in the thousands
    names = [f"/proc/self/fd/{n}" for n in range(9000, 9000 + overlay.MAX_DEPTH)]
    data = overlay.legacy_options(names, "/proc/self/fd/9998", "/proc/self/fd/9999", True)
    assert len(data) < 4096


def test_depth_limit_is_dockers() -> None:
    overlay.check_depth(127, "img")
    with pytest.raises(Unsupported, match=r"^max depth exceeded: img has 128 layers, at most 127$"):
        overlay.check_depth(128, "img")
