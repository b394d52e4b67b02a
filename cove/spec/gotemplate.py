"""Go's text/template as Docker's ``--format`` uses it: a lexer, parser and evaluator over
JSON-shaped data (dicts, lists, str, int, float, bool, None). Pure: no I/O.

Semantics follow Go's documentation with the data seen as Go sees decoded JSON
(``map[string]interface{}``): a missing map key and a JSON null print ``<no value>``;
``range`` over a map visits keys in sorted order; ``printf "%v"`` prints lists as ``[a b]``
and maps as ``map[k:v]``. Docker's functions (``json``, ``join``, ``split``, ``lower``,
``upper``, ``title``, ``pad``, ``truncate``) sit beside Go's builtins.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from cove.errors import CoveError


class TemplateError(CoveError):
    """A template did not parse (``parse`` true) or failed while executing."""

    def __init__(self, message: str, parse: bool) -> None:
        super().__init__(message)
        self.parse = parse


class _NoValue:
    """Go's invalid reflect.Value: what a missing map key or a nil interface evaluates to."""

    def __repr__(self) -> str:
        return "<no value>"


NO_VALUE: Any = _NoValue()


# ---- lexer ---------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<comment>/\*.*?\*/)
  | (?P<str>"(?:[^"\\\n]|\\.)*")
  | (?P<raw>`[^`]*`)
  | (?P<char>'(?:[^'\\\n]|\\.)+')
  | (?P<decl>:=)
  | (?P<assign>=)
  | (?P<num>[+-]?(?:0[xX][0-9a-fA-F_]+|(?:\d[\d_]*)?\.?\d[\d_]*(?:[eE][+-]?\d+)?))
  | (?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+)
  | (?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<dot>\.)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<pipe>\|)
  | (?P<lparen>\()
  | (?P<rparen>\)(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<comma>,)
    """,
    re.VERBOSE | re.DOTALL,
)


@dataclass
class _Tok:
    kind: str
    text: str
    line: int


def _lex_action(src: str, line: int) -> list[_Tok]:
    toks: list[_Tok] = []
    pos = 0
    while pos < len(src):
        m = _TOKEN.match(src, pos)
        if not m:
            raise TemplateError(
                f"template: :{line}: unexpected {src[pos]!r} in command", parse=True
            )
        kind = m.lastgroup or ""
        if kind not in ("ws", "comment"):
            toks.append(_Tok(kind, m.group(), line + src.count("\n", 0, pos)))
        pos = m.end()
    return toks


def _split(template: str) -> Iterator[tuple[str, str, int]]:
    """Yield ("text", s, line) and ("action", s, line), applying ``{{-`` and ``-}}`` trims."""
    pos, line, trim_next = 0, 1, False
    while True:
        start = template.find("{{", pos)
        text = template[pos:] if start < 0 else template[pos:start]
        left_trim = start >= 0 and template[start + 2 : start + 4] in ("- ", "-\t", "-\n", "-\r")
        if trim_next:
            text = text.lstrip(" \t\r\n")
        if left_trim:
            text = text.rstrip(" \t\r\n")
        if text:
            yield "text", text, line
        if start < 0:
            return
        line += template.count("\n", pos, start)
        body_start = start + (3 if left_trim else 2)
        # a comment may hold "}}"; anything else ends at the first "}}"
        probe = template[body_start:].lstrip()
        if probe.startswith("/*"):
            cend = template.find("*/", body_start)
            end = template.find("}}", cend) if cend >= 0 else -1
        else:
            end = _find_close(template, body_start)
        if end < 0:
            raise TemplateError(f"template: :{line}: unclosed action", parse=True)
        body = template[body_start:end]
        trim_next = False
        if body.endswith(" -") or body.endswith("\t-") or body.endswith("\n-"):
            body, trim_next = body[:-2], True
        yield "action", body, line
        line += template.count("\n", start, end)
        pos = end + 2


def _find_close(template: str, pos: int) -> int:
    """The ``}}`` closing an action, skipping quoted strings that may contain one."""
    i = pos
    while i < len(template):
        c = template[i]
        if c in "\"'":
            j = i + 1
            while j < len(template) and template[j] != c:
                if template[j] == "\n":
                    return -1
                j += 2 if template[j] == "\\" else 1
            i = j + 1
        elif c == "`":
            j = template.find("`", i + 1)
            if j < 0:
                return -1
            i = j + 1
        elif template.startswith("}}", i):
            return i
        else:
            i += 1
    return -1


