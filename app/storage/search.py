"""Full-text search over a user's own messages: each conversation once, at its best match,
best first, with a snippet of that message around the match.

PostgreSQL: a GIN index on `to_tsvector('simple', content)`, queried with
`websearch_to_tsquery('simple', …)` (which takes any input: quotes, `or`, `-word`, stray
punctuation; never a syntax error) and ranked by `ts_rank`. `simple` and not `english`: people
chat in every language, and the English stemmer and stop words would mangle the rest (a search
for "the who" would find nothing); `simple` also finds what SQLite's tokenizer finds (words as
written, no stemming), so both databases answer a search alike.

SQLite: `messages_fts`, an FTS5 table with external content (the text stays in `messages`
only), kept in step by triggers on `messages` (migration 6), ranked by `bm25()`, its snippet
from `snippet()`. FTS5 has a query syntax of its own (`NEAR(`, `*`, `-`, `"`, `col:`), so user
input never reaches it as written: `fts5_query` turns it into quoted strings, which cannot be a
syntax error. The FTS rows are keyed by the implicit `rowid` of `messages` (its key is a text
id), and a `VACUUM` may renumber those: after one, rebuild the index with
`INSERT INTO messages_fts(messages_fts) VALUES ('rebuild')`.

A match is found among all users' messages through the index, then kept only if its
conversation is the caller's (one primary-key look-up each): the cost grows with how many
messages hold the words, not with the table. Figures in `Search.find`.
"""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa
from databases import Database

from app.storage.tables import conversations, messages

FTS_TABLE = "messages_fts"
# Around each match in a snippet, in place of markup: characters of Unicode's private use area,
# which no one types, split off in Python (`_pieces`). A message that holds one anyway only gets
# a highlight misplaced: the pieces are text either way, never HTML.
MARK_START, MARK_END = "\ue000", "\ue001"
SNIPPET_TOKENS = 16  # words of context in a snippet (FTS5 allows at most 64)
_MARKS = re.compile(f"[{MARK_START}{MARK_END}]")
# A phrase in double quotes (its closing quote optional), or a run of anything else.
_TERMS = re.compile(r'"([^"]*)"?|([^\s"]+)')

_fts = sa.table(FTS_TABLE, sa.column("rowid"), sa.column(FTS_TABLE))
_messages_rowid = sa.literal_column("messages.rowid")
# Spelled as the index is (`to_tsvector('simple', content)`): a bind parameter in its place
# would not match the index's expression, and PostgreSQL would not use it.
_SIMPLE = sa.literal_column("'simple'")
_vector = sa.func.to_tsvector(_SIMPLE, messages.c.content)


def fts5_query(text: str) -> str | None:
    """User input as an FTS5 query made of quoted strings and operators we place, so it cannot
    be a syntax error, read as `websearch_to_tsquery` reads it on PostgreSQL: words all
    required; words in double quotes (or joined by punctuation, `foo-bar`) one phrase; `or`
    between two terms either of them (elsewhere a word); `-word` without it. Only word
    characters go into a string, so no `"` is left to end one early, and `NEAR(`, `*`, `^`,
    `col:` are just words or nothing. None when there is nothing to look for: no word, or words
    to leave out only (which would match nearly every message, through no index)."""
    wanted: list[str] = []
    unwanted: list[str] = []
    either = False  # an `or` after a term: an operator if a term follows, else a word
    for phrase, run in _TERMS.findall(text):
        if run.lower() == "or" and wanted and not either:
            either = True
            continue
        words = re.findall(r"\w+", phrase or run)
        if not words:
            continue
        string = '"' + " ".join(words) + '"'
        if run.startswith("-"):
            unwanted.append(string)
        else:
            wanted.extend(["OR", string] if either else [string])
            either = False
    if either:
        wanted.append('"or"')
    if not wanted:
        return None
    return f"({' '.join(wanted)})" + "".join(f" NOT {string}" for string in unwanted)


def _owned(query: sa.Select[Any], user_id: str, agent: str | None) -> sa.Select[Any]:
    query = query.where(conversations.c.user_id == user_id)
    return query if agent is None else query.where(conversations.c.agent == agent)


def sqlite_best_matches(
    *, user_id: str, match: str, limit: int, agent: str | None = None
) -> sa.Select[Any]:
    """The user's conversations whose messages match, each at its best-ranked message, best
    first, with the message's rowid for its snippet. `bm25()` is lower for a better match."""
    matched = _owned(
        sa.select(
            messages.c.id.label("message_id"),
            _messages_rowid.label("message_rowid"),
            messages.c.seq,
            conversations.c.id.label("conversation_id"),
            conversations.c.title,
            conversations.c.agent,
            conversations.c.updated_at,
            sa.func.bm25(sa.literal_column(FTS_TABLE)).label("rank"),
        )
        .select_from(
            _fts.join(messages, _messages_rowid == _fts.c.rowid).join(
                conversations, conversations.c.id == messages.c.conversation_id
            )
        )
        .where(sa.literal_column(FTS_TABLE).op("MATCH")(match)),
        user_id,
        agent,
    ).subquery("matched")
    return _best_per_conversation(matched, higher_is_better=False, limit=limit)


