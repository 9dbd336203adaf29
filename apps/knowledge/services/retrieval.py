"""Hybrid search over knowledge bases, and the prompt pieces that cite what it found.

Dense (pgvector HNSW, cosine) and lexical (`ts_rank` over the jieba-segmented `simple`
tsvector) candidate lists are fused by weighted reciprocal rank fusion or by weighted
normalised scores (`KNOWLEDGE_FUSION*` settings, defaults measured by `bench/retrieval.py`
on its tune half: lexical noise outvotes the vectors when the question's language differs
from the passage's, so equal weights are not a given). Both lists come from one
SQL statement (a UNION ALL), so they share one snapshot: a document's version flip can
never land between them. The permission filter is part of that statement too
(`selectors.chunks_searchable`).
"""

from __future__ import annotations

import logging
import operator
import re
import statistics
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import reduce
from typing import Any

from django.conf import settings
from django.contrib.postgres.search import SearchQuery, SearchRank
from django.db import connection, transaction
from django.db.models import F, Q, QuerySet, Value
from django.db.models.functions import Cast
from django.utils.translation import gettext as _
from pgvector.django import CosineDistance, VectorField

from apps.directory.selectors import Readers
from apps.knowledge import selectors
from apps.knowledge.chunking import estimate_tokens, text_within
from apps.knowledge.models import Chunk, KnowledgeBase
from apps.knowledge.segment import query_terms
from apps.knowledge.services.embedding import (
    EmbedderSpec,
    EmbeddingError,
    get_embedder,
    serving_spec_for,
)

logger = logging.getLogger(__name__)

# Candidates each list contributes to the fusion, at least; more for a larger top_k.
_MIN_CANDIDATES = 20
# With the language balance on, the vector search fetches this many times the candidates
# and keeps the best after balancing (bench/retrieval.py, tune half: 2x beat 1x).
_DENSE_FETCH_FACTOR = 2
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LEXICAL = "lexical"
_HIT_FIELDS = (
    "id",
    "document_id",
    "document__original_filename",
    "document__title",
    "document__kb__slug",
    "heading_path",
    "text",
    "document_version",
    "page",
    "position",
)


@dataclass(frozen=True)
class Hit:
    """One passage found for a question, with what a citation needs."""

    chunk_id: int
    document_id: int
    document: str  # the uploaded file's name
    title: str
    knowledge_base: str  # slug
    heading_path: tuple[str, ...]
    text: str
    document_version: int
    page: int | None
    score: float  # the fusion's score: higher is better
    # Which candidate lists found it ("dense", "lexical"): the admin's retrieval test shows it.
    methods: tuple[str, ...] = ()
    # Cosine similarity to the question when the vectors found it: unlike the fused score
    # (relative to the other candidates), it says how close the passage is at all.
    similarity: float | None = None
    # Position in its document, and the neighbouring passages that continue it (same
    # document, adjacent position), which the prompt shows around `text`; see
    # `_neighbours_attach`.
    position: int | None = None
    before: str = ""
    after: str = ""

    @property
    def heading(self) -> str:
        return " > ".join(self.heading_path)

    @property
    def context_text(self) -> str:
        """The passage with the neighbours that continue it, what the model reads."""
        return "\n".join(part for part in (self.before, self.text, self.after) if part)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["heading_path"] = list(self.heading_path)
        data["methods"] = list(self.methods)
        data["heading"] = self.heading
        return data


def knowledge_retrieve(
    *,
    bot_kb_ids: Iterable[int],
    readers: Readers,
    query: str,
    top_k: int = 5,
    knowledge_bases: Sequence[KnowledgeBase] | None = None,
) -> list[Hit]:
    """The best `top_k` passages for `query` that every one of `readers` may read.

    Who reads is always explicit (see `selectors.Readers`), so no caller gets the
    unfiltered view by leaving something out. A knowledge base whose embedding model cannot
    be loaded is still searched lexically; the problem is logged. A caller that already
    holds the knowledge bases (with their embedding profiles) passes them to save a query.
    """
    kb_ids = list(dict.fromkeys(bot_kb_ids))
    query = query.strip()
    if not query or top_k < 1 or not kb_ids:
        return []
    candidates = max(_MIN_CANDIDATES, top_k * 4)
    searchable = selectors.chunks_searchable(kb_ids=kb_ids, readers=readers)
    lists = [
        *_dense_lists(
            searchable,
            kb_ids=kb_ids,
            query=query,
            candidates=dense_fetch(candidates),
            knowledge_bases=knowledge_bases,
        ),
        *_lexical_lists(searchable, query=query, candidates=candidates),
    ]
    if not lists:
        return []
    combined = lists[0].union(*lists[1:], all=True) if len(lists) > 1 else lists[0]
    with transaction.atomic(), connection.cursor() as cursor:
        # Filters apply after the HNSW scan; let it keep scanning until enough rows pass.
        cursor.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        cursor.execute(
            "SELECT set_config('hnsw.ef_search', %s, true)",
            [str(max(40, dense_fetch(candidates)))],
        )
        rows = list(combined)
    rows = language_balanced(rows, keep=candidates)
    return _neighbours_attach(searchable, _fuse(rows, top_k=top_k))


