"""``cove serve`` driven by unchanged clients: the docker CLI 20.10 (Debian's docker.io)
for images, build, pull/push against a registry on 127.0.0.1, networks, volumes and
save/load; docker-py; compose v2; testcontainers. Response bodies the tests touch are
checked against the Engine API 1.41 swagger (``helpers.swagger_errors``).

Images come from the shared Alpine tarball only (imported into the test's root).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from urllib.parse import quote

from helpers import ALPINE_TAR, Served, cove_argv, swagger_errors
from registries import Registry


def _ids(text: str) -> list[str]:
    return re.findall(r"\b[0-9a-f]{12}\b", text)


# -- images --------------------------------------------------------------------------------


def test_images_list_inspect_tag_rmi_history(served: Served, alpine: str) -> None:
    out = served.docker("images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}").stdout
    assert f"alpine:3.20 {alpine.removeprefix('sha256:')[:12]}" in out.splitlines()
    served.docker("tag", "alpine:3.20", "example/copy:v1")
    out = served.docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    assert sorted(out) == ["alpine:3.20", "example/copy:v1"]
    assert served.docker("image", "inspect", "-f", "{{.Id}}", "example/copy:v1").stdout.strip() \
        == alpine  # fmt: skip
    hist = served.docker("history", "--no-trunc", "--format", "{{.ID}} {{.Size}}", "alpine:3.20")
    assert hist.stdout.split()[0] == alpine
    # the bodies behind those, against the swagger
    docs = served.checked("GET", "/images/json", "/images/json")
    assert {t for d in docs for t in d["RepoTags"]} == {"alpine:3.20", "example/copy:v1"}
    served.checked("GET", "/images/alpine:3.20/json", "/images/{name}/json")
    served.checked("GET", "/images/alpine:3.20/history", "/images/{name}/history")
    by_ref = quote('{"reference":{"example/*":true}}')
    filtered = served.checked("GET", f"/images/json?filters={by_ref}", "/images/json")
    # dockerd's order: by full name (docker.io/example/... before docker.io/library/...)
    assert [d["RepoTags"] for d in filtered] == [["example/copy:v1", "alpine:3.20"]]
    rmi = served.docker("rmi", "example/copy:v1")
    assert rmi.stdout.strip() == "Untagged: example/copy:v1"
    # negative beside its positive control: the untagged name is gone, the image stays
    missing = served.docker("rmi", "example/copy:v1", check=False)
    assert missing.returncode == 1
    assert "No such image: example/copy:v1" in missing.stderr
    status, doc = served.api("GET", "/images/example/copy:v1/json")
    assert status == 404 and doc == {"message": "No such image: example/copy:v1"}
    assert served.docker("images", "-q").stdout.split() == [alpine.removeprefix("sha256:")[:12]]


def test_save_load_and_import(served: Served, alpine: str, alpine_tar: Path,
                              tmp_path: Path) -> None:  # fmt: skip
    archive = tmp_path / "alpine.tar"
    served.docker("save", "-o", str(archive), "alpine:3.20")
    assert archive.stat().st_size > 1 << 20
    served.docker("rmi", "alpine:3.20")
    assert served.docker("images", "-q").stdout.strip() == ""
    out = served.docker("load", "-i", str(archive)).stdout
    assert "Loaded image: alpine:3.20" in out
    assert served.docker("image", "inspect", "-f", "{{.Id}}", "alpine:3.20").stdout.strip() \
        == alpine  # fmt: skip
    # import (POST /images/create?fromSrc=-) from the rootfs tarball
    imp = served.docker("import", "--change", "ENV A=b", str(alpine_tar), "imported:1")
    image_id = imp.stdout.strip()
    assert image_id.startswith("sha256:")
    env = served.docker("image", "inspect", "-f", "{{json .Config.Env}}", "imported:1").stdout
    assert "A=b" in json.loads(env)
    # prune: dangling only by default, so both named images stay ...
    served.docker("image", "prune", "-f")
    assert len(served.docker("images", "-q").stdout.split()) == 2
    # ... and -a takes every unused one
    served.docker("image", "prune", "-a", "-f")
    assert served.docker("images", "-q").stdout.strip() == ""


def test_build_legacy_stream(served: Served, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    (ctx / "sub").mkdir(parents=True)
    (ctx / "sub" / "Dockerfile.app").write_text(
        "FROM alpine:3.20\nARG WHO=nobody\nCOPY hello.txt /hello.txt\n"
        'RUN echo "$WHO" > /who && echo step-output\nCMD ["cat", "/who"]\n'
    )
    (ctx / "hello.txt").write_text("hi\n")
    out = served.docker("build", "-t", "app:1", "-t", "app:2", "--build-arg", "WHO=tester",
                        "-f", str(ctx / "sub" / "Dockerfile.app"), str(ctx)).stdout  # fmt: skip
    m = re.search(r"^Successfully built ([0-9a-f]{12})$", out, re.M)
    assert m, out
    assert "Step 1/5 : FROM alpine:3.20" in out
    assert "step-output" in out
    assert "Successfully tagged app:1" in out and "Successfully tagged app:2" in out
    image_id = served.docker("image", "inspect", "-f", "{{.Id}}", "app:2").stdout.strip()
    assert image_id.removeprefix("sha256:")[:12] == m.group(1)
    cfg = served.docker("image", "inspect", "-f", "{{json .Config.Cmd}}", "app:1").stdout
    assert json.loads(cfg) == ["cat", "/who"]
    # the layer holds what RUN wrote: read back with cove's own CLI over the same root
    who = subprocess.run(cove_argv(served.root, "run", "--rm", "app:1"), capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert who.stdout == "tester\n", who
    # a failing step: the stream's error, exit 1, and no image named
    (ctx / "Dockerfile").write_text("FROM alpine:3.20\nRUN exit 3\n")
    bad = served.docker("build", "-t", "broken:1", str(ctx), check=False)
    assert bad.returncode == 1, bad
    assert "exit 3" in bad.stderr + bad.stdout or "3" in bad.stderr, bad
    assert served.docker("images", "-q", "broken").stdout.strip() == ""


def test_pull_push_against_test_registry(served: Served, plain_registry: Registry,
                                         alpine: str) -> None:  # fmt: skip
    name = f"{plain_registry.host}/cove/alpine:v1"
    served.docker("tag", "alpine:3.20", name)
    push = served.docker("push", name).stdout
    assert f"The push refers to repository [{plain_registry.host}/cove/alpine]" in push
    digest = re.search(r"v1: digest: (sha256:[0-9a-f]{64}) size: \d+", push)
    assert digest, push
    served.docker("rmi", name, "alpine:3.20")
    assert served.docker("images", "-q").stdout.strip() == ""
    pull = served.docker("pull", name).stdout
    assert f"Digest: {digest.group(1)}" in pull
    assert f"Status: Downloaded newer image for {name}" in pull
    assert served.docker("image", "inspect", "-f", "{{.Id}}", name).stdout.strip() == alpine
    again = served.docker("pull", name).stdout
    assert f"Status: Image is up to date for {name}" in again
    # a name the registry does not have: the pull fails, and says so
    nope = served.docker("pull", f"{plain_registry.host}/cove/missing:v1", check=False)
    assert nope.returncode == 1
    assert "Error response from daemon" in nope.stderr and "missing" in nope.stderr, nope


def test_network_and_volume_verbs(served: Served) -> None:
    nid = served.docker("network", "create", "--label", "team=a", "--subnet", "10.231.7.0/24",
                        "front").stdout.strip()  # fmt: skip
    assert re.fullmatch(r"[0-9a-f]{64}", nid)
    served.docker("network", "create", "--label", "team=b", "back")
    ls = served.docker("network", "ls", "--filter", "label=team=a", "--format", "{{.Name}}")
    assert ls.stdout.split() == ["front"]
    fmt = "{{.Labels}} {{range .IPAM.Config}}{{.Subnet}}{{end}}"
    assert served.docker("network", "inspect", "-f", fmt, "front").stdout.strip() \
        == "map[team:a] 10.231.7.0/24"  # fmt: skip
    docs = served.checked("GET", "/networks", "/networks")
    assert {"bridge", "host", "none", "front", "back"} <= {d["Name"] for d in docs}
    served.checked("GET", f"/networks/{nid}", "/networks/{id}")
    dup = served.docker("network", "create", "front", check=False)
    assert dup.returncode == 1 and "already exists" in dup.stderr
    served.docker("network", "rm", "front")
    assert served.docker("network", "ls", "-q", "--filter", "name=front").stdout.strip() == ""
    pruned = served.docker("network", "prune", "-f").stdout
    assert "back" in pruned
    status, _ = served.api("GET", "/networks/back")
    assert status == 404
    # volumes
    served.docker("volume", "create", "--label", "keep=yes", "data1")
    served.docker("volume", "create", "data2")
    ls = served.docker("volume", "ls", "--filter", "label=keep", "--format", "{{.Name}}")
    assert ls.stdout.split() == ["data1"]
    assert served.docker("volume", "inspect", "-f", "{{.Labels.keep}}", "data1").stdout.strip() \
        == "yes"  # fmt: skip
    served.checked("GET", "/volumes", "/volumes")
    served.checked("GET", "/volumes/data1", "/volumes/{name}")
    made = served.checked("POST", "/volumes/create", "/volumes/create", 201,
                          {"Name": "data3", "Labels": {"x": "1"}})  # fmt: skip
    assert made["Labels"] == {"x": "1"}
    served.docker("volume", "rm", "data2")
    missing = served.docker("volume", "inspect", "data2", check=False)
    assert missing.returncode == 1 and "No such volume: data2" in missing.stderr
    pruned = served.docker("volume", "prune", "-f").stdout
    assert "data1" in pruned and "data3" in pruned
    assert served.docker("volume", "ls", "-q").stdout.strip() == ""
    served.checked("GET", "/system/df", "/system/df")


def test_events_stream(served: Served) -> None:
    import time

    t0 = int(time.time()) - 1
    served.docker("volume", "create", "evvol")
    served.docker("network", "create", "evnet")
    served.docker("run", "--rm", "--network", "none", "--name", "evbox", "alpine:3.20", "true")
    served.docker("network", "rm", "evnet")
    served.docker("run", "-d", "--network", "none", "--name", "evx", "alpine:3.20", "sleep", "60")
    served.docker("exec", "evx", "sh", "-c", "exit 3", check=False)
    served.docker("pause", "evx")
    served.docker("unpause", "evx")
    served.docker("kill", "-s", "USR1", "evx")
    served.docker("rm", "-f", "evx")
    t1 = int(time.time()) + 1
    fmt = "{{.Type}} {{.Action}} {{.Actor.Attributes.name}}"
    out = served.docker("events", "--since", str(t0), "--until", str(t1), "--format", fmt).stdout
    seen = out.splitlines()
    for want in ("volume create ", "network create evnet", "container create evbox",
                 "container start evbox", "container die evbox", "container destroy evbox",
                 "network destroy evnet", "container exec_create: sh -c exit 3 evx",
                 "container exec_start: sh -c exit 3 evx", "container exec_die evx",
                 "container pause evx", "container unpause evx", "container kill evx"):  # fmt: skip
        assert any(line.startswith(want) for line in seen), (want, seen)
    # their attributes, as dockerd sets them: the exec's id and exit code, the signal
    fmt2 = "{{.Action}} {{.Actor.Attributes.exitCode}} {{.Actor.Attributes.signal}}"
    more = served.docker("events", "--since", str(t0), "--until", str(t1), "--filter",
                         "container=evx", "--format", fmt2).stdout.splitlines()  # fmt: skip
    assert "exec_die 3 <no value>" in more and "kill <no value> 10" in more, more
    # filters narrow the stream (the positive control is the line above)
    only = served.docker("events", "--since", str(t0), "--until", str(t1), "--filter",
                         "type=network", "--format", fmt).stdout.split("\n")  # fmt: skip
    assert [x for x in only if x] == ["network create evnet", "network destroy evnet"]
    # nothing from before --since
    later = served.docker("events", "--since", str(t1), "--until", str(t1 + 1)).stdout
    assert later == ""
    # each message validates against the swagger's EventMessage
    status, raw = served.api("GET", f"/events?since={t0}&until={t1}")
    assert status == 200
    docs = [json.loads(x) for x in raw.splitlines() if x.strip()]
    assert len(docs) >= 7
    for doc in docs:
        assert swagger_errors(doc, "/events", "get") == [], doc


def test_prune_filters_until_and_label(served: Served) -> None:
    """container and network prune honour ``label``, ``label!`` and ``until`` as dockerd
    does; an unknown filter is dockerd's 400."""
    import time

    for name, label in (("keep", "tier=db"), ("gone1", "tier=web"), ("gone2", "tier=web")):
        served.docker("create", "--name", name, "--label", label, "alpine:3.20", "true")
    served.docker("network", "create", "--label", "tier=web", "oldnet")
    # until: created before a time; the containers and network above are older than this
    time.sleep(1.1)
    cut = str(int(time.time()))
    time.sleep(1.1)
    served.docker("create", "--name", "young", "--label", "tier=web", "alpine:3.20", "true")
    served.docker("network", "create", "--label", "tier=web", "newnet")
    out = served.docker("container", "prune", "-f", "--filter", "label=tier=web",
                        "--filter", f"until={cut}").stdout  # fmt: skip
    names = served.docker("ps", "-a", "--format", "{{.Names}}").stdout.split()
    assert sorted(names) == ["keep", "young"], (out, names)
    # label!: everything but the db tier (a duration form of until: all are older than 0s)
    served.docker("container", "prune", "-f", "--filter", "label!=tier=db", "--filter", "until=0s")
    assert served.docker("ps", "-a", "--format", "{{.Names}}").stdout.split() == ["keep"]
    out = served.docker("network", "prune", "-f", "--filter", f"until={cut}").stdout
    nets = served.docker("network", "ls", "--format", "{{.Name}}").stdout.split()
    assert "oldnet" not in nets and "newnet" in nets, (out, nets)
    # an unknown filter: refused, nothing removed (positive control: the prunes above)
    bad = served.docker("container", "prune", "-f", "--filter", "colour=red", check=False)
    assert bad.returncode != 0 and "invalid filter 'colour'" in bad.stderr, bad
    assert served.docker("ps", "-a", "--format", "{{.Names}}").stdout.split() == ["keep"]
    served.docker("rm", "keep")
    served.docker("network", "rm", "newnet")
    # image prune -a: only the unused images the label names (alpine:3.20 and plain:1 stay)
    for ref, change in (("web:1", "LABEL tier=web"), ("plain:1", "ENV A=b")):
        served.docker("import", "--change", change, str(ALPINE_TAR), ref)
    out = served.docker("image", "prune", "-a", "-f", "--filter", "label=tier=web").stdout
    refs = served.docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    assert sorted(refs) == ["alpine:3.20", "plain:1"], (out, refs)
    served.docker("rmi", "plain:1")


