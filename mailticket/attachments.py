"""Attachment files on disk, content-addressed: the same bytes are stored once.

`save(payload)` writes `ROOT/ab/cd/abcd...` (the SHA-256 of the bytes) when it is
not there yet and returns the hash.  A file written for a message whose
transaction then rolls back is harmless: it is only ever reached through a row
that names its hash, and a later identical attachment reuses it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


class AttachmentStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def save(self, payload: bytes) -> str:
        digest = hashlib.sha256(payload).hexdigest()
        target = self.path(digest)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            # Write aside and rename, so a crash never leaves a half file under the final name.
            tmp = target.with_name(f".{digest}.{os.getpid()}.tmp")
            tmp.write_bytes(payload)
            os.replace(tmp, target)
        return digest

    def read(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()
