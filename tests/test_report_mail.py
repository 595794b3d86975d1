"""The report mailed to the admins on a schedule ([report] mail_to), by the timed jobs' pass:
a frozen clock, the real pass, the outbox row with the HTML report attached; once per
period, also after days of downtime."""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from mailticket import config, jobs
from mailticket.app import open_app
from mailticket.attachments import AttachmentStore
from mailticket.clock import FrozenClock
from mailticket.db import writing
from mailticket.ingest import store_and_process
from mailticket.models import Job, Outbox

from mails import mail

BXL = ZoneInfo("Europe/Brussels")


@pytest.fixture
def desk(helpdesk, tmp_path):
    helpdesk.write_config('[report]\nmail_to = ["lead@helpdesk.test", "boss@helpdesk.test"]\n',
                          timezone="Europe/Brussels")
    clock = FrozenClock(datetime(2026, 6, 3, 10, 0, tzinfo=BXL).astimezone(timezone.utc))  # a Wednesday
    app = open_app(config.load(helpdesk.config_path), clock=clock)
    for n in range(3):
        path = tmp_path / f"m{n}.eml"
        path.write_bytes(mail(subject=f"Problem {n}", sender=f"c{n}@customer.test"))
        store_and_process(app, (str(path),), batch=10)
    yield app, clock
    app.close()


def tick(app, clock, when: datetime) -> list[dict]:
    """The pass's report actions (the tickets' SLA jobs run too; not this test's concern)."""
    clock.set(when.astimezone(timezone.utc))
    with writing(), app.db.atomic():
        return [a for a in jobs.tick(app.pipeline.env, clock.now()).actions if a["ticket"] is None]


def test_the_weekly_report_goes_to_the_admins_once_a_week_with_the_html_attached(desk):
    app, clock = desk
    assert tick(app, clock, datetime(2026, 6, 3, 10, 1, tzinfo=BXL)) == []
    [job] = Job.select()
    assert job.next_at == datetime(2026, 6, 8, 7, 0, tzinfo=BXL).astimezone(timezone.utc)  # Monday 07:00
    assert tick(app, clock, datetime(2026, 6, 8, 6, 59, tzinfo=BXL)) == []
    [done] = tick(app, clock, datetime(2026, 6, 8, 7, 0, tzinfo=BXL))
    assert done["action"] == "report" and done["to"] == ["lead@helpdesk.test", "boss@helpdesk.test"]
    rows = list(Outbox.select().where(Outbox.kind == "report").order_by(Outbox.id))
    assert [r.to_addr for r in rows] == ["lead@helpdesk.test", "boss@helpdesk.test"]
    body = rows[0].body
    assert "Tickets:              3" in body and "2026-06-01 to 2026-06-08" in rows[0].subject
    [attached] = rows[0].attachments
    assert attached["content_type"] == "text/html"
    html = AttachmentStore(app.config.paths.attachments).read(attached["sha256"]).decode()
    assert "<html" in html.lower() and "data:image/png;base64," in html
    # Once: the same time again sends nothing; after a week of downtime, one report, not two.
    assert tick(app, clock, datetime(2026, 6, 8, 7, 5, tzinfo=BXL)) == []
    [late] = tick(app, clock, datetime(2026, 6, 24, 12, 0, tzinfo=BXL))
    assert late["action"] == "report"
    assert Outbox.select().where(Outbox.kind == "report").count() == 4
    [job] = Job.select()
    assert job.next_at == datetime(2026, 6, 29, 7, 0, tzinfo=BXL).astimezone(timezone.utc)
