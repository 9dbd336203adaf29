"""Knowledge-base retrieval: search latency at 10k/100k chunks, ingestion pages/s, recall@5.

Runs in this process on the bench database (`wecom_ai_bench`, created and migrated like
`bench/stack.py` does) without starting any server. Three parts:

- **latency**: synthetic knowledge bases (3, with 8 documents of different audiences)
  written straight into the chunk table (binary COPY), with Chinese/English HR/IT text from
  templates, `search_text` segmented by the product's `segment_for_search` (per sentence,
  then joined) and *random unit vectors* of the default model's dimension, tagged with its
  `embedding_model` key so the partial HNSW index and the dense filter apply exactly as for
  real vectors. Searches go through `knowledge_retrieve` (hybrid, all 3 knowledge bases)
  for an employee whose department admits 3 of the 8 documents, and for the admin view;
  the question embeddings are real and cached, so the figures are the database side of a
  search plus the fusion, not the embedding time (reported separately).
- **ingestion**: a PDF (reportlab, STSong-Light), a DOCX and a Markdown file of Chinese text
  indexed by `manage.py kb_ingest` (real parsing, chunking, embeddings and writes).
- **quality**: a small labelled set (below) indexed by `kb_ingest`; recall@5 for the hybrid
  `knowledge_retrieve`, and for its lexical and dense candidate lists alone (the retrieval
  module's `_lexical_lists` / `_dense_lists`, each ranked on its own by `_fuse`).

Every knowledge base it makes is deleted at the end (also on failure).

    .venv/bin/python bench/retrieval.py [--sizes 10000,100000] [--queries 200] [--json]

On 2 busy cores SmolLM2-135M embeds about one 400-token passage per several seconds, so
the ingestion defaults are small (`--pdf-pages 4 --doc-sections 3`); `--only PART` runs one part.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

if __package__ in {None, ""}:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.retrieval_quality import print_quality, run_quality
from bench.stack import (
    BASE_DIR,
    BENCH_DATABASE,
    REDIS_DB_BASE,
    BenchStackError,
    _database_name,
    _ensure_database,
    _with_database,
)
from wecom_ai import embedded

SYNTH_KB = "bench-retrieval-synthetic"
INGEST_KB = "bench-retrieval-ingest"
EMPLOYEE = "bench-retrieval-employee"
EMPLOYEE_DEPARTMENT = "IT"
# (knowledge base suffix, its audience departments, its documents as (file name, the
# document's own audience departments; empty = the knowledge base's)). The employee (IT)
# may read 3 of the 8 documents: chunks are spread round robin over all of them.
SYNTH_KBS: tuple[tuple[str, list[str], tuple[tuple[str, list[str]], ...]], ...] = (
    (
        "",
        [],
        (
            ("synthetic-hr.md", ["HR"]),
            ("synthetic-it.md", ["IT"]),
            ("synthetic-all.md", []),
            ("synthetic-finance.md", ["Finance"]),
        ),
    ),
    ("-ops", ["IT", "Ops"], (("synthetic-ops.md", []), ("synthetic-ops-budget.md", ["Finance"]))),
    ("-legal", ["Legal"], (("synthetic-contracts.md", []), ("synthetic-litigation.md", []))),
)
COPY_BATCH = 5000
TOP_K = 5

# --- synthetic corpus -------------------------------------------------------------------------

_SUBJECTS = ("员工", "新员工", "实习生", "部门经理", "外包人员", "试用期员工", "远程办公人员")
_ITEMS = (
    "年假", "病假", "调休", "差旅报销", "餐补", "VPN 账号", "笔记本电脑", "门禁卡",
    "工资条", "公积金", "考勤", "加班费", "企业微信", "邮箱", "打印机", "会议室",
)  # fmt: skip
_ACTIONS = (
    "需要在 OA 系统提交申请", "应提前三个工作日告知直属主管", "由人力资源部统一审核",
    "请联系 IT 服务台处理", "须附上发票原件和行程单", "每月二十五日前完成确认",
    "可以在企业微信工作台自助办理", "逾期未办理将视为自动放弃", "需要部门负责人签字",
)  # fmt: skip
_DETAILS = (
    "具体额度按职级确定。", "特殊情况可走加急流程。", "相关记录保存两年。",
    "跨部门事项需抄送行政部。", "系统维护期间暂停受理。", "详细说明见员工手册第三章。",
)  # fmt: skip
_EN = (
    "Employees must submit {item} requests through the HR portal.",
    "The IT help desk resets {item} within one business day.",
    "Travel expenses above 5000 RMB need approval from a director.",
    "Security badges must be worn visibly at all times in the office.",
    "Remote staff should connect through the corporate VPN before opening {item}.",
    "Questions about {item} go to the shared services team.",
)
_EN_ITEMS = ("leave", "laptop", "payroll", "reimbursement", "password", "badge", "VPN")
_HEADINGS = ("假期制度", "报销流程", "IT 支持", "行政服务", "信息安全", "薪酬福利")

LATENCY_QUERIES = (
    "年假怎么申请？",
    "差旅报销需要哪些材料",
    "VPN 账号忘记密码怎么办",
    "加班费如何计算",
    "门禁卡丢了找谁",
    "公积金每月什么时候缴纳",
    "How do I reset my laptop password?",
    "travel reimbursement approval",
    "企业微信工作台可以办理哪些业务",
    "试用期员工可以休病假吗",
    "打印机坏了怎么报修",
    "会议室预订流程",
)


def _sentence_pool(rng: random.Random, size: int) -> list[str]:
    pool: set[str] = set()
    while len(pool) < size:
        if rng.random() < 0.25:
            pool.add(rng.choice(_EN).format(item=rng.choice(_EN_ITEMS)))
        else:
            pool.add(
                f"{rng.choice(_SUBJECTS)}办理{rng.choice(_ITEMS)}时{rng.choice(_ACTIONS)}，"
                f"{rng.choice(_DETAILS)}"
            )
    return sorted(pool)


# --- setup -------------------------------------------------------------------------------------


def django_on_bench_database() -> dict[str, str]:
    """bench/stack.py's database part: create and migrate `wecom_ai_bench`, set up Django."""
    # Settings only read the environment: the development secrets come from here too.
    os.environ.update(embedded.development_secrets(os.environ))
    cluster_url = os.environ.get("DATABASE_URL") or embedded.postgres_url(embedded.OWNER_ROLE)
    redis_url = (os.environ.get("REDIS_URL") or embedded.redis_url()).rstrip("/")
    if redis_url.rsplit("/", 1)[-1].isdigit():
        redis_url = redis_url.rsplit("/", 1)[0]
    if _database_name(cluster_url) == BENCH_DATABASE:
        raise BenchStackError(f"DATABASE_URL must name another database than {BENCH_DATABASE}")
    _ensure_database(cluster_url, BENCH_DATABASE)
    env = {
        "DJANGO_SETTINGS_MODULE": "wecom_ai.settings",
        "DJANGO_ENV": "development",
        "DEBUG": "false",
        "DATABASE_URL": _with_database(cluster_url, BENCH_DATABASE),
        "REDIS_URL": redis_url,
        "REDIS_DB_BASE": str(REDIS_DB_BASE),
    }
    os.environ.update(env)
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "--skip-checks", "-v", "0"],
        cwd=BASE_DIR,
        env=dict(os.environ),
        check=True,
    )
    import django
    from django.conf import settings

    django.setup()
    if settings.DATABASES["default"]["NAME"] != BENCH_DATABASE:
        raise BenchStackError("Django was configured before the bench database was chosen")
    return env


