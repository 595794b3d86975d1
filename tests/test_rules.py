"""The rules engine: conditions, actions, order, validation, reload, samples; business hours."""

from __future__ import annotations

import ast
import json
import random
import re
import textwrap
from datetime import UTC, datetime, time
from pathlib import Path

import pytest

import mailticket.rules
from mailticket.errors import RulesError
from mailticket.models import Ticket
from mailticket.parsers import Address, Attachment, ParsedMessage
from mailticket.rules import Decision, Problem, RuleContext, RuleSet, check_rules, load_rules
from mailticket.rules.text import Pattern
from mailticket.rules.view import fold
from mailticket.calendars import from_legacy

SAMPLES = Path(__file__).resolve().parent.parent / "rules"
MONDAY_10 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def msg(
    subject: str = "Printer is broken",
    text: str = "Hello,\n\nmy printer does not print.\n\nAlice\n",
    sender: str = "alice@customer.test",
    to: tuple[str, ...] = ("support@helpdesk.test",),
    cc: tuple[str, ...] = (),
    headers: dict[str, list[str]] | None = None,
    attachments: tuple[Attachment, ...] = (),
    language: str | None = "en",
    new_text: str | None = None,
) -> ParsedMessage:
    return ParsedMessage(
        message_id="<m1@customer.test>", subject=subject, from_=Address("", sender),
        to=[Address("", a) for a in to], cc=[Address("", a) for a in cc],
        headers=headers or {}, text=text, new_text=text if new_text is None else new_text,
        attachments=list(attachments), language=language,
    )


def ctx(**kw) -> RuleContext:
    return RuleContext(**{"now": MONDAY_10, "source": "smtp", **kw})


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def rules(tmp_path: Path, text: str, name: str = "10-test.yaml"):
    write(tmp_path, name, text)
    return load_rules(tmp_path)


def one(tmp_path: Path, when: str, message: ParsedMessage | None = None, **context):
    """Evaluate a single rule `when:` block (YAML, indented by 4) that tags `hit`."""
    rs = rules(tmp_path, f"- name: r\n  applies_to: both\n  when:\n{textwrap.indent(when, '    ')}"
                         "  then:\n    tags: [hit]\n")
    return rs.evaluate(message or msg(), ctx(**context))


def hit(tmp_path: Path, when: str, message: ParsedMessage | None = None, **context) -> bool:
    return bool(one(tmp_path, textwrap.dedent(when), message, **context).hits)


# --- conditions --------------------------------------------------------------------------


@pytest.mark.parametrize("pattern, sender, expected", [
    ("alice@customer.test", "alice@customer.test", True),
    ("ALICE@Customer.test", "alice@customer.test", True),
    ("bob@customer.test", "alice@customer.test", False),
    ("customer.test", "alice@customer.test", True),
    ("'@customer.test'", "alice@customer.test", True),
    ("customer.test", "alice@mail.customer.test", False),
    ("'*.customer.test'", "alice@mail.customer.test", True),
    ("'*@*.customer.test'", "alice@a.mail.customer.test", True),
    ("'*.customer.test'", "alice@customer.test", False),
    ("'al?ce@*'", "alice@customer.test", True),
    ("'alice@*'", "alice@customer.test", True),
    ("'*@customer.*'", "alice@customer.test", True),
    ("'billing@*'", "alice@customer.test", False),
    ("[bob@x.test, customer.test]", "alice@customer.test", True),
])
def test_from_address_domain_glob_and_list(tmp_path, pattern, sender, expected):
    assert hit(tmp_path, f"from: {pattern}\n", msg(sender=sender)) is expected


def test_address_hit_names_the_pattern_and_the_address(tmp_path):
    ev = one(tmp_path, "from: '*@customer.test'\n")
    assert ev.hits[0].matched == [("from matches *@customer.test", "alice@customer.test")]


def test_named_list_file(tmp_path):
    write(tmp_path, "lists/vip.txt", "# VIPs\nceo@big.test\nbig-partner.test  # whole domain\n"
                                      "*.glob.test\n")
    assert hit(tmp_path, "from: {list: vip}\n", msg(sender="ceo@big.test"))
    assert hit(tmp_path, "from: {list: lists/vip.txt}\n", msg(sender="x@big-partner.test"))
    assert hit(tmp_path, "from: [nobody@x.test, {list: vip}]\n", msg(sender="a@b.glob.test"))
    ev = one(tmp_path, "from: {list: vip}\n", msg(sender="ceo@big.test"))
    assert ev.hits[0].matched == [("from in list vip", "ceo@big.test")]
    assert not hit(tmp_path, "from: {list: vip}\n", msg(sender="alice@customer.test"))


