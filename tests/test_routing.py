"""Rules in the pipeline: routing decisions applied to tickets and recorded as events."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mails import mail

SAMPLES = Path(__file__).resolve().parent.parent / "rules"


def use_sample_rules(hd) -> None:
    shutil.rmtree(hd.root / "rules")
    shutil.copytree(SAMPLES, hd.root / "rules")


def test_rule_sets_priority_and_every_ticket_shows_why(helpdesk):
    use_sample_rules(helpdesk)
    [res] = helpdesk.ingest(mail(subject="Website outage", body="Our website is down since 9:00.\n"))
    t = helpdesk.show(res["ticket"])
    assert t["priority"] == "P1" and "outage" in t["tags"]
    rule_events = [e for e in t["events"] if e["kind"] == "rule"]
    assert any(e["actor"] == "rule:outage" and e["detail"]["rule"] == "outage" for e in rule_events)


def test_french_and_dutch_keywords(helpdesk):
    use_sample_rules(helpdesk)
    a, b = helpdesk.ingest(mail(subject="Imprimante en panne"), mail(subject="Storing bij de kassa"))
    assert helpdesk.show(a["ticket"])["priority"] == "P1"
    assert helpdesk.show(b["ticket"])["priority"] == "P1"


def test_queue_and_fields_from_rules(helpdesk):
    helpdesk.rule_file("10-billing.yaml", """
        - name: billing
          when: {subject: {contains: invoice}}
          then:
            queue: billing
            extract:
              - {in: body, regex: 'account\\s*(?:number|no\\.?)?\\s*:?\\s*(?P<account>[A-Z]{2}\\d{6})'}
    """)
    [res] = helpdesk.ingest(mail(subject="Wrong invoice", body="My account number: AB123456 was billed twice.\n"))
    t = helpdesk.show(res["ticket"])
    assert t["queue"] == "billing"
    assert t["fields"].get("account") == "AB123456"


def test_spam_is_quarantined_and_never_acknowledged(helpdesk):
    use_sample_rules(helpdesk)
    [res] = helpdesk.ingest(mail(subject="hello", headers={"X-Spam-Flag": "YES"}))
    assert res["outcome"] == "quarantined" and "spam" in res["reason"]
    assert helpdesk.outbox() == []
    listed = json.loads(helpdesk.cli("quarantine", "list", "--json").output)
    assert listed[0]["step"] == "route"


def test_split_makes_one_ticket_per_problem_each_acknowledged(helpdesk):
    use_sample_rules(helpdesk)
    body = "Hello,\n\n1. The printer jams.\n2. The VPN drops every hour.\n3. My mailbox is full.\n\nThanks\n"
    [res] = helpdesk.ingest(mail(subject="Several problems", body=body))
    assert res["outcome"] == "created" and "split into #1, #2, #3" in res["reason"]
    subjects = [helpdesk.show(n)["subject"] for n in (1, 2, 3)]
    assert "printer" in subjects[0].lower() and "vpn" in subjects[1].lower()
    assert helpdesk.show(2)["linked_to"] == 1
    assert sorted(o["ticket"] for o in helpdesk.outbox()) == [1, 2, 3]


def test_ack_false_and_template_choice(helpdesk):
    helpdesk.rule_file("10-noack.yaml", """
        - name: internal
          when: {from: [colleague.test]}
          then: {ack: false}
    """)
    [res] = helpdesk.ingest(mail(sender="bob@colleague.test"))
    assert res["outcome"] == "created"
    assert helpdesk.outbox() == []
    assert any(e["kind"] == "ack-skipped" for e in helpdesk.show(res["ticket"])["events"])


def test_rules_check_names_file_line_and_key(helpdesk):
    path = helpdesk.rule_file("20-bad.yaml", """
        - name: typo
          when: {subjekt: {contains: x}}
          then: {queue: q}
    """)
    res = helpdesk.cli("rules", "check")
    assert res.exit_code == 1
    assert f"{path.name}:" in res.output and "subjekt" in res.output


def test_rules_test_explains_without_storing(helpdesk, tmp_path):
    use_sample_rules(helpdesk)
    eml = tmp_path / "m.eml"
    eml.write_bytes(mail(subject="Production outage", body="server is down"))
    res = helpdesk.cli("rules", "test", "--json", str(eml))
    out = json.loads(res.output)
    assert out["decision"]["priority"] == "P1"
    assert out["hits"][0]["rule"] == "outage"
    human = helpdesk.cli("rules", "test", str(eml)).output
    assert "outage" in human and "priority: P1" in human
    assert json.loads(helpdesk.cli("ticket", "list", "--json").output) == []


def test_rules_list_in_order(helpdesk):
    use_sample_rules(helpdesk)
    rows = json.loads(helpdesk.cli("rules", "list", "--json").output)
    files = [r["file"] for r in rows]
    assert files == sorted(files)
    assert len(rows) >= 8


def test_a_rule_that_changes_nothing_is_not_in_the_history(helpdesk):
    helpdesk.rule_file("10-fields.yaml", """
        - name: serial
          then:
            extract: ['serial\\s*:\\s*(?P<serial>[A-Z0-9]{5,})']
    """)
    a, b = helpdesk.ingest(mail(subject="Broken", body="serial: XY12345\n"), mail(subject="No serial here"))
    assert helpdesk.show(a["ticket"])["fields"] == {"serial": "XY12345"}
    assert [e["actor"] for e in helpdesk.show(a["ticket"])["events"] if e["kind"] == "rule"] == ["rule:serial"]
    assert [e for e in helpdesk.show(b["ticket"])["events"] if e["kind"] == "rule"] == []


def test_rules_check_finds_a_missing_template_and_a_site_template_fixes_it(helpdesk):
    helpdesk.rule_file("10-vip.yaml", """
        - name: vip
          when: {from: [vip.test]}
          then: {template: ack-vip}
    """)
    res = helpdesk.cli("rules", "check")
    assert res.exit_code == 1 and "10-vip.yaml:2" in res.output and "ack-vip.en.txt.j2" in res.output
    eml = helpdesk.root / "m.eml"
    eml.write_bytes(mail(sender="Ann <ann@vip.test>", subject="Help"))
    refused = helpdesk.cli("ingest", str(eml))  # processing refuses to start, as the daemon does
    assert refused.exit_code == 1 and "ack-vip" in refused.output
    (helpdesk.root / "templates").mkdir()
    (helpdesk.root / "templates" / "ack-vip.en.txt.j2").write_text(
        "Subject: {{ token }} Priority service: {{ subject }}\n\nDear {{ name }}, you are first in line.\n")
    assert helpdesk.cli("rules", "check").exit_code == 0
    [res] = helpdesk.ingest(mail(sender="Ann <ann@vip.test>", subject="Help"))
    assert helpdesk.outbox()[0]["subject"] == "[#1] Priority service: Help"