def kb_delete(slug: str) -> None:
    from django.core.files.storage import default_storage

    from apps.knowledge.models import Document, KnowledgeBase

    for name in Document.objects.filter(kb__slug=slug).values_list("file", flat=True):
        if name and not name.startswith("bench-synthetic/"):
            with contextlib.suppress(OSError):
                default_storage.delete(name)
    KnowledgeBase.objects.filter(slug=slug).delete()


def _embedder() -> Any:
    from apps.knowledge.models import KnowledgeBase
    from apps.knowledge.services.embedding import embedder_spec_for, get_embedder

    # What a new knowledge base (the synthetic and ingestion ones) embeds with.
    return get_embedder(embedder_spec_for(KnowledgeBase()))


def _percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def _quietly(func: Any, *args: Any, **kwargs: Any) -> Any:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return func(*args, **kwargs)


# --- latency -----------------------------------------------------------------------------------


def _synthetic_kbs() -> tuple[list[int], list[int]]:
    """The synthetic knowledge bases and documents (empty): their ids, for loading chunks."""
    from apps.directory.models import DirectoryUser
    from apps.knowledge.models import Document, KnowledgeBase

    kb_ids, document_ids = [], []
    for suffix, kb_departments, documents in SYNTH_KBS:
        slug = SYNTH_KB + suffix
        kb = KnowledgeBase.objects.create(name=slug, slug=slug, allowed_departments=kb_departments)
        kb_ids.append(kb.pk)
        for name, departments in documents:
            document = Document.objects.create(
                kb=kb,
                file=f"bench-synthetic/{name}",
                original_filename=name,
                title=name,
                generation=1,
                active_generation=1,
                active_version=1,
                status=Document.Status.READY,
                progress=100,
                allowed_departments=departments,
            )
            document_ids.append(document.pk)
    DirectoryUser.objects.update_or_create(
        userid=EMPLOYEE, defaults={"name": EMPLOYEE, "departments": [EMPLOYEE_DEPARTMENT]}
    )
    return kb_ids, document_ids


