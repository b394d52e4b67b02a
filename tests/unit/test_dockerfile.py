from __future__ import annotations

import pytest

from cove.build.dockerfile import (
    DockerfileError,
    Heredoc,
    Instruction,
    expand,
    expand_heredoc,
    expand_words,
    parse,
    parse_heredoc_word,
    parse_kv,
)
from cove.errors import InvalidSpec


def body(text: str) -> tuple[Instruction, ...]:
    """The instructions of the only stage of ``text``."""
    df = parse(text)
    assert len(df.stages) == 1
    return df.stages[0].instructions


def error(text: str) -> DockerfileError:
    with pytest.raises(DockerfileError) as info:
        parse(text)
    return info.value


# --- directives ------------------------------------------------------------------


def test_escape_backtick_keeps_windows_paths_and_continues_lines() -> None:
    df = parse(
        "# escape=`\n"
        "FROM mcr.microsoft.com/windows/nanoserver\n"
        "COPY testfile.txt c:\\\n"
        "RUN dir c:\\ `\n"
        "    /s\n"
    )
    assert df.escape == "`"
    assert df.directives == {"escape": "`"}
    copy, run = df.stages[0].instructions
    assert copy.args == ("testfile.txt", "c:\\")
    assert run.raw == "dir c:\\     /s"
    assert run.line == 4


def test_directive_names_are_case_insensitive_and_tolerate_blanks() -> None:
    df = parse("#  ESCAPE = `  \n#Syntax=docker/dockerfile:1.7\nFROM a\n")
    assert df.escape == "`"
    assert df.directives == {"escape": "`", "syntax": "docker/dockerfile:1.7"}


def test_syntax_directive_is_noted_not_obeyed() -> None:
    df = parse("# syntax=docker/dockerfile:1\nFROM alpine\n")
    assert df.notes == (
        "Dockerfile:1: syntax directive 'docker/dockerfile:1' ignored: "
        "cove parses Dockerfiles itself",
    )


def test_directives_end_at_first_comment_blank_line_or_instruction() -> None:
    assert parse("# hello\n# escape=`\nFROM a\n").escape == "\\"
    assert parse("\n# escape=`\nFROM a\n").escape == "\\"
    assert parse("FROM a\n# escape=`\n").escape == "\\"
    # An unknown directive is a comment, and ends directive parsing too.
    df = parse("# foo=bar\n# escape=`\nFROM a\n")
    assert df.escape == "\\"
    assert df.directives == {}


def test_repeated_directive_is_an_error() -> None:
    err = error("# escape=`\n# escape=\\\nFROM a\n")
    assert str(err) == "Dockerfile:2: only one escape parser directive can be used"
    assert (err.filename, err.line) == ("Dockerfile", 2)
    assert isinstance(err, InvalidSpec)


def test_invalid_escape_token() -> None:
    assert error("# escape=x\nFROM a\n").line == 1


# --- lines, comments, continuations -----------------------------------------------


def test_comments_and_blank_lines_inside_a_continuation_are_dropped() -> None:
    (run,) = body("FROM a\nRUN apk add \\\n# a comment\n    curl \\\n\n    git\n")
    assert run.original == "RUN apk add     curl     git"
    assert run.args == ("apk", "add", "curl", "git")
    assert run.line == 2


def test_continuation_with_trailing_blanks_after_the_escape() -> None:
    (run,) = body("FROM a\nRUN echo a \\   \t\n b\n")
    assert run.raw == "echo a  b"


def test_escaped_escape_at_end_of_line_does_not_continue() -> None:
    run, cmd = body("FROM a\nRUN echo \\\\\nCMD x\n")
    assert (run.raw, cmd.cmd) == ("echo \\\\", "CMD")


def test_indented_comment_lines_are_comments_and_crlf_is_accepted() -> None:
    (run,) = body("FROM a\r\n   # indented comment\r\nrun echo hi\r\n")
    assert (run.cmd, run.raw, run.line) == ("RUN", "echo hi", 3)


