""".dockerignore rules matched the way Docker (moby/patternmatcher) matches them.

Patterns use Go's filepath.Match syntax (``*``, ``?``, ``[a-z]``, ``[^a-z]``,
backslash escapes) plus ``**`` for any number of directories. The last
matching pattern decides, and a pattern matching a parent directory matches
everything below it. Pure: no I/O.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass


class IgnoreRules:
    """The patterns of one .dockerignore file, in order."""

    def __init__(self, patterns: Sequence[str]) -> None:
        """Compile ``patterns`` as patternmatcher.New does; raises ValueError."""
        self._patterns: list[_Pattern] = []
        for text in patterns:
            written = text.strip()
            if not written:
                continue
            p = _clean(written)
            exclusion = p.startswith("!")
            if exclusion:
                if p == "!":
                    raise ValueError('illegal exclusion pattern: "!"')
                p = p[1:]
            self._patterns.append(_Pattern.compile(p, exclusion, written))

    @classmethod
    def parse(cls, text: str) -> IgnoreRules:
        """Read a .dockerignore file as patternmatcher's ignorefile.ReadAll does."""
        patterns = []
        for line in text.removeprefix("\ufeff").split("\n"):
            # Only a "#" in the very first column starts a comment.
            if line.startswith("#"):
                continue
            pattern = line.strip()
            if not pattern:
                continue
            invert = pattern.startswith("!")
            if invert:
                pattern = pattern[1:].strip()
            if pattern:
                pattern = _clean(pattern)
                # Patterns are relative to the context root even when written "/x".
                if len(pattern) > 1 and pattern.startswith("/"):
                    pattern = pattern[1:]
            patterns.append("!" + pattern if invert else pattern)
        return cls(patterns)

    def matches(self, rel: str) -> bool:
        """Whether ``rel`` (slash-separated, relative to the context) is excluded."""
        path = _clean(rel.lstrip("/"))
        if path == ".":
            return False  # the context root itself is never excluded
        dirs = path.split("/")[:-1]
        parents = ["/".join(dirs[: i + 1]) for i in range(len(dirs))]
        matched = False
        for pat in self._patterns:
            # Only a pattern that could flip the current verdict needs a look.
            if pat.exclusion != matched:
                continue
            if pat.match(path) or any(pat.match(parent) for parent in parents):
                matched = not pat.exclusion
        return matched

    def has_exceptions(self) -> bool:
        return any(p.exclusion for p in self._patterns)

    def may_reinclude_below(self, rel_dir: str) -> bool:
        """Whether some "!" pattern could match a path below the excluded ``rel_dir``.

        Conservative: True whenever that cannot be ruled out, so a walker that skips
        a directory only on False never loses a re-included file.
        """
        path = _clean(rel_dir.lstrip("/"))
        dirs = [] if path == "." else path.split("/")
        for pat in self._patterns:
            if not pat.exclusion:
                continue
            # Classes and escapes can match across "/" in Docker's regexes; don't guess.
            if "[" in pat.text or "\\" in pat.text:
                return True
            segments = pat.text.split("/")
            for i, name in enumerate(dirs):
                if i == len(segments):
                    return True  # the pattern matches an ancestor of rel_dir
                if "**" in segments[i]:
                    return True
                if not _segment_re(segments[i]).fullmatch(name):
                    break
            else:
                return True
        return False


@dataclass(frozen=True)
class _Pattern:
    text: str
    exclusion: bool
    kind: str  # "exact", "prefix", "suffix" or "regexp", as patternmatcher decides
    regex: re.Pattern[str] | None

    @classmethod
    def compile(cls, p: str, exclusion: bool, written: str) -> _Pattern:
        if not _valid_glob(p):
            raise ValueError(f"syntax error in pattern {written!r}")
        kind, source = _translate(p)
        regex = None
        if kind == "regexp":
            try:
                # Bracket contents pass through verbatim, as in patternmatcher; Python
                # warns about sequences like "[[" that Go's regexp reads literally.
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)
                    regex = re.compile(source)
            except re.error as e:
                raise ValueError(f"syntax error in pattern {written!r}: {e}") from None
        return cls(p, exclusion, kind, regex)

    def match(self, path: str) -> bool:
        if self.kind == "exact":
            return path == self.text
        if self.kind == "prefix":
            return path.startswith(self.text[:-2])
        if self.kind == "suffix":
            suffix = self.text[2:]
            # "**/foo" also matches a top-level "foo".
            return path.endswith(suffix) or (suffix.startswith("/") and path == suffix[1:])
        assert self.regex is not None
        return self.regex.match(path) is not None


def _translate(p: str) -> tuple[str, str]:
    """patternmatcher's Pattern.compile: (match kind, regex source)."""
    out = ["^"]
    kind = "exact"
    i, n = 0, len(p)
    while i < n:
        first = i == 0
        ch = p[i]
        i += 1
        if ch == "*" and i < n and p[i] == "*":
            i += 1
            if i < n and p[i] == "/":
                i += 1
            if i < n:
                out.append("(.*/)?")
                kind = "regexp"
            elif kind == "exact":
                kind = "prefix"
            else:
                out.append(".*")
                kind = "regexp"
            if first:
                kind = "suffix"
        elif ch in "*?":
            out.append("[^/]*" if ch == "*" else "[^/]")
            kind = "regexp"
        elif ch in ".+()|{}$":
            out.append("\\" + ch)
        elif ch == "\\" and i < n:
            out.append("\\" + p[i])
            i += 1
            kind = "regexp"
        elif ch in "[]":
            out.append(ch)
            kind = "regexp"
        else:
            out.append(ch)
    out.append(r"\Z")
    return kind, "".join(out)


def _valid_glob(p: str) -> bool:
    """Whether Go's filepath.Match accepts ``p`` as a pattern."""
    i, n = 0, len(p)
    while i < n:
        if p[i] == "\\":
            if i + 1 == n:
                return False
            i += 2
        elif p[i] == "[":
            i += 1
            if i < n and p[i] == "^":
                i += 1
            ranges = 0
            while not (i < n and p[i] == "]" and ranges):
                i = _class_char(p, i)
                if i >= 0 and p[i] == "-":
                    i = _class_char(p, i + 1)
                if i < 0:
                    return False
                ranges += 1
            i += 1
        else:
            i += 1
    return True


def _class_char(p: str, i: int) -> int:
    """Index after one (possibly escaped) char of a [...] class, or -1 when the
    class is malformed or never closed (Go's getEsc)."""
    if i < 0 or i >= len(p) or p[i] in "-]":
        return -1
    if p[i] == "\\":
        i += 1
    i += 1
    return i if i < len(p) else -1


def _segment_re(segment: str) -> re.Pattern[str]:
    """One path segment of a pattern without classes, escapes or "**"."""
    return re.compile(
        "".join("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c) for c in segment)
    )


def _clean(path: str) -> str:
    """Go's path.Clean: collapse "//", "." and ".." lexically; "" becomes "."."""
    rooted = path.startswith("/")
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part != "..":
            parts.append(part)
        elif parts and parts[-1] != "..":
            parts.pop()
        elif not rooted:
            parts.append("..")
    cleaned = "/".join(parts)
    return "/" + cleaned if rooted else cleaned or "."
