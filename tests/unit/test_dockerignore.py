from __future__ import annotations

import pytest

from cove.build.ignore import IgnoreRules


def excluded(rules: str, *paths: str) -> dict[str, bool]:
    r = IgnoreRules.parse(rules)
    return {p: r.matches(p) for p in paths}


def test_star_does_not_cross_directories() -> None:
    assert excluded("*.md", "a.md", "docs/a.md", "a.mdx") == {
        "a.md": True,
        "docs/a.md": False,
        "a.mdx": False,
    }


def test_exception_reincludes() -> None:
    assert excluded("*.md\n!README.md", "CHANGES.md", "README.md") == {
        "CHANGES.md": True,
        "README.md": False,
    }


def test_double_star_matches_any_depth_including_zero() -> None:
    assert excluded("**/*.go", "main.go", "a/b/c.go", "a/b/c.goo") == {
        "main.go": True,
        "a/b/c.go": True,
        "a/b/c.goo": False,
    }
    assert excluded("a/**/z", "a/z", "a/b/z", "a/b/c/z", "b/a/z") == {
        "a/z": True,
        "a/b/z": True,
        "a/b/c/z": True,
        "b/a/z": False,
    }
    assert excluded("**/vendor", "vendor", "x/vendor", "x/vendor/y", "xvendor") == {
        "vendor": True,
        "x/vendor": True,
        "x/vendor/y": True,
        "xvendor": False,
    }


def test_directory_pattern_excludes_its_subtree() -> None:
    assert excluded("build", "build", "build/x/y", "builder", "src/build") == {
        "build": True,
        "build/x/y": True,
        "builder": False,
        "src/build": False,
    }


def test_trailing_double_star_matches_only_below() -> None:
    assert excluded("docs/**", "docs", "docs/a", "docs/a/b") == {
        "docs": False,
        "docs/a": True,
        "docs/a/b": True,
    }


def test_question_mark_is_one_non_slash_char() -> None:
    assert excluded("temp?", "temp1", "temp", "temp12", "temp/") == {
        "temp1": True,
        "temp": False,
        "temp12": False,
        "temp/": False,
    }


def test_character_classes_and_escapes() -> None:
    assert excluded("log[0-9].txt", "log1.txt", "logx.txt") == {
        "log1.txt": True,
        "logx.txt": False,
    }
    assert excluded("log[^0-9].txt", "log1.txt", "logx.txt") == {
        "log1.txt": False,
        "logx.txt": True,
    }
    assert excluded("a\\*b", "a*b", "axb") == {"a*b": True, "axb": False}
    # Dots and other regex characters are literal.
    assert excluded("a.b+c(d)", "a.b+c(d)", "axb+c(d)") == {
        "a.b+c(d)": True,
        "axb+c(d)": False,
    }


def test_last_match_wins() -> None:
    # The exception comes after the rule: README.md stays.
    assert excluded("*.md\n!README.md", "README.md")["README.md"] is False
    # The rule comes after the exception: README.md goes again.
    assert excluded("!README.md\n*.md", "README.md")["README.md"] is True
    # A later exclusion inside a re-included directory.
    rules = "build\n!build/keep\nbuild/keep/tmp"
    assert excluded(rules, "build/x", "build/keep/a", "build/keep/tmp/a") == {
        "build/x": True,
        "build/keep/a": False,
        "build/keep/tmp/a": True,
    }


def test_leading_slash_dot_segments_and_blanks_are_normalised() -> None:
    rules = "  /abs/path  \n./rel//x/\n! /abs/path/keep\na/../b\n"
    assert excluded(rules, "abs/path/f", "abs/path/keep", "rel/x/f", "b", "a") == {
        "abs/path/f": True,
        "abs/path/keep": False,
        "rel/x/f": True,
        "b": True,
        "a": False,
    }


def test_comments_only_in_the_first_column() -> None:
    rules = "# *.md\n*.txt\n #literal\n"
    assert excluded(rules, "a.md", "a.txt", "#literal") == {
        "a.md": False,
        "a.txt": True,
        "#literal": True,
    }


def test_context_root_is_never_excluded() -> None:
    r = IgnoreRules.parse("*\n")
    assert r.matches("anything")
    assert not r.matches("")
    assert not r.matches(".")


def test_has_exceptions() -> None:
    assert not IgnoreRules.parse("a\nb\n").has_exceptions()
    assert IgnoreRules.parse("a\n!a/b\n").has_exceptions()
    assert not IgnoreRules([]).has_exceptions()


def test_may_reinclude_below() -> None:
    r = IgnoreRules.parse("build\ndocs\n!build/keep/*.txt\n!**/NOTICE\n")
    assert r.may_reinclude_below("build")
    assert r.may_reinclude_below("build/keep")
    assert r.may_reinclude_below("docs")  # **/NOTICE may sit anywhere
    r = IgnoreRules.parse("build\ndocs\n!build/keep/*.txt\n")
    assert not r.may_reinclude_below("docs")
    assert not r.may_reinclude_below("build/other")
    assert r.may_reinclude_below("build/keep")
    assert not IgnoreRules.parse("build\n").may_reinclude_below("build")


@pytest.mark.parametrize("pattern", ["a[", "[]", "[a-]", "x\\", "[^]", "!"])
def test_invalid_patterns_raise_with_the_pattern(pattern: str) -> None:
    with pytest.raises(ValueError, match="pattern"):
        IgnoreRules([pattern])


def test_init_takes_raw_patterns() -> None:
    r = IgnoreRules(["*.log", "", "  ", "!keep.log"])
    assert r.matches("a.log")
    assert not r.matches("keep.log")
