"""Named SQL queries, loaded once from ``sql/queries/*.sql``.

A query block starts with ``-- name: <query_name>``; the comment lines right after it describe
the query, and everything up to the next ``-- name:`` line is its text. Parameters use
psycopg's ``%(name)s`` placeholders.
"""

from __future__ import annotations

import re
from pathlib import Path

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"

_NAME_LINE = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def load_queries(folder: Path = SQL_DIR / "queries") -> dict[str, str]:
    """Parse every ``.sql`` file of ``folder`` into a mapping of query name to SQL text.

    Raises ``ValueError`` on a duplicate name or a block without SQL.
    """
    queries: dict[str, str] = {}
    for path in sorted(folder.glob("*.sql")):
        for name, text in _split_blocks(path.read_text(encoding="utf-8")):
            if name in queries:
                raise ValueError(f"query {name!r} is defined twice (again in {path.name})")
            if not text:
                raise ValueError(f"query {name!r} in {path.name} has no SQL")
            queries[name] = text
    return queries


def _split_blocks(source: str) -> list[tuple[str, str]]:
    matches = list(_NAME_LINE.finditer(source))
    blocks = []
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(source)
        body = source[match.end() : end]
        lines = [line for line in body.splitlines() if not line.lstrip().startswith("--")]
        blocks.append((match.group(1), "\n".join(lines).strip().rstrip(";")))
    return blocks


QUERIES = load_queries()
