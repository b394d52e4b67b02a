"""Registry verbs: pull, push, login, logout."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from cove.engine import Engine


def _tls(value: str) -> bool:
    if value.lower() not in ("true", "false", "1", "0"):
        raise argparse.ArgumentTypeError("want true or false")
    return value.lower() in ("true", "1")


def cmd_pull(engine: Engine, args: argparse.Namespace) -> int:
    from cove.registry.dist import pull

    image_id = pull(engine, args.image, platform=args.platform, quiet=args.quiet,
                    tls_verify=args.tls_verify)  # fmt: skip
    print(image_id if args.quiet else f"{args.image}\n{image_id}")
    return 0


def cmd_push(engine: Engine, args: argparse.Namespace) -> int:
    from cove.registry.dist import push

    digest = push(engine, args.image, args.dest, quiet=args.quiet, tls_verify=args.tls_verify)
    if args.quiet:
        print(digest)
    return 0


def cmd_login(engine: Engine, args: argparse.Namespace) -> int:
    from cove.registry.dist import login

    if args.password_stdin and not args.username:
        sys.stderr.write("Error: must provide --username with --password-stdin\n")
        return 1
    user = args.username or input("Username: ")
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif args.password is not None:
        sys.stderr.write("WARNING! Using --password via the CLI is insecure. "
                         "Use --password-stdin.\n")  # fmt: skip
        password = args.password
    else:
        password = getpass.getpass("Password: ")
    login(engine, args.registry, user, password, tls_verify=args.tls_verify)
    print("Login Succeeded")
    return 0


def cmd_logout(engine: Engine, args: argparse.Namespace) -> int:
    from cove.registry.dist import logout

    if logout(engine, args.registry):
        print(f"Removing login credentials for {args.registry}")
    else:
        print(f"Not logged in to {args.registry}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("pull", help="download an image from a registry")
    p.add_argument("image", metavar="NAME[:TAG|@DIGEST]")
    p.add_argument("--platform", help="os/arch[/variant] to pull from a multi-platform index")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the image id")
    p.add_argument("--tls-verify", type=_tls, default=True, help="false: skip TLS checks "
                   "(localhost, or registries listed as insecure)")  # fmt: skip
    p.set_defaults(func=cmd_pull)
    p = sub.add_parser("push", help="upload an image to a registry")
    p.add_argument("image", metavar="NAME[:TAG]")
    p.add_argument("dest", nargs="?", metavar="DEST", help="push under this name instead")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the digest")
    p.add_argument("--tls-verify", type=_tls, default=True, help="false: skip TLS checks")
    p.set_defaults(func=cmd_push)
    p = sub.add_parser("login", help="log in to a registry")
    p.add_argument("registry", metavar="SERVER")
    p.add_argument("-u", "--username")
    p.add_argument("-p", "--password")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.add_argument("--tls-verify", type=_tls, default=True, help="false: skip TLS checks")
    p.set_defaults(func=cmd_login)
    p = sub.add_parser("logout", help="log out from a registry")
    p.add_argument("registry", metavar="SERVER")
    p.set_defaults(func=cmd_logout)