def test_lines_report_where_the_instruction_starts() -> None:
    df = parse("\n\nARG V=1\n# c\nFROM a:$V AS base\nRUN a \\\n  b\nRUN c\n")
    assert df.meta_args[0].line == 3
    assert df.stages[0].from_instr.line == 5
    assert [i.line for i in df.stages[0].instructions] == [6, 8]


# --- heredocs ----------------------------------------------------------------------


def test_several_heredocs_on_one_line() -> None:
    (run,) = body(
        "FROM a\n"
        "RUN <<FILE1 cat > /a && <<'FILE2' cat > /b\n"
        "one $X\n"
        "FILE1\n"
        "# not a comment\n"
        "two $X\n"
        "FILE2\n"
    )
    assert run.heredocs == (
        Heredoc(name="FILE1", content="one $X\n", expand=True, chomp=False),
        Heredoc(name="FILE2", content="# not a comment\ntwo $X\n", expand=False, chomp=False),
    )
    assert run.args[0] == "<<FILE1"


def test_double_quoted_delimiter_disables_expansion() -> None:
    (copy,) = body('FROM a\nCOPY <<"EOF" /etc/motd\nhello $USER\nEOF\n')
    assert copy.heredocs == (Heredoc("EOF", "hello $USER\n", expand=False, chomp=False),)
    assert copy.args == ('<<"EOF"', "/etc/motd")


def test_dash_heredoc_strips_leading_tabs_from_body_and_terminator() -> None:
    run, cmd = body("FROM a\nRUN <<-EOT sh\n\tif true; then\n\t\techo y\n\tfi\n\tEOT\nCMD x\n")
    assert cmd.cmd == "CMD"
    assert run.heredocs == (Heredoc("EOT", "if true; then\necho y\nfi\n", True, True),)


def test_unterminated_heredoc_names_the_instruction_line() -> None:
    err = error("FROM a\nRUN true\nRUN <<EOF\necho hi\n")
    assert err.line == 3
    assert "unterminated heredoc" in err.message


def test_heredocs_only_for_run_copy_add_in_shell_form() -> None:
    cmd, run, last = body('FROM a\nCMD cat <<EOF\nRUN ["cat", "<<EOF"]\nENV X=1\n')
    assert cmd.heredocs == () and run.heredocs == ()
    assert last.cmd == "ENV"


def test_heredoc_as_copy_destination_is_an_error() -> None:
    assert error("FROM a\nCOPY x <<EOF\nEOF\n").line == 2


def test_parse_heredoc_word() -> None:
    assert parse_heredoc_word("<<EOF") == Heredoc("EOF", "", True, False)
    assert parse_heredoc_word("<<-'E O F'") == Heredoc("E O F", "", False, True)
    assert parse_heredoc_word("3<<EOF") == Heredoc("EOF", "", True, False)
    assert parse_heredoc_word("<<") is None
    assert parse_heredoc_word('<<""') is None
    assert parse_heredoc_word("a<<EOF") is None


# --- flags -------------------------------------------------------------------------


def test_flags_in_order_with_quotes_removed() -> None:
    (copy,) = body('FROM a\nCOPY --from=builder --chmod=755 --link --chown="1:2" a b /c/\n')
    assert copy.flags == (("from", "builder"), ("chmod", "755"), ("link", None), ("chown", "1:2"))
    assert copy.raw == "a b /c/"
    assert copy.args == ("a", "b", "/c/")


def test_repeatable_and_boolean_flags() -> None:
    run, add = body(
        "FROM a\n"
        "RUN --mount=type=cache,target=/c --mount=type=tmpfs,target=/t --network=none make\n"
        "ADD --link=false --keep-git-dir https://x/y.git /src\n"
    )
    assert [name for name, _ in run.flags] == ["mount", "mount", "network"]
    assert add.flags == (("link", "false"), ("keep-git-dir", None))


