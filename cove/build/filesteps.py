"""File steps: COPY, ADD and WORKDIR, written through the builder's private overlay mount.

Planning runs in the build process (sources found in the context, URLs fetched, the cache
material digested); the writes run in the overlay child (``Builder._in_overlay``), where
every destination is resolved with RESOLVE_IN_ROOT so an image's symlinks cannot send a
write outside its root.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import shutil
import stat
import tempfile
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

from cove.build import dockerfile as df
from cove.build.context import Context, glob
from cove.build.dispatch import Layer, State
from cove.errors import CoveError, InvalidSpec, NotFound

if TYPE_CHECKING:
    from cove.build.builder import Builder


def workdir(b: Builder, state: State, ins: df.Instruction) -> None:
    path = b.dispatch.workdir(state, ins)
    lowers = b._lowers(state)
    user = str(state.config.get("User") or "")
    # BuildKit makes the directories as the current USER, so a later RUN can write there
    owner = owner_of(b, state, ins, user) if user else (0, 0)

    def make() -> Layer | None:
        def mkdir(rootfd: int, srcfd: int) -> None:
            _make_dirs_owned(rootfd, path.strip("/"), owner)

        return b._in_overlay(state, lowers, None, mkdir)

    b._record(state, ins, [path, owner], f"WORKDIR {path}", make)


def copy(b: Builder, state: State, ins: df.Instruction, *, add: bool) -> None:
    """COPY (or ADD, with URLs and archive extraction) as one step."""
    d = b.dispatch
    scope = state.scope()
    flags = d.flags(ins, scope)
    for unsupported in ("link", "parents", "exclude", "checksum", "keep-git-dir"):
        if unsupported in flags and unsupported not in ("link",):
            raise d.error(ins, f"{ins.cmd} --{unsupported} is not supported by cove")
    words = d.words(ins, scope)
    heredocs = {h.name: h for h in ins.heredocs}
    if len(words) < 2:
        raise d.error(ins, f"{ins.cmd} requires at least two arguments")
    srcs, dest = words[:-1], words[-1]
    if not posixpath.isabs(dest):
        dest = posixpath.join(state.workdir(), dest) + ("/" if dest.endswith("/") else "")
    chmod: int | None = None
    if "chmod" in flags:
        try:
            chmod = int(flags["chmod"], 8)
            if not 0 <= chmod <= 0o7777:
                raise ValueError(flags["chmod"])
        except ValueError as e:
            raise d.error(ins, f"invalid --chmod {flags['chmod']!r}") from e
    owner = owner_of(b, state, ins, flags.get("chown"))
    source_from = flags.get("from")
    plan: list[tuple[str, str]] = []  # (kind, what): context path, stage path, url, heredoc
    material: list[Any] = [ins.cmd, dest, chmod, owner]
    from_layers: list[str] | None = None
    count = 0  # sources known here; --from globs are counted in the child
    if source_from is not None:
        if add:
            raise d.error(ins, "ADD does not take --from")
        from_layers, from_key = _from_source(b, ins, source_from)
        material.append(from_key)
        plan = [("from", s) for s in srcs]
        material.append(srcs)
    else:
        for s in srcs:
            try:
                opened = df.parse_heredoc_word(s)
            except ValueError as e:
                raise d.error(ins, str(e)) from e
            if opened is not None and opened.name in heredocs:
                doc = heredocs[opened.name]
                text = doc.content
                if doc.expand and "$" in text:
                    try:
                        text = df.expand_heredoc(text, scope)
                    except ValueError as e:
                        raise d.error(ins, str(e)) from e
                plan.append(("heredoc", doc.name + "\0" + text))
                material.append(["heredoc", doc.name, text])
            elif add and s.startswith(("http://", "https://")):
                plan.append(("url", s))
                material.append(["url", s, _fetch(b, ins, s)])
            elif s.startswith(("http://", "https://", "git@")) or s.endswith(".git"):
                raise d.error(ins, f"{ins.cmd} cannot take a URL source: {s}")
            else:
                try:
                    found = b.ctx.sources(s)
                except NotFound as e:
                    raise d.error(ins, f"{ins.cmd} failed: {e}") from e
                plan += [("context", r) for r in found]
                count += len(found) - 1
                material.append(["context", s, found, b.ctx.digest(found)])
    if count + len(plan) > 1 and not dest.endswith("/"):
        raise d.error(
            ins, f"when using {ins.cmd} with more than one source file, the destination "
            "must be a directory and end with a /",
        )  # fmt: skip
    lowers = b._lowers(state)
    shown_flags = "".join(f"--{k}={v} " if v is not None else f"--{k} " for k, v in ins.flags)
    created_by = f"{ins.cmd} {shown_flags}{' '.join(srcs)} {words[-1]} # buildkit"
    ctx, downloads = b.ctx, b.downloads

    def make() -> Layer | None:
        def action(rootfd: int, srcfd: int) -> None:
            keep = source_from is not None and "chown" not in flags
            _apply_copy(ctx, downloads, plan, dest, rootfd, srcfd, None if keep else owner,
                        chmod, add, ins)  # fmt: skip

        return b._in_overlay(state, lowers, from_layers, action)

    b._record(state, ins, material, created_by, make)


def owner_of(b: Builder, state: State, ins: df.Instruction, chown: str | None) -> tuple[int, int]:
    """--chown's (or USER's) uid and gid, looked up in the state's own /etc files."""
    if not chown:
        return 0, 0
    from cove.bundle import resolve_user

    try:
        user = resolve_user(chown, [], list(reversed(b._lowers(state))))
    except CoveError as e:
        raise b.dispatch.error(ins, f"--chown {chown}: {e}") from e
    return user.uid, user.gid