def _synthetic_kbs_delete() -> None:
    from django.db import connection

    for suffix, _departments, _documents in SYNTH_KBS:
        kb_delete(SYNTH_KB + suffix)
    # Until a vacuum, the HNSW index still holds the deleted rows and the filtered scan
    # (hnsw.iterative_scan) gives up among them: a quality run right after a latency run
    # measured passage recall@5 0.85 instead of 0.975 with 164k dead rows.
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE knowledge_chunk")


def _hnsw_indexes() -> list[tuple[str, str]]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes "
            "WHERE tablename = 'knowledge_chunk' AND indexdef ILIKE '%%USING hnsw%%'"
        )
        return list(cursor.fetchall())


@contextlib.contextmanager
def _hnsw_rebuilt_after() -> Iterator[None]:
    """Drop the HNSW indexes for a bulk load and build them again (also after a failure):
    one in-memory build is much faster than 90k incremental inserts into the graph."""
    from django.db import connection

    indexes = _hnsw_indexes()
    with connection.cursor() as cursor:
        for name, _definition in indexes:
            cursor.execute(f'DROP INDEX IF EXISTS "{name}"')
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SET maintenance_work_mem = '1GB'")
            for _name, definition in indexes:
                cursor.execute(definition.replace("CREATE INDEX", "CREATE INDEX IF NOT EXISTS", 1))
            cursor.execute("RESET maintenance_work_mem")


