"""Retrieval quality on the labelled set in bench/data/retrieval, per embedder and mode.

Each variant (embedder x heading path embedded or not) indexes the 32 documents into a
knowledge base of its own through `manage.py kb_ingest` (real parsing, chunking, batched
embeddings, writes; the passages/s of that run is reported too), then asks every question
once and ranks the two candidate lists of `knowledge_retrieve` (same SQL, same HNSW
settings) in every mode: dense alone, lexical alone, and fused by each fusion setting in
`FUSIONS`. Printed per half (`tune`, `report`) and per question kind:

- doc R@5: every labelled document is among the top-5 passages' documents;
- passage R@5: every labelled answer string appears in one of the top-5 passages;
- MRR: 1 / rank of the first passage holding an answer string (0 when none does).

No-answer questions are not in the recall figures; for them the best dense similarity is
reported next to the answerable questions'. The relevance threshold of "answer only from
sources" is measured here too: for each lexical weight in `RELEVANCE_WEIGHTS` and each
threshold, the top-5 of the configured fusion is scored by `retrieval.hits_relevance`,
and printed per half are the answerable questions that would be wrongly refused and the
no-answer questions correctly refused; the best pair on the tune half (fewest errors of
both kinds, then the lower threshold: refusing an answerable question costs more) is
what the `KNOWLEDGE_RELEVANCE_*` defaults are.
"""

from __future__ import annotations

import contextlib
import io
import json
import statistics
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "data" / "retrieval"
TOP_K = 5
KB_PREFIX = "bench-retrieval-quality"
KINDS = ("paraphrase", "number-date", "cross-lingual", "two-passage")
# (name, method, dense weight, lexical weight); "rrf-1:1" is the historical default.
FUSIONS: tuple[tuple[str, str, float, float], ...] = (
    ("rrf-1:1", "rrf", 1.0, 1.0),
    ("rrf-1:0.5", "rrf", 1.0, 0.5),
    ("rrf-1:0.3", "rrf", 1.0, 0.3),
    ("rrf-1:0.1", "rrf", 1.0, 0.1),
    ("score-1:1", "score", 1.0, 1.0),
    ("score-1:0.5", "score", 1.0, 0.5),
    ("score-1:0.3", "score", 1.0, 0.3),
    ("score-1:0.1", "score", 1.0, 0.1),
)
# Neighbour settings measured on the configured fusion: (token budget per hit, same heading
# only); the passage counts as found when the answer is in the hit or in a neighbour that
# `prompt_with_passages` shows with it.
NEIGHBOURS: tuple[tuple[int, bool], ...] = (
    (100, True),
    (200, True),
    (50, False),
    (100, False),
    (200, False),
    (400, False),
)
# Language balance settings measured on the configured fusion: (weight, top); see
# `retrieval.language_balanced` (weight 0 = off).
BALANCES: tuple[tuple[float, int], ...] = (
    (0.0, 10),
    (0.25, 10),
    (0.5, 10),
    (0.75, 10),
    (1.0, 10),
    (0.5, 3),
    (0.75, 3),
    (0.75, 5),
)
RELEVANCE_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5)
RELEVANCE_THRESHOLDS = tuple(round(0.10 + 0.02 * step, 2) for step in range(26))