def _from_source(b: Builder, ins: df.Instruction, ref: str) -> tuple[list[str], str]:
    """The layers (lowest first) and cache key of COPY --from's stage or image."""
    dep = b.dispatch.stage_ref(ref, b.current)
    if dep is not None:
        if dep.index not in b.results:
            raise b.dispatch.error(ins, f"stage {ref!r} is not built before it is used")
        st = b.results[dep.index]
        return [b.store.layer_path(la.diff_id) for la in st.layers], st.key
    try:
        img = b._image(ref, None)
    except CoveError as e:
        raise b.dispatch.error(ins, f"COPY --from={ref}: {e}") from e
    paths = [
        b.store.unpack_layer(desc, diff_id)
        for desc, diff_id in zip(img.manifest.layers, img.config.diff_ids, strict=True)
    ]  # fmt: skip
    return paths, img.manifest_digest


def _fetch(b: Builder, ins: df.Instruction, url: str) -> str:
    """Download ``url`` into the build's temp files; the content digest (its cache key)."""
    import urllib.error
    import urllib.request

    if b.opts.network == "none":
        # the host fetches ADD URLs (as BuildKit): a build without network fetches nothing
        raise b.dispatch.error(ins, f"ADD {url}: remote sources need network; this build "
                               "runs with --network none")  # fmt: skip
    path = b.downloads.get(url)
    if path is None:
        fd, path = tempfile.mkstemp(dir=b.store.tmpdir, prefix="add-")
        b.downloads[url] = path
        try:
            with urllib.request.urlopen(url, timeout=30) as resp, os.fdopen(fd, "wb") as f:
                shutil.copyfileobj(resp, f)
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            raise b.dispatch.error(
                ins, f"ADD {url}: cannot fetch it ({reason}); remote sources need network, "
                "which this build does not have: not supported offline",
            ) from e  # fmt: skip
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


# -- in the overlay child ------------------------------------------------------------------


def _make_dirs_owned(rootfd: int, rel: str, owner: tuple[int, int]) -> None:
    """mkdir -p ``rel`` inside the root (symlinks resolved in it); the ones made get
    ``owner``."""
    from cove.sys import safepath

    done = ""
    for comp in [c for c in rel.split("/") if c]:
        done = posixpath.join(done, comp) if done else comp
        try:
            os.close(safepath.open_dir(rootfd, done, create=False))
            continue
        except FileNotFoundError:
            pass
        fd = safepath.open_dir(rootfd, done, create=True)
        try:
            if owner != (0, 0):
                os.chown(f"/proc/self/fd/{fd}", *owner)
        finally:
            os.close(fd)