def test_to_cc_and_recipient(tmp_path):
    m = msg(to=("billing@helpdesk.test",), cc=("boss@customer.test",))
    assert hit(tmp_path, "to: 'billing@*'\n", m)
    assert not hit(tmp_path, "cc: 'billing@*'\n", m)
    assert hit(tmp_path, "cc: boss@customer.test\n", m)
    assert hit(tmp_path, "recipient: boss@customer.test\n", m)
    assert hit(tmp_path, "recipient: helpdesk.test\n", m)


def test_subject_contains_is_case_insensitive_and_captures(tmp_path):
    ev = one(tmp_path, "subject: outage\n", msg(subject="Big OUTAGE in Ghent"))
    assert ev.hits[0].matched == [("subject contains 'outage'", "OUTAGE")]
    assert hit(tmp_path, "subject: [foo, broken]\n")
    assert not hit(tmp_path, "subject: {contains: PRINTER, case_sensitive: true}\n")
    assert hit(tmp_path, "subject: {contains: Printer, case_sensitive: true}\n")


def test_words_match_whole_words_only(tmp_path):
    assert hit(tmp_path, "subject: {words: [down]}\n", msg(subject="Site is down!"))
    assert not hit(tmp_path, "subject: {words: [down]}\n", msg(subject="Download fails"))
    assert hit(tmp_path, "subject: {words: ['C++']}\n", msg(subject="a C++ question"))
    assert hit(tmp_path, "subject: {words: [panne]}\n", msg(subject="PANNE générale"))


def test_body_regex_is_multiline_and_captures(tmp_path):
    m = msg(text="Hello\nOrder: 12345\nbye")
    ev = one(tmp_path, r"body: {regex: '^order:\s*\d+$'}" + "\n", m)
    assert ev.hits[0].matched == [(r"body matches /^order:\s*\d+$/", "Order: 12345")]
    assert not hit(tmp_path, r"subject: {regex: '^broken'}" + "\n")


def test_new_text_ignores_the_quoted_history(tmp_path):
    m = msg(text="thanks\n> still down", new_text="thanks")
    assert hit(tmp_path, "body: still down\n", m)
    assert not hit(tmp_path, "new_text: still down\n", m)


def test_header_contains_regex_present_absent(tmp_path):
    m = msg(headers={"x-spam-flag": ["YES"], "x-mailer": ["Outlook 16"]})
    assert hit(tmp_path, "header: {X-Spam-Flag: 'yes'}\n", m)
    assert hit(tmp_path, r"header: {X-Mailer: {regex: 'outlook \d+'}}" + "\n", m)
    assert hit(tmp_path, "header: {X-Mailer: true, List-Id: false}\n", m)
    assert not hit(tmp_path, "header: {List-Id: true}\n", m)
    assert not hit(tmp_path, "header: {X-Spam-Flag: 'no'}\n", m)


def test_attachment_by_presence_name_and_type(tmp_path):
    pdf = Attachment("Invoice-42.PDF", "application/pdf", b"%PDF")
    logo = Attachment("logo.png", "image/png", b"png", inline=True)
    with_pdf, only_logo = msg(attachments=(pdf, logo)), msg(attachments=(logo,))
    assert hit(tmp_path, "attachment: true\n", with_pdf)
    assert not hit(tmp_path, "attachment: true\n", only_logo)  # inline parts do not count
    assert hit(tmp_path, "attachment: false\n", only_logo)
    assert hit(tmp_path, "attachment: '*.pdf'\n", with_pdf)
    assert hit(tmp_path, "attachment: 'application/*'\n", with_pdf)
    assert not hit(tmp_path, "attachment: 'image/*'\n", with_pdf)
    assert hit(tmp_path, "attachment: ['*.exe', 'application/pdf']\n", with_pdf)
    assert hit(tmp_path, "attachment: {name: 'invoice*', type: application/pdf}\n", with_pdf)
    assert not hit(tmp_path, "attachment: {name: 'invoice*', type: image/png}\n", with_pdf)
    ev = one(tmp_path, "attachment: '*.pdf'\n", with_pdf)
    assert ev.hits[0].matched[0][1] == "Invoice-42.PDF"


def test_language(tmp_path):
    assert hit(tmp_path, "language: [fr, nl]\n", msg(language="nl"))
    assert not hit(tmp_path, "language: fr\n", msg(language="en"))
    assert not hit(tmp_path, "language: fr\n", msg(language=None))


def test_reply_status_priority_queue_of_the_ticket(tmp_path):
    reply = {"is_reply": True, "ticket_status": "pending", "ticket_priority": "P3",
             "ticket_queue": "billing"}
    assert hit(tmp_path, "reply: true\n", **reply)
    assert not hit(tmp_path, "reply: true\n")
    assert hit(tmp_path, "reply: false\n")
    assert hit(tmp_path, "status: [pending, on-hold]\n", **reply)
    assert hit(tmp_path, "priority: normal\n", **reply)  # aliases work in conditions too
    assert not hit(tmp_path, "priority: P1\n", **reply)
    assert hit(tmp_path, "queue: billing\n", **reply)
    # A new ticket: the mailbox's default queue; no status or priority yet.
    assert hit(tmp_path, "queue: sales\n", queue="sales")
    assert not hit(tmp_path, "status: new\n")