def questions_load() -> list[dict[str, Any]]:
    """The labelled questions; fails when an answer string is not in its documents."""
    rows = [
        json.loads(line)
        for line in (DATA / "questions.jsonl").read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    for row in rows:
        text = "".join(
            (DATA / "docs" / name).read_text(encoding="utf-8") for name in row["documents"]
        )
        for answer in row["answers"]:
            if answer not in text:
                raise ValueError(f"{row['id']}: {answer!r} is not in {row['documents']}")
    return rows


def _searchable(kb_id: int) -> Any:
    from apps.knowledge import selectors

    return selectors.chunks_searchable(kb_ids=[kb_id], readers=selectors.Readers.everything())


def _candidates(kb_id: int, query: str) -> dict[str, list[dict[str, Any]]]:
    """knowledge_retrieve's dense and lexical candidate rows for `query`, list by list; the
    dense list twice as long, before the language balance (`_balanced`) cuts it."""
    from django.db import connection, transaction

    from apps.knowledge import selectors
    from apps.knowledge.services import retrieval

    candidates = max(retrieval._MIN_CANDIDATES, TOP_K * 4)
    searchable = selectors.chunks_searchable(kb_ids=[kb_id], readers=selectors.Readers.everything())
    lists = {
        # fetched as for the language balance, which `run_variant` applies per setting
        "dense": retrieval._dense_lists(
            searchable, kb_ids=[kb_id], query=query, candidates=candidates * 2
        ),
        "lexical": retrieval._lexical_lists(searchable, query=query, candidates=candidates),
    }
    rows: dict[str, list[dict[str, Any]]] = {}
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        cursor.execute(
            "SELECT set_config('hnsw.ef_search', %s, true)",
            [str(max(40, candidates * 2))],
        )
        for name, querysets in lists.items():
            rows[name] = [row for queryset in querysets for row in queryset]
    return rows


def _balanced(rows: list[dict[str, Any]], weight: float, top: int) -> list[dict[str, Any]]:
    """The dense rows as knowledge_retrieve keeps them with this language balance."""
    from apps.knowledge.services import retrieval

    keep = max(retrieval._MIN_CANDIDATES, TOP_K * 4)
    return retrieval.language_balanced(rows, keep=keep, weight=weight, top=top)


def balance_mode(weight: float, top: int) -> str:
    """The name of the configured fusion with the dense list balanced this way."""
    return f"{_configured_fusion()}+lb{weight:g}/{top}"


def _configured_balance() -> tuple[float, int]:
    from django.conf import settings

    return settings.KNOWLEDGE_LANGUAGE_BALANCE, settings.KNOWLEDGE_LANGUAGE_BALANCE_TOP


def _score(question: dict[str, Any], hits: Sequence[Any]) -> dict[str, float]:
    documents = {hit.document for hit in hits}
    texts = [hit.context_text for hit in hits]
    doc_hit = all(name in documents for name in question["documents"])
    passage_hit = all(any(answer in text for text in texts) for answer in question["answers"])
    rank = next(
        (i for i, text in enumerate(texts, 1) if any(a in text for a in question["answers"])),
        None,
    )
    return {"doc": float(doc_hit), "passage": float(passage_hit), "mrr": 1 / rank if rank else 0.0}


def _summary(scored: list[tuple[dict[str, Any], dict[str, float]]]) -> dict[str, Any]:
    def mean(items: list[dict[str, float]], key: str) -> float:
        return round(statistics.fmean(item[key] for item in items), 3) if items else 0.0

    answerable = [s for q, s in scored if q["kind"] != "no-answer"]
    out: dict[str, Any] = {
        "n": len(answerable),
        "doc_r5": mean(answerable, "doc"),
        "passage_r5": mean(answerable, "passage"),
        "mrr": mean(answerable, "mrr"),
        "by_kind": {},
    }
    for kind in KINDS:
        items = [s for q, s in scored if q["kind"] == kind]
        out["by_kind"][kind] = {
            "n": len(items),
            "doc_r5": mean(items, "doc"),
            "passage_r5": mean(items, "passage"),
            "mrr": mean(items, "mrr"),
        }
    return out


def _ingest(
    slug: str, embedder: str, embed_headings: bool, chunking: tuple[int, int] | None = None
) -> dict[str, Any]:
    from django.core.management import call_command
    from django.test import override_settings

    from apps.knowledge.models import Document, KnowledgeBase
    from apps.knowledge.services.embedding import embedder_spec_for, get_embedder

    sizes = {} if chunking is None else {"chunk_size": chunking[0], "chunk_overlap": chunking[1]}
    kb = KnowledgeBase.objects.create(name=slug, slug=slug, embedder=embedder, **sizes)
    get_embedder(embedder_spec_for(kb))  # loading the model is not part of the rate
    with override_settings(KNOWLEDGE_EMBED_HEADINGS=embed_headings):
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            call_command("kb_ingest", slug, str(DATA / "docs"))
        seconds = time.perf_counter() - started
    chunks = sum(Document.objects.filter(kb=kb).values_list("chunk_count", flat=True))
    return {
        "kb_id": kb.pk,
        "documents": Document.objects.filter(kb=kb).count(),
        "passages": chunks,
        "seconds": round(seconds, 2),
        "passages_per_s": round(chunks / seconds, 1),
    }


def _configured_fusion() -> str:
    """The `FUSIONS` entry that the current settings select (the product's defaults)."""
    from django.conf import settings

    for name, method, dense_weight, lexical_weight in FUSIONS:
        if (method, dense_weight, lexical_weight) == (
            settings.KNOWLEDGE_FUSION,
            settings.KNOWLEDGE_FUSION_DENSE_WEIGHT,
            settings.KNOWLEDGE_FUSION_LEXICAL_WEIGHT,
        ):
            return name
    return FUSIONS[0][0]


def neighbour_mode(budget: int, same_heading: bool) -> str:
    """The name of the configured fusion's top 5 with neighbours attached this way."""
    return f"{_configured_fusion()}+nb{budget}{'h' if same_heading else ''}"


def _configured_neighbour_mode() -> str:
    from django.conf import settings

    return neighbour_mode(
        settings.KNOWLEDGE_NEIGHBOUR_TOKENS, settings.KNOWLEDGE_NEIGHBOUR_SAME_HEADING
    )


def run_variant(
    embedder: str, embed_headings: bool, kb_delete: Any, chunking: tuple[int, int] | None = None
) -> dict[str, Any]:
    """Index the set with this embedder, heading setting and chunk size / overlap (None:
    a new knowledge base's defaults), then score every mode."""
    from apps.knowledge.services import retrieval

    slug = f"{KB_PREFIX}-{'gguf' if embedder == 'gguf' else 'use'}-{int(embed_headings)}"
    questions = questions_load()
    kb_delete(slug)
    try:
        ingestion = _ingest(slug, embedder, embed_headings, chunking)
        searchable = _searchable(ingestion["kb_id"])
        scored: dict[str, list[tuple[dict[str, Any], dict[str, float]]]] = defaultdict(list)
        best_similarity: dict[str, list[float]] = defaultdict(list)
        relevance: list[dict[str, Any]] = []
        query_seconds = []
        for question in questions:
            started = time.perf_counter()
            fetched = _candidates(ingestion["kb_id"], question["question"])
            query_seconds.append(time.perf_counter() - started)
            if fetched["dense"]:
                group = "no-answer" if question["kind"] == "no-answer" else "answerable"
                best_similarity[group].append(1 - min(r["closeness"] for r in fetched["dense"]))
            rows = {
                "dense": _balanced(fetched["dense"], *_configured_balance()),
                "lexical": fetched["lexical"],
            }
            modes = {
                "dense": retrieval._fuse(rows["dense"], top_k=TOP_K, method="rrf"),
                "lexical": retrieval._fuse(rows["lexical"], top_k=TOP_K, method="rrf"),
            }
            for name, method, dense_weight, lexical_weight in FUSIONS:
                modes[name] = retrieval._fuse(
                    rows["dense"] + rows["lexical"],
                    top_k=TOP_K,
                    method=method,
                    dense_weight=dense_weight,
                    lexical_weight=lexical_weight,
                )
            for weight, top in BALANCES:
                modes[balance_mode(weight, top)] = retrieval._fuse(
                    _balanced(fetched["dense"], weight, top) + rows["lexical"], top_k=TOP_K
                )
            for budget, same_heading in NEIGHBOURS:
                modes[neighbour_mode(budget, same_heading)] = retrieval._neighbours_attach(
                    searchable,
                    modes[_configured_fusion()],
                    token_budget=budget,
                    same_heading=same_heading,
                )
            for mode, hits in modes.items():
                scored[mode].append((question, _score(question, hits)))
            configured = modes[_configured_fusion()]
            relevance.append(
                {
                    "split": question["split"],
                    "no_answer": question["kind"] == "no-answer",
                    "found": bool(_score(question, configured)["passage"]),
                    "by_weight": {
                        weight: retrieval.hits_relevance(
                            query=question["question"], hits=configured, lexical_weight=weight
                        )
                        for weight in RELEVANCE_WEIGHTS
                    },
                }
            )
    finally:
        kb_delete(slug)
    misses = {
        mode: [q["id"] for q, score in scored[mode] if q["documents"] and not score["passage"]]
        for mode in ("dense", "lexical", _configured_fusion(), _configured_neighbour_mode())
    }
    halves: dict[str, dict[str, Any]] = {}
    for half in ("tune", "report", "all"):
        halves[half] = {
            mode: _summary([(q, s) for q, s in items if half == "all" or q["split"] == half])
            for mode, items in scored.items()
        }
    return {
        "embedder": embedder,
        "embed_headings": embed_headings,
        "chunking": "default" if chunking is None else f"{chunking[0]}/{chunking[1]}",
        "ingestion": ingestion,
        "search_ms_mean": round(statistics.fmean(query_seconds) * 1000, 1),
        # mean, lowest and highest best-passage similarity: where a relevance threshold
        # could separate questions the corpus answers from those it does not
        "best_dense_similarity": {
            group: [round(f(values), 3) for f in (statistics.fmean, min, max)]
            for group, values in best_similarity.items()
        },
        "halves": halves,
        "passage_misses": misses,
        "relevance": _relevance_table(relevance),
    }


def _relevance_table(relevance: list[dict[str, Any]]) -> dict[str, Any]:
    """Per lexical weight and threshold: answerable refused / no-answer refused, per half."""
    rows = []
    for weight in RELEVANCE_WEIGHTS:
        for threshold in RELEVANCE_THRESHOLDS:
            row: dict[str, Any] = {"weight": weight, "threshold": threshold}
            for half in ("tune", "report"):
                items = [item for item in relevance if item["split"] == half]
                refused = [item for item in items if item["by_weight"][weight] < threshold]
                row[half] = {
                    "answerable": sum(1 for item in items if not item["no_answer"]),
                    "answerable_refused": sum(1 for item in refused if not item["no_answer"]),
                    # of those, the ones whose answer was in the top 5 (the others the
                    # model could not have answered from the passages anyway)
                    "found_refused": sum(
                        1 for item in refused if not item["no_answer"] and item["found"]
                    ),
                    "no_answer": sum(1 for item in items if item["no_answer"]),
                    "no_answer_refused": sum(1 for item in refused if item["no_answer"]),
                }
            rows.append(row)
    best = min(rows, key=lambda row: (relevance_errors(row), row["threshold"], row["weight"]))
    return {"rows": rows, "best_on_tune": best}


def relevance_errors(row: dict[str, Any]) -> int:
    """Tune-half mistakes of a threshold: answerable questions refused, no-answer ones not."""
    tune = row["tune"]
    return int(tune["answerable_refused"] + tune["no_answer"] - tune["no_answer_refused"])


def run_quality(
    embedders: Sequence[str],
    kb_delete: Any,
    headings: Sequence[bool] = (True, False),
    chunkings: Sequence[tuple[int, int] | None] = (None,),
) -> dict[str, Any]:
    questions = questions_load()
    variants = [
        run_variant(embedder, embed_headings, kb_delete, chunking)
        for embedder in embedders
        for embed_headings in headings
        for chunking in chunkings
    ]
    # The defaults are chosen on the tune half only: passage R@5, then MRR.
    best = max(
        (
            tune[mode]["passage_r5"],
            tune[mode]["mrr"],
            variant["embedder"],
            variant["embed_headings"],
            mode,
        )
        for variant in variants
        for tune in [variant["halves"]["tune"]]
        for mode in tune
        # neighbours add text to the top 5: not comparable with the fusions themselves
        if "+nb" not in mode and "+lb" not in mode
    )
    return {
        "documents": len(list((DATA / "docs").iterdir())),
        "questions": len(questions),
        "by_split": {
            split: sum(1 for q in questions if q["split"] == split) for split in ("tune", "report")
        },
        "variants": variants,
        "best_on_tune": {
            "embedder": best[2],
            "embed_headings": best[3],
            "mode": best[4],
            "passage_r5": best[0],
            "mrr": best[1],
        },
    }


def print_quality(quality: dict[str, Any]) -> None:
    print(
        f"\nRetrieval quality: {quality['questions']} questions "
        f"(tune {quality['by_split']['tune']}, report {quality['by_split']['report']}) "
        f"over {quality['documents']} documents, top {TOP_K}"
    )
    kinds = "  ".join(f"{kind[:12]:>12}" for kind in KINDS)
    for variant in quality["variants"]:
        ingestion = variant["ingestion"]
        print(
            f"\n== embedder {variant['embedder']} · heading path embedded: "
            f"{'yes' if variant['embed_headings'] else 'no'} · chunk size/overlap "
            f"{variant['chunking']} · {ingestion['passages']} passages "
            f"indexed in {ingestion['seconds']} s ({ingestion['passages_per_s']}/s via kb_ingest) "
            f"· candidate search {variant['search_ms_mean']} ms · best dense similarity "
            "(mean, min, max) "
            f"{variant['best_dense_similarity']}"
        )
        for mode, ids in variant["passage_misses"].items():
            print(f"   passage misses, {mode}: {' '.join(ids) or '-'}")
        for half in ("tune", "report"):
            print(f"-- {half} half: doc R@5 / passage R@5 / MRR; by kind passage R@5")
            print(f"{'mode':<18} {'n':>3} {'doc':>6} {'passage':>8} {'MRR':>6}  {kinds}")
            for mode, row in variant["halves"][half].items():
                by_kind = "  ".join(
                    f"{row['by_kind'][kind]['passage_r5']:>12.3f}" for kind in KINDS
                )
                print(
                    f"{mode:<18} {row['n']:>3} {row['doc_r5']:>6.3f} {row['passage_r5']:>8.3f} "
                    f"{row['mrr']:>6.3f}  {by_kind}"
                )
    for variant in quality["variants"]:
        _print_relevance(variant)
    best = quality["best_on_tune"]
    print(
        f"\nbest on the tune half: {best['embedder']}, heading path embedded "
        f"{best['embed_headings']}, {best['mode']} (passage R@5 {best['passage_r5']}, "
        f"MRR {best['mrr']})"
    )


def _print_relevance(variant: dict[str, Any]) -> None:
    table = variant["relevance"]
    print(
        f"\nRelevance threshold (answer only from sources), embedder {variant['embedder']}, "
        f"heading path embedded {'yes' if variant['embed_headings'] else 'no'}: relevance = "
        "cosine similarity + weight x share of the question's words in the passage; "
        "wrongly refused answerable (of which the top 5 held the answer) / correctly "
        "refused no-answer"
    )
    best = table["best_on_tune"]
    # Every threshold for the best weight, and each other weight's best row.
    shown = [row for row in table["rows"] if row["weight"] == best["weight"]]
    for weight in RELEVANCE_WEIGHTS:
        if weight != best["weight"]:
            rows = [row for row in table["rows"] if row["weight"] == weight]
            shown.append(min(rows, key=lambda row: (relevance_errors(row), row["threshold"])))
    print(f"{'weight':>6} {'threshold':>9} {'tune':>19} {'report':>19}")
    for row in shown:
        cells = [
            f"{row[half]['answerable_refused']:>3}/{row[half]['answerable']:<3}"
            f"({row[half]['found_refused']:>2}) "
            f"{row[half]['no_answer_refused']:>2}/{row[half]['no_answer']:<2}"
            for half in ("tune", "report")
        ]
        print(f"{row['weight']:>6} {row['threshold']:>9.2f} {cells[0]:>19} {cells[1]:>19}")
    print(
        f"best on the tune half: weight {best['weight']}, threshold {best['threshold']} "
        f"(tune {best['tune']}, report {best['report']})"
    )
