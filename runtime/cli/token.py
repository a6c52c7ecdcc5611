"""``coordinator token``: credentials for development and tests.

    coordinator token user --sub alice --control site1 --view '*' --config router.toml   an operator JWT
    coordinator token edge --edge site1 --config router.toml                             an edge JWT
    coordinator token secret --edge site1                  a random edge secret and its [edges] line
    coordinator token keys --alg EdDSA --out keys/         a key pair (private and public PEM)
    coordinator token password --user alice                a password hash for [users.alice] (operator page)

The signing key is the ``hs256_secret`` and ``audience`` of ``--config``, or ``--secret`` (HS256), or
``--key PRIVATE.pem --alg RS256|EdDSA [--kid K]``; ``--audience`` overrides the file's. The token is printed on
stdout, alone on its line. ``password`` asks for the password twice on a terminal (or reads one line from
standard input when it is not a terminal: ``printf '%s\n' "$PW" | coordinator token password --user alice``),
never from the command line, and prints the hash on stdout and the ``[users.<name>]`` lines on stderr.
Exit codes: 0 done, 2 bad input.
"""

from __future__ import annotations

import argparse
import sys

from .argtypes import number


def _key_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="router.toml: its [auth] hs256_secret and audience")
    parser.add_argument("--secret", help="an HS256 secret (instead of --config)")
    parser.add_argument("--key", metavar="PEM", help="a private key file (RS256 or EdDSA)")
    parser.add_argument("--alg", choices=("HS256", "RS256", "EdDSA"), default=None,
                        help="signing algorithm (default: HS256, or the kind of --key)")
    parser.add_argument("--kid", help="key id for the token header")
    parser.add_argument("--audience", help="aud claim (default: [auth] audience of --config)")
    parser.add_argument("--issuer", help="iss claim (default: [auth] issuer of --config, if any)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="kind", required=True, metavar="KIND")
    user = sub.add_parser("user", help="an operator or service JWT (can_control / can_view claims)")
    user.add_argument("--sub", required=True, help="the user (audit name)")
    user.add_argument("--control", action="append", default=[], metavar="EDGE",
                      help="an edge the user may command ('*': all); repeatable")
    user.add_argument("--view", action="append", default=[], metavar="EDGE",
                      help="an edge the user may only watch ('*': all); repeatable")
    user.add_argument("--ttl", type=number(0.0, above=True), default=3600.0, metavar="SECONDS",
                      help="lifetime (default 3600)")
    user.add_argument("--nbf", type=number(0.0), default=None, metavar="SECONDS",
                      help="not valid before this many seconds from now")
    _key_options(user)
    edge = sub.add_parser("edge", help="an edge credential as a JWT (role edge, sub edge:<id>)")
    edge.add_argument("--edge", required=True, help="the edge id")
    edge.add_argument("--ttl", type=number(0.0, above=True), default=365 * 86400.0, metavar="SECONDS",
                      help="lifetime (default one year)")
    _key_options(edge)
    secret = sub.add_parser("secret", help="a random per-edge secret, and its line for [edges]")
    secret.add_argument("--edge", required=True, help="the edge id")
    password = sub.add_parser("password", help="a password hash for [users.<name>] of router.toml (the operator "
                              "page's sign-in); the password is read from the terminal or stdin")
    password.add_argument("--user", default="alice", help="the user name for the printed [users.<name>] lines")
    keys = sub.add_parser("keys", help="a signing key pair for RS256 or EdDSA (development)")
    keys.add_argument("--alg", choices=("RS256", "EdDSA"), default="EdDSA", help="key kind (default EdDSA)")
    keys.add_argument("--out", required=True, metavar="DIR", help="folder for <alg>.key and <alg>.pub")


def _edges(values: list[str]) -> list[str] | str:
    return "*" if "*" in values else values


def _signing(args: argparse.Namespace) -> tuple[object, str, str, str | None]:
    """(key, alg, audience, issuer) from the options; ValueError with a one-line reason."""
    audience, issuer, secret = args.audience, args.issuer, args.secret
    if args.config:
        from runtime.router.config import load_router_config
        config = load_router_config(args.config)
        audience = audience or config.auth.audience
        issuer = issuer or config.auth.issuer
        if secret is None and args.key is None:
            secret = config.auth.hs256_secret
            if secret is None:
                raise ValueError(f"{args.config} has no [auth] hs256_secret: give --key PRIVATE.pem --alg ...")
    if not audience:
        raise ValueError("give --audience (or --config with [auth] audience)")
    if args.key:
        from pathlib import Path

        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
        key = load_pem_private_key(Path(args.key).read_bytes(), password=None)
        kind = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "EdDSA"
        if args.alg not in (None, kind):
            raise ValueError(f"--key {args.key} signs {kind}, not {args.alg}")
        return key, kind, audience, issuer
    if not secret:
        raise ValueError("give --config, --secret or --key")
    if args.alg not in (None, "HS256"):
        raise ValueError(f"--alg {args.alg} needs --key PRIVATE.pem")
    return secret, "HS256", audience, issuer


def run(args: argparse.Namespace) -> int:
    from runtime.core.errors import ConfigFileError

    if args.kind == "secret":
        import secrets

        from runtime.router.auth import secret_digest
        value = secrets.token_urlsafe(32)
        print(value)
        print(f"# router.toml:\n[edges]\n{args.edge} = \"{secret_digest(value)}\"", file=sys.stderr)
        return 0
    if args.kind == "keys":
        return _keys(args)
    if args.kind == "password":
        return _password(args)
    from runtime.router.auth import edge_claims, mint, user_claims
    try:
        key, alg, audience, issuer = _signing(args)
    except (ValueError, TypeError, OSError, ConfigFileError) as exc:
        print(f"coordinator token: {exc}", file=sys.stderr)
        return 2
    if args.kind == "user":
        claims = user_claims(args.sub, audience, control=_edges(args.control), view=_edges(args.view),
                             ttl_s=args.ttl, not_before_s=args.nbf, issuer=issuer)
    else:
        claims = edge_claims(args.edge, audience, ttl_s=args.ttl, issuer=issuer)
    print(mint(claims, key, alg, args.kid))
    return 0


def _keys(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048) if args.alg == "RS256" else \
        ed25519.Ed25519PrivateKey.generate()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    private = out / f"{args.alg}.key"
    public = out / f"{args.alg}.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    private.chmod(0o600)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    print(f"{private}\n{public}")
    print(f"# router.toml:\n[[auth.public_keys]]\nalg = \"{args.alg}\"\npath = \"{public}\"", file=sys.stderr)
    return 0


def _password(args: argparse.Namespace) -> int:
    import getpass
    import re

    from runtime.router.passwords import hash_password
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}", args.user):
        print(f"coordinator token password: --user {args.user!r}: a user name is letters, digits and _ . @ - "
              "(64 at most, starting with a letter or digit)", file=sys.stderr)
        return 2
    try:
        if sys.stdin.isatty():
            first = getpass.getpass(f"password for {args.user}: ")
            if getpass.getpass("again: ") != first:
                print("coordinator token password: the two passwords differ", file=sys.stderr)
                return 2
        else:
            first = sys.stdin.readline().rstrip("\r\n")
        digest = hash_password(first)
    except (ValueError, EOFError, KeyboardInterrupt) as exc:
        why = str(exc) or "no password given"
        print(f"coordinator token password: {why}", file=sys.stderr)
        return 2
    print(digest)
    print(f"# router.toml:\n[users.{args.user}]\npassword = \"{digest}\"\n"
          "can_control = []    # edges it may command, or [\"*\"]\n"
          "can_view = [\"*\"]    # edges it may only watch", file=sys.stderr)
    return 0