# ---- parse tree ----------------------------------------------------------------------------


@dataclass
class _Arg:
    kind: str  # "field" "var" "dot" "lit" "func" "pipe" "nil"
    value: Any = None  # literal value, function name, var name, or a _Pipe
    chain: list[str] = field(default_factory=list)
    text: str = ""


@dataclass
class _Pipe:
    decls: list[str]
    assign: bool
    cmds: list[list[_Arg]]
    line: int
    text: str


@dataclass
class _Node:
    kind: str  # "text" "action" "if" "range" "with" "break" "continue"
    text: str = ""
    pipe: _Pipe | None = None
    body: list[_Node] = field(default_factory=list)
    orelse: list[_Node] = field(default_factory=list)


def _unquote(tok: _Tok) -> Any:
    if tok.kind == "raw":
        return tok.text[1:-1]
    if tok.kind == "str":
        try:
            return json.loads(_go_escapes(tok.text))
        except ValueError as e:
            raise TemplateError(f"template: :{tok.line}: bad string {tok.text}", True) from e
    if tok.kind == "char":
        s = json.loads('"' + _go_escapes(tok.text[1:-1]) + '"')
        return ord(s)
    text = tok.text.replace("_", "")
    try:
        if re.fullmatch(r"[+-]?0[xX][0-9a-fA-F]+", text):
            return int(text, 16)
        if re.fullmatch(r"[+-]?\d+", text):
            return int(text)
        return float(text)
    except ValueError as e:
        raise TemplateError(f"template: :{tok.line}: bad number syntax: {tok.text}", True) from e


def _go_escapes(s: str) -> str:
    # Go's \a \v \x.. \' escapes, which JSON lacks
    s = re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: f"\\u00{m.group(1)}", s)
    return s.replace("\\a", "\\u0007").replace("\\v", "\\u000b").replace("\\'", "'")


