"""What an installed wheel needs: the sample rules inside the package, PostgreSQL as an extra.

The wheel itself is built, installed into a fresh virtual environment and run by
scripts/wheel-smoke.sh (CI: `make wheel-smoke`); these tests keep its premises true
on the checkout.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from click.testing import CliRunner

from mailticket import cli

ROOT = Path(__file__).resolve().parent.parent


def files_under(folder) -> dict[str, bytes]:
    """{relative path: content} of every file under a Path or importlib Traversable."""
    out: dict[str, bytes] = {}
    for item in folder.iterdir():
        if item.is_dir():
            out.update({f"{item.name}/{k}": v for k, v in files_under(item).items()})
        else:
            out[item.name] = item.read_bytes()
    return out


def test_the_sample_rules_ship_in_the_package_with_one_home_in_git():
    link = ROOT / "mailticket" / "sample_rules"
    assert link.is_symlink() and link.resolve() == (ROOT / "rules").resolve()  # no copy to drift
    shipped = files_under(cli.SAMPLE_RULES)  # what `init` reads, through importlib.resources
    assert shipped == files_under(ROOT / "rules")
    assert {"10-spam.yaml", "README.md", "lists/vip.txt"} <= shipped.keys()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "sample_rules/**/*" in project["tool"]["setuptools"]["package-data"]["mailticket"]


def test_postgresql_is_an_extra_and_the_test_extra_brings_it():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    names = [re.match(r"[\w.-]+", d).group().lower() for d in project["dependencies"]]
    assert "psycopg2-binary" not in names
    assert "apscheduler" in names  # the daemon's timers process uses it (issue 12)
    assert project["optional-dependencies"]["postgres"] == ["psycopg2-binary>=2.9"]
    assert "mailticket[postgres]" in project["optional-dependencies"]["test"]


def test_a_postgresql_url_without_the_driver_names_the_extra(tmp_path):
    """As after `pip install mailticket` without [postgres]: no psycopg2, no psycopg."""
    assert CliRunner().invoke(cli.main, ["init", str(tmp_path)]).exit_code == 0
    cfg = tmp_path / "mailticket.toml"
    text = cfg.read_text(encoding="utf-8")
    cfg.write_text(text.replace('url = "sqlite:///var/mailticket.db"',
                                'url = "postgresql://me:secret@127.0.0.1/helpdesk"'), encoding="utf-8")
    no_driver = ("import sys; sys.modules['psycopg2'] = sys.modules['psycopg'] = None; "
                 "from mailticket.cli import main; main()")
    res = subprocess.run([sys.executable, "-c", no_driver, "--config", str(cfg), "ticket", "list"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1, res.stderr  # a configuration problem, not 75 "try again later"
    assert "pip install 'mailticket[postgres]'" in res.stderr
    assert "[database] url" in res.stderr and "secret" not in res.stderr
    assert "Traceback" not in res.stderr
