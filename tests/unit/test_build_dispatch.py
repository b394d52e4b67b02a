"""The build's dispatch: how each Dockerfile instruction edits the stage's state, pure and
without root (no step runs, no store, no mount)."""

from __future__ import annotations

import pytest

from cove.build import dockerfile as df
from cove.build import metadata
from cove.build.dispatch import Dispatch, Layer, State, add_step, image_doc, parse_build_args
from cove.errors import InvalidSpec
from cove.spec import image as spec

AMD64 = spec.Platform("linux", "amd64", "")


def dispatch(
    text: str, build_args: dict[str, str] | None = None, base: dict[str, object] | None = None
) -> tuple[Dispatch, State, dict[str, str]]:
    """Dispatch every metadata and WORKDIR instruction of the first stage of ``text`` on a
    fresh state; the dispatcher, the state and the global args."""
    file = df.parse(text)
    d = Dispatch(file, dict(build_args or {}))
    meta = d.meta_args(AMD64, AMD64)
    state = State("sha256:base", {"config": {"Env": ["PATH=/bin"], **(base or {})}}, [])
    for ins in file.stages[0].instructions:
        if ins.cmd in metadata.HANDLERS:
            metadata.apply(d, state, ins, meta)
        elif ins.cmd == "WORKDIR":
            d.workdir(state, ins)
    return d, state, meta


def only(text: str) -> df.Instruction:
    (ins,) = df.parse(text).stages[0].instructions
    return ins


# -- ENV and ARG ----------------------------------------------------------------------


def test_env_sees_args_and_env_overrides_them() -> None:
    _, st, _ = dispatch("FROM x\nARG A=arg\nENV B=$A\nENV A=env\nENV C=$A\n")
    assert st.env() == {"PATH": "/bin", "B": "arg", "A": "env", "C": "env"}
    assert st.scope()["A"] == "env"  # ENV wins over the ARG of the same name
    assert st.args == {"A": "arg"}


def test_one_env_line_expands_in_the_scope_before_it() -> None:
    # Docker: ``ENV A=1 B=$A`` sees the A from before the line, not the one it sets
    _, st, _ = dispatch("FROM x\nENV A=1 B=${A:-unset}\n")
    assert st.env()["B"] == "unset"
    _, st, _ = dispatch("FROM x\nENV A=0\nENV A=1 B=$A\n")
    assert st.env()["A"] == "1" and st.env()["B"] == "0"


def test_env_redefined_moves_to_the_end_and_keeps_the_rest() -> None:
    _, st, _ = dispatch("FROM x\nENV A=1 B=2\nENV A=3\n")
    assert st.config["Env"] == ["PATH=/bin", "B=2", "A=3"]


def test_arg_defaults_chain_left_to_right() -> None:
    _, st, _ = dispatch("FROM x\nARG A=1 B=${A}2\nARG C=$B$A\n")
    assert st.args == {"A": "1", "B": "12", "C": "121"}


def test_build_arg_overrides_default_and_is_counted_used() -> None:
    d, st, _ = dispatch("FROM x\nARG A=default\nARG B\nENV OUT=$A-${B:-none}\n", {"A": "given"})
    assert st.env()["OUT"] == "given-none"  # B declared without a value stays unset
    assert "B" not in st.args
    assert d.used_args == {"A"}


def test_global_arg_needs_a_redeclaration_in_the_stage() -> None:
    text = "ARG V=1\nFROM x\nENV BEFORE=${V:-unset}\nARG V\nENV AFTER=$V\n"
    _, st, meta = dispatch(text)
    assert meta["V"] == "1"
    assert st.env()["BEFORE"] == "unset"
    assert st.env()["AFTER"] == "1"


def test_global_args_include_the_platform() -> None:
    d = Dispatch(df.parse("ARG TARGETARCH\nFROM x\n"), {})
    meta = d.meta_args(spec.Platform("linux", "arm64", "v8"), AMD64)
    assert meta["TARGETPLATFORM"] == "linux/arm64/v8"
    assert meta["TARGETARCH"] == "arm64" and meta["BUILDARCH"] == "amd64"


@pytest.mark.parametrize("bad", ["ARG 1-bad=x", "ARG a.b=x"])
def test_arg_name_must_be_a_word(bad: str) -> None:
    with pytest.raises(df.DockerfileError, match="invalid ARG name"):
        dispatch(f"FROM x\n{bad}\n")


def test_parse_build_args() -> None:
    env = {"FROM_ENV": "e"}
    assert parse_build_args(["A=1", "B=", "FROM_ENV", "MISSING"], env) == {
        "A": "1", "B": "", "FROM_ENV": "e"
    }  # fmt: skip
    with pytest.raises(InvalidSpec, match="--build-arg"):
        parse_build_args(["=x"], env)


