"""The sample `mailticket.toml` at the repository root documents every key of the schema.

Every section and key that `config.py` accepts is in the sample, with its default
value and a comment; the sample loads without error.  `[[imap]]` is there commented
out (a helpdesk has zero or more mailboxes): its keys are checked all the same.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from mailticket import config

SAMPLE = Path(__file__).resolve().parent.parent / "mailticket.toml"
_SECTION = re.compile(r"^#?\s*\[{1,2}(\w+)\]{1,2}")
_KEY = re.compile(r"^(#\s?)?(\w+)\s*=")


def sample_keys() -> dict[tuple[str, str], tuple[object, bool, bool]]:
    """(section, key) -> (value, commented out, has a comment)."""
    out: dict[tuple[str, str], tuple[object, bool, bool]] = {}
    section = ""
    for line in SAMPLE.read_text(encoding="utf-8").splitlines():
        if line.startswith("# [calendars.office]"):  # the named tables' examples, at the end
            break
        if m := _SECTION.match(line):
            section = m.group(1)
            continue
        m = _KEY.match(line)
        if m and section:
            commented, key = m.groups()
            text = line[len(commented or ""):]
            value = tomllib.loads(text)[key]  # TOML itself reads the value and drops the comment
            has_comment = "#" in text.replace(str(value), "")
            out[(section, key)] = (value, bool(commented), has_comment)
    return out


def schema() -> dict[tuple[str, str], object]:
    out = {}
    for section in dataclasses.fields(config.Config):
        if section.name in ("path", "calendars", "queues", "oauth"):  # named tables: test_named_tables_*
            continue
        cls = config.Imap if section.name == "imap" else section.type
        if isinstance(cls, str):
            cls = getattr(config, cls.split("[")[-1].rstrip(".,] "), None) or getattr(
                config, section.name.capitalize())
        instance = cls()
        for f in dataclasses.fields(instance):
            if (section.name, f.name) != ("sla", "policies"):
                out[(section.name, f.name)] = getattr(instance, f.name)
    return out


def test_named_tables_are_shown_in_the_sample_and_the_examples_load():
    """[calendars.NAME], [queues.NAME] and [sla.policies.NAME] are commented examples in
    the sample: uncommented, they load."""
    text = SAMPLE.read_text(encoding="utf-8")
    block = text[text.index("# [calendars.office]"):text.index("# (end of the named tables)")]
    example = "\n".join(line[2:] if line.startswith("# ") else "" for line in block.splitlines())
    data = tomllib.loads(example)
    cfg = config.from_dict(data, SAMPLE)
    assert set(cfg.calendars) == {"office", "always"} and set(cfg.queues) == {"billing"}
    assert cfg.oauth["m365"].provider == "microsoft" and cfg.oauth["m365"].token_file.endswith("m365.json")
    # every key of [oauth.NAME] is shown in the example
    block_keys = {line[2:].split("=")[0].strip() for line in block.splitlines() if "=" in line}
    assert {f.name for f in dataclasses.fields(config.OAuth)} <= block_keys
    assert cfg.sla.policies["gold"].first_response["P1"] == 15


def test_the_sample_loads():
    cfg = config.load(SAMPLE)
    assert cfg.helpdesk.address and cfg.imap == ()


def test_every_key_is_in_the_sample_with_its_default_and_a_comment():
    have, want = sample_keys(), schema()
    missing = sorted(set(want) - set(have))
    unknown = sorted(set(have) - set(want))
    assert not missing, f"keys missing from mailticket.toml: {missing}"
    assert not unknown, f"keys in mailticket.toml that the schema does not know: {unknown}"
    for key, default in want.items():
        value, _, comment = have[key]
        expected = list(default) if isinstance(default, tuple) else default
        assert value == expected, f"[{key[0]}] {key[1]}: sample says {value!r}, default is {default!r}"
        assert comment, f"[{key[0]}] {key[1]} has no comment"


@pytest.mark.parametrize("section", sorted({s for s, _ in schema()}))
def test_every_section_is_in_the_readme(section):
    readme = (SAMPLE.parent / "README.md").read_text(encoding="utf-8")
    assert f"[{section}]" in readme or f"[[{section}]]" in readme