def test_source_and_mailbox(tmp_path):
    assert hit(tmp_path, "source: imap\n", source="imap", mailbox="INBOX")
    assert not hit(tmp_path, "source: [smtp, lmtp]\n", source="ingest")
    assert hit(tmp_path, "mailbox: [INBOX, Support]\n", source="imap", mailbox="support")


def test_business_hours(tmp_path):
    hours = from_legacy("mon-fri", "08:00-18:00", "Europe/Brussels", None)
    sunday = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    assert hit(tmp_path, "business_hours: inside\n", business_hours=hours)
    assert hit(tmp_path, "business_hours: outside\n", business_hours=hours, now=sunday)
    assert not hit(tmp_path, "business_hours: outside\n", business_hours=hours)
    # No business hours configured: always open.
    assert hit(tmp_path, "business_hours: inside\n", now=sunday)


# --- combinators ---------------------------------------------------------------------------


def test_all_any_not_and_implicit_all(tmp_path):
    m = msg(subject="Outage", sender="ceo@big.test")
    assert hit(tmp_path, "subject: outage\nfrom: big.test\n", m)
    assert not hit(tmp_path, "subject: outage\nfrom: small.test\n", m)
    assert hit(tmp_path, "any:\n  - from: small.test\n  - subject: outage\n", m)
    assert not hit(tmp_path, "any:\n  - from: small.test\n  - subject: billing\n", m)
    assert hit(tmp_path, "all:\n  - from: big.test\n  - not: {subject: billing}\n", m)
    assert not hit(tmp_path, "not:\n  any:\n    - subject: billing\n    - from: big.test\n", m)


def test_when_as_a_list_and_matched_lists_every_condition(tmp_path):
    rs = rules(tmp_path, """
        - name: r
          when:
            - subject: outage
            - not: {from: small.test}
          then: {tags: [x]}
        """)
    ev = rs.evaluate(msg(subject="outage!"), ctx())
    assert ev.hits[0].matched == [("subject contains 'outage'", "outage"),
                                  ("not (from domain small.test)", "")]


def test_rule_without_when_always_applies(tmp_path):
    rs = rules(tmp_path, "- name: all\n  then: {tags: [seen]}\n")
    assert rs.evaluate(msg(), ctx()).decision.tags == ("seen",)


# --- actions ---------------------------------------------------------------------------


def test_every_simple_action(tmp_path):
    rs = rules(tmp_path, """
        - name: r
          then:
            queue: hardware
            priority: business-failure
            tier: 3
            assignee: bob@helpdesk.test
            group: field-service
            tags: [printer, hw]
            fields: {contract: gold}
            template: ack-hardware
            notify: [oncall@helpdesk.test, managers]
        """)
    d = rs.evaluate(msg(), ctx()).decision
    assert (d.queue, d.priority, d.tier, d.assignee, d.group) == (
        "hardware", "P1", 3, "bob@helpdesk.test", "field-service")
    assert d.tags == ("printer", "hw") and d.fields == {"contract": "gold"}
    assert d.template == "ack-hardware" and d.ack is True and d.spam is False
    assert d.notify == ("oncall@helpdesk.test", "managers")


def test_no_rule_no_decision(tmp_path):
    ev = rules(tmp_path, "").evaluate(msg(), ctx())
    d = ev.decision
    assert ev.hits == [] and d.queue is d.priority is d.tier is d.template is None
    assert d.ack is True and d.tags == () and d.fields == {} and d.split_parts == ()


@pytest.mark.parametrize("word, expected", [("P1", "P1"), ("critical", "P2"), ("Normal", "P3"),
                                            ("planned", "P4"), ("business failure", "P1")])
def test_priority_aliases(tmp_path, word, expected):
    rs = rules(tmp_path, f"- name: r\n  then: {{priority: {word}}}\n")
    assert rs.evaluate(msg(), ctx()).decision.priority == expected


def test_ack_false(tmp_path):
    rs = rules(tmp_path, "- name: r\n  then: {ack: false}\n")
    assert rs.evaluate(msg(), ctx()).decision.ack is False