def _best_per_conversation(matched: Any, *, higher_is_better: bool, limit: int) -> sa.Select[Any]:
    """Each conversation's best match (the earliest message among equals), best first; ties
    between conversations go to the one active last."""

    def best_first(rank: Any) -> Any:
        return rank.desc() if higher_is_better else rank.asc()

    nth = sa.func.row_number().over(
        partition_by=matched.c.conversation_id, order_by=(best_first(matched.c.rank), matched.c.seq)
    )
    numbered = sa.select(matched, nth.label("nth")).subquery("numbered")
    return (
        sa.select(numbered)
        .where(numbered.c.nth == 1)
        .order_by(
            best_first(numbered.c.rank), numbered.c.updated_at.desc(), numbered.c.conversation_id
        )
        .limit(limit)
    )


def sqlite_snippets(*, match: str, rowids: list[int]) -> sa.Select[Any]:
    """Snippets of the chosen messages only: `snippet()` reads a message's text and positions,
    worth doing for a page of results, not for every match."""
    return sa.select(
        _fts.c.rowid,
        sa.func.snippet(
            sa.literal_column(FTS_TABLE), 0, MARK_START, MARK_END, "…", SNIPPET_TOKENS
        ).label("snippet"),
    ).where(sa.literal_column(FTS_TABLE).op("MATCH")(match), _fts.c.rowid.in_(rowids))


def postgres_best_matches(
    *, user_id: str, text: str, limit: int, agent: str | None = None
) -> sa.Select[Any]:
    """As `sqlite_best_matches`, on the GIN index, with the snippet (`ts_headline`) computed
    in the outer query: for the page's rows only. `ts_rank` is higher for a better match."""
    query = sa.func.websearch_to_tsquery(_SIMPLE, text)
    matched = _owned(
        sa.select(
            messages.c.id.label("message_id"),
            messages.c.content,
            messages.c.seq,
            conversations.c.id.label("conversation_id"),
            conversations.c.title,
            conversations.c.agent,
            conversations.c.updated_at,
            sa.func.ts_rank(_vector, query).label("rank"),
        )
        .select_from(messages.join(conversations, conversations.c.id == messages.c.conversation_id))
        .where(_vector.op("@@")(query)),
        user_id,
        agent,
    ).subquery("matched")
    page = _best_per_conversation(matched, higher_is_better=True, limit=limit).subquery("page")
    options = (
        f"StartSel={MARK_START}, StopSel={MARK_END}, MaxFragments=1, "
        f"MaxWords={SNIPPET_TOKENS}, MinWords={SNIPPET_TOKENS // 2}, ShortWord=0"
    )
    return sa.select(
        page.c.message_id,
        page.c.conversation_id,
        page.c.title,
        page.c.agent,
        page.c.updated_at,
        page.c.rank,
        sa.func.ts_headline(_SIMPLE, page.c.content, query, options).label("snippet"),
    ).order_by(page.c.rank.desc(), page.c.updated_at.desc(), page.c.conversation_id)


def _pieces(snippet: str) -> list[str]:
    """`a\ue000b\ue001c` -> `["a", "b", "c"]`: plain text and matches alternate, plain first
    (so matches are at the odd positions)."""
    return _MARKS.split(snippet)


class Search:
    def __init__(self, *, database: Database, sqlite_db: bool) -> None:
        self._database = database
        self._sqlite = sqlite_db

    async def find(
        self, *, user_id: str, text: str, limit: int, agent: str | None = None
    ) -> list[dict[str, Any]]:
        """Up to `limit` of the user's conversations matching `text`, best first: each with
        the best-matching message's id and its snippet as pieces (`_pieces`)."""
        match = fts5_query(text)
        if match is None:
            return []
        if not self._sqlite:
            rows = await self._database.fetch_all(
                postgres_best_matches(user_id=user_id, text=text, limit=limit, agent=agent)
            )
            return [{**row._mapping, "snippet": _pieces(row.snippet)} for row in rows]
        rows = await self._database.fetch_all(
            sqlite_best_matches(user_id=user_id, match=match, limit=limit, agent=agent)
        )
        if not rows:
            return []
        snippets = {
            row.rowid: row.snippet
            for row in await self._database.fetch_all(
                sqlite_snippets(match=match, rowids=[row.message_rowid for row in rows])
            )
        }
        return [{**row._mapping, "snippet": _pieces(snippets[row.message_rowid])} for row in rows]
