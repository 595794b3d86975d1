"""The files an agent attaches to a reply go to the customer too (outbox.build, schema v4).

Through a real ingest on both backends: an agent's signed reply with a PDF becomes outbox
rows that name the stored files, and `outbox deliver` to the folder transport writes a
multipart/mixed message whose text is the agent's and whose PDF keeps its name and bytes;
a text-only message keeps the single text/plain part.  A schema v3 database gains the
outbox's `attachments` column and its queued rows still go out.
"""

from __future__ import annotations

import email
from datetime import datetime, timedelta, timezone
from email.policy import default

import pytest

from mailticket import auth

from mails import mail

SECRET = b"attachment-secret"
HD = "support@helpdesk.test"
BOB = "bob@agents.test"
# Bytes a text path would damage: NUL, CR, LF, 8-bit, no final newline.
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 40 + b"\r\n%%EOF"


@pytest.fixture
def desk(helpdesk, tmp_path, monkeypatch):
    """A helpdesk with a secret, agent Bob, and ticket #1 from Alice with Dave in CC."""
    monkeypatch.delenv("MAILTICKET_AGENT_SECRET", raising=False)
    (tmp_path / "secret").write_bytes(SECRET)
    helpdesk.write_config(f'[agents]\nsecret_file = "{tmp_path / "secret"}"\n')
    assert helpdesk.cli("agents", "add", BOB, "--name", "Bob").exit_code == 0
    [res] = helpdesk.ingest(mail(cc="dave@customer.test"))
    assert res["outcome"] == "created" and res["ticket"] == 1
    return helpdesk


def signed_reply(body: str, attachments=()) -> bytes:
    expires = datetime.now(timezone.utc) + timedelta(days=30)
    to = auth.reply_address(HD, ticket=1, agent=BOB, purpose="reply", expires=expires, secret=SECRET)
    return mail(sender=f"Bob <{BOB}>", to=to, subject="Re: [#1] Printer is broken", body=body,
                attachments=list(attachments))


def delivered(helpdesk, kind: str) -> list[email.message.EmailMessage]:
    """Deliver the outbox to its folder; the messages of that outbox kind, by recipient."""
    rows = {r["message_id"] for r in helpdesk.outbox() if r["kind"] == kind}
    assert helpdesk.cli("outbox", "deliver").exit_code == 0
    assert not [r for r in helpdesk.outbox() if r["state"] != "sent"]
    found = [email.message_from_bytes(p.read_bytes(), policy=default)
             for p in sorted((helpdesk.root / "var" / "outgoing").glob("*.eml"))]
    return sorted((m for m in found if m["Message-ID"] in rows), key=lambda m: str(m["To"]))


def test_the_pdf_an_agent_attaches_reaches_the_customer_and_the_cc_intact(desk):
    files = [("report.pdf", "application/pdf", PDF), ("Facture n°12 été.pdf", "application/pdf", b"%PDF-2\n")]
    [res] = desk.ingest(signed_reply("Here is the report you asked for.\n\nBob", files))
    assert res["outcome"] == "agent-reply", res
    to_alice, to_dave = delivered(desk, "reply")
    assert to_alice["To"] == "alice@customer.test" and to_dave["To"] == "dave@customer.test"
    for msg in (to_alice, to_dave):
        assert msg.get_content_type() == "multipart/mixed"
        assert msg["From"].addresses[0].addr_spec == HD and msg["Subject"] == "Re: [#1] Printer is broken"
        assert "Here is the report" in msg.get_body(("plain",)).get_content()
        parts = list(msg.iter_attachments())
        assert [(p.get_filename(), p.get_content_type()) for p in parts] == [
            ("report.pdf", "application/pdf"),
            ("Facture n°12 été.pdf", "application/pdf"),
        ]
        assert parts[0].get_content() == PDF and parts[1].get_content() == b"%PDF-2\n"
    # The history keeps them on the agent's message as before.
    [stored] = [m for m in desk.show(1)["messages"] if m["kind"] == "agent-reply"]
    assert stored["message_id"] == to_alice["Message-ID"]


def test_a_text_only_message_stays_one_text_part(desk):
    desk.ingest(signed_reply("Please restart it.\n"))
    [ack] = delivered(desk, "ack")
    [reply, _] = delivered(desk, "reply")
    for msg in (ack, reply):
        assert msg.get_content_type() == "text/plain" and not msg.is_multipart()
    assert [r["kind"] for r in desk.outbox() if r["kind"] == "reply"] == ["reply", "reply"]


def test_schema_v3_database_migrates(desk):
    from playhouse.migrate import SchemaMigrator, migrate

    from mailticket.db import SCHEMA_VERSION, open_database, schema_version
    from mailticket.models import SchemaVersion

    # Make it what a release of schema 3 left: an outbox without attachments, a row queued.
    db = open_database(desk.db_url)
    migrate(SchemaMigrator.from_database(db).drop_column("outbox", "attachments"))
    SchemaVersion.delete().where(SchemaVersion.version > 3).execute()
    db.close()
    db = open_database(desk.db_url)
    try:
        assert schema_version(db) == SCHEMA_VERSION >= 4
        assert "attachments" in {c.name for c in db.get_columns("outbox")}
    finally:
        db.close()
    [ack] = delivered(desk, "ack")  # queued before the upgrade: text only, delivered
    assert ack["To"] == "alice@customer.test" and not ack.is_multipart()
    desk.ingest(signed_reply("The report.\n", [("report.pdf", "application/pdf", PDF)]))
    to_alice, _ = delivered(desk, "reply")
    [pdf] = to_alice.iter_attachments()
    assert pdf.get_filename() == "report.pdf" and pdf.get_content() == PDF