def test_extract_fields_by_named_group(tmp_path):
    rs = rules(tmp_path, r"""
        - name: ids
          then:
            extract:
              - 'account\s*(?:no\.?|number)?\s*[:#]?\s*(?P<account>\d{6})'
              - regex: 'S/N\s*[:#]?\s*(?P<serial>[A-Z0-9-]{5,})'
                in: body
              - regex: '^model:\s*(?P<model>.+)$'
                in: [body]
              - 'location:\s*(?P<location>\w+)'
        """)
    m = msg(subject="Account 123456: printer", text="S/N: AB-99812\nModel: LaserJet 4000\n")
    ev = rs.evaluate(m, ctx())
    assert ev.decision.fields == {"account": "123456", "serial": "AB-99812",
                                  "model": "LaserJet 4000"}
    assert "fields.account=123456 (from subject)" in ev.hits[0].actions
    assert any("nothing found" in a for a in ev.hits[0].actions)


def test_tags_add_up_and_later_rules_override(tmp_path):
    rs = rules(tmp_path, """
        - name: a
          then: {tags: [x, y], priority: P3, queue: one}
        - name: b
          then: {tags: [y, z], priority: P1}
        """)
    d = rs.evaluate(msg(), ctx()).decision
    assert d.tags == ("x", "y", "z") and d.priority == "P1" and d.queue == "one"


def test_conditions_see_what_earlier_rules_decided(tmp_path):
    rs = rules(tmp_path, """
        - name: outage
          when: {subject: outage}
          then: {priority: P1}
        - name: vip
          when: {not: {priority: P1}}
          then: {priority: P2}
        - name: billing-team
          when: {queue: billing}
          then: {group: accountants}
        - name: billing
          when: {subject: invoice}
          then: {queue: billing}
        """)
    assert rs.evaluate(msg(subject="outage"), ctx()).decision.priority == "P1"
    assert rs.evaluate(msg(subject="hello"), ctx()).decision.priority == "P2"
    # Rules run in order: billing-team ran before billing set the queue.
    assert rs.evaluate(msg(subject="invoice"), ctx()).decision.group is None


def test_split_numbered_list(tmp_path):
    rs = rules(tmp_path, "- name: s\n  then: {split: numbered}\n")
    text = ("Hello,\n\nwe have three problems:\n1. The printer on floor 2 is jammed.\n"
            "2) Email is down since 9:00.\n   Nobody can send.\n\n   Not even the boss.\n"
            "(3) The VPN drops.\n\nThanks,\nBob\n")
    ev = rs.evaluate(msg(text=text), ctx())
    assert ev.decision.split_parts == (
        "The printer on floor 2 is jammed.",
        "Email is down since 9:00.\n   Nobody can send.\n\n   Not even the boss.",
        "The VPN drops.",
    )
    assert ev.hits[0].actions == ["split numbered: 3 parts"]


def test_split_on_separator_and_not_below_two_parts(tmp_path):
    rs = rules(tmp_path, "- name: s\n  then: {split: {separator: '^-{3,}$'}}\n")
    ev = rs.evaluate(msg(text="printer broken\n---\nscanner broken\n----\n"), ctx())
    assert ev.decision.split_parts == ("printer broken", "scanner broken")
    assert rs.evaluate(msg(text="only one problem"), ctx()).decision.split_parts == ()
    numbered = rules(tmp_path, "- name: s\n  then: {split: numbered}\n")
    assert numbered.evaluate(msg(text="1. just one"), ctx()).decision.split_parts == ()


def test_split_uses_the_new_text(tmp_path):
    rs = rules(tmp_path, "- name: s\n  then: {split: numbered}\n")
    m = msg(text="1. a\n2. b\n> 3. quoted", new_text="1. a\n2. b")
    assert rs.evaluate(m, ctx()).decision.split_parts == ("a", "b")


def test_spam_quarantines_without_ack_and_stops(tmp_path):
    rs = rules(tmp_path, """
        - name: spam
          when: {header: {X-Spam-Flag: 'yes'}}
          then: {spam: true, template: ack}
        - name: later
          then: {tags: [never]}
        """)
    ev = rs.evaluate(msg(headers={"x-spam-flag": ["YES"]}), ctx())
    assert ev.decision.spam is True and ev.decision.ack is False
    assert [h.rule for h in ev.hits] == ["spam"] and ev.decision.tags == ()


# --- order, stop and scope ------------------------------------------------------------------


def test_files_in_name_order_rules_in_file_order_and_stop(tmp_path):
    write(tmp_path, "20-b.yaml", "- name: b1\n  then: {queue: b}\n  stop: true\n"
                                 "- name: b2\n  then: {queue: never}\n")
    write(tmp_path, "10-a.yaml", "- name: a1\n  then: {queue: a}\n- name: a2\n  then: {tier: 1}\n")
    write(tmp_path, "30-c.yaml", "- name: c1\n  then: {queue: never}\n")
    write(tmp_path, "notes.txt", "not a rules file")
    rs = load_rules(tmp_path)
    assert [d["name"] for d in rs.describe()] == ["a1", "a2", "b1", "b2", "c1"]
    ev = rs.evaluate(msg(), ctx())
    assert [h.rule for h in ev.hits] == ["a1", "a2", "b1"] and ev.decision.queue == "b"