# -- USER, WORKDIR, SHELL, CMD, ENTRYPOINT ---------------------------------------------


def test_user_is_one_expanded_word() -> None:
    _, st, _ = dispatch("FROM x\nARG U=app\nUSER $U:staff\n")
    assert st.config["User"] == "app:staff"
    with pytest.raises(df.DockerfileError, match="requires exactly one argument"):
        dispatch("FROM x\nARG E=\nUSER $E\n")


def test_workdir_joins_relative_paths_and_normalises() -> None:
    _, st, _ = dispatch("FROM x\nWORKDIR /srv\nWORKDIR app\nENV D=../data\nWORKDIR $D/x/\n")
    assert st.config["WorkingDir"] == "/srv/data/x"
    _, st, _ = dispatch("FROM x\nWORKDIR /my app\n")
    assert st.workdir() == "/my app"  # the whole argument is the path
    _, st, _ = dispatch("FROM x\n")
    assert st.workdir() == "/"


def test_shell_changes_shell_form_commands() -> None:
    d, st, _ = dispatch('FROM x\nSHELL ["/bin/bash", "-ec"]\nCMD echo hi\n')
    assert st.config["Shell"] == ["/bin/bash", "-ec"]
    assert st.config["Cmd"] == ["/bin/bash", "-ec", "echo hi"]
    plan = d.run(st, only("FROM x\nRUN make all\n"), "none")
    assert plan.argv == ["/bin/bash", "-ec", "make all"]
    with pytest.raises(df.DockerfileError, match="JSON form"):
        dispatch("FROM x\nSHELL /bin/bash -c\n")


def test_exec_form_is_taken_as_is() -> None:
    _, st, _ = dispatch('FROM x\nENV A=1\nCMD ["echo", "$A"]\n')
    assert st.config["Cmd"] == ["echo", "$A"]  # no expansion: no shell, as Docker


def test_entrypoint_drops_the_base_cmd_unless_the_stage_set_one() -> None:
    base = {"Cmd": ["base"]}
    _, st, _ = dispatch('FROM x\nENTRYPOINT ["/e"]\n', base=base)
    assert st.config["Entrypoint"] == ["/e"] and st.config["Cmd"] is None
    _, st, _ = dispatch('FROM x\nCMD ["c"]\nENTRYPOINT ["/e"]\n', base=base)
    assert st.config["Cmd"] == ["c"]


# -- LABEL, EXPOSE, VOLUME, MAINTAINER ---------------------------------------------


def test_label_merges_over_the_base() -> None:
    _, st, _ = dispatch('FROM x\nARG V=2\nLABEL a=1 "b c"="$V"\nLABEL a=3\n',
                        base={"Labels": {"base": "y"}})  # fmt: skip
    assert st.config["Labels"] == {"base": "y", "a": "3", "b c": "2"}


def test_expose_ranges_protocols_and_defaults() -> None:
    _, st, _ = dispatch("FROM x\nARG P=53\nEXPOSE 80 $P/udp 8000-8002/TCP\n")
    assert sorted(st.config["ExposedPorts"]) == [
        "53/udp", "80/tcp", "8000/tcp", "8001/tcp", "8002/tcp"
    ]  # fmt: skip


@pytest.mark.parametrize("bad", ["http", "80/icmp", "80-x"])
def test_expose_rejects_bad_ports(bad: str) -> None:
    with pytest.raises(df.DockerfileError, match="invalid port"):
        dispatch(f"FROM x\nEXPOSE {bad}\n")


def test_volume_and_maintainer() -> None:
    _, st, _ = dispatch('FROM x\nVOLUME /a /b\nVOLUME ["/c"]\nMAINTAINER Jane <j@x>\n')
    assert st.config["Volumes"] == {"/a": {}, "/b": {}, "/c": {}}
    assert st.doc["author"] == "Jane <j@x>"


# -- HEALTHCHECK, STOPSIGNAL, ONBUILD -------------------------------------------------


def test_healthcheck_forms_and_durations_in_nanoseconds() -> None:
    _, st, _ = dispatch("FROM x\nHEALTHCHECK --interval=5s --retries=3 CMD curl -f localhost\n")
    assert st.config["Healthcheck"] == {
        "Test": ["CMD-SHELL", "curl -f localhost"], "Interval": 5_000_000_000, "Retries": 3
    }  # fmt: skip
    _, st, _ = dispatch('FROM x\nHEALTHCHECK --start-period=1m CMD ["/check", "-q"]\n')
    assert st.config["Healthcheck"] == {"Test": ["CMD", "/check", "-q"],
                                        "StartPeriod": 60_000_000_000}  # fmt: skip
    _, st, _ = dispatch("FROM x\nHEALTHCHECK NONE\n", base={"Healthcheck": {"Test": ["CMD"]}})
    assert st.config["Healthcheck"] == {"Test": ["NONE"]}


