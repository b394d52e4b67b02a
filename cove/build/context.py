"""The build context: the files a Dockerfile's COPY and ADD may read.

A context is a host directory, a tarball (unpacked into a private directory first),
or nothing at all (a Dockerfile on stdin). Every path a Dockerfile names is resolved
with ``openat2(RESOLVE_IN_ROOT)`` against the context's root, so ``../x`` or a
symlink planted in the context never reaches a file outside it. ``.dockerignore``
removes paths from view: an excluded file is "not found", as Docker reports it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import posixpath
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from typing import BinaryIO

from cove.build.ignore import IgnoreRules
from cove.errors import InvalidSpec, NotFound
from cove.sys.safepath import IN_ROOT
from cove.sys.syscalls import openat2

_GLOB_CHARS = frozenset("*?[")
Excluded = Callable[[str, bool], bool]  # (path, is_dir) -> left out


def clean(path: str) -> str:
    """A context path as Docker cleans it: relative to the root, '' for the root itself."""
    return posixpath.normpath("/" + path).lstrip("/")


def has_glob(path: str) -> bool:
    return any(c in _GLOB_CHARS for c in path)


def is_archive(head: bytes) -> bool:
    """Whether ``head`` (the first 512 bytes) is compressed or starts a tar archive (a
    context on stdin or in a file; ``tar_compression`` is ADD's stricter test)."""
    from cove.image.streams import detect_compression

    if detect_compression(head):
        return True
    return _tar_header(head)


def _tar_header(block: bytes) -> bool:
    import tarfile

    if len(block) < 512:
        return False
    try:
        tarfile.TarInfo.frombuf(block[:512], "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


def tar_compression(f: BinaryIO) -> str | None:
    """ADD's rule: the compression of ``f`` (seekable) if what it holds, decompressed, is a
    tar archive, else None (a ``data.json.gz`` is copied as it is). Leaves ``f`` at 0."""
    from cove.errors import CorruptContent
    from cove.image import streams

    head = f.read(16)
    f.seek(0)
    compression = streams.detect_compression(head)
    try:
        block = streams.decompressor(f, compression, "ADD source").read(512)
    except (CorruptContent, OSError, EOFError, ValueError):
        block = b""
    f.seek(0)
    return compression if _tar_header(block) else None


class Context:
    """A build's context root, its ignore rules, and its Dockerfile text."""

    def __init__(self, root: str, dockerfile: str, filename: str, owned: str | None = None) -> None:
        self.root = root
        self.dockerfile = dockerfile
        self.filename = filename  # how messages name the Dockerfile
        self._owned = owned  # a private directory to remove when done
        self.rules = IgnoreRules([])
        self._hashes: dict[tuple[int, int, int, int], bytes] = {}

    def close(self) -> None:
        if self._owned:
            shutil.rmtree(self._owned, ignore_errors=True)
            self._owned = None

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what is visible -----------------------------------------------------

    def excluded(self, rel: str, is_dir: bool) -> bool:
        """Whether ``rel`` is left out; a directory stays when an exception may re-include
        something below it."""
        if not rel or not self.rules.matches(rel):
            return False
        return not (is_dir and self.rules.may_reinclude_below(rel))

    def open_root(self) -> int:
        return os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def sources(self, pattern: str) -> list[str]:
        """The context paths ``pattern`` names (a path or a glob), sorted; NotFound if none."""
        rootfd = self.open_root()
        try:
            found = glob(rootfd, pattern, self.excluded)
        finally:
            os.close(rootfd)
        found = [r for r in found if self._visible(r)]
        if not found:
            raise NotFound(
                f"{pattern}: not found in the build context or excluded by .dockerignore"
            )
        return found

    def resolve(self, rel: str) -> str:
        """Where ``rel`` leads inside the context once its symlinks are followed: the
        ignore rules apply there, so a link cannot bring an excluded path back."""
        rootfd = self.open_root()
        try:
            fd = openat2(rootfd, rel or ".", os.O_PATH, IN_ROOT)
            try:
                real = os.readlink(f"/proc/self/fd/{fd}")
            finally:
                os.close(fd)
        finally:
            os.close(rootfd)
        base = os.path.realpath(self.root)
        return "" if real == base else os.path.relpath(real, base)

    def _visible(self, rel: str) -> bool:
        try:
            real = self.resolve(rel)
        except (FileNotFoundError, NotADirectoryError):
            return False
        return not self.excluded(real, os.path.isdir(os.path.join(self.root, real)))

    # -- content digests (the cache key of COPY and ADD) -----------------------

    def digest(self, rels: list[str]) -> str:
        """One digest over the names, kinds, modes and contents of ``rels`` and everything
        visible below them. Owners and times are left out: COPY sets the owner, and a
        checkout or ``touch`` that changes no byte keeps the cache."""
        h = hashlib.sha256()
        rootfd = self.open_root()
        try:
            for rel in rels:
                h.update(b"\0src\0" + rel.encode(errors="surrogateescape"))
                for sub, st, fd in _tree(rootfd, self.resolve(rel), self.excluded):
                    try:
                        h.update(self._entry(sub, st, fd))
                    finally:
                        os.close(fd)
        finally:
            os.close(rootfd)
        return "sha256:" + h.hexdigest()

    def _entry(self, sub: str, st: os.stat_result, fd: int) -> bytes:
        head = f"\0{sub}\0{stat.S_IFMT(st.st_mode)}\0{stat.S_IMODE(st.st_mode)}\0".encode(
            errors="surrogateescape"
        )
        if stat.S_ISLNK(st.st_mode):
            return head + os.readlink("", dir_fd=fd).encode(errors="surrogateescape")
        if not stat.S_ISREG(st.st_mode):
            return head
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        known = self._hashes.get(key)
        if known is None:
            h = hashlib.sha256()
            rfd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                while chunk := os.read(rfd, 1 << 20):
                    h.update(chunk)
            finally:
                os.close(rfd)
            known = self._hashes[key] = h.digest()
        return head + known


def glob(rootfd: int, pattern: str, excluded: Excluded | None = None) -> list[str]:
    """Paths below ``rootfd`` matching ``pattern`` (Go's filepath.Match per component, as
    Docker's COPY); a pattern without wildcards names one path, which must exist."""
    pat = clean(pattern)
    if not pat:
        return [""]
    parts = pat.split("/")
    found = [""]
    for i, part in enumerate(parts):
        nxt: list[str] = []
        last = i == len(parts) - 1
        for base in found:
            if not has_glob(part):
                cand = [part]
            else:
                try:
                    dfd = openat2(rootfd, base or ".", os.O_RDONLY | os.O_DIRECTORY, IN_ROOT)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                try:
                    names = sorted(os.listdir(dfd))
                finally:
                    os.close(dfd)
                cand = [n for n in names if fnmatch.fnmatchcase(n, part.replace("[^", "[!"))]
            for name in cand:
                rel = posixpath.join(base, name) if base else name
                try:
                    fd = openat2(rootfd, rel, os.O_PATH, IN_ROOT)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                try:
                    is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
                finally:
                    os.close(fd)
                if not last and not is_dir:
                    continue
                if excluded is not None and excluded(rel, is_dir):
                    continue
                nxt.append(rel)
        found = nxt
    return sorted(found)


def _tree(rootfd: int, rel: str, excluded: Excluded) -> Iterator[tuple[str, os.stat_result, int]]:
    """``rel`` (followed, inside the root) and, if a directory, every visible entry below
    it (never followed), as (path below ``rel``, lstat, O_PATH fd the caller closes)."""
    top = openat2(rootfd, rel or ".", os.O_PATH, IN_ROOT)
    st = os.fstat(top)
    yield "", st, top
    if not stat.S_ISDIR(st.st_mode):
        return
    stack = [(rel, "")]
    while stack:
        crel, sub = stack.pop()
        dfd = openat2(rootfd, crel or ".", os.O_RDONLY | os.O_DIRECTORY, IN_ROOT)
        try:
            names = sorted(os.listdir(dfd), reverse=True)
            for name in names:
                child = posixpath.join(crel, name) if crel else name
                fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
                cst = os.fstat(fd)
                is_dir = stat.S_ISDIR(cst.st_mode)
                if excluded(child, is_dir):
                    os.close(fd)
                    continue
                csub = posixpath.join(sub, name) if sub else name
                yield csub, cst, fd
                if is_dir:
                    stack.append((child, csub))
        finally:
            os.close(dfd)


# -- loading ------------------------------------------------------------------


def load(context: str, dockerfile: str | None, stdin: BinaryIO, tmpdir: str) -> Context:
    """The context named on the command line: a directory, a tarball, or '-' (stdin holds
    a Dockerfile, or a tarball context)."""
    owned: str | None = None
    text: str | None = None
    if dockerfile == "-":
        text = stdin.read().decode()
    if context == "-":
        if text is not None:
            raise InvalidSpec("cannot read both the context and the dockerfile from stdin")
        data = stdin.read()
        if is_archive(data[:512]):
            owned = _unpack(data, tmpdir)
            root = owned
        else:
            text = data.decode(errors="replace")
            owned = tempfile.mkdtemp(dir=tmpdir, prefix="context-")
            root = owned
    elif os.path.isdir(context):
        root = os.path.abspath(context)
    elif os.path.isfile(context):
        with open(context, "rb") as f:
            data = f.read()
        if not is_archive(data[:512]):
            raise InvalidSpec(f"context {context} is neither a directory nor a tar archive")
        owned = _unpack(data, tmpdir)
        root = owned
    else:
        raise NotFound(f"unable to prepare context: path {context!r} not found")
    try:
        if text is None:
            path, name = _find_dockerfile(root, dockerfile, owned is not None)
            try:
                with open(path, "rb") as f:
                    text = f.read().decode()
            except UnicodeDecodeError as e:
                raise InvalidSpec(f"{name}: not utf-8 text") from e
        else:
            path, name = "", "Dockerfile"
        ctx = Context(root, text, name, owned)
        ignore = _ignore_file(root, path)
        if ignore:
            try:
                with open(ignore, encoding="utf-8", errors="surrogateescape") as f:
                    ctx.rules = IgnoreRules.parse(f.read())
            except ValueError as e:
                raise InvalidSpec(f"{os.path.basename(ignore)}: {e}") from e
        return ctx
    except BaseException:
        if owned:
            shutil.rmtree(owned, ignore_errors=True)
        raise


def _find_dockerfile(root: str, dockerfile: str | None, in_archive: bool) -> tuple[str, str]:
    if dockerfile:
        # Docker: -f names a file relative to the working directory, or inside a tarball
        candidates = [os.path.join(root, dockerfile)] if in_archive else [
            dockerfile, os.path.join(root, dockerfile)
        ]  # fmt: skip
        for c in candidates:
            if os.path.isfile(c):
                return c, os.path.basename(dockerfile)
        raise NotFound(f"cannot find dockerfile {dockerfile}")
    for name in ("Dockerfile", "Containerfile"):
        if os.path.isfile(os.path.join(root, name)):
            return os.path.join(root, name), name
    raise NotFound(f"cannot find a Dockerfile or Containerfile in {root}")


def _ignore_file(root: str, dockerfile: str) -> str | None:
    """BuildKit's rule: ``NAME.dockerignore`` beside the Dockerfile wins over the context's."""
    if dockerfile:
        beside = dockerfile + ".dockerignore"
        if os.path.isfile(beside):
            return beside
    top = os.path.join(root, ".dockerignore")
    return top if os.path.isfile(top) else None


def _unpack(data: bytes, tmpdir: str) -> str:
    """A tarball context, unpacked with the layer unpacker's containment rules."""
    import io

    from cove.image import streams
    from cove.image.layers import unpack_stream

    dest = tempfile.mkdtemp(dir=tmpdir, prefix="context-")
    try:
        src = streams.decompressor(
            io.BytesIO(data), streams.detect_compression(data[:16]), "the build context"
        )
        unpack_stream(src, dest, "the build context", whiteouts=False)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return dest
