"""cove.spec.gotemplate against Go's documented text/template semantics, with the data as Go
sees decoded JSON (map[string]interface{}), and Docker's function set."""

from __future__ import annotations

from typing import Any

import pytest

from cove.cli import fmt
from cove.spec.gotemplate import TemplateError, parse, render, sprintf

DATA: dict[str, Any] = {
    "Id": "abc123",
    "Name": "/web",
    "Count": 3,
    "Ratio": 0.5,
    "Running": True,
    "Empty": "",
    "Nothing": None,
    "Config": {
        "Cmd": ["sh", "-c", "echo hi"],
        "Entrypoint": None,
        "Env": [],
        "Labels": {"zeta": "z", "alpha": "a", "mid": "m"},
    },
    "NetworkSettings": {
        "Networks": {
            "net2": {"IPAddress": "10.2.0.5", "Aliases": ["b", "a"]},
            "bridge": {"IPAddress": "10.1.0.2", "Aliases": None},
        }
    },
}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        # fields, nested, map keys, dot
        ("{{.Id}}", "abc123"),
        ("{{.Config.Cmd}}", "[sh -c echo hi]"),
        ("{{.NetworkSettings.Networks.bridge.IPAddress}}", "10.1.0.2"),
        ("{{.Count}} {{.Ratio}} {{.Running}}", "3 0.5 true"),
        ("{{.Config.Labels}}", "map[alpha:a mid:m zeta:z]"),
        ("{{.Config.Env}}", "[]"),
        ("{{with .Config}}{{.Cmd}}{{end}}", "[sh -c echo hi]"),
        # missing map key and JSON null: Go's invalid value
        ("{{.Missing}}", "<no value>"),
        ("{{.Missing.Deeper}}", "<no value>"),
        ("{{.Nothing}}", "<no value>"),
        ("{{.Config.Entrypoint}}", "<no value>"),
        # plain text passes through, \t in text is not rewritten by text/template
        ("id=\\t{{.Id}}", "id=\\tabc123"),
    ],
)
def test_fields(template: str, expected: str) -> None:
    assert render(template, DATA) == expected


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{range .Config.Cmd}}[{{.}}]{{end}}", "[sh][-c][echo hi]"),
        ("{{range $i, $v := .Config.Cmd}}{{$i}}={{$v}} {{end}}", "0=sh 1=-c 2=echo hi "),
        ("{{range $v := .Config.Cmd}}{{$v}};{{end}}", "sh;-c;echo hi;"),
        # maps: keys in sorted order, dot is the element
        ("{{range $k, $v := .Config.Labels}}{{$k}}:{{$v}},{{end}}", "alpha:a,mid:m,zeta:z,"),
        ("{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", "10.1.0.2 10.2.0.5 "),
        ("{{range .Config.Env}}x{{else}}none{{end}}", "none"),
        ("{{range .Missing}}x{{else}}none{{end}}", "none"),
        ("{{range .Nothing}}x{{end}}.", "."),
        ("{{range 3}}{{.}}{{end}}", "012"),
        # $ is the data, inside range too
        ("{{range .Config.Cmd}}{{$.Id}}{{end}}", "abc123abc123abc123"),
        ('{{range .Config.Cmd}}{{if eq . "-c"}}{{break}}{{end}}{{.}}{{end}}', "sh"),
        ('{{range .Config.Cmd}}{{if eq . "-c"}}{{continue}}{{end}}{{.}}{{end}}', "shecho hi"),
    ],
)
def test_range(template: str, expected: str) -> None:
    assert render(template, DATA) == expected


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{if .Running}}up{{end}}", "up"),
        ("{{if .Empty}}a{{else}}b{{end}}", "b"),
        ("{{if .Config.Env}}a{{else}}b{{end}}", "b"),
        ("{{if .Missing}}a{{else}}b{{end}}", "b"),
        ("{{if eq .Count 1}}one{{else if eq .Count 3}}three{{else}}many{{end}}", "three"),
        ("{{if eq .Count 1}}one{{else if eq .Count 2}}two{{else}}many{{end}}", "many"),
        ("{{with .Missing}}x{{else}}no{{end}}", "no"),
        ("{{with $x := .Config.Cmd}}{{index $x 2}}{{end}}", "echo hi"),
        ("{{with .Empty}}x{{else with .Id}}{{.}}{{end}}", "abc123"),
    ],
)
def test_conditionals(template: str, expected: str) -> None:
    assert render(template, DATA) == expected


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{$x := .Id}}{{$x}}", "abc123"),
        ("{{$x := 1}}{{if .Running}}{{$x = 2}}{{end}}{{$x}}", "2"),
        ("{{.Id | upper}}", "ABC123"),
        ("{{.Config.Cmd | len}}", "3"),
        # the piped value is the last argument: strings.Split(",", "a,b") is [","]
        ('{{"a,b" | split "," | len}}', "1"),
        ("{{.Id | index}}", "abc123"),
        ("{{.Id | .Name}}", "<error>"),
        ('{{split "a,b" "," | len}}', "2"),
        ('{{(index .Config.Cmd 0) | printf "%s!"}}', "sh!"),
        ('{{(index .NetworkSettings.Networks "net2").IPAddress}}', "10.2.0.5"),
    ],
)
def test_variables_and_pipelines(template: str, expected: str) -> None:
    if expected == "<error>":
        with pytest.raises(TemplateError):
            render(template, DATA)
        return
    assert render(template, DATA) == expected


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{index .Config.Cmd 0}}", "sh"),
        ('{{index .Config.Labels "mid"}}', "m"),
        ('{{index .Config.Labels "nope"}}', "<no value>"),
        ("{{index .NetworkSettings.Networks.net2.Aliases 1}}", "a"),
        ("{{len .Config.Labels}} {{len .Id}}", "3 6"),
        ("{{json .Config.Cmd}}", '["sh","-c","echo hi"]'),
        ("{{json .Nothing}}", "null"),
        ('{{json "<a&b>"}}', '"<a&b>"'),  # Docker turns HTML escaping off
        ("{{json .NetworkSettings.Networks.bridge}}", '{"IPAddress":"10.1.0.2","Aliases":null}'),
        ('{{join .Config.Cmd "+"}}', "sh+-c+echo hi"),
        ('{{split "a:b:c" ":"}}', "[a b c]"),
        ('{{lower "AbC"}} {{upper "AbC"}}', "abc ABC"),
        ('{{title "hello wide-world foo_bar"}}', "Hello Wide-World Foo_bar"),
        ("{{println .Id .Count}}", "abc123 3\n"),
        ('{{print .Count .Ratio "x" 1}}', "3 0.5x1"),
        ('{{eq .Count 3}} {{ne .Count 3}} {{eq .Id "x" "abc123"}}', "true false true"),
        ("{{lt 1 2}} {{le 2 2}} {{gt 1 2}} {{ge 2 3}}", "true true false false"),
        ('{{lt "a" "b"}} {{gt 1.5 0.5}}', "true true"),
        ("{{and .Running .Id}} {{and .Empty .Id}}|{{or .Empty .Id}}", "abc123 |abc123"),
        ("{{not .Running}} {{not .Empty}}", "false true"),
        ("{{pad .Id 1 2}}|{{truncate .Id 3}}", " abc123  |abc"),
        ("{{slice .Config.Cmd 1 2}}", "[-c]"),
    ],
)
def test_functions(template: str, expected: str) -> None:
    assert render(template, DATA) == expected