def dense_fetch(candidates: int) -> int:
    """How many rows each vector search fetches for `candidates` fused candidates."""
    return candidates * _DENSE_FETCH_FACTOR if settings.KNOWLEDGE_LANGUAGE_BALANCE else candidates


def language_balanced(
    rows: Sequence[dict[str, Any]],
    *,
    keep: int,
    weight: float | None = None,
    top: int | None = None,
) -> list[dict[str, Any]]:
    """The rows with each vector list re-ranked against its own language's level, and cut
    to its best `keep` (arguments default to the `KNOWLEDGE_LANGUAGE_BALANCE*` settings).

    The multilingual encoder scores every passage in the question's language higher than
    any in the other (a Chinese question's best English passage often sits below a dozen
    unrelated Chinese ones), so an answer written in the other language never reaches the
    top 5. Within each list, passages are grouped by script (Chinese or not) and each
    passage's similarity is lowered by `weight` x the mean similarity of its group's best
    `top`: what counts is how far a passage stands out from its own language. Measured on
    the tune half of bench/data/retrieval (bench/retrieval.py --only quality): passage
    recall@5 0.975 -> 0.987, MRR 0.816 -> 0.830, cross-lingual 0.935 -> 0.968. With one
    language only, the order is unchanged. `cosine` keeps the true similarity, which the
    relevance threshold reads.
    """
    weight = settings.KNOWLEDGE_LANGUAGE_BALANCE if weight is None else weight
    top = settings.KNOWLEDGE_LANGUAGE_BALANCE_TOP if top is None else top
    per_list: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        per_list[row["method"]].append(row)
    balanced: list[dict[str, Any]] = []
    for method, ranked in per_list.items():
        if method == _LEXICAL:
            balanced.extend(ranked)
            continue
        ranked = sorted(ranked, key=lambda row: (row["closeness"], row["id"]))
        groups: dict[bool, list[dict[str, Any]]] = defaultdict(list)
        for row in ranked:
            groups[_is_chinese(row["text"])].append(row)
        if weight > 0 and len(groups) > 1:
            level = {
                group: statistics.fmean(1.0 - row["closeness"] for row in members[:top])
                for group, members in groups.items()
            }
            ranked = sorted(
                (
                    {
                        **row,
                        "cosine": 1.0 - row["closeness"],
                        "closeness": row["closeness"] + weight * level[_is_chinese(row["text"])],
                    }
                    for row in ranked
                ),
                key=lambda row: (row["closeness"], row["id"]),
            )
        balanced.extend(ranked[:keep])
    return balanced


def _is_chinese(text: str) -> bool:
    """Whether a passage is written in Chinese: over a fifth of its characters are CJK."""
    return len(_CJK.findall(text)) * 5 > len("".join(text.split()))


def _dense_lists(
    searchable: QuerySet[Chunk],
    *,
    kb_ids: list[int],
    query: str,
    candidates: int,
    knowledge_bases: Sequence[KnowledgeBase] | None = None,
) -> list[QuerySet]:
    """One nearest-neighbour list per embedding model the knowledge bases serve from."""
    if knowledge_bases is None:
        knowledge_bases = list(
            KnowledgeBase.objects.filter(pk__in=kb_ids).select_related("embedding_profile")
        )
    by_spec: dict[EmbedderSpec, list[int]] = defaultdict(list)
    for kb in knowledge_bases:
        if kb.pk not in kb_ids:
            continue
        spec = serving_spec_for(kb)
        if spec is None:
            logger.warning("dense search skipped for %s: unknown model %s", kb, kb.embedding_model)
            continue
        by_spec[spec].append(kb.pk)
    lists = []
    dense_query = _dense_query(query)
    for number, (spec, spec_kb_ids) in enumerate(by_spec.items()):
        try:
            embedder = get_embedder(spec)
            vector = embedder.embed([dense_query])[0]
        except EmbeddingError:
            logger.warning("dense search skipped for %s", spec.model_key, exc_info=True)
            continue
        # Cast to the fixed dimension so that the partial HNSW index for it applies.
        as_fixed = Cast("embedding", VectorField(dimensions=embedder.dimensions))
        lists.append(
            searchable.filter(
                document__kb_id__in=spec_kb_ids,
                embedding_dimensions=embedder.dimensions,
                embedding_model=spec.model_key,
            )
            .annotate(closeness=CosineDistance(as_fixed, vector), method=Value(f"dense{number}"))
            .order_by("closeness", "id")
            .values(*_HIT_FIELDS, "closeness", "method")[:candidates]
        )
    return lists