@pytest.mark.parametrize(
    "bad", ["HEALTHCHECK NONE now", "HEALTHCHECK RUN x", "HEALTHCHECK --interval=soon CMD x"]
)
def test_healthcheck_rejects(bad: str) -> None:
    with pytest.raises(df.DockerfileError):
        dispatch(f"FROM x\n{bad}\n")


def test_stopsignal_is_checked_and_kept_as_written() -> None:
    _, st, _ = dispatch("FROM x\nARG S=SIGQUIT\nSTOPSIGNAL $S\n")
    assert st.config["StopSignal"] == "SIGQUIT"
    with pytest.raises(df.DockerfileError):
        dispatch("FROM x\nSTOPSIGNAL SIGNOPE\n")


def test_onbuild_appends_unexpanded_triggers() -> None:
    _, st, _ = dispatch("FROM x\nARG A=1\nONBUILD RUN echo $A\nONBUILD COPY . /src\n",
                        base={"OnBuild": ["ENV X=1"]})  # fmt: skip
    assert st.config["OnBuild"] == ["ENV X=1", "RUN echo $A", "COPY . /src"]


# -- RUN as dispatched --------------------------------------------------------------


def test_run_plan_env_and_history_line_as_buildkit() -> None:
    text = "FROM x\nARG A=1\nARG B=2\nARG HTTP_PROXY=p\nENV B=env\n"
    d, st, _ = dispatch(text, {"https_proxy": "q"})
    plan = d.run(st, only("FROM x\nRUN echo $A\n"), "bridge")
    # B is shadowed by ENV; proxies reach the step but neither its key nor its history
    assert plan.env == {"https_proxy": "q", "A": "1", "HTTP_PROXY": "p"}
    assert plan.created_by == "RUN |1 A=1 /bin/sh -c echo $A # buildkit"
    assert plan.material[1] == {"A": "1"}
    assert plan.network == "bridge"
    assert "https_proxy" in d.used_args


def test_run_network_flag_and_refusals() -> None:
    d, st, _ = dispatch("FROM x\n")
    assert d.run(st, only("FROM x\nRUN --network=none true\n"), "bridge").network == "none"
    assert d.run(st, only("FROM x\nRUN --network=default true\n"), "host").network == "host"
    plain = d.run(st, only("FROM x\nRUN true\n"), "bridge")
    assert plain.created_by == "RUN /bin/sh -c true # buildkit"
    with pytest.raises(df.DockerfileError, match="not supported"):
        d.run(st, only("FROM x\nRUN --mount=type=cache,target=/c true\n"), "bridge")


def test_run_heredocs() -> None:
    d, st, _ = dispatch("FROM x\n")
    plan = d.run(st, only("FROM x\nRUN <<EOF\necho hi\nEOF\n"), "none")
    assert plan.argv == ["/bin/sh", "-c", "echo hi\n"] and plan.script is None
    plan = d.run(st, only("FROM x\nRUN <<EOF\n#!/usr/bin/env python3\nprint(1)\nEOF\n"), "none")
    assert plan.argv == ["/dev/pipes/EOF"] and plan.script is not None


# -- history -------------------------------------------------------------------------


def test_history_entries_as_buildkit_fills_them() -> None:
    st = State("sha256:k0", {"config": {}, "history": [{"created_by": "base"}]}, [])
    add_step(st, "sha256:k1", "2024-01-01T00:00:00Z", "ENV A=1", None)
    layer = Layer(spec.Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", "sha256:d", 3),
                  "sha256:diff")  # fmt: skip
    add_step(st, "sha256:k2", "2024-01-02T00:00:00Z", "COPY a /a # buildkit", layer)
    assert st.doc["history"] == [
        {"created_by": "base"},
        {"created": "2024-01-01T00:00:00Z", "created_by": "ENV A=1",
         "comment": "buildkit.dockerfile.v0", "empty_layer": True},
        {"created": "2024-01-02T00:00:00Z", "created_by": "COPY a /a # buildkit",
         "comment": "buildkit.dockerfile.v0"},
    ]  # fmt: skip
    assert st.doc["created"] == "2024-01-02T00:00:00Z"
    assert st.key == "sha256:k2"
    assert st.layers == [layer]
    assert image_doc(st)["rootfs"] == {"type": "layers", "diff_ids": ["sha256:diff"]}