class _Parser:
    def __init__(self, template: str, funcs: dict[str, Callable[..., Any]]) -> None:
        self.items = list(_split(template))
        self.i = 0
        self.funcs = funcs
        self.declared: list[str] = ["$"]
        self.range_depth = 0

    def parse(self) -> list[_Node]:
        nodes, stop = self.list_until()
        if stop is not None:
            kw, line = stop
            raise TemplateError(f"template: :{line}: unexpected {{{{{kw}}}}}", parse=True)
        return nodes

    def list_until(self) -> tuple[list[_Node], tuple[str, int] | None]:
        """Nodes up to ``{{end}}``/``{{else}}`` (returned as the stop keyword) or EOF (None).
        For ``else``, the stop is "else" plus what follows it, e.g. "else if .X"."""
        nodes: list[_Node] = []
        while self.i < len(self.items):
            kind, text, line = self.items[self.i]
            self.i += 1
            if kind == "text":
                nodes.append(_Node("text", text=text))
                continue
            toks = _lex_action(text, line)
            if not toks:
                if text.strip().startswith("/*"):
                    continue  # a comment
                raise TemplateError(f"template: :{line}: missing value for command", True)
            head = toks[0]
            if head.kind == "ident" and head.text in ("end", "else"):
                self.pending = toks[1:]
                return nodes, (head.text, line)
            if head.kind == "ident" and head.text in ("if", "range", "with"):
                nodes.append(self.control(head.text, toks[1:], line))
            elif head.kind == "ident" and head.text in ("break", "continue"):
                if not self.range_depth:
                    raise TemplateError(
                        f"template: :{line}: {{{{{head.text}}}}} outside {{{{range}}}}", True
                    )
                nodes.append(_Node(head.text))
            elif head.kind == "ident" and head.text in ("define", "template", "block"):
                msg = f"{{{{{head.text}}}}} is not supported"
                raise TemplateError(f"template: :{line}: {msg}", parse=True)
            else:
                nodes.append(_Node("action", pipe=self.pipeline(toks, line, text)))
        return nodes, None

    def control(self, kw: str, toks: list[_Tok], line: int) -> _Node:
        mark = len(self.declared)
        pipe = self.pipeline(toks, line, kw, decl_ok=True, control=kw)
        node = _Node(kw, pipe=pipe)
        if kw == "range":
            self.range_depth += 1
        node.body, stop = self.list_until()
        if kw == "range":
            self.range_depth -= 1
        if stop is None:
            raise TemplateError(f"template: :{line}: unexpected EOF", parse=True)
        if stop[0] == "else":
            rest = self.pending
            if rest and rest[0].kind == "ident" and rest[0].text in ("if", "with"):
                # "else if" / "else with": a nested control sharing this one's {{end}}
                self.declared = self.declared[:mark]
                node.orelse = [self.control(rest[0].text, rest[1:], stop[1])]
                self.declared = self.declared[:mark]
                return node
            if rest:
                raise TemplateError(f"template: :{stop[1]}: unexpected tokens after else", True)
            self.declared = self.declared[: mark + len(pipe.decls)]
            node.orelse, stop = self.list_until()
            if stop is None:
                raise TemplateError(f"template: :{line}: unexpected EOF", parse=True)
            if stop[0] != "end" or self.pending:
                raise TemplateError(f"template: :{stop[1]}: expected end; found {stop[0]}", True)
        elif self.pending:
            raise TemplateError(f"template: :{stop[1]}: unexpected tokens after end", True)
        self.declared = self.declared[:mark]
        return node

    def pipeline(
        self, toks: list[_Tok], line: int, text: str, decl_ok: bool = True, control: str = ""
    ) -> _Pipe:
        decls: list[str] = []
        assign = False
        # "$x :=", "$i, $v :=" (range only), "$x ="
        if toks and toks[0].kind == "var" and "." not in toks[0].text:
            if len(toks) > 1 and toks[1].kind in ("decl", "assign"):
                decls, assign = [toks[0].text], toks[1].kind == "assign"
                toks = toks[2:]
            elif (
                len(toks) > 3 and toks[1].kind == "comma" and toks[2].kind == "var"
                and toks[3].kind in ("decl", "assign")
            ):  # fmt: skip
                if control != "range":
                    raise TemplateError(f"template: :{line}: too many declarations in {text}", True)
                decls, assign = [toks[0].text, toks[2].text], toks[3].kind == "assign"
                toks = toks[4:]
        for d in decls:
            if assign and d not in self.declared:
                raise TemplateError(f"template: :{line}: undefined variable: {d}", parse=True)
        pos = 0
        cmds: list[list[_Arg]] = []
        cmd: list[_Arg] = []
        while pos < len(toks):
            tok = toks[pos]
            if tok.kind == "pipe":
                if not cmd:
                    raise TemplateError(f"template: :{line}: missing command", parse=True)
                cmds.append(cmd)
                cmd = []
                pos += 1
                continue
            arg, pos = self.operand(toks, pos, line)
            cmd.append(arg)
        if cmd:
            cmds.append(cmd)
        elif cmds:
            raise TemplateError(f"template: :{line}: missing command", parse=True)
        if not cmds:
            what = control or "command"
            raise TemplateError(f"template: :{line}: missing value for {what}", parse=True)
        if not assign:
            self.declared.extend(decls)
        return _Pipe(decls, assign, cmds, line, text.strip())

    def operand(self, toks: list[_Tok], pos: int, line: int) -> tuple[_Arg, int]:
        tok = toks[pos]
        k = tok.kind
        if k == "field":
            return _Arg("field", chain=tok.text[1:].split("."), text=tok.text), pos + 1
        if k == "dot":
            return _Arg("dot", text="."), pos + 1
        if k == "var":
            name, *chain = tok.text.split(".")
            if name not in self.declared:
                raise TemplateError(f'template: :{line}: undefined variable "{name}"', True)
            return _Arg("var", name, chain, tok.text), pos + 1
        if k in ("str", "raw", "char", "num"):
            return _Arg("lit", _unquote(tok), text=tok.text), pos + 1
        if k == "ident":
            if tok.text in ("true", "false"):
                return _Arg("lit", tok.text == "true", text=tok.text), pos + 1
            if tok.text == "nil":
                return _Arg("nil", text="nil"), pos + 1
            if tok.text not in self.funcs:
                raise TemplateError(
                    f'template: :{line}: function "{tok.text}" not defined', parse=True
                )
            return _Arg("func", tok.text, text=tok.text), pos + 1
        if k == "lparen":
            depth, end = 0, pos
            for end in range(pos, len(toks)):
                if toks[end].kind == "lparen":
                    depth += 1
                elif toks[end].kind == "rparen":
                    depth -= 1
                    if depth == 0:
                        break
            else:
                raise TemplateError(f"template: :{line}: unclosed left paren", parse=True)
            inner = self.pipeline(toks[pos + 1 : end], line, "(...)", decl_ok=False)
            chain = toks[end].text[1:].split(".")[1:]
            return _Arg("pipe", inner, chain, "(" + inner.text + ")"), end + 1
        raise TemplateError(f"template: :{line}: unexpected {tok.text!r} in operand", parse=True)


