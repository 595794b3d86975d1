"""Shared fixtures: a helpdesk folder on a real database (SQLite file or PostgreSQL).

Tests that take the `backend` fixture run once per backend: SQLite, and the
PostgreSQL server on 127.0.0.1:5432 (a database of our own per run, random name,
dropped at the end).  PostgreSQL is required, never skipped: `make test` and
`.ci/run` make sure it is running.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest_plugins = ["conftest_dovecot", "postfix"]  # private Dovecot (IMAP tests), Postfix (deploy.md)

PG_ADMIN_DSN = os.environ.get("MAILTICKET_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


@contextlib.contextmanager
def new_pg_database(prefix: str = "mailticket_test_"):
    """A new, empty PostgreSQL database (a random name) for as long as the block lasts."""
    import psycopg2

    name = prefix + secrets.token_hex(4)
    conn = psycopg2.connect(PG_ADMIN_DSN)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_DSN.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.close()


@pytest.fixture(scope="session")
def pg_url():
    """A fresh PostgreSQL database for this test run."""
    with new_pg_database() as url:
        yield url
        from mailticket.models import database_proxy

        if database_proxy.obj is not None:
            database_proxy.obj.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request):
    return request.param


@pytest.fixture
def db_url(backend, tmp_path, request):
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'mailticket.db'}"
        return
    url = request.getfixturevalue("pg_url")
    yield url
    # Empty every table between tests (faster than a database per test).
    from mailticket.db import open_database
    from mailticket.models import ALL_MODELS

    db = open_database(url)
    tables = ", ".join(f'"{m._meta.table_name}"' for m in ALL_MODELS)
    db.execute_sql(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
    db.close()


class Helpdesk:
    """A helpdesk folder with its config, and the CLI to drive it."""

    def __init__(self, root: Path, db_url: str) -> None:
        self.root = root
        self.db_url = db_url
        self.config_path = root / "mailticket.toml"
        (root / "rules").mkdir(exist_ok=True)
        self.write_config()

    def write_config(self, extra: str = "", **helpdesk) -> None:
        hd = {"name": "Test Support", "address": "support@helpdesk.test", "auto_reply_limit": 5}
        hd.update(helpdesk)
        lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in hd.items())
        self.config_path.write_text(
            f"[helpdesk]\n{lines}\n\n[database]\nurl = {json.dumps(self.db_url)}\n\n"
            + textwrap.dedent(extra),
            encoding="utf-8",
        )

    def rule_file(self, name: str, text: str) -> Path:
        path = self.root / "rules" / name
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    def cli(self, *args: str, input: bytes | None = None):
        runner = CliRunner()
        return runner.invoke(
            __import__("mailticket.cli", fromlist=["main"]).main,
            ["--config", str(self.config_path), *args],
            input=input,
            catch_exceptions=False,
        )

    def ingest(self, *raws: bytes) -> list[dict]:
        """Ingest raw messages (one .eml file each) and return the JSON lines."""
        paths = []
        for raw in raws:
            path = self.root / f"in-{secrets.token_hex(4)}.eml"
            path.write_bytes(raw)
            paths.append(str(path))
        result = self.cli("ingest", "--json", *paths)
        assert result.exit_code == 0, result.output
        return [json.loads(line) for line in result.output.splitlines() if line.strip()]

    def show(self, number: int) -> dict:
        result = self.cli("ticket", "show", str(number), "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    def outbox(self) -> list[dict]:
        result = self.cli("outbox", "list", "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.output)


@pytest.fixture
def helpdesk(tmp_path, db_url):
    hd = Helpdesk(tmp_path, db_url)
    yield hd
    from mailticket.models import database_proxy

    if database_proxy.obj is not None:
        database_proxy.obj.close()
