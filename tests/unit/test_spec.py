from __future__ import annotations

import json

import pytest

from cove.errors import InvalidSpec
from cove.spec import image as spec
from cove.spec.changes import apply_change

D = "sha256:" + "b" * 64


def manifest(**over: object) -> bytes:
    doc: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": spec.OCI_MANIFEST,
        "config": {"mediaType": spec.OCI_CONFIG, "digest": D, "size": 3},
        "layers": [{"mediaType": spec.OCI_LAYER_GZIP, "digest": D, "size": 9}],
    }
    doc.update(over)
    return json.dumps(doc).encode()


def test_manifest_round_trip_is_canonical() -> None:
    m = spec.Manifest.parse(manifest())
    assert m.layers[0].size == 9
    assert spec.Manifest.parse(m.to_bytes()) == m
    assert m.to_bytes() == spec.Manifest.parse(m.to_bytes()).to_bytes()


def test_docker_schema2_accepted() -> None:
    m = spec.Manifest.parse(
        manifest(
            mediaType=spec.DOCKER_MANIFEST,
            config={"mediaType": spec.DOCKER_CONFIG, "digest": D, "size": 3},
            layers=[{"mediaType": spec.DOCKER_LAYER_GZIP, "digest": D, "size": 9}],
        )
    )
    assert spec.LAYER_COMPRESSION[m.layers[0].media_type] == "gzip"


@pytest.mark.parametrize(
    ("over", "msg"),
    [
        ({"schemaVersion": 1}, "schemaVersion"),
        ({"mediaType": "text/plain"}, "media type"),
        ({"layers": [{"mediaType": "x/y", "digest": D, "size": 1}]}, "unsupported media type"),
        ({"layers": [{"mediaType": spec.OCI_LAYER, "digest": "sha256:zz", "size": 1}]}, "digest"),
        ({"layers": [{"mediaType": spec.OCI_LAYER, "digest": D, "size": -1}]}, "invalid size"),
        ({"layers": [{"mediaType": spec.OCI_LAYER, "size": 1}]}, "lacks field"),
        ({"config": {"mediaType": "x", "digest": D, "size": 1}}, "config has unsupported"),
    ],
)
def test_manifest_rejects(over: dict[str, object], msg: str) -> None:
    with pytest.raises(InvalidSpec, match=msg):
        spec.Manifest.parse(manifest(**over))


def test_config_and_index() -> None:
    with pytest.raises(InvalidSpec, match="rootfs"):
        spec.ImageConfig.parse(b"{}")
    with pytest.raises(InvalidSpec, match="not valid json"):
        spec.ImageConfig.parse(b"{")
    cfg = spec.new_config([D], spec.Platform.parse("linux/arm/v7"), "t", {"Cmd": ["x"]})
    parsed = spec.ImageConfig.parse(spec.canonical_json(cfg))
    assert parsed.diff_ids == [D] and parsed.platform == spec.Platform("linux", "arm", "v7")
    idx = spec.Index.parse(
        json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": spec.OCI_MANIFEST,
                        "digest": D,
                        "size": 1,
                        "platform": {"os": "linux", "architecture": "arm64"},
                    }
                ],
            }
        ).encode()
    )
    assert idx.manifests[0].platform == spec.Platform("linux", "arm64")


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("linux/amd64", "linux/amd64"),
        ("x86_64", "linux/amd64"),
        ("linux/aarch64", "linux/arm64"),
        ("linux/arm64/v8", "linux/arm64"),
        ("linux/arm/v7", "linux/arm/v7"),
    ],
)
def test_platform_parse(text: str, want: str) -> None:
    assert str(spec.Platform.parse(text)) == want


def test_platform_rejects() -> None:
    with pytest.raises(InvalidSpec):
        spec.Platform.parse("a/b/c/d")


def test_changes() -> None:
    cfg: dict[str, object] = {"Env": ["A=0", "PATH=/bin"]}
    for change in [
        'CMD ["/bin/sh"]',
        "ENTRYPOINT run me",
        "ENV A=1 B=two",
        "ENV C three words",
        "EXPOSE 80 53/udp",
        "LABEL a=b",
        "VOLUME /data /logs",
        "USER 1000:1000",
        "WORKDIR /w",
        "STOPSIGNAL SIGINT",
        "ONBUILD RUN x",
    ]:
        apply_change(cfg, change)
    assert cfg["Cmd"] == ["/bin/sh"]
    assert cfg["Entrypoint"] == ["/bin/sh", "-c", "run me"]
    assert cfg["Env"] == ["PATH=/bin", "A=1", "B=two", "C=three words"]
    assert cfg["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}}
    assert cfg["Volumes"] == {"/data": {}, "/logs": {}}
    assert (cfg["User"], cfg["WorkingDir"], cfg["StopSignal"]) == ("1000:1000", "/w", "SIGINT")
    assert cfg["OnBuild"] == ["RUN x"]
    for bad in ("RUN x", "CMD", "EXPOSE http", "LABEL novalue"):
        with pytest.raises(InvalidSpec):
            apply_change(cfg, bad)