def _dense_query(query: str) -> str:
    """What is embedded for the vector search: the question's search words alone with
    `KNOWLEDGE_DENSE_QUERY_TERMS`, else the question as asked.

    Measured with the bundled encoder (bench/retrieval.py, tune half): without the
    function words ("can I", "what is", "怎么", "吗") a question lands nearer the passage's
    subject, above all across languages (dense passage recall@5 0.937 -> 0.975,
    cross-lingual 0.871 -> 0.935). A question of function words only is embedded as asked.
    """
    if not settings.KNOWLEDGE_DENSE_QUERY_TERMS:
        return query
    return " ".join(query_terms(query)) or query


def _lexical_lists(searchable: QuerySet[Chunk], *, query: str, candidates: int) -> list[QuerySet]:
    """Passages sharing any search word with the question, best `ts_rank` first.

    Only a capped set of matching rows is ranked (`KNOWLEDGE_LEXICAL_RANK_LIMIT`): ranking
    reads every row's tsvector from the table, and a common word matches tens of thousands
    of rows at 100k passages (measured: 0.9 s of a 1 s search, `bench/retrieval.py`). The
    capped set is the rows holding every search word, then rows holding any, each found
    through the GIN index alone; `ts_rank` favours rows with more of the question's words,
    so the best ones are among those. Below the cap every matching row is ranked, as before.
    """
    terms = query_terms(query)
    if not terms:
        return []
    words = [SearchQuery(term, config="simple", search_type="plain") for term in terms]
    tsquery = reduce(operator.or_, words)
    limit = settings.KNOWLEDGE_LEXICAL_RANK_LIMIT
    # No ORDER BY (the model's ordering would sort every match): any `limit` rows will do.
    capped = searchable.filter(search_vector=tsquery).order_by().values("pk")[:limit]
    if len(words) > 1:
        every_word = searchable.filter(search_vector=reduce(operator.and_, words)).order_by()
        capped = every_word.values("pk")[:limit].union(capped)
    return [
        Chunk.objects.filter(pk__in=capped)
        .annotate(closeness=-SearchRank(F("search_vector"), tsquery), method=Value(_LEXICAL))
        .order_by("closeness", "id")
        .values(*_HIT_FIELDS, "closeness", "method")[:candidates]
    ]


