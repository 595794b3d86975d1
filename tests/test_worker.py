"""The worker: batches, savepoints, and several workers sharing one database."""

from __future__ import annotations

import threading

from mails import mail

from mailticket import inbox
from mailticket.app import open_app
from mailticket.config import load
from mailticket.models import Inbox, Message, Ticket
from mailticket.worker import InboxWorker


def test_two_workers_process_each_message_once(helpdesk):
    app = open_app(load(helpdesk.config_path), batch=10)
    ids = inbox.store_many([inbox.Incoming(mail(subject=f"m{n}"), "ingest") for n in range(120)],
                            now=app.clock.now())
    assert len(ids) == 120
    results: list = []
    errors: list = []

    def work() -> None:
        try:
            results.extend(app.worker.run_pending())
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            app.db.close()  # this thread's connection

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert sorted(r.inbox_id for r in results) == sorted(ids)  # every row once, none twice
    assert Ticket.select().count() == 120
    assert Message.select().where(Message.direction == "in").count() == 120
    assert Inbox.select().where(Inbox.state != "done").count() == 0
    app.close()


def test_a_failing_message_does_not_undo_its_batch(helpdesk, monkeypatch):
    from mailticket import pipeline

    real = pipeline.record

    def picky(run, env):
        if run.parsed.subject == "poison":
            raise ValueError("cannot record this one")
        real(run, env)

    monkeypatch.setattr(pipeline, "STEPS", tuple((n, picky if n == "record" else f) for n, f in pipeline.STEPS))
    monkeypatch.setattr(pipeline.Pipeline.__init__, "__defaults__", (pipeline.STEPS,))
    app = open_app(load(helpdesk.config_path), batch=50)
    inbox.store_many([inbox.Incoming(mail(subject=s), "ingest") for s in ("a", "poison", "b")],
                      now=app.clock.now())
    outcomes = [r.outcome for r in app.worker.run_pending()]
    assert outcomes == ["created", "quarantined", "created"]
    assert Ticket.select().count() == 2
    assert Message.select().count() == 4  # two customer messages and two acknowledgements
    bad = Inbox.get(Inbox.state == "quarantined")
    assert bad.step == "record" and "cannot record" in bad.reason
    app.close()


def test_a_backlog_is_taken_in_growing_batches(helpdesk):
    class Recording(InboxWorker):
        sizes: list[int] = []

        def _pending(self, ids, after, size):
            self.sizes.append(size)
            return super()._pending(ids, after, size)

    app = open_app(load(helpdesk.config_path))
    worker = Recording(app.pipeline, batch=2, most=8)
    inbox.store_many([inbox.Incoming(mail(subject=f"m{n}"), "ingest") for n in range(20)],
                      now=app.clock.now())
    assert len(worker.run_pending()) == 20
    # Small first (fresh mail waits for it), doubling while every batch is full, capped.
    assert worker.sizes == [2, 4, 8, 8]
    inbox.store_many([inbox.Incoming(mail(subject="new"), "ingest")], now=app.clock.now())
    worker.sizes.clear()
    assert len(worker.run_pending()) == 1
    assert worker.sizes == [2]  # a new pass starts small again
    app.close()


def test_store_many_returns_each_message_its_own_id(helpdesk):
    app = open_app(load(helpdesk.config_path))
    raws = [mail(subject=f"m{n}") for n in range(inbox.STORE_ROWS + 5)]  # two statements
    ids = inbox.store_many([inbox.Incoming(raw, "ingest") for raw in raws], now=app.clock.now())
    assert [bytes(Inbox.get_by_id(i).raw) for i in ids] == raws
    app.close()