# ---- printing as Go's fmt does -------------------------------------------------------------


def go_str(v: Any, top: bool = True) -> str:
    """``fmt.Sprint``'s ``%v`` of a JSON-shaped value."""
    if v is NO_VALUE:
        return "<no value>"
    if v is None:
        return "<no value>" if top else "<nil>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _go_float(v)
    if isinstance(v, (list, tuple)):
        return "[" + " ".join(go_str(x, False) for x in v) + "]"
    if isinstance(v, dict):
        return "map[" + " ".join(f"{k}:{go_str(v[k], False)}" for k in sorted(v)) + "]"
    return str(v)


def _go_float(f: float) -> str:
    """strconv.FormatFloat(f, 'g', -1, 64) with %v's exponent threshold of 21."""
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    if math.isnan(f):
        return "NaN"
    r = repr(f)
    mant, _, exp = r.partition("e")
    e = int(exp) if exp else 0
    if not exp and f != 0 and abs(f) >= 1e21:
        mant, _, exp = f"{f:e}".partition("e")
        e = int(exp)
    if exp:
        if -4 <= e < 21:
            return f"{f:f}".rstrip("0").rstrip(".")
        mant = mant.rstrip("0").rstrip(".") if "." in mant else mant
        return f"{mant}e{'-' if e < 0 else '+'}{abs(e):02d}"
    return r[:-2] if r.endswith(".0") else r


