"""Dockerfiles parsed the way BuildKit's dockerfile frontend parses them.

Pure: no I/O. ``parse`` turns the text into meta ARGs and build stages whose
instructions keep their arguments unexpanded, because Docker expands variables
at dispatch time with the environment of that moment. ``expand``,
``expand_words`` and ``parse_kv`` are that later step: BuildKit's shell lexer
(``ProcessWord``) and its ENV/LABEL/ARG argument rules.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from cove.errors import InvalidSpec

INSTRUCTIONS = frozenset(
    {
        "FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY",
        "ENTRYPOINT", "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL",
        "HEALTHCHECK", "SHELL",
    }
)  # fmt: skip

# Flag kinds as BuildKit's BFlags declares them: "bool" may stand alone or take
# =true/=false, "str" needs =value and may appear once, "list" needs =value and repeats.
_FLAGS: dict[str, dict[str, str]] = {
    "FROM": {"platform": "str"},
    "RUN": {"mount": "list", "network": "str", "security": "str"},
    "COPY": {
        "from": "str", "chown": "str", "chmod": "str", "link": "bool", "parents": "bool",
        "exclude": "list",
    },
    "ADD": {
        "chown": "str", "chmod": "str", "link": "bool", "checksum": "str",
        "keep-git-dir": "bool", "exclude": "list",
    },
    "HEALTHCHECK": {
        "interval": "str", "timeout": "str", "start-period": "str", "start-interval": "str",
        "retries": "str",
    },
}  # fmt: skip

_JSON_CMDS = frozenset({"RUN", "CMD", "ENTRYPOINT", "SHELL", "ADD", "COPY", "VOLUME"})
_HEREDOC_CMDS = frozenset({"RUN", "COPY", "ADD"})
# BuildKit's parseString: the whole rest of the line is the one argument.
_WHOLE_LINE_CMDS = frozenset({"MAINTAINER", "WORKDIR", "USER", "STOPSIGNAL"})
_DIRECTIVES = frozenset({"escape", "syntax", "check"})

_DIRECTIVE_RE = re.compile(r"#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*")
_HEREDOC_RE = re.compile(r"([0-9]*)<<(-?)([^<]*)")
_STAGE_NAME_RE = re.compile(r"[a-z][a-z0-9_.-]*")
_BLANKS_RE = re.compile(r"[\t\v\f\r ]+")
_SPECIAL_PARAMS = frozenset("@*#?-$!0")


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


# NaN/Infinity are not JSON to Go's decoder, so an array holding them is shell form.
_JSON = json.JSONDecoder(parse_constant=_reject_constant)


class DockerfileError(InvalidSpec):
    """A Dockerfile that BuildKit would refuse, located at ``filename:line``."""

    def __init__(self, filename: str, line: int, message: str) -> None:
        super().__init__(f"{filename}:{line}: {message}")
        self.filename = filename
        self.line = line
        self.message = message


@dataclass(frozen=True)
class Heredoc:
    name: str
    content: str
    expand: bool
    chomp: bool


@dataclass(frozen=True)
class Instruction:
    """One instruction; for HEALTHCHECK ``json`` and ``args`` describe ``TYPE [...]``
    as ``(TYPE, *array)``, and MAINTAINER/WORKDIR/USER/STOPSIGNAL have the whole
    argument text as their single arg, as BuildKit's parseString does."""

    cmd: str
    line: int
    original: str
    flags: tuple[tuple[str, str | None], ...]
    raw: str
    json: bool
    args: tuple[str, ...]
    heredocs: tuple[Heredoc, ...]


@dataclass(frozen=True)
class Stage:
    index: int
    name: str | None
    base: str
    from_instr: Instruction
    instructions: tuple[Instruction, ...]


@dataclass(frozen=True)
class Dockerfile:
    filename: str
    escape: str
    directives: dict[str, str]
    meta_args: tuple[Instruction, ...]
    stages: tuple[Stage, ...]
    notes: tuple[str, ...]


@dataclass(frozen=True)
class _Logical:
    """A logical line: continuations joined, heredoc bodies attached."""

    line: int
    text: str
    cmd: str
    flag_words: tuple[str, ...]
    rest: str
    json_args: tuple[str, ...] | None
    heredocs: tuple[Heredoc, ...]