def _fuse(
    rows: Sequence[dict[str, Any]],
    *,
    top_k: int,
    method: str | None = None,
    dense_weight: float | None = None,
    lexical_weight: float | None = None,
    rrf_k: int | None = None,
) -> list[Hit]:
    """Fuse the candidate lists into the best `top_k` (arguments default to the settings).

    "rrf": each list adds weight / (k + rank) to the passages it found. "score": each
    list's scores are min-max normalised to 0..1 (cosine similarity, `ts_rank`) and added
    with the weights, so a list's margin counts, not only its order. Ties go to the
    passage the vectors rank higher, since a shared common word says less than closeness
    in meaning.
    """
    method = method or settings.KNOWLEDGE_FUSION
    weights = {
        "dense": settings.KNOWLEDGE_FUSION_DENSE_WEIGHT if dense_weight is None else dense_weight,
        _LEXICAL: (
            settings.KNOWLEDGE_FUSION_LEXICAL_WEIGHT if lexical_weight is None else lexical_weight
        ),
    }
    k = settings.KNOWLEDGE_RRF_K if rrf_k is None else rrf_k
    per_list: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        per_list[row["method"]].append(row)
    scores: dict[int, float] = defaultdict(float)
    similarity: dict[int, float] = {}
    dense_rank: dict[int, int] = {}
    by_id: dict[int, dict[str, Any]] = {}
    found_by: dict[int, set[str]] = defaultdict(set)
    for list_method, ranked in per_list.items():
        ranked.sort(key=lambda row: (row["closeness"], row["id"]))
        weight = weights[_LEXICAL if list_method == _LEXICAL else "dense"]
        closest, farthest = ranked[0]["closeness"], ranked[-1]["closeness"]
        spread = farthest - closest
        for rank, row in enumerate(ranked, start=1):
            chunk_id = row["id"]
            if method == "score":
                # closeness: cosine distance or -ts_rank, lower is better
                share = 1.0 if spread <= 0 else (farthest - row["closeness"]) / spread
                scores[chunk_id] += weight * share
            else:
                scores[chunk_id] += weight / (k + rank)
            by_id[chunk_id] = row
            found_by[chunk_id].add(_LEXICAL if list_method == _LEXICAL else "dense")
            if list_method != _LEXICAL:
                dense_rank[chunk_id] = min(rank, dense_rank.get(chunk_id, rank))
                cosine = row.get("cosine", 1.0 - row["closeness"])
                similarity[chunk_id] = max(cosine, similarity.get(chunk_id, -1.0))
    best = sorted(
        scores,
        key=lambda chunk_id: (
            -round(scores[chunk_id], 12),
            dense_rank.get(chunk_id, len(rows) + 1),
            chunk_id,
        ),
    )[:top_k]
    return [
        _hit(
            by_id[chunk_id],
            scores[chunk_id],
            similarity.get(chunk_id),
            methods=tuple(sorted(found_by[chunk_id])),
        )
        for chunk_id in best
    ]


def _hit(
    row: dict[str, Any],
    score: float,
    similarity: float | None = None,
    *,
    methods: tuple[str, ...] = (),
) -> Hit:
    return Hit(
        chunk_id=row["id"],
        document_id=row["document_id"],
        document=row["document__original_filename"],
        title=row["document__title"] or row["document__original_filename"],
        knowledge_base=row["document__kb__slug"],
        heading_path=tuple(row["heading_path"] or ()),
        text=row["text"],
        document_version=row["document_version"],
        page=row["page"],
        score=round(score, 6),
        methods=methods,
        similarity=None if similarity is None else round(similarity, 6),
        position=row.get("position"),
    )


def _neighbours_attach(
    searchable: QuerySet[Chunk],
    hits: Sequence[Hit],
    *,
    token_budget: int | None = None,
    same_heading: bool | None = None,
) -> list[Hit]:
    """Each hit with the passages just before and after it in its document, as far as
    `token_budget` allows (the following one first: an answer more often continues than
    precedes its best match); arguments default to the `KNOWLEDGE_NEIGHBOUR_*` settings.

    An answer spread over two adjacent passages (a list cut by the chunker, a rule and its
    exception under the next heading) is otherwise half missing from the prompt (measured
    in `bench/retrieval.py`, "+nb" rows). Neighbours come from `searchable`, the same
    permission-filtered set as the hits, so a disabled or unreadable passage never joins;
    a neighbour that is itself a hit is left to its own number. The text two overlapping
    chunks share is shown once.
    """
    budget = settings.KNOWLEDGE_NEIGHBOUR_TOKENS if token_budget is None else token_budget
    if same_heading is None:
        same_heading = settings.KNOWLEDGE_NEIGHBOUR_SAME_HEADING
    wanted = [hit for hit in hits if hit.position is not None]
    if budget <= 0 or not wanted:
        return list(hits)
    # The hits' generation lets the (document, generation, position) index find each
    # neighbour directly: a large document's other passages are never read.
    generations = dict(
        Chunk.objects.filter(pk__in=[hit.chunk_id for hit in wanted]).values_list(
            "pk", "generation"
        )
    )
    adjacent = reduce(
        operator.or_,
        (
            Q(
                document_id=hit.document_id,
                generation=generations.get(hit.chunk_id),
                position__in=[hit.position - 1, hit.position + 1],
            )
            for hit in wanted
            if hit.position is not None
        ),
    )
    rows = searchable.filter(adjacent).values_list(
        "id", "document_id", "position", "heading_path", "text", "token_count"
    )
    by_place = {(row[1], row[2]): row for row in rows}
    taken = {hit.chunk_id for hit in hits}
    attached = []
    for hit in hits:
        if hit.position is None:
            attached.append(hit)
            continue
        left = budget
        parts: dict[str, str] = {}
        for side, step in (("after", 1), ("before", -1)):
            row = by_place.get((hit.document_id, hit.position + step))
            if row is None or row[0] in taken or left <= 0:
                continue
            heading = tuple(row[3] or ())
            if same_heading and heading != hit.heading_path:
                continue
            text = row[4]
            if heading == hit.heading_path:  # chunks overlap only inside a section
                if side == "after":
                    text = text[_overlap(hit.text, text) :]
                else:
                    text = text[: len(text) - _overlap(text, hit.text)]
            text = text.strip()
            if row[5] > left:
                # Too long to show whole: the sentences nearest the hit that fit.
                text = text_within(text, tokens=left, from_end=side == "before")
                if not text:
                    continue
            left -= min(row[5], estimate_tokens(text))
            if heading != hit.heading_path and heading:
                # Another section: its heading says what the text is about.
                text = f"{heading[-1]}\n{text}"
            parts[side] = text
        attached.append(replace(hit, **parts) if parts else hit)
    return attached


