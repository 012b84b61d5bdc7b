"""Fail on reStructuredText left raw in the built site: ``python docs/check_site.py SITE_DIR``.

mkdocstrings renders docstrings as Markdown, so a Sphinx role written in one
(``:class:`Result```) reaches the page as the text ":class:" before the name
instead of a link, and a literal-block marker (``::``) stays as two colons at
the end of a paragraph. MkDocs does not warn about either; this check reads
every built page, and exits 1 naming each page, line and text it found, or 0.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

# A role as the page shows it: ":class:" (or ":py:class:") before the inline code
# that Markdown made of the backquoted name, or before a backquote left as is.
ROLE = re.compile(r":(?:py:)?[a-z]+:(?=<code>|`|<a\b)")
# A paragraph that ends in "::", as one introducing a reST literal block does.
LITERAL_MARKER = re.compile(r"::</p>")


def problems(site: Path) -> list[str]:
    """Each raw role or literal-block marker in the HTML pages under ``site``, as "page:line: text"."""
    found = []
    for page in sorted(site.rglob("*.html")):
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1):
            for pattern, what in ((ROLE, "Sphinx role"), (LITERAL_MARKER, "reST literal-block marker")):
                for match in pattern.finditer(line):
                    excerpt = line[max(0, match.start() - 40) : match.end() + 40].strip()
                    found.append(f"{page.relative_to(site)}:{number}: {what} {match.group()!r} in: {excerpt}")
    return found


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python docs/check_site.py SITE_DIR", file=sys.stderr)
        return 2
    site = Path(argv[0])
    if not any(site.rglob("*.html")):
        print(f"{site}: no HTML pages: build the site first", file=sys.stderr)
        return 2
    found = problems(site)
    for problem in found:
        print(problem, file=sys.stderr)
    if found:
        print(
            f"{len(found)} raw reStructuredText construct(s) in the built site: write cross-references as "
            "[`Name`][] or [`Name`][full.path] (mkdocstrings), and end a paragraph before a code block with ':'",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