def test_double_dash_ends_flags() -> None:
    (run,) = body("FROM a\nRUN -- --version\n")
    assert (run.flags, run.raw) == ((), "--version")


def test_unknown_flag() -> None:
    assert (
        str(error("FROM a\nRUN true\nCOPY --foo=bar a b\n")) == "Dockerfile:3: unknown flag: --foo"
    )
    # A flag valid for one instruction is unknown on another.
    assert error("FROM a\nRUN --from=x true\n").message == "unknown flag: --from"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("COPY --from a b", "missing a value on flag: --from"),
        ("COPY --from=a --from=b a b", "duplicate flag specified: --from"),
        ("COPY --link=yes a b", "expecting boolean value for flag --link, not: 'yes'"),
    ],
)
def test_bad_flag_values(line: str, message: str) -> None:
    assert error(f"FROM a\n{line}\n").message == message


# --- instructions ------------------------------------------------------------------


def test_unknown_instruction_names_line_and_word() -> None:
    err = error("FROM a\nRUN true\nFOMR b\n")
    assert err.line == 3
    assert err.message.startswith("unknown instruction: FOMR")


def test_keywords_are_case_insensitive() -> None:
    df = parse("from alpine as Build\nRun echo\n")
    assert df.stages[0].name == "build"
    assert df.stages[0].instructions[0].cmd == "RUN"


def test_json_and_shell_forms() -> None:
    cmd, entry, run, vol, bad = body(
        "FROM a\n"
        'CMD ["echo", "a b"]\n'
        'ENTRYPOINT  [ "/bin/tini" , "--" ]\n'
        'RUN echo "[not json"\n'
        'VOLUME ["/data", "/logs"]\n'
        "CMD [echo, hi]\n"
    )
    assert (cmd.json, cmd.args) == (True, ("echo", "a b"))
    assert (entry.json, entry.args) == (True, ("/bin/tini", "--"))
    assert (run.json, run.args) == (False, ("echo", '"[not json"'))
    assert (vol.json, vol.args) == (True, ("/data", "/logs"))
    # Invalid JSON falls back to the shell form.
    assert (bad.json, bad.raw, bad.args) == (False, "[echo, hi]", ("[echo,", "hi]"))


def test_json_array_of_non_strings_is_an_error() -> None:
    assert "strings only" in error('FROM a\nCMD ["a", 1]\n').message


def test_shell_requires_json() -> None:
    (shell,) = body('FROM a\nSHELL ["/bin/bash", "-c"]\n')
    assert shell.args == ("/bin/bash", "-c")
    assert "JSON form" in error("FROM a\nSHELL /bin/bash -c\n").message


def test_healthcheck_forms() -> None:
    json_form, shell_form, none = body(
        "FROM a\n"
        'HEALTHCHECK --interval=5s --retries=3 CMD ["curl", "-f", "http://x/"]\n'
        "HEALTHCHECK CMD curl -f http://x/ || exit 1\n"
        "HEALTHCHECK NONE\n"
    )
    assert json_form.flags == (("interval", "5s"), ("retries", "3"))
    assert (json_form.json, json_form.args) == (True, ("CMD", "curl", "-f", "http://x/"))
    assert (shell_form.json, shell_form.raw) == (False, "CMD curl -f http://x/ || exit 1")
    assert none.args == ("NONE",)
    assert error("FROM a\nHEALTHCHECK NONE x\n").line == 2
    assert error("FROM a\nHEALTHCHECK PING\n").line == 2


def test_whole_line_instructions_keep_one_argument() -> None:
    (workdir, user) = body("FROM a\nWORKDIR /my app\nUSER  app:app \n")
    assert workdir.args == ("/my app",)
    assert user.args == ("app:app",)