def _overlap(first: str, second: str) -> int:
    """Length of the longest end of `first` that `second` starts with (the chunker's overlap)."""
    if not second:
        return 0
    start = first.find(second[0], max(0, len(first) - len(second)))
    while start != -1:
        if second.startswith(first[start:]):
            return len(first) - start
        start = first.find(second[0], start + 1)
    return 0


def hits_relevance(
    *, query: str, hits: Sequence[Hit], lexical_weight: float | None = None
) -> float:
    """How well the best passage matches the question: cosine similarity plus a share of
    the question's search words found in the passage, the best over `hits` (0 for none).

    Dense similarity alone does not separate questions the corpus answers from those it
    does not (measured in `bench/retrieval.py`: the no-answer questions' best similarity
    overlaps the answerable ones'); a passage that also contains the question's own words
    is far likelier to answer it. The fused score cannot serve: it is relative to the
    other candidates, so the best of a bad lot still scores high.
    """
    weight = (
        settings.KNOWLEDGE_RELEVANCE_LEXICAL_WEIGHT if lexical_weight is None else lexical_weight
    )
    terms = query_terms(query) if hits else []
    best = 0.0
    for hit in hits:
        text = unicodedata.normalize("NFKC", f"{hit.heading} {hit.text}").lower()
        overlap = sum(term in text for term in terms) / len(terms) if terms else 0.0
        best = max(best, max(hit.similarity or 0.0, 0.0) + weight * overlap)
    return round(best, 6)


# --- prompt pieces for the answer path -----------------------------------------------------


def prompt_with_passages(
    *, question: str, hits: Sequence[Hit], answer_only_from_sources: bool = False
) -> str:
    """The user message that puts numbered passages before the question.

    The numbers match `sources_footer`, so the model can cite [1], [2]. With
    `answer_only_from_sources` the model is told to admit when the passages do not answer.
    """
    if not hits:
        if answer_only_from_sources:
            return "\n\n".join(
                [
                    _("No passage in the knowledge base matches this question. Say that you "
                      "do not know and suggest whom to ask."),
                    _("Question: %(question)s") % {"question": question},
                ]
            )  # fmt: skip
        return question
    blocks = []
    for number, hit in enumerate(hits, start=1):
        label = f"{hit.title} > {hit.heading}" if hit.heading else hit.title
        blocks.append(f"[{number}] {label}\n{hit.context_text.strip()}")
    rule = (
        _("Answer only from the passages above. If they do not contain the answer, say that "
          "you do not know.")
        if answer_only_from_sources
        else _("Use the passages above when they are relevant.")
    )  # fmt: skip
    return "\n\n".join(
        [
            _("Passages from the company knowledge base:"),
            *blocks,
            rule + " " + _("Cite passages by their numbers, like [1]."),
            _("Question: %(question)s") % {"question": question},
        ]
    )


def sources_footer(*, hits: Sequence[Hit]) -> str:
    """A "Sources" block for the end of an answer: one line per document version, listing
    the passage numbers `prompt_with_passages` gave it."""
    if not hits:
        return ""
    numbers: dict[tuple[int, int], list[int]] = defaultdict(list)
    first: dict[tuple[int, int], Hit] = {}
    for number, hit in enumerate(hits, start=1):
        key = (hit.document_id, hit.document_version)
        numbers[key].append(number)
        first.setdefault(key, hit)
    lines = []
    for key, hit in first.items():
        cited = "".join(f"[{number}]" for number in numbers[key])
        where = f" · {hit.heading}" if hit.heading else ""
        lines.append(f"{cited} {hit.title}{where} ({hit.document}, v{hit.document_version})")
    return _("Sources:") + "\n" + "\n".join(lines)
