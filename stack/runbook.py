"""The runbook (docs/runbook.md) as an HTML page, so an alert's ``runbook_url`` opens in a browser.

Every alert's ``runbook_url`` is ``<base>#<alertname in lower case>``; the local stack serves
this page at ``http://127.0.0.1:<webhook port>/runbook`` (the committed base, see
:data:`DEFAULT_BASE`). Set ``AQ_RUNBOOK_BASE_URL`` to point alerts at a runbook hosted elsewhere
(e.g. the rendered docs of your fork); :mod:`stack.monitoring` writes it into the rules it
renders.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from pipeline.settings import Ports
from stack.supervisor import REPO

DEFAULT_BASE = Ports().runbook_base()  # the base the committed rules carry
RUNBOOK = REPO / "docs" / "runbook.md"


def anchor(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", title.strip().lower())
    return text.replace(" ", "-")


def render(markdown_text: str, title: str = "aq-forecast runbook") -> str:
    """A standalone HTML page; every heading carries its GitHub-style id."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark").enable("table")
    tokens = md.parse(markdown_text)
    for i, token in enumerate(tokens):
        if token.type == "heading_open" and i + 1 < len(tokens):
            token.attrSet("id", anchor(tokens[i + 1].content))
    body = md.renderer.render(tokens, md.options, {})
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:60rem;margin:2rem auto;line-height:1.5}"
        "code,pre{background:#f4f4f4}h2:target{background:#fff3b0}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2rem .5rem}"
        f"</style></head><body>\n{body}</body></html>\n"
    )


def page(path: Path = RUNBOOK) -> bytes:
    return render(Path(path).read_text(encoding="utf-8")).encode("utf-8")