def _load_chunks(
    *, document_ids: list[int], start: int, count: int, rng: random.Random, pool: list[str]
) -> None:
    import numpy as np
    from django.db import connection
    from pgvector.psycopg import register_vector

    from apps.knowledge.segment import segment_for_search

    embedder = _embedder()
    dims, model_key = embedder.dimensions, embedder.model_key
    segmented = [segment_for_search(sentence) for sentence in pool]
    connection.ensure_connection()
    conn = connection.connection
    register_vector(conn)
    nprng = np.random.default_rng(rng.randrange(2**32))
    columns = (
        "document_id, document_version, generation, position, heading_path, text, "
        "search_text, token_count, page, embedding, embedding_dimensions, embedding_model, "
        "enabled"
    )
    types = ["bigint", "integer", "integer", "integer", "varchar[]", "text", "text",
             "integer", "integer", "vector", "smallint", "varchar", "boolean"]  # fmt: skip
    with connection.cursor() as django_cursor:
        django_cursor.execute(
            "SELECT format_type(atttypid, NULL) FROM pg_attribute "
            "WHERE attrelid = 'knowledge_chunk'::regclass AND attname = 'document_id'"
        )
        types[0] = django_cursor.fetchone()[0]
    done = 0
    with conn.cursor() as cursor:
        while done < count:
            size = min(COPY_BATCH, count - done)
            vectors = nprng.standard_normal((size, dims)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            with cursor.copy(f"COPY knowledge_chunk ({columns}) FROM STDIN (FORMAT BINARY)") as cp:
                cp.set_types(types)
                for offset in range(size):
                    position = start + done + offset
                    picks = rng.sample(range(len(pool)), rng.randint(3, 6))
                    text = "".join(pool[i] for i in picks)
                    heading = rng.choice(_HEADINGS)
                    search_text = " ".join(
                        [segment_for_search(heading)] + [segmented[i] for i in picks]
                    )
                    cp.write_row(
                        (
                            document_ids[position % len(document_ids)], 1, 1, position,
                            [heading], text, search_text, len(text), None,
                            vectors[offset], dims, model_key, True,
                        )
                    )  # fmt: skip
            done += size
    if not conn.autocommit:
        conn.commit()
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE knowledge_chunk")
        cursor.execute("ANALYZE knowledge_document")


def _timed_searches(kb_ids: list[int], *, userid: str | None, queries: int) -> dict[str, Any]:
    from apps.knowledge.selectors import Readers
    from apps.knowledge.services.retrieval import knowledge_retrieve

    times, hits = [], 0
    for number in range(queries):
        query = LATENCY_QUERIES[number % len(LATENCY_QUERIES)]
        started = time.perf_counter()
        readers = Readers.everything() if userid is None else Readers.employee(userid)
        found = knowledge_retrieve(bot_kb_ids=kb_ids, readers=readers, query=query, top_k=TOP_K)
        times.append((time.perf_counter() - started) * 1000)
        hits += len(found)
    return {
        "queries": queries,
        "p50_ms": round(statistics.median(times), 2),
        "p95_ms": round(_percentile(times, 0.95), 2),
        "mean_hits": round(hits / queries, 2),
    }


def run_latency(sizes: list[int], queries: int, seed: int) -> dict[str, Any]:
    from apps.knowledge.models import Chunk

    embedder = _embedder()
    started = time.perf_counter()
    embedder.embed(list(LATENCY_QUERIES))  # the searches below then hit the embedding cache
    embed_ms = (time.perf_counter() - started) * 1000 / len(LATENCY_QUERIES)
    rng = random.Random(seed)
    pool = _sentence_pool(rng, 3000)
    _synthetic_kbs_delete()
    kb_ids, document_ids = _synthetic_kbs()
    levels = []
    try:
        loaded = 0
        for size in sorted(sizes):
            if size > loaded:
                started = time.perf_counter()
                with _hnsw_rebuilt_after():
                    _load_chunks(
                        document_ids=document_ids, start=loaded, count=size - loaded,
                        rng=rng, pool=pool,
                    )  # fmt: skip
                load_s = time.perf_counter() - started
                loaded = size
            else:
                load_s = 0.0
            total = Chunk.objects.count()
            # Warm-up: caches, plans, the HNSW pages.
            _timed_searches(kb_ids, userid=EMPLOYEE, queries=len(LATENCY_QUERIES))
            levels.append(
                {
                    "chunks": size,
                    "chunks_in_table": total,
                    "load_and_index_s": round(load_s, 1),
                    "employee": _timed_searches(kb_ids, userid=EMPLOYEE, queries=queries),
                    "admin": _timed_searches(kb_ids, userid=None, queries=queries),
                }
            )
    finally:
        # With the vacuum: a quality run right after must not search among dead rows.
        _synthetic_kbs_delete()
    return {
        "query_embedding_ms": round(embed_ms, 1),
        "levels": levels,
        "note": (
            "synthetic chunks with RANDOM unit vectors (tagged as the default model's), real "
            "segmented lexical text; question embeddings are real but cached, so latency "
            "excludes the per-question embedding time shown separately; the employee's "
            f"department ({EMPLOYEE_DEPARTMENT}) admits 3 of the 8 documents in 3 knowledge "
            "bases (3/8 of the chunks)"
        ),
    }


# --- ingestion ---------------------------------------------------------------------------------

_INGEST_PARAGRAPHS = (
    "为规范公司日常管理，保障员工合法权益，根据国家有关法律法规，结合公司实际情况，制定本制度。",
    "员工应遵守考勤纪律，按时上下班，因故不能出勤的，应事先履行请假手续，经批准后方可离岗。",
    "公司实行年度绩效考核，考核结果作为调薪、晋升和年终奖发放的重要依据，考核周期为每年一月至十二月。",
    "员工出差应事先填写出差申请单，注明出差事由、地点和预计天数，返回后十五日内办理报销手续。",
    "信息系统账号仅限本人使用，不得转借他人；离职时须交还全部设备并由IT部门注销账号权限。",
    "公司为员工缴纳五险一金，缴纳基数按上一年度月平均工资确定，每年七月调整一次。",
    "新员工入职须完成安全培训和保密协议签署，试用期一般为三个月，表现优秀者可申请提前转正。",
    "办公区域禁止吸烟，消防通道必须保持畅通，发现安全隐患应及时向行政部报告。",
)


def _page_text(rng: random.Random, paragraphs: int) -> list[str]:
    return [
        rng.choice(_INGEST_PARAGRAPHS) + rng.choice(_INGEST_PARAGRAPHS) for _ in range(paragraphs)
    ]


def _make_pdf(path: Path, pages: int, rng: random.Random) -> None:
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont
    from reportlab.pdfgen import canvas

    pdfmetrics.registerFont(UnicodeCIDFont("STSong-Light"))
    pdf = canvas.Canvas(str(path), pagesize=A4)
    pdf.setTitle("员工手册（基准测试）")
    _width, height = A4
    for page in range(1, pages + 1):
        pdf.setFont("STSong-Light", 16)
        pdf.drawString(60, height - 70, f"第{page}章 员工管理规定")
        pdf.setFont("STSong-Light", 11)
        y = height - 110
        for paragraph in _page_text(rng, 4):
            for start in range(0, len(paragraph), 40):
                pdf.drawString(60, y, paragraph[start : start + 40])
                y -= 18
            y -= 10
        pdf.showPage()
    pdf.save()


def _make_docx(path: Path, sections: int, rng: random.Random) -> None:
    import docx

    document = docx.Document()
    document.add_heading("信息安全管理办法", level=1)
    for number in range(1, sections + 1):
        document.add_heading(f"第{number}节 管理要求", level=2)
        for paragraph in _page_text(rng, 3):
            document.add_paragraph(paragraph)
    document.save(str(path))


def _make_markdown(path: Path, sections: int, rng: random.Random) -> None:
    lines = ["# 行政服务指南", ""]
    for number in range(1, sections + 1):
        lines += [f"## 第{number}部分 服务说明", "", *(p + "\n" for p in _page_text(rng, 3))]
    path.write_text("\n".join(lines), encoding="utf-8")


def run_ingestion(pdf_pages: int, doc_sections: int, seed: int) -> dict[str, Any]:
    from django.core.management import call_command

    from apps.knowledge.models import Document

    rng = random.Random(seed)
    kb_delete(INGEST_KB)
    _embedder()  # load the model and jieba's dictionary (once per worker) before timing
    import importlib

    from apps.knowledge.segment import segment_for_search

    segment_for_search("加载词典")
    # and the parsers, which `parse_document` imports on a worker's first file of a type
    for module in ("pdf", "office", "markdown"):
        importlib.import_module(f"apps.knowledge.parsing.{module}")
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-retrieval-") as folder:
            files = [
                Path(folder, "bench-handbook.pdf"),
                Path(folder, "bench-security.docx"),
                Path(folder, "bench-services.md"),
            ]
            _make_pdf(files[0], pdf_pages, rng)
            _make_docx(files[1], doc_sections, rng)
            _make_markdown(files[2], doc_sections, rng)
            for path in files:
                started = time.perf_counter()
                _quietly(call_command, "kb_ingest", INGEST_KB, str(path))
                seconds = time.perf_counter() - started
                document = Document.objects.get(kb__slug=INGEST_KB, original_filename=path.name)
                rows.append(
                    {
                        "file": path.name,
                        "pages": document.pages,
                        "chunks": document.chunk_count,
                        "seconds": round(seconds, 2),
                        "pages_per_s": round(document.pages / seconds, 2),
                        "chunks_per_s": round(document.chunk_count / seconds, 2),
                    }
                )
    finally:
        kb_delete(INGEST_KB)
    pages = sum(row["pages"] for row in rows)
    chunks = sum(row["chunks"] for row in rows)
    seconds = sum(row["seconds"] for row in rows)
    return {
        "documents": rows,
        "total": {
            "pages": pages,
            "chunks": chunks,
            "seconds": round(seconds, 2),
            "pages_per_s": round(pages / seconds, 2),
            "chunks_per_s": round(chunks / seconds, 2),
        },
        "note": "DOCX and Markdown count as 1 page each (what the parsers report)",
    }


# --- output ------------------------------------------------------------------------------------


def print_tables(report: dict[str, Any]) -> None:
    if "quality" in report:
        print_quality(report["quality"])
    if "ingestion" in report:
        ingestion = report["ingestion"]
        print("\nIngestion through kb_ingest (real parsing, chunking, embeddings)")
        print(f"{'file':<22} {'pages':>5} {'chunks':>6} {'s':>7} {'pages/s':>8} {'chunks/s':>9}")
        for row in [*ingestion["documents"], {"file": "total", **ingestion["total"]}]:
            print(
                f"{row['file']:<22} {row['pages']:>5} {row['chunks']:>6} {row['seconds']:>7.2f} "
                f"{row['pages_per_s']:>8.2f} {row['chunks_per_s']:>9.2f}"
            )
        print(f"  {ingestion['note']}")
    if "latency" in report:
        latency = report["latency"]
        print("\nHybrid search latency (knowledge_retrieve, top 5)")
        print(f"{'chunks':>8} {'view':<9} {'queries':>7} {'p50 ms':>8} {'p95 ms':>8} {'hits':>5}")
        for level in latency["levels"]:
            for view in ("employee", "admin"):
                row = level[view]
                print(
                    f"{level['chunks']:>8} {view:<9} {row['queries']:>7} {row['p50_ms']:>8.2f} "
                    f"{row['p95_ms']:>8.2f} {row['mean_hits']:>5}"
                )
            print(f"{'':>8} load + HNSW build {level['load_and_index_s']} s")
        print(
            f"  question embedding (not in the figures above): {latency['query_embedding_ms']} ms"
        )
        print(f"  {latency['note']}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", default="10000,100000", help="chunk counts (default %(default)s)"
    )
    parser.add_argument("--queries", type=int, default=200, help="searches per view and size")
    parser.add_argument("--pdf-pages", type=int, default=4, help="20 = the issue's 20-page PDF")
    parser.add_argument("--doc-sections", type=int, default=3, help="DOCX/Markdown sections")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--only", choices=("latency", "ingestion", "quality"), action="append", help="repeatable"
    )
    parser.add_argument(
        "--embedders",
        default="use-multilingual-v3",
        help="quality part: comma-separated embedders (use-multilingual-v3, gguf = the default "
        "GGUF model, slow on CPU); default %(default)s",
    )
    parser.add_argument(
        "--headings",
        choices=("both", "yes", "no"),
        default="both",
        help="quality part: index with the heading path embedded, without, or both",
    )
    parser.add_argument(
        "--chunking",
        default="default",
        help="quality part: comma-separated chunk size/overlap pairs to index with, e.g. "
        "400/60,200/30 ('default' = a new knowledge base's); default %(default)s",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",") if size.strip()]
    parts = args.only or ["quality", "ingestion", "latency"]

    django_on_bench_database()
    report: dict[str, Any] = {"database": BENCH_DATABASE}
    started = time.perf_counter()
    try:
        if "quality" in parts:
            headings = {"both": (True, False), "yes": (True,), "no": (False,)}[args.headings]
            chunkings = [
                None if item == "default" else (int(item.split("/")[0]), int(item.split("/")[1]))
                for item in args.chunking.split(",")
                if item.strip()
            ]
            report["quality"] = run_quality(
                args.embedders.split(","), kb_delete, headings, chunkings
            )
        if "ingestion" in parts:
            report["ingestion"] = run_ingestion(args.pdf_pages, args.doc_sections, args.seed)
        if "latency" in parts:
            report["latency"] = run_latency(sizes, args.queries, args.seed)
    finally:
        from django.db import connections

        connections.close_all()
        embedded.stop_started_here()
    report["wall_s"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
    else:
        print_tables(report)
        print(f"\n(wall time {report['wall_s']} s, database {BENCH_DATABASE})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
