"""Real English text available offline, split into calibration and evaluation by document.

Documents: the Python language reference shipped with every CPython (`pydoc_data.topics`, one
document per topic: prose with code examples) and Debian's licence texts in
/usr/share/common-licenses. Nothing is downloaded.

Split (no document, and no licence family, on both sides):
- calibration: the even-numbered pydoc topics (sorted by name) and the GNU family (GPL-*, LGPL-*,
  GFDL-*), whose versions share much wording with one another;
- evaluation: the odd-numbered pydoc topics and the other licences (Apache-2.0, MPL-*, Artistic,
  CC0-1.0, BSD).
Symlinks (GPL → GPL-3) are skipped so no text is read twice.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

LICENSES = "/usr/share/common-licenses"
GNU = ("GPL", "LGPL", "GFDL")


@dataclass(frozen=True)
class Document:
    name: str
    text: str


def documents() -> tuple[list[Document], list[Document]]:
    """(calibration documents, evaluation documents), disjoint, in a fixed order."""
    import pydoc_data.topics

    calibration, evaluation = [], []
    for i, name in enumerate(sorted(pydoc_data.topics.topics)):
        doc = Document(f"pydoc:{name}", pydoc_data.topics.topics[name])
        (calibration if i % 2 == 0 else evaluation).append(doc)
    if os.path.isdir(LICENSES):
        for name in sorted(os.listdir(LICENSES)):
            path = os.path.join(LICENSES, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            with open(path, encoding="utf-8", errors="replace") as fh:
                doc = Document(f"license:{name}", fh.read())
            (calibration if name.startswith(GNU) else evaluation).append(doc)
    return calibration, evaluation


def token_windows(tokenizer, docs: Sequence[Document], windows: int, length: int) -> torch.Tensor:
    """(windows, length) token ids: the documents tokenized and joined with EOS between them, cut
    into consecutive windows, then `windows` of them taken evenly across the whole stream (so every
    part of the corpus is represented, not only its first documents)."""
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for doc in docs:
        stream.extend(tokenizer(doc.text, add_special_tokens=False)["input_ids"])
        if eos is not None:
            stream.append(int(eos))
    available = len(stream) // length
    if available < windows:
        raise ValueError(f"text: {len(stream)} tokens make only {available} windows of {length}, {windows} asked")
    picks = [round(i * (available - 1) / max(windows - 1, 1)) for i in range(windows)]
    ids = torch.tensor(stream[: available * length], dtype=torch.long).reshape(available, length)
    return ids[picks]


def corpus_summary(docs: Sequence[Document]) -> str:
    chars = sum(len(d.text) for d in docs)
    kinds = sorted({d.name.split(":", 1)[0] for d in docs})
    return f"{len(docs)} documents ({', '.join(kinds)}), {chars / 1e3:.0f}k characters"