def _apply_copy(
    ctx: Context,
    downloads: dict[str, str],
    plan: list[tuple[str, str]],
    dest: str,
    rootfd: int,
    srcfd: int,
    owner: tuple[int, int] | None,
    chmod: int | None,
    add: bool,
    ins: df.Instruction,
) -> None:
    """COPY/ADD inside the child: place each planned source at ``dest``. ``owner`` None
    keeps the sources' own (COPY --from without --chown)."""
    from cove.build.context import tar_compression
    from cove.sys import fscopy, safepath
    from cove.sys.syscalls import openat2

    sources: list[tuple[str, str]] = []
    for kind, what in plan:
        if kind != "from":
            sources.append((kind, what))
            continue
        found = glob(srcfd, what)
        if not found:
            raise NotFound(f"{ins.cmd} --from: {what}: not found")
        sources += [(kind, rel) for rel in found]
    into_dir = dest.endswith("/")
    if len(sources) > 1 and not into_dir:
        raise InvalidSpec(f"when using {ins.cmd} with more than one source file, the "
                          "destination must be a directory and end with a /")  # fmt: skip
    rel_dest = dest.strip("/")
    if not into_dir and rel_dest:
        with contextlib.suppress(OSError):
            os.close(safepath.open_dir(rootfd, rel_dest, create=False))
            into_dir = True  # an existing directory takes the sources in, as Docker's COPY
    made_owner = owner or (0, 0)

    def made_dir(rel: str) -> int:
        _make_dirs_owned(rootfd, rel, made_owner)
        return safepath.open_dir(rootfd, rel, create=False)

    def copier(kind: str, base: str) -> fscopy._Copier:
        return fscopy._Copier(
            owner=owner or (0, 0), keep_setid=True, chmod=chmod, keep_owner=owner is None,
            keep_links=True, skip=_below(ctx.excluded, ctx.resolve(base))
            if kind == "context" else None,
        )  # fmt: skip

    for kind, what in sources:
        if kind == "heredoc":
            name, _, text = what.partition("\0")
            parent, base = (rel_dest, name) if into_dir else posixpath.split(rel_dest)
            dfd = made_dir(parent)
            try:
                out = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW,
                              0o644, dir_fd=dfd)  # fmt: skip
            finally:
                os.close(dfd)
            try:
                os.write(out, text.encode())
                os.fchown(out, *made_owner)
                os.fchmod(out, 0o644 if chmod is None else chmod)
            finally:
                os.close(out)
            continue
        if kind == "url":
            path = downloads[what]
            name = posixpath.basename(what.split("?", 1)[0].rstrip("/")) or "index.html"
            parent, base = (rel_dest, name) if into_dir else posixpath.split(rel_dest)
            dfd = made_dir(parent)
            try:
                c = copier(kind, "")
                c.chmod = 0o600 if chmod is None else chmod  # Docker's mode for URL sources
                sfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
                try:
                    c.entry(sfd, os.fstat(sfd), dfd, base, dest)
                finally:
                    os.close(sfd)
            finally:
                os.close(dfd)
            continue
        rel = what
        try:
            sfd = openat2(srcfd, rel or ".", os.O_PATH, safepath.IN_ROOT)
        except FileNotFoundError as e:
            raise NotFound(f"{ins.cmd} failed: {rel or '.'}: not found") from e
        try:
            st = os.fstat(sfd)
            if stat.S_ISDIR(st.st_mode):
                dfd = made_dir(rel_dest)
                try:
                    copier(kind, rel).contents(sfd, dfd, dest)
                finally:
                    os.close(dfd)
                continue
            if add and kind == "context" and stat.S_ISREG(st.st_mode):
                rfd = os.open(f"/proc/self/fd/{sfd}", os.O_RDONLY | os.O_CLOEXEC)
                with os.fdopen(rfd, "rb") as f:
                    compression = tar_compression(f)
                    if compression is not None:
                        dfd = made_dir(rel_dest)
                        try:
                            _extract(f, compression, dfd, what)
                        finally:
                            os.close(dfd)
                        continue
            base = posixpath.basename(rel) if into_dir else posixpath.basename(rel_dest)
            parent = rel_dest if into_dir else posixpath.dirname(rel_dest)
            dfd = made_dir(parent)
            try:
                copier(kind, rel).entry(sfd, st, dfd, base, posixpath.join("/", parent, base))
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)


def _below(skip: Callable[[str, bool], bool], base: str) -> Callable[[str, bool], bool]:
    """``skip`` for paths given relative to ``base``."""
    return lambda rel, is_dir: skip(posixpath.join(base, rel) if base else rel, is_dir)


def _extract(f: IO[bytes], compression: str, dfd: int, what: str) -> None:
    """ADD's auto-extraction, with the layer unpacker's containment: every entry lands
    inside the destination directory; ``.wh.`` names are plain files here."""
    from cove.image import streams
    from cove.image.layers import unpack_stream

    src = streams.decompressor(f, compression, what)
    unpack_stream(src, f"/proc/self/fd/{dfd}", what, privileged=True, whiteouts=False)
