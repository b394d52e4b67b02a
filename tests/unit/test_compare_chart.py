"""``cove compare``'s chart: literal text (a ``$`` of the command is no math) and the VM's
boot / command / teardown split beside the container's whole run (issue 23)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cove import compare

pytest.importorskip("matplotlib")

# two $: matplotlib would typeset "((1+1)) " as math between them
COMMAND = ["sh", "-c", "echo $((1+1)) $HOME"]


def _result(mode: str, walls: list[float], split: tuple[float, float] | None) -> compare.ModeResult:
    r = compare.ModeResult(mode, kernel="6.1.0-test" if mode == "vm" else "6.18.0-host")
    for wall in walls:
        s = compare.Sample(wall / 2, wall, wall / 3, 10.0, 12.0, 0)
        if split is not None:
            s.boot_s, s.run_s = split
        r.samples.append(s)
    return r


def test_chart_text_is_literal_and_the_vm_bar_is_split(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.text import Text

    results = [
        _result("container", [0.2, 0.3, 0.25], None),
        _result("vm", [4.0, 4.4, 4.2], (3.1, 0.6)),
    ]
    fig = compare.chart(results, "alpine:3.20", COMMAND)
    try:
        title = fig.get_suptitle()
        assert title.splitlines()[0] == "cove compare alpine:3.20 -- sh -c echo $((1+1)) $HOME"
        # chart() has drawn the figure (tight_layout): tick labels and annotations exist
        texts = [t for t in fig.findobj(Text) if t.get_text()]
        assert any("$((1+1))" in t.get_text() for t in texts)
        mathy = [t.get_text() for t in texts if t.get_parse_math() or t.get_usetex()]
        assert mathy == [], f"texts rendered as math: {mathy}"
        # the first panel: the container's whole run, the vm's boot, command and teardown
        ax = fig.axes[0]
        heights = [(round(p.get_x() + p.get_width() / 2), p.get_y(), p.get_height())
                   for p in ax.patches]  # fmt: skip
        assert heights[0] == (0, 0.0, pytest.approx(0.25))
        assert heights[1:] == [
            (1, 0.0, pytest.approx(3.1)),
            (1, pytest.approx(3.1), pytest.approx(0.6)),
            (1, pytest.approx(3.7), pytest.approx(0.5)),
        ]
        assert [t.get_text() for t in ax.get_legend().get_texts()] == [
            "vm boot",
            "command",
            "teardown",
        ]
    finally:
        plt.close(fig)
    compare.write_outputs(results, "alpine:3.20", COMMAND, str(tmp_path))
    from PIL import Image

    with Image.open(tmp_path / "compare.png") as im:
        assert im.info["Title"] == title