@pytest.mark.parametrize(
    ("fmt_", "args", "expected"),
    [
        ("%s|%d|%v|%q", ("a", 7, "v", 'q"t'), 'a|7|v|"q\\"t"'),
        ("%5s|%-5s|%05d|%-4d|%+d", ("ab", "ab", 42, 7, 3), "   ab|ab   |00042|7   |+3"),
        ("%v %v", (["a", "b"], {"k": "v", "a": 1}), "[a b] map[a:1 k:v]"),
        ("%v", ([["x"], {"n": None}],), "[[x] map[n:<nil>]]"),
        ("%s", (["a", "b"],), "[a b]"),
        ("%d", (["a"],), "[%!d(string=a)]"),
        ("%d", ("x",), "%!d(string=x)"),
        ("%s %s", ("a",), "a %!s(MISSING)"),
        ("%s", ("a", 1), "a%!(EXTRA int=1)"),
        ("%.2f|%6.1f|%x|%X", (3.14159, 2.0, 255, 255), "3.14|   2.0|ff|FF"),
        ("%o|%t|%%|%#x", (8, True, 255), "10|true|%|0xff"),
        ("%q", (65,), "'A'"),
        ("%.3s", ("abcdef",), "abc"),
        ("%v %v", (1e21, 1.5e-7), "1e+21 1.5e-07"),
    ],
)
def test_printf(fmt_: str, args: tuple[Any, ...], expected: str) -> None:
    assert sprintf(fmt_, *args) == expected