def go_quote(s: str) -> str:
    """strconv.Quote."""
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch in "\a\b\f\n\r\t\v":
            out.append("\\" + "abfnrtv"["\a\b\f\n\r\t\v".index(ch)])
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\x{o:02x}")
        elif not ch.isprintable() and o > 0x7F:
            out.append(f"\\u{o:04x}" if o <= 0xFFFF else f"\\U{o:08x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _typename(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float64"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "[]interface {}"
    if isinstance(v, dict):
        return "map[string]interface {}"
    return "<nil>"


_VERB = re.compile(r"%([-+# 0]*)(\d+|\*)?(?:\.(\d+|\*)?)?([a-zA-Z%])")


def sprintf(fmt: str, *args: Any) -> str:
    """Go's fmt.Sprintf for the verbs Docker users write: %s %d %v %q %t %x %X %o %b %f
    %e %g %c %%, with flags, widths and precisions, and Go's %!verb(...) for misuse."""
    out: list[str] = []
    argi = 0
    pos = 0
    for m in _VERB.finditer(fmt):
        out.append(fmt[pos : m.start()])
        pos = m.end()
        flags, width_s, prec_s, verb = m.groups()
        if verb == "%":
            out.append("%")
            continue
        width: int | None = None
        prec: int | None = None
        if width_s == "*":
            width, argi = (args[argi] if argi < len(args) else 0), argi + 1
        elif width_s:
            width = int(width_s)
        if prec_s == "*":
            prec, argi = (args[argi] if argi < len(args) else 0), argi + 1
        elif prec_s is not None:
            prec = int(prec_s)
        elif m.group(0).find(".") > 0:
            prec = 0
        if argi >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        arg = args[argi]
        argi += 1
        out.append(_pad(_verb(verb, arg, flags, prec), width, flags, verb, arg))
    out.append(fmt[pos:])
    if argi < len(args):
        extra = ", ".join(f"{_typename(a)}={go_str(a, False)}" for a in args[argi:])
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


def _pad(s: str, width: int | None, flags: str, verb: str, arg: Any) -> str:
    if width is None or len(s) >= width:
        return s
    if "-" in flags:
        return s.ljust(width)
    numeric = isinstance(arg, (int, float)) and not isinstance(arg, bool)
    if "0" in flags and numeric and verb in "dfeEgGxXob":
        sign = s[0] if s[:1] in "+- " else ""
        return sign + s[len(sign) :].rjust(width - len(sign), "0")
    return s.rjust(width)


def _verb(verb: str, arg: Any, flags: str, prec: int | None) -> str:
    if isinstance(arg, list) and verb not in "vT":
        return "[" + " ".join(_verb(verb, x, flags, prec) for x in arg) + "]"
    if verb == "v":
        return go_str(arg, False) if arg is not NO_VALUE else "<nil>"
    if verb == "T":
        return _typename(arg)
    if verb == "s":
        if isinstance(arg, str):
            return arg if prec is None else arg[:prec]
        if isinstance(arg, dict):
            return go_str(arg, False)
        return f"%!s({_typename(arg)}={go_str(arg, False)})"
    if verb == "q":
        if isinstance(arg, str):
            return go_quote(arg)
        if isinstance(arg, int) and not isinstance(arg, bool):
            return "'" + go_quote(chr(arg))[1:-1].replace('\\"', '"') + "'"
        return f"%!q({_typename(arg)}={go_str(arg, False)})"
    if verb == "t":
        if isinstance(arg, bool):
            return "true" if arg else "false"
        return f"%!t({_typename(arg)}={go_str(arg, False)})"
    if verb in "dxXobc" and isinstance(arg, int) and not isinstance(arg, bool):
        if verb == "c":
            return chr(arg)
        body = format(abs(arg), verb)
        if "#" in flags and verb in "xXo":
            body = {"x": "0x", "X": "0X", "o": "0"}[verb] + body
        sign = "-" if arg < 0 else "+" if "+" in flags else " " if " " in flags else ""
        return sign + body
    if verb in "xX" and isinstance(arg, str):
        h = arg.encode().hex()
        return h.upper() if verb == "X" else h
    if verb in "feEgG" and isinstance(arg, (int, float)) and not isinstance(arg, bool):
        if isinstance(arg, int):
            return f"%!{verb}(int={arg})"
        sign = "+" if "+" in flags else " " if " " in flags else ""
        if verb in "gG" and prec is None:
            s = _go_float(arg)
            return (s.upper() if verb == "G" else s) if arg < 0 or not sign else sign + s
        p = 6 if prec is None else prec
        return format(arg, f"{sign}.{p}{verb}")
    return f"%!{verb}({_typename(arg)}={go_str(arg, False)})"


# ---- functions -----------------------------------------------------------------------------


def truth(v: Any) -> bool:
    """Go's template truth: false, 0, "", nil and empty lists and maps are false."""
    if v is NO_VALUE or v is None:
        return False
    if isinstance(v, (bool, int, float, str, list, tuple, dict)):
        return bool(v)
    return True


def _json(v: Any) -> str:
    # Docker's json: encoding/json with HTML escaping off, compact, no trailing newline
    return json.dumps(None if v is NO_VALUE else v, ensure_ascii=False, separators=(",", ":"))


def _index(item: Any, *keys: Any) -> Any:
    v = item
    for k in keys:
        if isinstance(v, dict):
            if not isinstance(k, str):
                raise ValueError(f"value has type {_typename(k)}; should be string")
            v = v.get(k, NO_VALUE) if k in v else NO_VALUE
        elif isinstance(v, (list, str)):
            if not isinstance(k, int) or isinstance(k, bool):
                raise ValueError(f"cannot index slice/array with type {_typename(k)}")
            if not 0 <= k < len(v):
                raise ValueError(f"index out of range: {k}")
            v = v[k] if isinstance(v, list) else ord(v.encode()[k : k + 1].decode("latin-1"))
        elif v is None or v is NO_VALUE:
            raise ValueError("index of untyped nil")
        else:
            raise ValueError(f"can't index item of type {_typename(v)}")
    return v


def _len(v: Any) -> int:
    if isinstance(v, str):
        return len(v.encode())
    if isinstance(v, (list, dict)):
        return len(v)
    raise ValueError(f"len of type {_typename(v)}")


def _slice(v: Any, *idx: int) -> Any:
    if not isinstance(v, (list, str)):
        raise ValueError(f"can't slice item of type {_typename(v)}")
    if len(idx) > 2:
        raise ValueError("too many slice indexes")
    lo = idx[0] if idx else 0
    hi = idx[1] if len(idx) > 1 else len(v)
    if not 0 <= lo <= hi <= len(v):
        raise ValueError(f"index out of range: {hi}")
    return v[lo:hi]


def _cmp_args(a: Any, b: Any) -> tuple[Any, Any]:
    num = (int, float)
    if isinstance(a, bool) != isinstance(b, bool) or not (
        (isinstance(a, num) and isinstance(b, num)) or (isinstance(a, str) and isinstance(b, str))
        or (isinstance(a, bool) and isinstance(b, bool))
    ):  # fmt: skip
        if a is None or b is None or a is NO_VALUE or b is NO_VALUE:
            raise ValueError("invalid type for comparison")
        raise ValueError("incompatible types for comparison")
    if isinstance(a, float) != isinstance(b, float):
        raise ValueError("incompatible types for comparison")
    return a, b


def _eq(a: Any, *others: Any) -> bool:
    if not others:
        raise ValueError("missing argument for comparison")
    for b in others:
        if a is None or a is NO_VALUE or b is None or b is NO_VALUE:
            if (a is None or a is NO_VALUE) and (b is None or b is NO_VALUE):
                return True
            continue
        if isinstance(a, (list, dict)) or isinstance(b, (list, dict)):
            raise ValueError("non-comparable type")
        x, y = _cmp_args(a, b)
        if x == y:
            return True
    return False


def _lt(a: Any, b: Any) -> bool:
    x, y = _cmp_args(a, b)
    if isinstance(x, bool):
        raise ValueError("invalid type for comparison")
    return bool(x < y)


def _title(s: str) -> str:
    """strings.Title: upper-case the first letter of each word (a word follows a separator:
    anything but a letter, digit, underscore or non-ASCII non-space)."""
    out, prev_sep = [], True
    for ch in s:
        out.append(ch.upper() if prev_sep else ch)
        if ord(ch) < 0x80:
            prev_sep = not (ch.isalnum() or ch == "_")
        else:
            prev_sep = ch.isspace()
    return "".join(out)


def _split_fn(s: str, sep: str) -> list[str]:
    return list(s) if sep == "" else s.split(sep)


def _join(items: Any, sep: str) -> str:
    if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
        raise ValueError(f"wrong type for value; expected []string; got {_typename(items)}")
    return sep.join(items)


def _sprint(*args: Any) -> str:
    out = []
    for i, a in enumerate(args):
        # Sprint adds a space between operands when neither is a string
        if i and not isinstance(a, str) and not isinstance(args[i - 1], str):
            out.append(" ")
        out.append(go_str(a, False) if a is not NO_VALUE else "<nil>")
    return "".join(out)


def _sprintln(*args: Any) -> str:
    return " ".join(go_str(a, False) if a is not NO_VALUE else "<nil>" for a in args) + "\n"


def _str_arg(fn: Callable[[str], str]) -> Callable[[Any], str]:
    def call(v: Any) -> str:
        if not isinstance(v, str):
            raise ValueError(f"wrong type for value; expected string; got {_typename(v)}")
        return fn(v)

    return call


def _pad_fn(s: str, prefix: int, suffix: int) -> str:
    return s if s == "" else " " * prefix + s + " " * suffix


def _truncate(s: str, n: int) -> str:
    return s if len(s) < n else s[:n]


FUNCS: dict[str, Callable[..., Any]] = {
    "and": lambda *a: None,  # short-circuit: evaluated in _call
    "or": lambda *a: None,
    "not": lambda v: not truth(v),
    "len": _len,
    "index": _index,
    "slice": _slice,
    "print": _sprint,
    "printf": lambda f, *a: sprintf(f, *a),
    "println": _sprintln,
    "eq": _eq,
    "ne": lambda a, b: not _eq(a, b),
    "lt": _lt,
    "le": lambda a, b: _lt(a, b) or _eq(a, b),
    "gt": lambda a, b: not (_lt(a, b) or _eq(a, b)),
    "ge": lambda a, b: not _lt(a, b),
    "json": _json,
    "split": lambda s, sep: _split_fn(s, sep),
    "join": _join,
    "title": _str_arg(_title),
    "lower": _str_arg(str.lower),
    "upper": _str_arg(str.upper),
    "pad": _pad_fn,
    "truncate": _truncate,
}

# Docker's HeaderFunctions: a table's header row keeps its column titles intact
HEADER_FUNCS: dict[str, Callable[..., Any]] = {
    **FUNCS,
    "json": lambda v: v,
    "split": lambda v, _s: v,
    "join": lambda v, _s: v,
    "title": lambda v: v,
    "lower": lambda v: v,
    "upper": lambda v: v,
    "truncate": lambda v, _n: v,
}


# ---- evaluation ----------------------------------------------------------------------------


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


class Template:
    """A parsed template; ``execute(data)`` renders it."""

    def __init__(self, source: str, funcs: dict[str, Callable[..., Any]] | None = None) -> None:
        self.source = source
        self.funcs = FUNCS if funcs is None else funcs
        self.nodes = _Parser(source, self.funcs).parse()

    def fields(self) -> list[str]:
        """The top-level field names the template reads from dot (for table headers)."""
        found: list[str] = []

        def walk_pipe(p: _Pipe | None) -> None:
            for cmd in p.cmds if p else []:
                for a in cmd:
                    if a.kind == "field" and a.chain[0] not in found:
                        found.append(a.chain[0])
                    elif a.kind == "pipe":
                        walk_pipe(a.value)

        def walk(nodes: list[_Node]) -> None:
            for n in nodes:
                walk_pipe(n.pipe)
                walk(n.body)
                walk(n.orelse)

        walk(self.nodes)
        return found

    def execute(self, data: Any, funcs: dict[str, Callable[..., Any]] | None = None) -> str:
        out: list[str] = []
        self._funcs = self.funcs if funcs is None else funcs
        self._walk(self.nodes, data, [("$", data)], out)
        return "".join(out)

    def _walk(
        self, nodes: list[_Node], dot: Any, vars_: list[tuple[str, Any]], out: list[str]
    ) -> None:
        for n in nodes:
            if n.kind == "text":
                out.append(n.text)
            elif n.kind == "action":
                assert n.pipe is not None
                v = self._pipe(n.pipe, dot, vars_)
                if not n.pipe.decls:
                    out.append(go_str(v))
            elif n.kind in ("if", "with"):
                assert n.pipe is not None
                mark = len(vars_)
                v = self._pipe(n.pipe, dot, vars_)
                if truth(v):
                    self._walk(n.body, v if n.kind == "with" else dot, vars_, out)
                else:
                    self._walk(n.orelse, dot, vars_, out)
                del vars_[mark:]
            elif n.kind == "range":
                self._range(n, dot, vars_, out)
            elif n.kind == "break":
                raise _Break
            elif n.kind == "continue":
                raise _Continue

    def _range(self, n: _Node, dot: Any, vars_: list[tuple[str, Any]], out: list[str]) -> None:
        assert n.pipe is not None
        mark = len(vars_)
        pipe = _Pipe([], False, n.pipe.cmds, n.pipe.line, n.pipe.text)
        v = self._pipe(pipe, dot, vars_)
        items: list[tuple[Any, Any]]
        if isinstance(v, dict):
            items = [(k, v[k]) for k in sorted(v)]
        elif isinstance(v, list):
            items = list(enumerate(v))
        elif isinstance(v, int) and not isinstance(v, bool):
            items = [(i, i) for i in range(v)]
        elif v is None or v is NO_VALUE:
            items = []
        else:
            raise self._err(n.pipe, f"range can't iterate over {go_str(v, False)}")
        for key, elem in items:
            if len(n.pipe.decls) == 1:
                self._bind(vars_, n.pipe.decls[0], elem, n.pipe.assign, mark)
            elif len(n.pipe.decls) == 2:
                self._bind(vars_, n.pipe.decls[0], key, n.pipe.assign, mark)
                self._bind(vars_, n.pipe.decls[1], elem, n.pipe.assign, mark)
            try:
                self._walk(n.body, elem, vars_, out)
            except _Continue:
                pass
            except _Break:
                break
            finally:
                del vars_[mark + (0 if n.pipe.assign else len(n.pipe.decls)) :]
        if not items:
            self._walk(n.orelse, dot, vars_, out)
        del vars_[mark:]

    @staticmethod
    def _bind(vars_: list[tuple[str, Any]], name: str, value: Any, assign: bool, mark: int) -> None:
        if assign:
            for i in range(len(vars_) - 1, -1, -1):
                if vars_[i][0] == name:
                    vars_[i] = (name, value)
                    return
        if len(vars_) > mark and not assign:
            for i in range(mark, len(vars_)):
                if vars_[i][0] == name:
                    vars_[i] = (name, value)
                    return
        vars_.append((name, value))

    def _err(self, pipe: _Pipe, msg: str) -> TemplateError:
        return TemplateError(
            f'template: :{pipe.line}: executing "" at <{pipe.text}>: {msg}', parse=False
        )

    def _pipe(self, pipe: _Pipe, dot: Any, vars_: list[tuple[str, Any]]) -> Any:
        value: Any = _UNSET
        for cmd in pipe.cmds:
            value = self._cmd(pipe, cmd, dot, vars_, value)
        for d in pipe.decls:
            self._bind(vars_, d, value, pipe.assign, len(vars_))
        return value

    def _cmd(
        self, pipe: _Pipe, cmd: list[_Arg], dot: Any, vars_: list[tuple[str, Any]], final: Any
    ) -> Any:
        head = cmd[0]
        if head.kind == "func":
            return self._call(pipe, head.value, cmd[1:], dot, vars_, final)
        if len(cmd) > 1 or final is not _UNSET:
            if head.kind in ("field", "var") and (head.chain):
                raise self._err(pipe, f"{head.chain[-1]} is not a method but has arguments")
            raise self._err(pipe, f"can't give argument to non-function {head.text}")
        return self._arg(pipe, head, dot, vars_)

    def _call(
        self, pipe: _Pipe, name: str, args: list[_Arg], dot: Any,
        vars_: list[tuple[str, Any]], final: Any,
    ) -> Any:  # fmt: skip
        if name in ("and", "or"):
            vals: list[Any] = [lambda a=a: self._arg(pipe, a, dot, vars_) for a in args]
            if final is not _UNSET:
                vals.append(lambda: final)
            if not vals:
                raise self._err(pipe, f"wrong number of args for {name}: want at least 1 got 0")
            v: Any = None
            for get in vals:
                v = get()
                if truth(v) == (name == "or"):
                    return v
            return v
        values = [self._arg(pipe, a, dot, vars_) for a in args]
        if final is not _UNSET:
            values.append(final)
        try:
            return self._funcs[name](*values)
        except TypeError as e:
            raise self._err(pipe, f"error calling {name}: wrong number or type of args") from e
        except (ValueError, IndexError, KeyError) as e:
            raise self._err(pipe, f"error calling {name}: {e}") from e

    def _arg(self, pipe: _Pipe, a: _Arg, dot: Any, vars_: list[tuple[str, Any]]) -> Any:
        if a.kind == "lit":
            return a.value
        if a.kind == "nil":
            raise self._err(pipe, "nil is not a command")
        if a.kind == "dot":
            return dot
        if a.kind == "func":
            return self._call(pipe, a.value, [], dot, vars_, _UNSET)
        if a.kind == "field":
            base = dot
        elif a.kind == "var":
            for name, val in reversed(vars_):
                if name == a.value:
                    base = val
                    break
            else:
                raise self._err(pipe, f"undefined variable: {a.value}")
        else:
            base = self._pipe(a.value, dot, vars_)
        for name in a.chain:
            base = self._field(pipe, base, name)
        return base

    def _field(self, pipe: _Pipe, v: Any, name: str) -> Any:
        if v is None or v is NO_VALUE:
            return NO_VALUE  # Go: a field of an invalid value is invalid, printed <no value>
        if isinstance(v, dict):
            got = v.get(name, NO_VALUE)
            return NO_VALUE if got is None else got
        raise self._err(pipe, f"can't evaluate field {name} in type {_typename(v)}")


_UNSET: Any = object()


def parse(source: str) -> Template:
    """Parse ``source`` with Docker's function set; TemplateError(parse=True) if it is bad."""
    return Template(source)


def render(source: str, data: Any) -> str:
    return parse(source).execute(data)