@pytest.mark.parametrize("line", ["RUN", "ENV", "WORKDIR", "EXPOSE", "COPY onlyone", "FROM"])
def test_missing_arguments(line: str) -> None:
    err = error(f"FROM a\n{line}\n")
    assert err.line == 2
    assert line.split()[0] in err.message


def test_onbuild() -> None:
    (onbuild,) = body("FROM a\nONBUILD RUN --mount=type=cache,target=/x make\n")
    assert onbuild.raw == "RUN --mount=type=cache,target=/x make"
    assert onbuild.flags == ()
    for trigger in ("ONBUILD RUN x", "FROM b", "MAINTAINER me"):
        assert error(f"FROM a\nONBUILD {trigger}\n").line == 2


def test_onbuild_heredoc_body_is_attached() -> None:
    (onbuild,) = body("FROM a\nONBUILD RUN <<EOF\necho hi\nEOF\n")
    assert onbuild.heredocs == (Heredoc("EOF", "echo hi\n", True, False),)


def test_env_and_label_syntax_is_checked_at_parse_time() -> None:
    assert error("FROM a\nENV a=1 b\n").line == 2
    assert error("FROM a\nLABEL k\n").line == 2
    assert error("FROM a\nARG =x\n").line == 2


# --- stages --------------------------------------------------------------------------


def test_stages_names_and_meta_args() -> None:
    df = parse(
        "ARG GO=1.22\n"
        "ARG BASE\n"
        "FROM --platform=$BUILDPLATFORM golang:${GO} AS Build\n"
        "RUN go build\n"
        "FROM alpine\n"
        "COPY --from=build /out /usr/bin/\n"
    )
    assert [a.raw for a in df.meta_args] == ["GO=1.22", "BASE"]
    build, final = df.stages
    assert (build.index, build.name, build.base) == (0, "build", "golang:${GO}")
    assert build.from_instr.flags == (("platform", "$BUILDPLATFORM"),)
    assert [i.cmd for i in build.instructions] == ["RUN"]
    assert (final.index, final.name, final.base) == (1, None, "alpine")
    assert final.instructions[0].flags == (("from", "build"),)


def test_instruction_before_from() -> None:
    err = error("ARG X\nRUN true\nFROM a\n")
    assert err.line == 2
    assert "no build stage in current context" in err.message


@pytest.mark.parametrize("text", ["", "\n# only a comment\n", "ARG X=1\n"])
def test_no_from(text: str) -> None:
    assert error(text).message == "the dockerfile has no FROM instruction"


@pytest.mark.parametrize("line", ["FROM a b", "FROM a AS", "FROM a IS b", "FROM a AS 1st"])
def test_bad_from(line: str) -> None:
    assert error(f"{line}\n").line == 1


def test_duplicate_stage_name() -> None:
    err = error("FROM a AS x\nFROM b AS X\n")
    assert err.line == 2
    assert '"x"' in err.message


# --- expansion -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "env", "expected"),
    [
        ("$A", {"A": "1"}, "1"),
        ("${A}x", {"A": "1"}, "1x"),
        ("$A-$B", {}, "-"),
        ("${A:-x}", {}, "x"),
        ("${A:-x}", {"A": ""}, "x"),
        ("${A:-x}", {"A": "a"}, "a"),
        ("${A-x}", {"A": ""}, ""),
        ("${A-x}", {}, "x"),
        ("${A:+x}", {"A": "a"}, "x"),
        ("${A:+x}", {"A": ""}, ""),
        ("${A+x}", {"A": ""}, "x"),
        ("${A:-${B}}", {"B": "b"}, "b"),
        ("${A:-${B:-deep}}/x", {}, "deep/x"),
        ("${A:-'a b'}", {}, "a b"),
        ("'$A'", {"A": "1"}, "$A"),
        ('"$A"', {"A": "1"}, "1"),
        ('"a \\"q\\" \\$A \\x"', {"A": "1"}, 'a "q" $A \\x'),
        ("\\$A", {"A": "1"}, "$A"),
        ("a\\ b", {}, "a b"),
        ("$", {}, "$"),
        ("a$/b", {}, "a$/b"),
        ("${V#v}", {"V": "v1.2.3"}, "1.2.3"),
        ("${P##*/}", {"P": "/usr/local/bin"}, "bin"),
        ("${P%/*}", {"P": "/usr/local/bin"}, "/usr/local"),
        ("${P%%.*}", {"P": "a.tar.gz"}, "a"),
        ("${P/o/0}", {"P": "foo"}, "f0o"),
        ("${P//o/0}", {"P": "foo"}, "f00"),
    ],
)
def test_expand(word: str, env: dict[str, str], expected: str) -> None:
    assert expand(word, env) == expected


