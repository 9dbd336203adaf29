"""Search a knowledge base from the shell, as an employee would be answered or as an admin.

Whoever runs manage.py holds the database credentials, so no permission can gate this
command; what it can do is leave a trace: every search here is written to the access log
(user empty, the operating-system account and the reason in the entry).
"""

from __future__ import annotations

import getpass
import json
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.directory.selectors import Readers
from apps.knowledge.models import KnowledgeBase
from apps.knowledge.services.retrieval import Hit
from apps.knowledge.services.search import knowledge_search


class Command(BaseCommand):
    stealth_options = ("stdin",)
    help = (
        "Search the knowledge base with this slug. Without QUERY, reads one query per line "
        "from stdin. --user searches as that WeCom userid (audiences apply); without it, "
        "everything is searched. Every search is recorded in the access log, with --reason. "
        "--json prints one line per query: a JSON array of hits."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("kb_slug")
        parser.add_argument("query", nargs="?")
        parser.add_argument("--top-k", type=int, default=5, dest="top_k")
        parser.add_argument("--user", dest="userid", metavar="USERID")
        parser.add_argument("--json", action="store_true", dest="as_json")
        parser.add_argument("--reason", default="", help="Why; written to the access log.")

    def handle(self, *args: Any, **options: Any) -> None:
        kb = KnowledgeBase.objects.filter(slug=options["kb_slug"]).first()
        if kb is None:
            raise CommandError(f"no knowledge base with slug {options['kb_slug']!r}")
        if options["top_k"] < 1:
            raise CommandError("--top-k must be at least 1")
        if options["query"] is not None:
            queries = [options["query"]]
        else:
            stdin = options.get("stdin", sys.stdin)
            queries = [line.strip() for line in stdin if line.strip()]
        userid = options["userid"]
        readers = Readers.everything() if userid is None else Readers.employee(userid)
        reason = f"manage.py kb_search by {_os_user()}: {options['reason'] or '-'}"
        for query in queries:
            hits = knowledge_search(
                user=None,
                knowledge_bases=[kb],
                readers=readers,
                query=query,
                top_k=options["top_k"],
                reason=reason,
            )
            if options["as_json"]:
                self.stdout.write(json.dumps([_hit_json(hit) for hit in hits], ensure_ascii=False))
            else:
                self._print(query, hits)

    def _print(self, query: str, hits: list[Hit]) -> None:
        self.stdout.write(f"? {query}")
        if not hits:
            self.stdout.write("  (no passages)")
        for rank, hit in enumerate(hits, start=1):
            where = f" > {hit.heading}" if hit.heading else ""
            self.stdout.write(
                f"{rank}. [{hit.score:.4f}] {hit.document} (v{hit.document_version}){where}"
            )
            self.stdout.write("   " + " ".join(hit.text.split())[:200])


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers with arbitrary uids)
        return "unknown"


def _hit_json(hit: Hit) -> dict[str, Any]:
    return {
        "document": hit.document,
        "title": hit.title,
        "heading": hit.heading,
        "text": hit.text,
        "score": hit.score,
        "chunk_id": hit.chunk_id,
        "version": hit.document_version,
    }