def test_stop_as_an_action(tmp_path):
    rs = rules(tmp_path, "- name: a\n  then: {tier: 1, stop: true}\n- name: b\n  then: {tier: 2}\n")
    assert rs.evaluate(msg(), ctx()).decision.tier == 1
    assert rs.describe()[0]["stop"] is True


def test_applies_to_new_reply_both(tmp_path):
    rs = rules(tmp_path, """
        - name: default-new
          then: {tags: [new]}
        - name: replies
          applies_to: reply
          then: {tags: [reply]}
        - name: always
          applies_to: both
          then: {tags: [both]}
        """)
    assert rs.evaluate(msg(), ctx()).decision.tags == ("new", "both")
    reply = ctx(is_reply=True, ticket_status="open", ticket_priority="P3", ticket_queue="general")
    assert rs.evaluate(msg(), reply).decision.tags == ("reply", "both")


def test_hit_records_file_line_and_json(tmp_path):
    rs = rules(tmp_path, "# comment\n\n- name: first\n  then: {tier: 1}\n\n- name: outage\n"
                         "  when: {subject: broken}\n  then: {priority: P1}\n")
    ev = rs.evaluate(msg(), ctx())
    h = ev.hits[1]
    assert (h.rule, h.file, h.line) == ("outage", str(tmp_path / "10-test.yaml"), 6)
    assert h.as_event() == {"rule": "outage", "file": h.file, "line": 6,
                            "matched": [{"condition": "subject contains 'broken'",
                                         "text": "broken"}],
                            "actions": ["priority=P1"]}
    data = json.loads(ev.to_json())
    assert data["decision"]["priority"] == "P1" and data["decision"]["tags"] == []
    assert [x["rule"] for x in data["hits"]] == ["first", "outage"]
    assert "rule 'outage'" in ev.explain() and "priority: P1" in ev.explain()


# --- validation ------------------------------------------------------------------------------


def problems_of(tmp_path: Path, text: str, name: str = "10-x.yaml") -> list[Problem]:
    write(tmp_path, name, text)
    return check_rules(tmp_path)