def test_expand_with_backtick_escape() -> None:
    env = {"A": "1"}
    assert expand("c:\\dir\\$A", env, escape="`") == "c:\\dir\\1"
    assert expand("`$A", env, escape="`") == "$A"
    assert expand('"`"x`""', env, escape="`") == '"x"'


@pytest.mark.parametrize(
    ("word", "env", "needle"),
    [
        ("${A:?must be set}", {}, "A: must be set"),
        ("${A?}", {}, "A: is not allowed to be unset"),
        ("${A:?}", {"A": ""}, "A: is not allowed to be empty"),
        ("${A", {}, "missing '}'"),
        ("${}", {}, "bad substitution"),
        ("${A:x}", {}, "unsupported modifier"),
        ("'open", {}, "single-quote"),
        ('"open', {}, "double-quote"),
    ],
)
def test_expand_errors(word: str, env: dict[str, str], needle: str) -> None:
    with pytest.raises(ValueError, match="failed to process") as info:
        expand(word, env)
    assert needle in str(info.value)


def test_question_modifiers_pass_values_through() -> None:
    assert expand("${A:?x}", {"A": "v"}) == "v"
    assert expand("${A?x}", {"A": ""}) == ""


def test_expand_words_splits_before_expanding() -> None:
    env = {"SRC": "a b", "D": "/dst"}
    assert expand_words('$SRC "x y" $D', env) == ["a b", "x y", "/dst"]
    assert expand_words("  one   two ", {}) == ["one", "two"]


def test_expand_heredoc_keeps_quotes() -> None:
    body = "echo \"$GREETING, '$NAME'\" \\$HOME ${X:-dflt}\n"
    env = {"GREETING": "hi", "NAME": "you"}
    assert expand_heredoc(body, env) == "echo \"hi, 'you'\" $HOME dflt\n"


# --- key=value arguments ------------------------------------------------------------------


def test_parse_kv_pairs_with_quotes() -> None:
    pairs = parse_kv('a=1 b="x y" c=\'$a\' d=$a e=\\"q', {"a": "before"})
    assert pairs == [("a", "1"), ("b", "x y"), ("c", "$a"), ("d", "before"), ("e", '"q')]


def test_parse_kv_sees_only_the_environment_before_the_line() -> None:
    assert parse_kv("A=new B=$A", {"A": "old"}) == [("A", "new"), ("B", "old")]


def test_parse_kv_legacy_form() -> None:
    assert parse_kv("MSG hello   big $W", {"W": "world"}) == [("MSG", "hello   big world")]
    assert parse_kv('MSG "quoted value"', {}) == [("MSG", "quoted value")]


@pytest.mark.parametrize(
    ("text", "legacy_ok"),
    [("=x", True), ("k", True), ("a=1 b", True), ("k v", False), ("", True)],
)
def test_parse_kv_errors(text: str, legacy_ok: bool) -> None:
    with pytest.raises(ValueError):
        parse_kv(text, {}, legacy_ok=legacy_ok)


def test_parse_kv_backtick_escape() -> None:
    assert parse_kv('P=c:\\tools`" X=`$A', {"A": "1"}, escape="`") == [
        ("P", 'c:\\tools"'),
        ("X", "$A"),
    ]
