"""Image verbs: import, load, save, images, inspect, tag, rmi, prune, history."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from cove.cli import fmt
from cove.engine import Engine, ImageRow
from cove.errors import InvalidSpec


def _short(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12]


def cmd_import(engine: Engine, args: argparse.Namespace) -> int:
    image_id = engine.import_image(args.file, args.ref, args.change, args.platform, args.message)
    print(image_id)
    return 0


def cmd_load(engine: Engine, args: argparse.Namespace) -> int:
    if args.input is None and sys.stdin.isatty():
        raise InvalidSpec("requested load from stdin, but stdin is empty: use -i FILE")
    for loaded in engine.load(args.input or "-"):
        if args.quiet:
            continue
        if loaded.names:
            for n in loaded.names:
                print(f"Loaded image: {n.familiar()}")
        else:
            print(f"Loaded image ID: {loaded.image_id}")
    return 0


def cmd_save(engine: Engine, args: argparse.Namespace) -> int:
    if args.output is None and sys.stdout.isatty():
        raise InvalidSpec("cowardly refusing to save to a terminal: use the -o flag or redirect")
    engine.save(args.images, args.output, args.format)
    return 0


def _image_obj(row: ImageRow) -> dict[str, Any]:
    created = row.image.config.created
    return {
        "ID": _short(row.image.id),
        "Repository": row.name.familiar_repository if row.name else "<none>",
        "Tag": (row.name.tag or "<none>") if row.name else "<none>",
        "Digest": row.image.manifest_digest,
        "CreatedAt": created,
        "CreatedSince": fmt.ago(created),
        "Size": fmt.human_size(row.size),
        "VirtualSize": fmt.human_size(row.size),
        "Platform": str(row.image.config.platform),
    }


def cmd_images(engine: Engine, args: argparse.Namespace) -> int:
    rows = engine.list_images()
    if args.repository:
        from cove.spec import reference

        want = reference.parse(args.repository, default_tag=False)
        rows = [
            r for r in rows
            if r.name and r.name.repository == want.repository
            and (want.tag is None or r.name.tag == want.tag)
        ]  # fmt: skip
    if args.quiet:
        seen: list[str] = []
        for r in rows:
            short = r.image.id if args.no_trunc else _short(r.image.id)
            if short not in seen:
                seen.append(short)
        if seen:
            print("\n".join(seen))
        return 0
    objs = [_image_obj(r) for r in rows]
    if args.no_trunc:
        for o, r in zip(objs, rows, strict=True):
            o["ID"] = r.image.id
    headers = ["REPOSITORY", "TAG", *(["DIGEST"] if args.digests else []), "IMAGE ID",
               "CREATED", "SIZE", "PLATFORM"]  # fmt: skip

    def to_row(o: dict[str, Any]) -> list[str]:
        digest = [o["Digest"]] if args.digests else []
        return [o["Repository"], o["Tag"], *digest, o["ID"], o["CreatedSince"], o["Size"],
                o["Platform"]]  # fmt: skip

    out = fmt.format_rows(args.format, headers, objs, to_row, kind="image")
    if out:
        print(out)
    return 0


def cmd_inspect(engine: Engine, args: argparse.Namespace) -> int:
    results, failed = [], []
    for name in args.names:
        try:
            results.append(engine.inspect_image(name))
        except Exception as e:  # Docker prints what it found, then the errors
            from cove.errors import CoveError

            if not isinstance(e, CoveError):
                raise
            failed.append(str(e))
    if args.format:
        for r in results:
            print(fmt.render(args.format, r))
    else:
        print(json.dumps(results, indent=4))
    for msg in failed:
        sys.stderr.write(f"Error: {msg}\n")
    return 1 if failed else 0


def cmd_tag(engine: Engine, args: argparse.Namespace) -> int:
    engine.tag(args.source, args.target)
    return 0


def cmd_rmi(engine: Engine, args: argparse.Namespace) -> int:
    rc = 0
    for name in args.images:
        try:
            for what, value in engine.remove_image(name, force=args.force):
                print(f"{what}: {value}")
        except Exception as e:
            from cove.errors import CoveError

            if not isinstance(e, CoveError):
                raise
            sys.stderr.write(f"Error: {e}\n")
            rc = 1
    return rc


def cmd_prune(engine: Engine, args: argparse.Namespace) -> int:
    if not args.force:
        what = "all images without at least one container associated to them" if args.all \
            else "all dangling images"  # fmt: skip
        sys.stdout.write(f"WARNING! This will remove {what}.\n"
                         "Are you sure you want to continue? [y/N] ")  # fmt: skip
        sys.stdout.flush()
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            return 0
    events, freed = engine.prune_images(all_images=args.all)
    if events:
        print("Deleted Images:")
        for what, value in events:
            print(f"{what}: {value}")
        print()
    print(f"Total reclaimed space: {fmt.human_size(freed)}")
    return 0


def cmd_history(engine: Engine, args: argparse.Namespace) -> int:
    rows = engine.history(args.image)
    if args.quiet:
        print("\n".join(r.image_id or "<missing>" for r in rows))
        return 0
    objs = []
    for r in rows:
        created_by = r.created_by
        if not args.no_trunc and len(created_by) > 45:
            created_by = created_by[:44] + "…"
        image_id = r.image_id if args.no_trunc else (_short(r.image_id) if r.image_id else None)
        objs.append({
            "ID": image_id or "<missing>",
            "CreatedAt": r.created,
            "CreatedSince": fmt.ago(r.created) if args.human else r.created,
            "CreatedBy": created_by,
            "Size": fmt.human_size(r.size) if args.human else str(r.size),
            "Comment": r.comment,
        })  # fmt: skip
    headers = ["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"]
    out = fmt.format_rows(
        args.format, headers, objs,
        lambda o: [o["ID"], o["CreatedSince"], o["CreatedBy"], o["Size"], o["Comment"]],
        kind="history",
    )  # fmt: skip
    print(out)
    return 0


def cmd_unpack(engine: Engine, args: argparse.Namespace) -> int:
    for path in engine.unpack(args.image):
        print(path)
    return 0


def _bool_flag(p: argparse.ArgumentParser, *names: str, help: str) -> None:
    p.add_argument(*names, action="store_true", help=help)


def _add_import(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="import a rootfs tarball as an image")
    p.add_argument("file", metavar="FILE|-")
    p.add_argument("ref", metavar="REPOSITORY[:TAG]", nargs="?")
    p.add_argument(
        "-c",
        "--change",
        action="append",
        default=[],
        help="apply a Dockerfile instruction (CMD, ENV, ...) to the image",
    )
    p.add_argument("-m", "--message", default="", help="commit message for the image")
    p.add_argument("--platform", help="os/arch[/variant] of the image (default: the host's)")
    p.set_defaults(func=cmd_import)


def _add_load(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="load images from a docker-archive, OCI archive or layout")
    p.add_argument("-i", "--input", help="read from FILE or OCI layout DIR instead of stdin")
    _bool_flag(p, "-q", "--quiet", help="suppress the load output")
    p.set_defaults(func=cmd_load)


def _add_save(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="save images to an archive")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("-o", "--output", help="write to FILE instead of stdout")
    p.add_argument("--format", default="docker-archive", choices=["docker-archive", "oci-archive"])
    p.set_defaults(func=cmd_save)


def _add_ls(sub: Any, name: str, aliases: list[str] | None = None) -> None:
    p = sub.add_parser(name, aliases=aliases or [], help="list images")
    p.add_argument("repository", nargs="?", metavar="REPOSITORY[:TAG]")
    _bool_flag(p, "-a", "--all", help="show all images (accepted for compatibility)")
    _bool_flag(p, "-q", "--quiet", help="only show image ids")
    _bool_flag(p, "--digests", help="show digests")
    _bool_flag(p, "--no-trunc", help="don't truncate output")
    p.add_argument("--format", help="table, json, or a Go template such as {{.ID}}")
    p.set_defaults(func=cmd_images)


def _add_inspect(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="show low-level information on images")
    p.add_argument("names", nargs="+", metavar="IMAGE")
    p.add_argument("-f", "--format", help="format with a Go template, e.g. {{.Id}}")
    p.set_defaults(func=cmd_inspect)


def _add_tag(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="create a tag TARGET that refers to SOURCE")
    p.add_argument("source", metavar="SOURCE_IMAGE[:TAG]")
    p.add_argument("target", metavar="TARGET_IMAGE[:TAG]")
    p.set_defaults(func=cmd_tag)


def _add_rmi(sub: Any, name: str, aliases: list[str] | None = None) -> None:
    p = sub.add_parser(name, aliases=aliases or [], help="remove images")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    _bool_flag(p, "-f", "--force", help="remove the image even if it has several names")
    p.add_argument("--no-prune", action="store_true", help="accepted for compatibility")
    p.set_defaults(func=cmd_rmi)


def _add_history(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="show the history of an image")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("-H", "--human", action=argparse.BooleanOptionalAction, default=True)
    _bool_flag(p, "-q", "--quiet", help="only show image ids")
    _bool_flag(p, "--no-trunc", help="don't truncate output")
    p.add_argument("--format", help="table, json, or a Go template")
    p.set_defaults(func=cmd_history)


def register(sub: Any) -> None:
    _add_import(sub, "import")
    _add_load(sub, "load")
    _add_save(sub, "save")
    _add_ls(sub, "images")
    _add_tag(sub, "tag")
    _add_rmi(sub, "rmi")
    _add_history(sub, "history")

    image = sub.add_parser("image", help="manage images")
    isub = image.add_subparsers(dest="image_command", metavar="COMMAND",
                                parser_class=type(image))  # fmt: skip
    _add_import(isub, "import")
    _add_load(isub, "load")
    _add_save(isub, "save")
    _add_ls(isub, "ls", ["list"])
    _add_inspect(isub, "inspect")
    _add_tag(isub, "tag")
    _add_rmi(isub, "rm", ["remove"])
    _add_history(isub, "history")
    p = isub.add_parser("prune", help="remove unused images")
    _bool_flag(p, "-a", "--all", help="remove all unused images, not just dangling ones")
    _bool_flag(p, "-f", "--force", help="do not prompt for confirmation")
    p.set_defaults(func=cmd_prune)
    from cove.cli import build

    build.register(sub, isub)
    p = isub.add_parser("unpack", help="unpack an image's layers; print their directories")
    p.add_argument("image", metavar="IMAGE")
    p.set_defaults(func=cmd_unpack)