def only(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, [str(p) for p in problems]
    return problems[0]


def test_unknown_condition_with_suggestion_and_exact_message(tmp_path):
    p = only(problems_of(tmp_path, """
        - name: outage
          when:
            subjekt: outage
          then: {priority: P1}
        """))
    assert (p.file, p.line, p.key, p.rule) == (str(tmp_path / "10-x.yaml"), 3, "subjekt", "outage")
    assert str(p) == (f'{tmp_path}/10-x.yaml:3: rule "outage": unknown condition \'subjekt\' '
                      "(did you mean 'subject'?)")


@pytest.mark.parametrize("text, line, key, words", [
    ("- name: r\n  then:\n    priorty: P1\n", 3, "priorty", "did you mean 'priority'"),
    ("- name: r\n  when: {subject: x}\n  then: {tags: [a]}\n  stpo: true\n", 4, "stpo",
     "did you mean 'stop'"),
    ("- name: r\n  when:\n    tags: [a]\n  then: {tier: 1}\n", 3, "tags", "an action"),
    ("- name: r\n  then:\n    subject: x\n", 3, "subject", "a condition"),
    ("- name: r\n  when:\n    body: {regex: 'a(b'}\n  then: {tier: 1}\n", 3, "regex",
     "missing ), unterminated subpattern"),
    (("- name: r\n  when:\n    body:\n      regex:\n        - ok\n        - '[z-a]'\n"
      "  then: {tier: 1}\n"), 6, "regex", "bad character range"),
    ("- name: r\n  then:\n    priority: P9\n", 3, "priority", "unknown priority 'P9'"),
    ("- name: r\n  when: {priority: urgent}\n  then: {tier: 1}\n", 2, "priority",
     "unknown priority"),
    ("- name: r\n  then:\n    tier: 4\n", 3, "tier", "tier must be 1, 2 or 3"),
    ("- name: r\n  when:\n    from: {list: vips}\n  then: {tier: 1}\n", 3, "from",
     "list 'vips'"),
    ("- name: r\n  applies_to: replies\n  then: {tier: 1}\n", 2, "applies_to", "new, reply"),
    ("- name: r\n  when: {subject: x}\n", 1, "then", "does nothing"),
    ("- when: {subject: x}\n  then: {tier: 1}\n", 1, "name", "needs a name"),
    ("- name: r\n  then:\n    extract: 'account (\\d+)'\n", 3, "regex", "named group"),
    ("- name: r\n  when: {status: opened}\n  then: {tier: 1}\n", 2, "status",
     "did you mean 'open'"),
    ("- name: r\n  when: {subject: {regexp: x}}\n  then: {tier: 1}\n", 2, "regexp",
     "did you mean 'regex'"),
    ("- name: r\n  then: {split: bullets}\n", 2, "split", "numbered"),
    ("- name: r\n  when: {business_hours: maybe}\n  then: {tier: 1}\n", 2, "business_hours",
     "inside or outside"),
])
def test_each_kind_of_mistake_names_file_line_and_key(tmp_path, text, line, key, words):
    p = only(problems_of(tmp_path, text))
    assert p.file == str(tmp_path / "10-x.yaml")
    assert (p.line, p.key) == (line, key), str(p)
    assert words in p.message, str(p)


def test_duplicate_rule_names_across_files(tmp_path):
    write(tmp_path, "10-a.yaml", "- name: outage\n  then: {tier: 1}\n")
    p = only(problems_of(tmp_path, "- name: other\n  then: {tier: 1}\n- name: outage\n"
                                   "  then: {tier: 2}\n", name="20-b.yaml"))
    assert (p.file, p.line, p.key) == (str(tmp_path / "20-b.yaml"), 3, "name")
    assert f"first at {tmp_path / '10-a.yaml'}:1" in p.message


def test_yaml_syntax_error_has_its_line(tmp_path):
    p = only(problems_of(tmp_path, "- name: r\n  then:\n    tier: 1\n  when: [unclosed\n"))
    assert p.file == str(tmp_path / "10-x.yaml") and p.line in (4, 5)
    assert p.message.startswith("YAML syntax error")


def test_duplicate_yaml_key_and_the_rest_of_the_file(tmp_path):
    problems = problems_of(tmp_path, "- name: r\n  then:\n    queue: a\n    queue: b\n"
                                     "    tier: 5\n")
    assert [(p.line, p.key) for p in problems] == [(4, None), (5, "tier")]
    assert 'duplicate key "queue"' in problems[0].message


def test_bad_list_file_line(tmp_path):
    write(tmp_path, "lists/vip.txt", "ok@x.test\nnot an address\n")
    p = only(problems_of(tmp_path, "- name: r\n  when: {from: {list: vip}}\n  then: {tier: 1}\n"))
    assert (p.file, p.line) == (str(tmp_path / "lists/vip.txt"), 2)


def test_every_problem_is_collected_and_raised_together(tmp_path):
    write(tmp_path, "10-a.yaml", """
        - name: a
          when: {subjekt: x, body: {regex: '('}}
          then: {tier: 9, priority: P7}
        - just a string
        """)
    write(tmp_path, "20-b.yaml", "key: not a list\n")
    with pytest.raises(RulesError) as exc:
        load_rules(tmp_path)
    keys = [(Path(p.file).name, p.key) for p in exc.value.problems]
    assert keys == [("10-a.yaml", "subjekt"), ("10-a.yaml", "regex"), ("10-a.yaml", "tier"),
                    ("10-a.yaml", "priority"), ("10-a.yaml", None), ("20-b.yaml", None)]
    assert str(exc.value).count("\n") == 5


def test_missing_folder_means_no_rules(tmp_path):
    assert len(load_rules(tmp_path / "nope")) == 0 and check_rules(tmp_path / "nope") == []


# --- reload ------------------------------------------------------------------------------


# --- the prefilter never changes a result ---------------------------------------------------


@pytest.mark.parametrize("pattern", [
    r"\b(outage|panne|storing)\b", r"account\s*(no|number)?\s*(?P<n>\d+)", "ariza", "strasse",
    "KELVIN", "ſtop", r"(?:x|y)+foo", r"order\s+#?\d{5}", r"(?-i:ABC)def", "défaillance",
    r"a{0}bc", r"(ab)?cd", r"x*yz", "αβγ", r"(?i)İstanbul", "(?x) o u t a g e",
])
@pytest.mark.parametrize("flags", [re.IGNORECASE | re.MULTILINE, 0])
def test_prefilter_agrees_with_the_regex(pattern, flags):
    texts = ["Big OUTAGE today", "Arıza var", "ARIZA", "straße STRASSE", "\u212aELVIN",
             "STOP now", "xxyfoo", "ORDER   #12345", "abcdef", "ABCDEF", "DÉFAILLANCE",
             "bcd", "zz cd", "yz", "ΑΒΓ", "istanbul", "İSTANBUL", "account number 42", ""]
    rx = re.compile(pattern, flags)
    p = Pattern("matches", pattern, rx)
    for t in texts:
        want = rx.search(t)
        assert p.search(t, fold(t)) == (want.group(0) if want else None), (pattern, t)


# --- the index never changes a result -------------------------------------------------------


def test_index_gives_the_same_hits_as_testing_every_rule(tmp_path):
    rng = random.Random(7)
    words = ["outage", "panne", "storing", "order", "ord", "orderly", "invoice", "vpn", "vp",
             "serial", "SN-123", "down", "download", "c++", "ıd", "Straße", "x"]
    senders = ["alice@customer.test", "bob@mail.customer.test", "billing@acme.test",
               "x@a.mail.customer.test", "carol@other.test", "alice@acme.test", "zed@big.test"]
    write(tmp_path, "lists/vip.txt", "zed@big.test\n*.customer.test\n")
    conds = [
        "{from: alice@customer.test}", "{from: customer.test}", "{from: '*@acme.test'}",
        "{from: '*.customer.test'}", "{from: 'billing@*'}", "{from: 'a?ice@*'}",
        "{from: {list: vip}}", "{recipient: '*@helpdesk.test'}", "{cc: [carol@other.test]}",
        "{subject: order}", "{subject: {words: [vp, down]}}",
        "{subject: {contains: SN-, case_sensitive: true}}",
        "{body: {regex: '(ord|inv)(er|oice)\\s'}}",
        "{body: {regex: 'x*'}}", "{new_text: {regex: 'ser[i1]al\\W+sn'}}",
        "{subject: ıd}", "{body: strasse}", "{subject: download}", "{subject: rder}",
        "{subject: vpn}", "{subject: down}", "{header: {X-Prio: '1'}}",
        "{any: [{subject: panne}, {from: acme.test}]}",
        "{all: [{body: outage}, {from: customer.test}]}",
        "{all: [{subject: storing}, {not: {body: vpn}}]}", "{not: {subject: invoice}}",
    ]
    text = "".join(f"- name: r{i}\n  applies_to: both\n  when: {c}\n  then: {{tags: [t{i}]}}\n"
                   for i, c in enumerate(conds))
    text += "- name: always\n  then: {tags: [all]}\n"
    indexed = rules(tmp_path, text)
    plain = RuleSet(indexed.rules, indexed=False)
    for _ in range(400):
        def some(n: int) -> str:
            return " ".join(rng.choice(words) for _ in range(n))
        m = msg(subject=some(3), text=some(12), new_text=some(4), sender=rng.choice(senders),
                cc=(rng.choice(senders),) if rng.random() < 0.3 else (),
                headers={"x-prio": ["1"]} if rng.random() < 0.2 else {})
        for context in (ctx(), ctx(is_reply=True)):
            a, b = indexed.evaluate(m, context), plain.evaluate(m, context)
            assert a.decision == b.decision
            assert [(h.rule, h.matched) for h in a.hits] == [(h.rule, h.matched) for h in b.hits]


def test_common_globs_are_indexed_and_odd_ones_are_not(tmp_path):
    rs = rules(tmp_path, """
        - name: indexed
          when: {from: ['*@a.test', '*.b.test', 'billing@*', c.test, d@e.test]}
          then: {tags: [x]}
        - name: odd
          when: {from: 'a?ice@*'}
          then: {tags: [y]}
        """)
    index = rs._scopes["new"][1]
    assert index.always == [1] and index.indexed == 1


# --- the sample rules ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def samples():
    return load_rules(SAMPLES)


def test_samples_load_cleanly(samples):
    assert check_rules(SAMPLES) == []
    names = [d["name"] for d in samples.describe()]
    assert {"outage", "planned-maintenance", "vip", "billing", "account-number"} <= set(names)


@pytest.mark.parametrize("subject, priority", [
    ("Website outage", "P1"), ("Imprimante en panne", "P1"), ("Storing bij de kassa", "P1"),
    ("URGENT: cannot log in", "P2"), ("Dringend: wachtwoord", "P2"),
    ("Planned maintenance next Sunday: short outage", "P4"),
    ("Maintenance planifiée du serveur", "P4"), ("Gepland onderhoud", "P4"),
    ("Question about my account", None), ("Download does not start", None),
])
def test_samples_priority(samples, subject, priority):
    assert samples.evaluate(msg(subject=subject), ctx()).decision.priority == priority


def test_samples_vip_and_billing(samples):
    vip = samples.evaluate(msg(sender="someone@bigcustomer.example"), ctx()).decision
    assert (vip.priority, vip.tier, "vip" in vip.tags) == ("P2", 2, True)
    vip_outage = samples.evaluate(msg(subject="outage", sender="ceo@bigcustomer.example"), ctx())
    assert vip_outage.decision.priority == "P1"
    pdf = Attachment("f.pdf", "application/pdf", b"")
    bill = samples.evaluate(msg(subject="Facture 2026-03", attachments=(pdf,)), ctx()).decision
    assert (bill.queue, bill.group) == ("billing", "billing")
    assert {"billing", "invoice-attached"} <= set(bill.tags)


def test_samples_fields_split_spam_and_replies(samples):
    m = msg(subject="Printer", text="Account number: 1234567\nSerial: CN-48213X\n"
                                   "Model: LaserJet 4000\nLocation: Ghent, 2nd floor\n")
    assert samples.evaluate(m, ctx()).decision.fields == {
        "account": "1234567", "serial": "CN-48213X", "model": "LaserJet 4000",
        "location": "Ghent, 2nd floor"}
    split = samples.evaluate(msg(subject="Several problems", text="1. printer\n2. mail\n"), ctx())
    assert split.decision.split_parts == ("printer", "mail")
    spam = samples.evaluate(msg(headers={"x-spam-flag": ["YES"]}), ctx())
    assert spam.decision.spam and not spam.decision.ack
    reply = ctx(is_reply=True, ticket_status="open", ticket_priority="P3", ticket_queue="general")
    ev = samples.evaluate(msg(new_text="It is still down!"), reply)
    assert ev.decision.priority == "P1" and [h.rule for h in ev.hits] == ["still-down"]


# --- business hours ------------------------------------------------------------------------


def test_business_hours_days_times_zone_and_holidays():
    hours = from_legacy("mon-fri", "09:00-17:00", "Europe/Brussels", "BE")
    at = lambda *a: datetime(*a, tzinfo=UTC)
    assert hours.is_open(at(2026, 3, 2, 8, 0))  # 09:00 in Brussels (UTC+1)
    assert not hours.is_open(at(2026, 3, 2, 7, 59))
    assert not hours.is_open(at(2026, 3, 2, 16, 0))  # 17:00 local: closed
    assert not hours.is_open(at(2026, 3, 7, 10, 0))  # Saturday
    assert not hours.is_open(at(2026, 12, 25, 10, 0))  # Christmas
    assert hours.holiday(datetime(2026, 7, 21).date()) is not None  # Belgian national day
    assert from_legacy("mon-fri", "08:00-18:00", "UTC", None).is_open(at(2026, 12, 25, 10, 0))  # no holidays
    weekend = from_legacy("fri-mon", "00:00-24:00", "UTC", None)
    assert weekend.is_open(at(2026, 3, 1, 23, 59)) and not weekend.is_open(at(2026, 3, 3, 12, 0))  # Sun; Tue
    assert not from_legacy("mon,wed", "08:00-18:00", "UTC", None).is_open(at(2026, 3, 2, 7, 59))


@pytest.mark.parametrize("kw", [
    {"hours": "18:00-08:00"}, {"hours": "9-17"}, {"days": "mon-frii"},
    {"timezone": "Mars/Olympus"}, {"country": "XX"},
])
def test_business_hours_errors(kw):
    args = {"days": "mon-fri", "hours": "08:00-18:00", "timezone": "UTC", "country": None, **kw}
    with pytest.raises(ValueError, match="business hours"):
        from_legacy(**args)


def test_business_hours_need_an_aware_time():
    with pytest.raises(ValueError):
        from_legacy("mon-fri", "08:00-18:00", "UTC", None).is_open(datetime(2026, 3, 2, 10, 0))


# --- the decision and the package's shape -----------------------------------------------------


def test_decision_ticket_changes(tmp_path):
    """What pipeline._apply needs: set values replace, tags add up sorted, fields merge;
    template, notify, ack and spam are not ticket columns."""
    rs = rules(tmp_path, """
        - name: all
          then: {queue: billing, priority: P1, tier: 2, assignee: bob, tags: [vip, a],
                 fields: {account: '42'}, template: ack-billing, notify: [ops], ack: false}
        """)
    decision = rs.evaluate(msg(), ctx()).decision
    ticket = Ticket(queue="general", priority="P1", tier=1, assignee=None, group=None,
                    tags=["b"], fields={"region": "eu"})
    assert decision.ticket_changes(ticket) == {
        "queue": "billing", "tier": 2, "assignee": "bob", "tags": ["a", "b", "vip"],
        "fields": {"region": "eu", "account": "42"}}
    same = Ticket(queue="billing", priority="P1", tier=2, assignee="bob", group=None,
                  tags=["a", "vip"], fields={})
    assert decision.ticket_changes(same) == {"fields": {"account": "42"}}
    assert Decision().ticket_changes(ticket) == {}


def test_rules_modules_import_one_way():
    """The rules package has no import cycle, conditions never see the evaluator, and only
    the loader imports ruamel.yaml."""
    folder = Path(mailticket.rules.__file__).parent
    imports = {}
    for path in folder.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                found.add(node.module)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [node.module] if isinstance(node, ast.ImportFrom) else [
                    a.name for a in node.names]
                assert not any((n or "").startswith("ruamel") for n in names) or \
                    path.stem == "load", path
        imports[path.stem] = found
    done: list[str] = []  # a topological order exists only without a cycle
    while len(done) < len(imports):
        ready = [m for m in imports if m not in done and imports[m] <= set(done)]
        assert ready, {m: imports[m] - set(done) for m in imports if m not in done}
        done += ready
    for cond in ("view", "text", "addresses", "conditions", "index"):
        assert not imports[cond] & {"evaluate", "decision", "actions", "load"}, cond
