"""A tiny document model rendered twice: Markdown (report.md) and standalone HTML (report.html).

The report is built once as a list of blocks (headings, paragraphs, lists, tables, images) and
rendered by both writers, so the two files always say the same thing. The HTML page embeds its
images as base64 PNG data URIs and its style inline: it opens from a mail attachment or an
MLflow artifact view with no network and no sibling files.

Inline markup understood by both renderers: `code` and **bold**.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1200px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:0.8em 0;font-size:0.88em;display:block;overflow-x:auto;
max-width:100%}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f3f3f3} tr:nth-child(even) td{background:#fafafa}
code{background:#f4f4f4;padding:0 3px;border-radius:3px}
pre{background:#f4f4f4;padding:0.6em;overflow-x:auto}
img{max-width:100%;border:1px solid #eee}
h1{border-bottom:2px solid #444} h2{border-bottom:1px solid #bbb;margin-top:1.6em}
"""


@dataclass
class Block:
    kind: str
    text: str = ""
    level: int = 0
    items: list = field(default_factory=list)
    header: list = field(default_factory=list)
    png: bytes = b""


class Doc:
    def __init__(self, title: str):
        self.title = title
        self.blocks: list[Block] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(Block("h", text, level))

    def para(self, text: str) -> None:
        self.blocks.append(Block("p", text))

    def bullets(self, items: list[str]) -> None:
        self.blocks.append(Block("ul", items=list(items)))

    def code(self, text: str) -> None:
        self.blocks.append(Block("pre", text))

    def table(self, header: list[str], rows: list[list]) -> None:
        self.blocks.append(Block("table", header=list(header),
                                 items=[[str(c) for c in r] for r in rows]))

    def image(self, filename: str, png: bytes, alt: str) -> None:
        self.blocks.append(Block("img", filename, items=[alt], png=png))

    # ------------------------------------------------------------------ Markdown
    def to_markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for b in self.blocks:
            if b.kind == "h":
                out += ["#" * b.level + " " + b.text, ""]
            elif b.kind == "p":
                out += [b.text, ""]
            elif b.kind == "ul":
                out += [f"- {i}" for i in b.items] + [""]
            elif b.kind == "pre":
                out += ["```", b.text, "```", ""]
            elif b.kind == "table":
                out.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
                out.append("|" + "|".join("---" for _ in b.header) + "|")
                out += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in b.items]
                out.append("")
            elif b.kind == "img":
                out += [f"![{b.items[0]}]({b.text})", ""]
        return "\n".join(out)

    # ------------------------------------------------------------------ HTML
    def to_html(self) -> str:
        out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
               f"<title>{html.escape(self.title)}</title>", f"<style>{_CSS}</style>",
               "</head><body>", f"<h1>{_inline(self.title)}</h1>"]
        for b in self.blocks:
            if b.kind == "h":
                out.append(f"<h{b.level}>{_inline(b.text)}</h{b.level}>")
            elif b.kind == "p":
                out.append(f"<p>{_inline(b.text)}</p>")
            elif b.kind == "ul":
                out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b.items)
                           + "</ul>")
            elif b.kind == "pre":
                out.append(f"<pre>{html.escape(b.text)}</pre>")
            elif b.kind == "table":
                head = "".join(f"<th>{_inline(h)}</th>" for h in b.header)
                body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>"
                               for r in b.items)
                out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            elif b.kind == "img":
                data = base64.b64encode(b.png).decode("ascii")
                out.append(f'<p><img src="data:image/png;base64,{data}" '
                           f'alt="{html.escape(b.items[0])}"></p>')
        out.append("</body></html>")
        return "\n".join(out)


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _inline(text: str) -> str:
    s = html.escape(str(text), quote=False)
    s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", s)
