"""`cove run`'s start path imports only what the verb uses (issue 20): a structural check of
what a fresh interpreter holds after the run verb's parser, options and modules are loaded
(never a timing: bench/start.py measures the time)."""

from __future__ import annotations

import textwrap

from helpers import loaded_after

# what `cove run --rm --network none IMAGE CMD` loads up to the runtime's fork: the CLI's
# parser for the verb, its options, the engine, the create/run verbs and the runtime calls
RUN_PATH = textwrap.dedent("""
    from cove.cli import build_parser
    args = build_parser("run").parse_args(
        ["run", "--rm", "--network", "none", "alpine:3.20", "true"])
    import cove.cli.containers, cove.containers.engine, cove.engine, cove.vm.isolation
    import cove.containers.create, cove.containers.run, cove.bundle, cove.spec.flags
    import cove.runtime.api, cove.runtime.init, cove.runtime.seccomp, cove.sys.terminal
    import cove.containers.volumes  # --rm removes the container's anonymous volumes
    cove.cli.containers._opts(args)
""")
# other verbs' CLI modules, --format's template engine, registries and networks' managers
FORBIDDEN_PREFIXES = (
    "cove.cli.images", "cove.cli.vm", "cove.cli.registry", "cove.cli.serve", "cove.cli.networks",
    "cove.cli.build", "cove.spec.gotemplate", "cove.registry", "cove.network", "cove.build",
    "cove.api", "cove.image.layers", "cove.image.pipeline", "cove.monitor", "cove.check",
)  # fmt: skip
# stdlib weight the path to the container's start does not use: TLS, OpenSSL's hashes
# (manifests and configs are hashed with the built-in sha256), temp files, archive codecs,
# shutil (argparse's default help formatter pulled it in; only --rm's removal of the bundle,
# after the container's exit, uses it), logging, threads; shlex and ipaddress (only for
# --entrypoint and --dns)
FORBIDDEN = ("ssl", "hashlib", "_hashlib", "hmac", "secrets", "tempfile", "shutil", "bz2",
             "lzma", "tarfile", "gzip", "logging", "threading", "subprocess", "http.client",
             "urllib", "shlex", "ipaddress")  # fmt: skip


def loaded_with_verbs(code: str, verb: str | None = "run") -> tuple[set[str], int]:
    """The modules a fresh interpreter holds after ``code``, and the number of subcommands
    the parser built for ``verb`` knows."""
    count = f"""
        import argparse
        parser = build_parser({verb!r})
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        result = len(subs[0].choices)
    """
    mods, verbs = loaded_after(code, count)
    return mods, int(verbs)


def test_run_path_imports_only_what_run_uses() -> None:
    mods, verbs = loaded_with_verbs(RUN_PATH)
    # positive control: the probe sees what the path does load
    assert {"cove.bundle", "cove.state", "cove.image.store", "sqlite3", "argparse"} <= mods
    bad = sorted(m for m in mods if m.startswith(FORBIDDEN_PREFIXES) or m in FORBIDDEN)
    assert bad == [], f"cove run's start path imports {bad}"
    assert verbs == 1, "the run verb's parser holds other verbs' subparsers"


def test_probe_catches_heavy_imports() -> None:
    """Control: the same probe reports what a --format, an image verb or a full parser load."""
    code = textwrap.dedent("""
        from cove.cli import build_parser, fmt
        fmt.render("{{.Id}}", {"Id": "x"})
        build_parser(None)
        import hashlib, shutil
    """)
    mods, verbs = loaded_with_verbs(code, None)
    assert {"cove.spec.gotemplate", "cove.cli.images", "hashlib", "shutil"} <= mods
    assert verbs > 1