def test_printf_in_template() -> None:
    assert render('{{printf "%-8s|%3d" .Id .Count}}', DATA) == "abc123  |  3"


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("a  {{- .Id -}}  b", "aabc123b"),
        ("a\n  {{- .Id}}\n", "aabc123\n"),
        ("{{.Id -}}\n\t x", "abc123x"),
        ("{{range .Config.Cmd -}}\n  {{.}}\n{{- end}}", "sh-cecho hi"),
        ("a{{/* a comment */}}b", "ab"),
        ("a {{- /* trimmed comment */ -}} b", "ab"),
        ('{{"}}"}}', "}}"),
        ("{{`raw\\n`}}", "raw\\n"),
        ('{{"tab\\there"}}', "tab\there"),
        ("{{-3}} {{- 3}}", "-33"),
    ],
)
def test_whitespace_and_lexing(template: str, expected: str) -> None:
    assert render(template, DATA) == expected


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{.Id", "template: :1: unclosed action"),
        ("{{if .Id}}x", "template: :1: unexpected EOF"),
        ("{{end}}", "template: :1: unexpected {{end}}"),
        ("x\n{{nosuch .Id}}", 'template: :2: function "nosuch" not defined'),
        ("{{$undefined}}", 'template: :1: undefined variable "$undefined"'),
        ("{{range .X}}{{end}}{{break}}", "template: :1: {{break}} outside {{range}}"),
    ],
)
def test_parse_errors(template: str, message: str) -> None:
    with pytest.raises(TemplateError) as err:
        parse(template)
    assert err.value.parse and str(err.value) == message


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{index .Config.Cmd 9}}", "error calling index: index out of range: 9"),
        ("{{.Id.Field}}", "can't evaluate field Field in type string"),
        ("{{range .Id}}{{end}}", "range can't iterate over abc123"),
        ("{{lt .Id 1}}", "error calling lt: incompatible types for comparison"),
    ],
)
def test_exec_errors(template: str, message: str) -> None:
    with pytest.raises(TemplateError) as err:
        render(template, DATA)
    assert not err.value.parse and str(err.value).endswith(message)
    assert str(err.value).startswith('template: :1: executing "" at <')


def test_fields_for_headers() -> None:
    assert parse("{{.ID}}\t{{if .Names}}{{.Names}}{{end}}\t{{.ID}}").fields() == ["ID", "Names"]


ROWS = [
    {"ID": "0123456789ab", "Names": "web", "Image": "alpine:3.20", "Tag": "latest"},
    {"ID": "ba9876543210", "Names": "a-much-longer-name", "Image": "x", "Tag": "1"},
]


def test_table_directive_header_and_alignment() -> None:
    # Docker: "CONTAINER ID" over ID, tabwriter minwidth 10, padding 3, last cell unpadded
    out = fmt.format_rows("table {{.ID}}\\t{{.Names}}\\t{{.Image}}", [], ROWS, lambda r: [])
    assert out.split("\n") == [
        "CONTAINER ID   NAMES                IMAGE",
        "0123456789ab   web                  alpine:3.20",
        "ba9876543210   a-much-longer-name   x",
    ]


def test_table_directive_per_kind_titles_and_functions() -> None:
    out = fmt.format_rows("table {{.ID}}\t{{upper .Tag}}", [], ROWS, lambda r: [], kind="image")
    # header functions keep the title intact; a short column is still 10 wide
    assert out.split("\n") == ["IMAGE ID       TAG", "0123456789ab   LATEST", "ba9876543210   1"]
    vols = fmt.format_rows("table {{.Names}}", [], ROWS, lambda r: [], kind="volume")
    assert vols.split("\n")[0] == "NAMES"


def test_non_table_formats() -> None:
    assert fmt.format_rows("{{.ID}} {{.Names}}", [], ROWS, lambda r: []) == (
        "0123456789ab web\nba9876543210 a-much-longer-name"
    )
    assert fmt.format_rows("{{.Names}}", [], [], lambda r: []) == ""
    assert fmt.format_rows("json", [], ROWS[:1], lambda r: []) == (
        '{"ID":"0123456789ab","Names":"web","Image":"alpine:3.20","Tag":"latest"}'
    )
    # default and bare "table": the given headers
    for f in (None, "table"):
        assert fmt.format_rows(f, ["A", "B"], ROWS, lambda r: [r["Tag"], r["Names"]]).split(
            "\n"
        ) == ["A         B", "latest    web", "1         a-much-longer-name"]


def test_bad_template_exits_like_docker(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ex:
        fmt.format_rows("{{.ID", [], ROWS, lambda r: [])
    assert ex.value.code == 1
    with pytest.raises(SystemExit) as ex:
        fmt.render("{{.ID", {})
    assert ex.value.code == 64
    err = capsys.readouterr().err.splitlines()
    assert err == ["template parsing error: template: :1: unclosed action"] * 2
