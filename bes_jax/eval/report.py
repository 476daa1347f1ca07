"""Regenerate one section of a markdown report in place (other sections are left alone)."""
from __future__ import annotations

from pathlib import Path


def replace_section(doc: Path, heading: str, section: str, title: str = "# Results\n") -> None:
    """Replace the ``## heading`` section of `doc` by `section` (appended if absent); the heading
    is matched as a whole line, so one heading may be a prefix of another's."""
    doc = Path(doc)
    text = doc.read_text() if doc.exists() else title
    start = text.find(heading + "\n")
    if start >= 0:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + section.rstrip() + "\n" + (text[end:] if end >= 0 else "")
    else:
        text = text.rstrip() + "\n\n" + section
    doc.write_text(text)