def parse(text: str, filename: str = "Dockerfile") -> Dockerfile:
    return _Parser(text, filename).parse()


class _Parser:
    def __init__(self, text: str, filename: str) -> None:
        lines = text.removeprefix("\ufeff").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        self.lines = [line.rstrip("\r") for line in lines]
        self.filename = filename
        self.escape = "\\"
        self.continuation = _continuation_re(self.escape)
        self.directives: dict[str, str] = {}
        self.directives_done = False
        self.notes: list[str] = []

    def error(self, line: int, message: str) -> DockerfileError:
        return DockerfileError(self.filename, line, message)

    def parse(self) -> Dockerfile:
        # Two passes like BuildKit: the AST pass (lines, heredocs, JSON) reports its
        # errors for the whole file before any instruction is validated.
        logical = self.read_logical_lines()
        meta_args: list[Instruction] = []
        stages: list[tuple[Instruction, list[Instruction]]] = []
        names: dict[str, int] = {}
        for lg in logical:
            instr = self.instruction(lg)
            if instr.cmd == "FROM":
                name = _stage_name(instr)
                if name is not None:
                    if name in names:
                        raise self.error(
                            instr.line,
                            f'duplicate stage name "{name}" (first defined on line {names[name]})',
                        )
                    names[name] = instr.line
                stages.append((instr, []))
            elif stages:
                stages[-1][1].append(instr)
            elif instr.cmd == "ARG":
                meta_args.append(instr)
            else:
                raise self.error(
                    instr.line,
                    f"no build stage in current context: {instr.cmd} before the first FROM",
                )
        if not stages:
            raise self.error(1, "the dockerfile has no FROM instruction")
        return Dockerfile(
            filename=self.filename,
            escape=self.escape,
            directives=dict(self.directives),
            meta_args=tuple(meta_args),
            stages=tuple(
                Stage(i, _stage_name(frm), frm.args[0], frm, tuple(body))
                for i, (frm, body) in enumerate(stages)
            ),
            notes=tuple(self.notes),
        )

    def directive(self, lineno: int, line: str) -> None:
        if self.directives_done:
            return
        m = _DIRECTIVE_RE.fullmatch(line)
        if not m or m[1].lower() not in _DIRECTIVES:
            self.directives_done = True
            return
        name, value = m[1].lower(), m[2]
        if name in self.directives:
            raise self.error(lineno, f"only one {name} parser directive can be used")
        if name == "escape":
            if value not in ("\\", "`"):
                raise self.error(lineno, f"invalid escape token '{value}' does not match ` or \\")
            self.escape = value
            self.continuation = _continuation_re(value)
        elif name == "syntax":
            self.notes.append(
                f"{self.filename}:{lineno}: syntax directive '{value}' ignored: "
                "cove parses Dockerfiles itself"
            )
        elif name == "check":
            self.notes.append(
                f"{self.filename}:{lineno}: check directive '{value}' ignored: "
                "cove does not lint Dockerfiles"
            )
        self.directives[name] = value

    def trim_continuation(self, line: str) -> tuple[str, bool]:
        m = self.continuation.search(line)
        if not m:
            return line, False
        return line[: m.start()] + (m[1] or ""), True

    def read_logical_lines(self) -> list[_Logical]:
        lines, i = self.lines, 0
        out: list[_Logical] = []
        while i < len(lines):
            lineno = i + 1
            first = lines[i].lstrip()
            i += 1
            self.directive(lineno, first)
            if first.startswith("#"):
                continue
            text, more = self.trim_continuation(first)
            if not more and not text:
                continue
            empty_continuation = False
            while more and i < len(lines):
                cur = lines[i]
                i += 1
                # Comment and blank lines inside a continuation are dropped; only the
                # first line loses its indentation, as in BuildKit.
                if cur.lstrip().startswith("#"):
                    continue
                if not cur.strip():
                    empty_continuation = True
                    continue
                part, more = self.trim_continuation(cur)
                text += part
            cmd, flag_words, rest = _split_command(text)
            try:
                json_args = _json_args(cmd.upper(), rest)
                docs = _heredoc_words(text) if _heredoc_capable(cmd, rest) else []
            except ValueError as e:
                raise self.error(lineno, str(e)) from None
            heredocs = []
            for doc in docs:  # bodies follow the instruction one after the other
                content, i = self.heredoc_body(doc, i, lineno)
                heredocs.append(Heredoc(doc.name, content, doc.expand, doc.chomp))
            if empty_continuation:
                self.notes.append(
                    f"{self.filename}:{lineno}: empty continuation line in {cmd.upper()} "
                    "(BuildKit warns that these will become errors)"
                )
            out.append(
                _Logical(lineno, text.rstrip(), cmd, flag_words, rest, json_args, tuple(heredocs))
            )
        return out

    def heredoc_body(self, doc: Heredoc, i: int, lineno: int) -> tuple[str, int]:
        """The body of ``doc`` starting at line index ``i``, and the index after its
        terminator. Comment and blank lines are body text here."""
        body: list[str] = []
        for j in range(i, len(self.lines)):
            line = self.lines[j].lstrip("\t") if doc.chomp else self.lines[j]
            if line == doc.name:
                return "".join(body), j + 1
            body.append(line + "\n")
        raise self.error(lineno, f"unterminated heredoc <<{doc.name}")

    def instruction(self, lg: _Logical) -> Instruction:
        cmd = lg.cmd.upper()
        if cmd not in INSTRUCTIONS:
            close = difflib.get_close_matches(cmd, sorted(INSTRUCTIONS), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise self.error(lg.line, f"unknown instruction: {cmd}{hint}")
        flags = self.flags(cmd, lg.flag_words, lg.line)
        if lg.json_args is not None:
            head = lg.rest.split(None, 1)[:1] if cmd == "HEALTHCHECK" else []
            args = (*head, *lg.json_args)
        elif cmd in _WHOLE_LINE_CMDS:
            args = (lg.rest,) if lg.rest else ()
        else:
            args = tuple(_split_words(lg.rest, self.escape))
        instr = Instruction(
            cmd=cmd,
            line=lg.line,
            original=lg.text,
            flags=flags,
            raw=lg.rest,
            json=lg.json_args is not None,
            args=args,
            heredocs=lg.heredocs,
        )
        try:
            _validate(instr, self.escape)
        except ValueError as e:
            raise self.error(lg.line, str(e)) from None
        return instr

    def flags(
        self, cmd: str, words: tuple[str, ...], line: int
    ) -> tuple[tuple[str, str | None], ...]:
        allowed = _FLAGS.get(cmd, {})
        out: list[tuple[str, str | None]] = []
        for word in words:
            name, eq, value = word[2:].partition("=")
            kind = allowed.get(name)
            if kind is None:
                raise self.error(line, f"unknown flag: --{name}")
            if kind != "list" and any(seen == name for seen, _ in out):
                raise self.error(line, f"duplicate flag specified: --{name}")
            if kind == "bool":
                if eq and value.lower() not in ("true", "false"):
                    raise self.error(
                        line, f"expecting boolean value for flag --{name}, not: {value!r}"
                    )
                out.append((name, value.lower() if eq else None))
            elif not eq:
                raise self.error(line, f"missing a value on flag: --{name}")
            else:
                out.append((name, value))
        return tuple(out)


def _validate(instr: Instruction, escape: str) -> None:
    """Argument checks of BuildKit's instructions.Parse; raises ValueError."""
    cmd, args = instr.cmd, instr.args
    if not instr.raw:
        raise ValueError(f"instruction {cmd} requires at least one argument")
    if cmd == "FROM":
        if not (len(args) == 1 or (len(args) == 3 and args[1].lower() == "as")):
            raise ValueError(
                "instruction FROM requires either one or three arguments: image [AS name]"
            )
        if len(args) == 3 and not _STAGE_NAME_RE.fullmatch(args[2].lower()):
            raise ValueError(
                f'invalid name for build stage: "{args[2]}", '
                "name can't start with a number or contain symbols"
            )
    elif cmd in ("COPY", "ADD"):
        if len(args) < 2:
            raise ValueError(
                f"instruction {cmd} requires at least two arguments: sources and a destination"
            )
        if parse_heredoc_word(args[-1]) is not None:
            raise ValueError(f"a heredoc can't be the destination of {cmd}")
    elif cmd == "SHELL":
        if not instr.json:
            raise ValueError("instruction SHELL requires the arguments to be in JSON form")
        if not args:
            raise ValueError("instruction SHELL requires at least one argument")
    elif cmd in ("VOLUME", "EXPOSE"):
        if not args:
            raise ValueError(f"instruction {cmd} requires at least one argument")
        if any(not a.strip() for a in args):
            raise ValueError(f"an empty string can't be a {cmd} argument")
    elif cmd in ("ENV", "LABEL"):
        _split_kv(instr.raw, escape, legacy_ok=True)
    elif cmd == "ARG":
        for word in args:
            if word.startswith("="):
                raise ValueError(f"blank name in ARG {word}")
    elif cmd == "HEALTHCHECK":
        kind = args[0].upper()
        if kind == "NONE" and len(args) > 1:
            raise ValueError("health check type NONE takes no arguments")
        if kind == "CMD" and len(args) == 1:
            raise ValueError("missing command after HEALTHCHECK CMD")
        if kind not in ("NONE", "CMD"):
            raise ValueError(f'unknown type "{args[0]}" in HEALTHCHECK (try CMD)')
    elif cmd == "ONBUILD":
        trigger = args[0].upper()
        if trigger == "ONBUILD":
            raise ValueError("chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
        if trigger in ("FROM", "MAINTAINER"):
            raise ValueError(f"the ONBUILD trigger {trigger} isn't allowed")


def _stage_name(frm: Instruction) -> str | None:
    return frm.args[2].lower() if len(frm.args) == 3 else None


def _continuation_re(escape: str) -> re.Pattern[str]:
    # As BuildKit: an escape char ending a line continues it, unless the char before
    # it is itself the escape char ("foo \\" ends with an escaped escape).
    e = re.escape(escape)
    return re.compile(rf"([^{e}]){e}[ \t]*\Z|^{e}[ \t]*\Z")


def _split_command(text: str) -> tuple[str, tuple[str, ...], str]:
    """``text`` -> (keyword as written, flag words, the rest stripped)."""
    parts = _BLANKS_RE.split(text.strip(), maxsplit=1)
    if len(parts) < 2:
        return parts[0], (), ""
    rest, flags = _extract_flags(parts[1])
    return parts[0], tuple(flags), rest.strip()


def _extract_flags(line: str) -> tuple[str, list[str]]:
    """BuildKit's extractBuilderFlags: leading ``--words`` with quotes removed and
    backslash escapes resolved (always backslash, whatever the escape directive);
    a bare ``--`` ends the flags."""
    words: list[str] = []
    pos, n = 0, len(line)
    while True:
        while pos < n and line[pos].isspace():
            pos += 1
        if not line.startswith("--", pos):
            return line[pos:], words
        word, quote = [], ""
        while pos < n and (quote or not line[pos].isspace()):
            ch = line[pos]
            pos += 1
            if quote and ch == quote:
                quote = ""
                continue
            if not quote and ch in "'\"":
                quote = ch
                continue
            if ch == "\\":
                if pos == n:
                    break
                ch = line[pos]
                pos += 1
            word.append(ch)
        if "".join(word) == "--":
            return line[pos:], words
        words.append("".join(word))


def _split_words(text: str, escape: str) -> list[str]:
    """BuildKit's parseWords: split on blanks outside quotes; quotes and escapes kept."""
    words: list[str] = []
    word: list[str] = []
    quote, blank_ok = "", False
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if not quote and ch.isspace():
            if word or blank_ok:
                words.append("".join(word))
            word, blank_ok = [], False
            i += 1
            continue
        if quote and ch == quote:
            quote = ""
        elif not quote and ch in "'\"":
            quote, blank_ok = ch, True
        elif ch == escape and quote != "'":
            if i + 1 == n:  # a trailing escape char is dropped
                break
            word.append(ch)
            i += 1
            ch = text[i]
        word.append(ch)
        i += 1
    if word or blank_ok:
        words.append("".join(word))
    return words


def _json_array(rest: str) -> list[str] | None:
    """The exec-form array, or None for shell form; non-string items are an error.

    Like Go's json.Decoder, only the first JSON value is read: text after the
    closing bracket is ignored."""
    text = rest.lstrip()
    if not text.startswith("["):
        return None
    try:
        value, _ = _JSON.raw_decode(text)
    except ValueError:
        return None
    if not isinstance(value, list):
        return None
    if not all(isinstance(v, str) for v in value):
        raise ValueError("when using JSON array syntax, arrays must be comprised of strings only")
    return value


def _json_args(cmd: str, rest: str) -> tuple[str, ...] | None:
    if cmd == "HEALTHCHECK":
        parts = rest.split(None, 1)
        array = _json_array(parts[1]) if len(parts) == 2 else None
    else:
        array = _json_array(rest) if cmd in _JSON_CMDS else None
    return None if array is None else tuple(array)


def _heredoc_capable(cmd: str, rest: str) -> bool:
    if cmd.upper() == "ONBUILD":
        cmd, _, rest = _split_command(rest)
    return cmd.upper() in _HEREDOC_CMDS and _json_array(rest) is None


def _heredoc_words(line: str) -> list[Heredoc]:
    docs = (parse_heredoc_word(w) for w in _split_words(line, "\\"))
    return [d for d in docs if d is not None]


def parse_heredoc_word(word: str) -> Heredoc | None:
    """The heredoc a word like ``<<EOF``, ``<<-"EOF"`` or ``3<<EOF`` opens (without
    content), or None. BuildKit uses this to tell heredoc sources of COPY/ADD apart
    from paths. Raises ValueError for a malformed delimiter."""
    m = _HEREDOC_RE.fullmatch(word)
    if not m or not m[3]:
        return None
    name = _Lexer(m[3], {}, "\\", skip_unset=True).process()
    if not name:
        return None
    quoted = _Lexer(m[3], {}, "\\", skip_unset=True, raw_quotes=True).process()
    # A delimiter with any quoted part disables expansion of the body.
    expand = _count_quotes(name) == _count_quotes(quoted)
    return Heredoc(name=name, content="", expand=expand, chomp=m[2] == "-")


def _count_quotes(s: str) -> int:
    return s.count("'") + s.count('"')


# --- variable expansion (BuildKit's shell lexer) ---------------------------------


def expand(word: str, env: Mapping[str, str], *, escape: str = "\\") -> str:
    """``word`` with quotes removed and variables expanded, as ProcessWord does."""
    return _Lexer(word, env, escape).process()


def expand_heredoc(content: str, env: Mapping[str, str]) -> str:
    """The body of an expanding heredoc with variables expanded. Quotes stay as
    written since the body is a script or a file, not Dockerfile words (BuildKit's
    ExpandRaw: SkipProcessQuotes, and always the backslash as escape char)."""
    return _Lexer(content, env, "\\", process_quotes=False).process()


def expand_words(text: str, env: Mapping[str, str], *, escape: str = "\\") -> list[str]:
    """Split ``text`` into words, then expand each one. A variable holding blanks
    stays one word: Docker splits before it expands (only EXPOSE splits after)."""
    return [expand(w, env, escape=escape) for w in _split_words(text, escape)]


def parse_kv(
    text: str, env: Mapping[str, str], *, escape: str = "\\", legacy_ok: bool = True
) -> list[tuple[str, str]]:
    """ENV/LABEL arguments as expanded (key, value) pairs; raises ValueError.

    Every pair of one line is expanded with ``env`` as it was before the line.
    With ``legacy_ok`` a first word without "=" selects the old ``KEY value with
    spaces`` form. For ARG pass ``legacy_ok=False`` and only the words that
    contain "=": a bare ``ARG name`` has no value at all, which a pair cannot say.
    """
    return [
        (expand(k, env, escape=escape), expand(v, env, escape=escape))
        for k, v in _split_kv(text, escape, legacy_ok)
    ]


def _split_kv(text: str, escape: str, legacy_ok: bool) -> list[tuple[str, str]]:
    words = _split_words(text, escape)
    if not words:
        raise ValueError("expected at least one name=value pair")
    if "=" not in words[0]:
        if not legacy_ok:
            raise ValueError(f"can't find = in {words[0]!r}: must be of the form name=value")
        parts = _BLANKS_RE.split(text.strip(), maxsplit=1)
        if len(parts) < 2:
            raise ValueError(f"{words[0]!r} has no value: use name=value or name value")
        return [(parts[0], parts[1])]
    pairs = []
    for word in words:
        key, eq, value = word.partition("=")
        if not eq:
            raise ValueError(f"can't find = in {word!r}: must be of the form name=value")
        if not key:
            raise ValueError(f"blank name in {word!r}")
        pairs.append((key, value))
    return pairs


class _Lexer:
    """One pass of BuildKit's shell lexer (frontend/dockerfile/shell/lex.go).

    ``raw_quotes`` keeps quote characters and ``skip_unset`` leaves references to
    unset variables as written, both for heredoc delimiters; without
    ``process_quotes`` quotes are plain characters, for heredoc bodies.
    """

    def __init__(
        self,
        text: str,
        env: Mapping[str, str],
        escape: str,
        *,
        raw_quotes: bool = False,
        skip_unset: bool = False,
        process_quotes: bool = True,
    ) -> None:
        self.text = text
        self.pos = 0
        self.env = env
        self.escape = escape
        self.raw_quotes = raw_quotes
        self.skip_unset = skip_unset
        self.quotes = "'\"" if process_quotes else ""
        self.raw_escapes = False

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def next(self) -> str:
        ch = self.peek()
        self.pos += len(ch)
        return ch

    def process(self) -> str:
        try:
            return self.until("", raw_escapes=False)
        except ValueError as e:
            raise ValueError(f'failed to process "{self.text}": {e}') from None

    def until(self, stop: str, raw_escapes: bool) -> str:
        """Process up to and past ``stop`` (or to the end when it is "")."""
        saved, self.raw_escapes = self.raw_escapes, raw_escapes
        try:
            out: list[str] = []
            while ch := self.peek():
                if stop and ch == stop:
                    self.next()
                    return "".join(out)
                if ch == "$":
                    out.append(self.dollar())
                elif ch == "'" and self.quotes:
                    out.append(self.single_quoted())
                elif ch == '"' and self.quotes:
                    out.append(self.double_quoted())
                else:
                    self.next()
                    if ch == self.escape:
                        if self.raw_escapes:
                            out.append(ch)
                        ch = self.next()  # the escaped char, "" at the end
                    out.append(ch)
            if stop:
                raise ValueError(f"unexpected end of statement while looking for matching {stop}")
            return "".join(out)
        finally:
            self.raw_escapes = saved

    def single_quoted(self) -> str:
        quote = self.next()
        out = [quote] if self.raw_quotes else []
        while ch := self.next():
            if ch == "'":
                return "".join(out + ([ch] if self.raw_quotes else []))
            out.append(ch)
        raise ValueError("unexpected end of statement while looking for matching single-quote")

    def double_quoted(self) -> str:
        quote = self.next()
        out = [quote] if self.raw_quotes else []
        while ch := self.peek():
            if ch == '"':
                self.next()
                return "".join(out + ([ch] if self.raw_quotes else []))
            if ch == "$":
                out.append(self.dollar())
                continue
            self.next()
            # Inside double quotes the escape char only escapes $, " and itself.
            if ch == self.escape and self.peek() in ('"', "$", self.escape):
                if self.raw_escapes:
                    out.append(ch)
                ch = self.next()
            out.append(ch)
        raise ValueError("unexpected end of statement while looking for matching double-quote")

    def name(self) -> str:
        ch, start = self.peek(), self.pos
        if ch.isdecimal():
            while self.peek().isdecimal():
                self.next()
        elif ch in _SPECIAL_PARAMS:
            self.next()
        else:
            while (c := self.peek()) and (c.isalnum() or c == "_"):
                self.next()
        return self.text[start : self.pos]

    def dollar(self) -> str:
        self.next()  # "$"
        if self.peek() != "{":
            name = self.name()
            if not name:
                return "$"
            value = self.env.get(name)
            if value is None:
                return "$" + name if self.skip_unset else ""
            return value
        self.next()  # "{"
        if not self.peek():
            raise ValueError("syntax error: missing '}'")
        if self.peek() in "{}:":
            raise ValueError("syntax error: bad substitution")
        name = self.name()
        ch = self.next()
        if ch == "}":
            value = self.env.get(name)
            if value is None:
                return "${" + name + "}" if self.skip_unset else ""
            return value
        modifier = ch
        if ch == ":":
            ch = self.next()
            modifier += ch
        if not ch:
            raise ValueError("syntax error: missing '}'")
        if ch in "+-?":
            return self.substitute(name, modifier, self.word_until("}", raw_escapes=False))
        if ch in "#%" and modifier == ch:
            word = self.word_until("}", raw_escapes=True)
            return self.trim(name, modifier, word)
        if modifier == "/":
            return self.replace(name)
        raise ValueError(f"unsupported modifier ({modifier}) in substitution")

    def word_until(self, stop: str, raw_escapes: bool) -> str:
        try:
            return self.until(stop, raw_escapes)
        except ValueError:
            if not self.peek():
                raise ValueError(
                    "syntax error: missing '}'"
                    if stop == "}"
                    else "syntax error: missing '/' in ${}"
                ) from None
            raise

    def substitute(self, name: str, modifier: str, word: str) -> str:
        found = self.env.get(name)
        if found is None and self.skip_unset:
            return "${" + name + modifier + word + "}"
        value = found or ""
        # With ":" an empty value counts as unset.
        missing = found is None or (modifier.startswith(":") and not value)
        op = modifier[-1]
        if op == "-":
            return word if missing else value
        if op == "+":
            return "" if missing else word
        if found is None:
            raise ValueError(f"{name}: {word or 'is not allowed to be unset'}")
        if missing:
            raise ValueError(f"{name}: {word or 'is not allowed to be empty'}")
        return value

    def trim(self, name: str, op: str, word: str) -> str:
        value = self.env.get(name)
        if value is None and self.skip_unset:
            return "${" + name + op + word + "}"
        value = value or ""
        greedy = word.startswith(op)  # "##" and "%%" remove the longest match
        pattern = word[1:] if greedy else word
        if op == "#":
            return _trim_prefix(pattern, value, greedy)
        tokens = _pattern_tokens(pattern)
        return _trim_prefix("".join(reversed(tokens)), value[::-1], greedy)[::-1]

    def replace(self, name: str) -> str:
        replace_all = self.peek() == "/"
        if replace_all:
            self.next()
        pattern = self.word_until("/", raw_escapes=True)
        replacement = self.word_until("}", raw_escapes=True)
        value = self.env.get(name)
        if value is None and self.skip_unset:
            return "${" + name + "/" + pattern + "/" + replacement + "}"
        value = value or ""
        rx = _shell_pattern(pattern, greedy=True, anchored=False)
        if replace_all:
            return rx.sub(lambda _m: replacement, value)
        m = rx.search(value)
        return value[: m.start()] + replacement + value[m.end() :] if m else value


def _pattern_tokens(pattern: str) -> list[str]:
    """Split a ${var%pattern} pattern into chars, keeping backslash escapes whole,
    so that the pattern can be reversed for suffix matching."""
    tokens, i = [], 0
    while i < len(pattern):
        step = 2 if pattern[i] == "\\" and i + 1 < len(pattern) else 1
        tokens.append(pattern[i : i + step])
        i += step
    return tokens


def _trim_prefix(pattern: str, value: str, greedy: bool) -> str:
    m = _shell_pattern(pattern, greedy=greedy, anchored=True).match(value)
    return value[m.end() :] if m else value


def _shell_pattern(pattern: str, *, greedy: bool, anchored: bool) -> re.Pattern[str]:
    """A ${var#...} style pattern (``*``, ``?``, backslash escapes) as a regex."""
    out = ["^"] if anchored else []
    for token in _pattern_tokens(pattern):
        if token == "*":
            out.append(".*" if greedy else ".*?")
        elif token == "?":
            out.append(".")
        elif token.startswith("\\"):
            escaped = token[1:]
            if escaped in ("}", "/"):  # escaped only to get past the ${} parser
                out.append(re.escape(escaped))
            elif escaped in ("*", "?", "\\"):
                out.append("\\" + escaped)
            else:
                raise ValueError(
                    f"invalid pattern ({pattern}) in substitution: invalid escape '{token}'"
                )
        else:
            out.append(re.escape(token))
    return re.compile("".join(out))
