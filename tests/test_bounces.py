"""Bounces through `ingest`: matched by the returned token when the Message-ID was
rewritten, visible to an admin when they match nothing, and a permanent failure
stopping automatic mail to its recipient until it writes again; the schema migration
that stores the marks.  On SQLite and PostgreSQL."""

from __future__ import annotations

import json
import re

from mails import bounce_for, mail


def delivered_ack(helpdesk) -> bytes:
    helpdesk.cli("outbox", "deliver")
    [eml] = sorted((helpdesk.root / "var" / "outgoing").glob("*.eml"), key=lambda p: p.stat().st_mtime)[-1:]
    return eml.read_bytes()


def acks(helpdesk) -> list[dict]:
    return [r for r in helpdesk.outbox() if r["kind"] == "ack"]


def event_kinds(helpdesk, number: int) -> list[str]:
    return [e["kind"] for e in helpdesk.show(number)["events"]]


def test_bounce_with_rewritten_message_id_is_matched_by_the_returned_token(helpdesk):
    helpdesk.ingest(mail(subject="Help", sender="gone@customer.test"))
    ack = re.sub(rb"Message-ID: <[^>]+>", b"Message-ID: <rewritten.1@relay.customer.test>",
                 delivered_ack(helpdesk))
    [res] = helpdesk.ingest(bounce_for(ack))
    assert res["outcome"] == "bounce" and res["ticket"] == 1
    assert "token" in res["reason"]
    assert helpdesk.show(1)["messages"][-1]["kind"] == "bounce"


def test_bounce_without_the_original_is_matched_by_its_own_subject(helpdesk):
    helpdesk.ingest(mail(subject="Help", sender="gone@customer.test"))
    ndr = mail(sender="postmaster@customer.test", subject="Undeliverable: [#1] Help",
               message_id="<ndr@x.test>")
    [res] = helpdesk.ingest(ndr)
    assert res["outcome"] == "bounce" and res["ticket"] == 1


def test_unmatched_bounce_is_listed_for_the_admin(helpdesk):
    stray = bounce_for(mail(subject="Never sent by us", message_id="<stray@elsewhere.test>"))
    [res] = helpdesk.ingest(stray)
    assert res["outcome"] == "bounce" and res["ticket"] is None
    helpdesk.ingest(mail(subject="Ordinary"))
    out = helpdesk.cli("inbox", "list", "--outcome", "bounce", "--unmatched", "--json")
    assert out.exit_code == 0, out.output
    [row] = json.loads(out.output)
    assert row["message_id"] == "<dsn1@mx.customer.test>" and row["ticket"] is None
    assert "no ticket matches" in row["reason"]
    text = helpdesk.cli("inbox", "list", "--outcome", "bounce").output
    assert "bounce" in text and "no ticket matches" in text
    assert "--unmatched" in helpdesk.cli("inbox", "list", "--help").output


def test_permanent_bounce_stops_automatic_mail_until_the_address_writes_again(helpdesk):
    helpdesk.ingest(mail(subject="Help", sender="gone@customer.test"))
    ack = delivered_ack(helpdesk)
    # A transient failure, and a permanent one of someone not on the ticket: no mark.
    helpdesk.ingest(bounce_for(ack).replace(b"Status: 5.1.1", b"Status: 4.2.2"),
                    bounce_for(ack).replace(b"<dsn1@", b"<dsn2@").replace(
                        b"rfc822; gone@customer.test", b"rfc822; ceo@customer.test"))
    assert "bounced" not in event_kinds(helpdesk, 1)
    [res] = helpdesk.ingest(bounce_for(ack).replace(b"<dsn1@", b"<dsn3@"))  # Status: 5.1.1 for gone@
    assert res["ticket"] == 1
    bounced = [e for e in helpdesk.show(1)["events"] if e["kind"] == "bounced"]
    assert [e["detail"] for e in bounced] == [{"address": "gone@customer.test", "status": "5.1.1"}]
    # A new message from the address (a forged From is how acknowledgements bounce): no ack.
    [res, ceo] = helpdesk.ingest(mail(subject="Again", sender="gone@customer.test"),
                                 mail(subject="Hi", sender="ceo@customer.test"))
    assert res["outcome"] == "created" and "bounced (5.1.1)" in res["reason"]
    assert [a["to"] for a in acks(helpdesk)] == ["ceo@customer.test", "gone@customer.test"]
    # A reply within its ticket proves the address reads mail: the mark is cleared.
    [res] = helpdesk.ingest(mail(subject="Re: [#2] Again", sender="gone@customer.test"))
    assert res["outcome"] == "appended"
    assert "bounce-cleared" in event_kinds(helpdesk, 2)
    helpdesk.ingest(mail(subject="Third", sender="gone@customer.test"))
    assert len(acks(helpdesk)) == 3


def test_schema_v1_database_migrates(helpdesk):
    from playhouse.migrate import SchemaMigrator, migrate

    from mailticket.db import SCHEMA_VERSION, open_database, schema_version
    from mailticket.models import Bounced, SchemaVersion

    db = open_database(helpdesk.db_url)
    # Make it what a release before schema 2 left: no to_domain, no bounced table.
    migrator = SchemaMigrator.from_database(db)
    migrate(migrator.drop_column("outbox", "to_domain"))
    db.drop_tables([Bounced])
    SchemaVersion.delete().where(SchemaVersion.version > 1).execute()
    db.execute_sql("INSERT INTO outbox (kind, automatic, mail_from, to_addr, subject, body, headers, "
                   "message_id, state, attempts, created_at) VALUES ('ack', %s, 's@h.test', "
                   "'Old@Customer.TEST', 's', 'b', '{}', '<o@h.test>', 'sent', 0, '2026-03-02 10:00:00')"
                   .replace("%s", db.param), [True])
    db.close()
    db = open_database(helpdesk.db_url)
    try:
        assert schema_version(db) == SCHEMA_VERSION  # every later migration ran too
        assert db.execute_sql("SELECT to_domain FROM outbox").fetchone()[0] == "customer.test"
        assert Bounced.select().count() == 0
        # Schema 5 counts automatic mail in AutoCount: the indexes that walked the outbox went.
        assert "outbox_to_domain_created_at" not in {i.name for i in db.get_indexes("outbox")}
        assert db.table_exists("autocount")
    finally:
        db.close()
    [res] = helpdesk.ingest(mail(subject="After the upgrade"))
    assert res["outcome"] == "created" and len(acks(helpdesk)) == 2  # the old row and ours
