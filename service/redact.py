"""Error text for users without the server's file system in it.

A message naming `/srv/bitplan/data/blobs/ab/ab12...` tells an attacker where the data lives and tells
a user nothing they can act on; the file's own name is all that is useful, so every absolute path in an
error shown over HTTP is cut to its last part.
"""

from __future__ import annotations

import re

__all__ = ["redact_paths"]

# An absolute path: a slash not inside a word, URL or relative path, then at least two components;
# not the API's own routes (/v1/...), which messages name so that a user knows where to go next.
_PATH = re.compile(r"(?<![\w:/.~-])/(?!v1/)(?:[^\s/'\"(),:;]+/)+([^\s/'\"(),:;]*)")


def redact_paths(text: str) -> str:
    return _PATH.sub(lambda m: m.group(1) or "…", text)
