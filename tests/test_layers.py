"""Who may import whom (docs/architecture.md section 4), checked in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.parametrize("edge", ["mailticket.smtp", "mailticket.imap"])
def test_an_edge_imports_the_inbox_not_the_pipeline(edge):
    # The edges only store and answer: storing needs the inbox, not the pipeline, the
    # worker, the parsers or the rules.
    code = f"import json, sys, {edge}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    loaded = json.loads(out)
    assert "mailticket.inbox" in loaded
    for heavy in ("mailticket.pipeline", "mailticket.worker", "mailticket.app",
                  "mailticket.parsers", "mailticket.rules"):
        assert heavy not in loaded, (heavy, loaded)
