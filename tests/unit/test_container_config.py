"""The typed ContainerConfig over a record's stored Docker-shaped document: documents of
every version read (missing keys take Docker's defaults), round trips are lossless, and
changes land in their Docker places."""

from __future__ import annotations

import copy
from typing import Any

from cove.containers.record import ContainerConfig, Healthcheck, NetworkAttachment, PortBinding

# as create writes it today (keys the typed view does not model included)
CURRENT: dict[str, Any] = {
    "Config": {
        "Hostname": "abc123",
        "Domainname": "",
        "User": "1000:1000",
        "AttachStdin": False,
        "ExposedPorts": {"80/tcp": {}, "53/udp": {}},
        "Tty": True,
        "OpenStdin": True,
        "StdinOnce": False,
        "Env": ["PATH=/usr/bin", "A=1"],
        "Cmd": ["sh", "-c", "sleep 1"],
        "Image": "alpine:3.20",
        "Volumes": None,
        "WorkingDir": "/srv",
        "Entrypoint": None,
        "Labels": {"k": "v"},
        "StopSignal": "SIGUSR1",
        "StopTimeout": 3,
        "Healthcheck": {"Test": ["CMD-SHELL", "true"], "Interval": 2_000_000_000, "Retries": 5},
    },
    "HostConfig": {
        "Binds": None,
        "LogConfig": {"Type": "json-file", "Config": {}, "MaxSize": 1024, "MaxFile": 3},
        "NetworkMode": "bridge",
        "PortBindings": {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}]},
        "RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 2},
        "AutoRemove": False,
        "PublishAllPorts": True,
        "Dns": ["10.0.0.1"],
        "ExtraHosts": None,
        "Memory": 0,
    },
    "Path": "sh",
    "Args": ["-c", "sleep 1"],
    "Mounts": [{"Type": "volume", "Name": "v", "Destination": "/data", "Anonymous": True}],
    "NetworkingConfig": {"Aliases": ["web"], "IPv4Address": None},
    "LogPath": "/var/lib/cove/containers/abc/abc-json.log",
    "NetworkSettings": {"Networks": {"bridge": {"IPAddress": "172.17.0.2"}}, "Ports": {}},
}

# older rows: before health checks, network connect, or any HostConfig
OLD: list[dict[str, Any]] = [
    {},
    {"Config": {"Image": "alpine"}},
    {"Config": {"Image": "alpine", "Cmd": None}, "HostConfig": {"RestartPolicy": None}},
    {"Config": {"Image": "x"}, "HostConfig": {"Isolation": "vm"}, "VM": {"ConsoleLog": "/c"}},
]


def test_round_trip_is_lossless() -> None:
    for doc in [CURRENT, *OLD]:
        before = copy.deepcopy(doc)
        cfg = ContainerConfig.from_docker(doc)
        assert cfg.to_docker() == before
        assert doc == before  # reading never changes the record's document


def test_typed_reads() -> None:
    cfg = ContainerConfig.from_docker(CURRENT)
    assert (cfg.image, cfg.user, cfg.workdir, cfg.hostname) == (
        "alpine:3.20", "1000:1000", "/srv", "abc123")  # fmt: skip
    assert cfg.cmd == ["sh", "-c", "sleep 1"] and cfg.entrypoint is None
    assert cfg.tty and cfg.open_stdin and not cfg.stdin_once
    assert cfg.labels == {"k": "v"} and cfg.exposed_ports == ["80/tcp", "53/udp"]
    assert (cfg.stop_signal, cfg.stop_timeout) == ("SIGUSR1", 3)
    assert (cfg.restart_policy, cfg.restart_max, cfg.auto_remove) == ("on-failure", 2, False)
    assert (cfg.log_max_size, cfg.log_max_file) == (1024, 3)
    assert cfg.network_mode == "bridge" and cfg.publish_all and cfg.dns == ["10.0.0.1"]
    assert cfg.port_bindings == {"80/tcp": [PortBinding("127.0.0.1", "8080")]}
    assert cfg.aliases == ["web"] and cfg.ipv4_address is None and cfg.extra_hosts == []
    assert cfg.mounts[0]["Name"] == "v" and (cfg.path, cfg.args) == ("sh", ["-c", "sleep 1"])
    hc = cfg.healthcheck
    assert hc is not None and cfg.health_enabled
    assert hc.argv() == ["/bin/sh", "-c", "true"]
    assert (hc.interval, hc.timeout, hc.start_period, hc.max_retries) == (2.0, 30.0, 0.0, 5)


def test_defaults_of_old_rows() -> None:
    cfg = ContainerConfig.from_docker({})
    assert (cfg.restart_policy, cfg.stop_signal, cfg.stop_timeout) == ("no", "SIGTERM", None)
    assert (cfg.log_max_size, cfg.log_max_file, cfg.network_mode) == (0, 1, "none")
    assert cfg.healthcheck is None and not cfg.health_enabled and cfg.cmd is None
    assert ContainerConfig.from_docker(OLD[3]).isolation == "vm"


def test_changes_land_in_docker_places() -> None:
    doc = copy.deepcopy(CURRENT)
    cfg = ContainerConfig.from_docker(doc)
    cfg.extra_networks = [*cfg.extra_networks, NetworkAttachment("n2", ["a"], "10.1.0.5")]
    cfg.primary_detached = True
    cfg.network_settings["Networks"]["n2"] = {"IPAddress": "10.1.0.5"}
    out = cfg.to_docker()
    assert out["NetworkingConfig"] == {
        "Aliases": ["web"],
        "IPv4Address": None,
        "PrimaryDetached": True,
        "Extra": [{"Network": "n2", "Aliases": ["a"], "IPv4Address": "10.1.0.5"}],
    }
    assert set(out["NetworkSettings"]["Networks"]) == {"bridge", "n2"}
    assert doc == CURRENT  # the record's own document is untouched until written back
    # positive control: everything not changed is as it was
    for key in ("Config", "HostConfig", "Mounts", "LogPath", "Path", "Args"):
        assert out[key] == CURRENT[key]
    # into a document that had no such section at all
    old = ContainerConfig.from_docker({"Config": {"Image": "alpine"}})
    old.stop_timeout = 7
    old.restart_policy = "always"
    assert old.to_docker() == {
        "Config": {"Image": "alpine", "StopTimeout": 7},
        "HostConfig": {"RestartPolicy": {"Name": "always"}},
    }


def test_healthcheck_forms() -> None:
    assert Healthcheck.from_docker(None) is None and Healthcheck.from_docker({}) is None
    assert Healthcheck(["NONE"]).disabled and Healthcheck([]).disabled
    assert not Healthcheck(["CMD", "true"]).disabled
    assert Healthcheck(["CMD", "/bin/check", "-q"]).argv() == ["/bin/check", "-q"]
    doc = {"Test": ["CMD", "x"], "Timeout": 5, "StartPeriod": 7}
    assert Healthcheck.from_docker(doc).to_docker() == doc  # type: ignore[union-attr]
