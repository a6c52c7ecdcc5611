"""``coordinator audit --config router.toml [filters] [--format table|json|csv]``: query the router's audit log.

Reads the log the router writes (its SQLite file, or PostgreSQL when the file has ``[postgres]``) without a
running router; or, with ``--url http://router:8080 --token JWT``, asks a running router over HTTP (``GET
/api/v1/audit``, where the token decides which edges are visible). Filters: ``--edge``, ``--user``,
``--command``, ``--kind``, ``--status`` (repeatable), ``--since`` / ``--until`` (ISO 8601 or an age: ``15m``,
``2h``, ``7d``), ``--limit``, ``--desc``. Exit codes: 0 done (also when nothing matched), 1 the log or the
router could not be read, 2 bad input.
"""

from __future__ import annotations

import argparse
import sys

from .argtypes import integer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", metavar="FILE", help="router.toml: read the audit log it names")
    source.add_argument("--url", help="a running router (http://host:port); needs --token")
    parser.add_argument("--token", help="with --url: a JWT (coordinator token user ...)")
    parser.add_argument("--edge", help="only this edge")
    parser.add_argument("--user", help="only this user (the token's sub)")
    parser.add_argument("--command", metavar="ID", help="only this command id")
    parser.add_argument("--kind", help="only this kind (submit, state, refused, ack, edge, ...)")
    parser.add_argument("--status", action="append", default=[], help="only these statuses; repeatable")
    parser.add_argument("--since", help="from this time (ISO 8601, or an age: 15m, 2h, 7d)")
    parser.add_argument("--until", help="before this time")
    parser.add_argument("--limit", type=integer(1, 1_000_000), default=1000, help="at most this many rows (1000)")
    parser.add_argument("--desc", action="store_true", help="newest first")
    parser.add_argument("--format", choices=("table", "json", "csv"), default="table",
                        help="output format (default table)")


def run(args: argparse.Namespace) -> int:
    import time

    from runtime.router.audit import AuditQuery, format_rows, parse_time
    try:
        since = parse_time(args.since, time.time()) if args.since else None
        until = parse_time(args.until, time.time()) if args.until else None
    except ValueError as exc:
        print(f"coordinator audit: {exc}", file=sys.stderr)
        return 2
    statuses = [s.strip().upper() for item in args.status for s in item.split(",") if s.strip()]
    q = AuditQuery(edge_id=args.edge, user_id=args.user, command_id=args.command, kind=args.kind, status=statuses,
                   since=since, until=until, limit=args.limit, newest_first=args.desc)
    try:
        rows = _over_http(args, q) if args.url else _from_config(args.config, q)
    except _Failed as exc:
        print(f"coordinator audit: {exc}", file=sys.stderr)
        return exc.code
    format_rows(rows, args.format, sys.stdout)
    return 0


class _Failed(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        self.code = code
        super().__init__(message)


def _from_config(path: str, q: "object") -> list:  # type: ignore[type-arg]
    from runtime.core.errors import ConfigFileError
    from runtime.router.config import load_router_config
    try:
        config = load_router_config(path)
    except ConfigFileError as exc:
        raise _Failed(str(exc), 2) from None
    if config.postgres is not None:
        from runtime.router.audit_postgres import query_postgres_sync
        try:
            return query_postgres_sync(config.postgres.dsn, config.postgres.table, q)  # type: ignore[arg-type]
        except Exception as exc:
            raise _Failed(f"PostgreSQL {config.postgres.dsn}: {exc}") from None
    import sqlite3
    db_path = config.path(config.store.sqlite)
    if not db_path.is_file():
        raise _Failed(f"{db_path}: no audit log yet (the router has not run with this file)")
    from runtime.router.audit_sqlite import SqliteAudit
    from runtime.router.sqlite_db import SqliteDb
    try:
        db = SqliteDb(db_path)
        audit = SqliteAudit(db)
        try:
            return audit.query_now(q)  # type: ignore[arg-type]
        finally:
            db.release()
    except sqlite3.Error as exc:
        raise _Failed(f"{db_path}: {exc}") from None


def _over_http(args: argparse.Namespace, q: "object") -> list:  # type: ignore[type-arg]
    import json
    import time
    import urllib.error
    import urllib.parse
    import urllib.request

    from runtime.router.audit import AuditRow, parse_time
    from runtime.router.states import iso
    if not args.token:
        raise _Failed("--url needs --token", 2)
    params: list[tuple[str, str]] = []
    for name, value in (("edge_id", q.edge_id), ("user_id", q.user_id),  # type: ignore[attr-defined]
                        ("command_id", q.command_id), ("kind", q.kind),  # type: ignore[attr-defined]
                        ("since", iso(q.since)), ("until", iso(q.until))):  # type: ignore[attr-defined]
        if value is not None:
            params.append((name, value))
    params += [("status", s) for s in q.status]  # type: ignore[attr-defined]
    params += [("limit", str(q.limit)), ("order", "desc" if q.newest_first else "asc")]  # type: ignore
    url = f"{args.url.rstrip('/')}/api/v1/audit?{urllib.parse.urlencode(params)}"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {args.token}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise _Failed(f"{url}: HTTP {exc.code}: {exc.read().decode(errors='replace')}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise _Failed(f"{url}: {exc}") from None
    return [AuditRow(**{**r, "at": parse_time(r["at"], time.time())}) for r in body["rows"]]