def test_network_connect_disconnect_and_filter_encodings(served: Served) -> None:
    served.docker("network", "create", "--label", "team=a", "side")
    cid = served.docker("run", "-d", "--name", "box", "alpine:3.20", "sleep", "300").stdout.strip()
    served.docker("network", "connect", "--alias", "boxalias", "side", "box")
    members = "{{range $id, $c := .Containers}}{{$c.Name}} {{end}}"
    assert served.docker("network", "inspect", "-f", members, "side").stdout.split() == ["box"]
    # the alias answers on the network's DNS (cove: a responder per network, at its gateway)
    gateway = served.docker("network", "inspect", "-f", "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
                            "side").stdout.strip()  # fmt: skip
    look = served.docker("exec", "box", "nslookup", "boxalias", gateway, check=False)
    assert look.returncode == 0 and "Address" in look.stdout, look
    doc = served.checked("GET", "/networks/side", "/networks/{id}")
    assert list(doc["Containers"]) == [cid]
    served.docker("network", "disconnect", "side", "box")
    assert served.docker("network", "inspect", "-f", members, "side").stdout.strip() == ""
    # a connected network cannot go; a disconnected one can
    served.docker("network", "connect", "side", "box")
    busy = served.docker("network", "rm", "side", check=False)
    assert busy.returncode == 1 and "active endpoints" in busy.stderr, busy
    served.docker("network", "disconnect", "side", "box")
    # filters in both encodings: docker-py's lists and the Go clients' maps
    for enc in ('{"label":["team=a"]}', '{"label":{"team=a":true}}'):
        docs = served.checked("GET", f"/networks?filters={quote(enc)}", "/networks")
        assert [d["Name"] for d in docs] == ["side"], (enc, docs)
    served.docker("rm", "-f", "box")
    served.docker("network", "rm", "side")


def test_run_pulls_a_missing_image(served: Served, plain_registry: Registry) -> None:
    """docker run of an image the store lacks: create answers 404 "No such image", the CLI
    pulls (POST /images/create) and creates again."""
    name = f"{plain_registry.host}/cove/runme:v1"
    served.docker("tag", "alpine:3.20", name)
    served.docker("push", name)
    served.docker("rmi", name)
    run = served.docker("run", "--rm", name, "echo", "pulled-and-ran")
    assert run.stdout == "pulled-and-ran\n"
    assert f"Unable to find image '{name}' locally" in run.stderr
    assert f"Status: Downloaded newer image for {name}" in run.stderr
    # negative beside it: a name the registry lacks fails with the registry's answer
    bad = served.docker("run", "--rm", f"{plain_registry.host}/cove/absent:v1", "true",
                        check=False)  # fmt: skip
    assert bad.returncode == 125 and "not found" in bad.stderr, bad
