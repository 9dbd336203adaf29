"""Session-archive throughput and policy-matcher speed, each next to a baseline.

Archive: N generated records are sealed the way WeCom seals them and served by the
compiled stand-in of the vendor SDK, then `archive_pull` does the whole path (GetChatData,
RSA + symmetric decrypt, policy check against ~1000 words, store, ledger, review cases) on
the `wecom_ai_bench` database. LLM review is off. Matcher: `WordMatcher.find` and
`policy_evaluate` with 10k words over 1 MB of mixed Chinese/English text, next to a plain
`str.count` loop over the same words on the same text (exact substrings only: no folding,
no boundaries), which is the floor a naive implementation starts from.

    .venv/bin/python bench/archive.py [--messages 5000] [--words 10000] [--text-mb 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in {None, ""}:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stack import (
    BASE_DIR,
    BENCH_DATABASE,
    REDIS_DB_BASE,
    _database_name,
    _ensure_database,
    _redis_flush,
    _with_database,
)
from wecom_ai import embedded

SOURCE_NAME = "bench archive"
POLICY_NAME = "bench archive policy"
MATCHER_POLICY_NAME = "bench matcher policy"
CORP_ID = "wwbencharchive"
SECRET = "bench-archive-secret"
# Common characters, so generated words and text overlap the way real chat does.
CJK = (
    "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也"
    "能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实"
    "加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样"
    "与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情"
)
ASCII = "abcdefghijklmnopqrstuvwxyz"
FILLER = ["the", "price", "meeting", "report", "ok", "thanks", "客户", "合同", "明天", "周报"]


def _word(rng: random.Random) -> str:
    if rng.random() < 0.7:
        return "".join(rng.choice(CJK) for _ in range(rng.randint(2, 4)))
    return "".join(rng.choice(ASCII) for _ in range(rng.randint(5, 9)))


def words_make(count: int, *, seed: int) -> list[str]:
    rng = random.Random(seed)
    words: dict[str, None] = {}
    while len(words) < count:
        words[_word(rng)] = None
    return list(words)


def text_make(size_bytes: int, *, words: list[str], seed: int) -> str:
    """Mixed Chinese/English chat text of about `size_bytes` UTF-8 bytes; ~1% listed words."""
    rng = random.Random(seed)
    parts: list[str] = []
    size = 0
    while size < size_bytes:
        roll = rng.random()
        if roll < 0.01:
            piece = rng.choice(words)
        elif roll < 0.55:
            piece = "".join(rng.choice(CJK) for _ in range(rng.randint(1, 6)))
        elif roll < 0.9:
            piece = " " + rng.choice([*FILLER, "".join(rng.choice(ASCII) for _ in range(5))]) + " "
        else:
            piece = rng.choice("，。！？ ,.!?\n")
        parts.append(piece)
        size += len(piece.encode())
    return "".join(parts)


def _database_prepare() -> None:
    """Point this process at the bench database (created and migrated like bench.stack)."""
    # Settings only read the environment: the development secrets come from here too.
    os.environ.update(embedded.development_secrets(os.environ))
    cluster_url = os.environ.get("DATABASE_URL") or embedded.postgres_url(embedded.OWNER_ROLE)
    redis_url = (os.environ.get("REDIS_URL") or embedded.redis_url()).rstrip("/")
    if redis_url.rsplit("/", 1)[-1].isdigit():
        redis_url = redis_url.rsplit("/", 1)[0]
    if _database_name(cluster_url) == BENCH_DATABASE:
        raise SystemExit(f"DATABASE_URL must name another database than {BENCH_DATABASE}")
    _ensure_database(cluster_url, BENCH_DATABASE)
    _redis_flush(redis_url)
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "wecom_ai.settings",
            "DJANGO_ENV": "development",
            "DEBUG": "false",
            "DATABASE_URL": _with_database(cluster_url, BENCH_DATABASE),
            "REDIS_URL": redis_url,
            "REDIS_DB_BASE": str(REDIS_DB_BASE),
        }
    )
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=BASE_DIR,
        env=dict(os.environ),
        check=True,
    )
    import django

    django.setup()


def archive_bench(*, messages: int, policy_words: int, workdir: Path) -> dict[str, Any]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from django.conf import settings
    from django.utils import timezone

    from apps.audit.models import (
        Action,
        ArchiveKey,
        ArchiveSource,
        AuditPolicy,
        PolicyWordList,
        SensitiveWordList,
    )
    from apps.audit.services.archive import archive_pull
    from tests.wecomsdk.build import (
        FIXTURE_ENV,
        FixtureRecord,
        build_test_sdk,
        sdk_settings_for,
        write_fixture,
    )

    for name, value in sdk_settings_for(build_test_sdk(workdir / "sdk")).items():
        setattr(settings, name, value)
    words = words_make(policy_words, seed=1)
    word_list, _ = SensitiveWordList.objects.update_or_create(
        name=POLICY_NAME, defaults={"words": "\n".join(words)}
    )
    policy, _ = AuditPolicy.objects.update_or_create(
        name=POLICY_NAME,
        defaults={"enabled": True, "llm_review_enabled": False, "pii_mobile": Action.FLAG},
    )
    PolicyWordList.objects.update_or_create(
        policy=policy, word_list=word_list, defaults={"action": Action.FLAG}
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    source, _ = ArchiveSource.objects.update_or_create(
        name=SOURCE_NAME,
        defaults={
            "corp_id": CORP_ID,
            "secret": SECRET,
            "batch_size": 1000,
            "cursor": 0,
            "enabled": True,
        },
    )
    source.keys.all().delete()
    ArchiveKey.objects.create(
        source=source,
        publickey_ver=1,
        private_key=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ).decode(),
    )
    policy.archive_sources.add(source)

    rng = random.Random(2)
    run = time.time_ns()
    start_ms = int(timezone.now().timestamp() * 1000) - messages * 1000
    people = [f"user{n}" for n in range(40)]
    records = []
    for n in range(messages):
        sender, recipient = rng.sample(people, 2)
        text = text_make(rng.randint(20, 200), words=words, seed=n)
        records.append(
            FixtureRecord(
                message={
                    "msgid": f"bench{run}-{n}",
                    "action": "send",
                    "from": sender,
                    "tolist": [recipient],
                    "roomid": f"room{n % 7}" if n % 3 == 0 else "",
                    "msgtime": start_ms + n * 1000,
                    "msgtype": "text",
                    "text": {"content": text},
                },
                publickey_ver=1,
            )
        )
    fixture = workdir / "fixture.txt"
    write_fixture(
        fixture, records, public_keys={1: key.public_key()}, corp_id=CORP_ID, secret=SECRET
    )
    os.environ[FIXTURE_ENV] = str(fixture)
    started = time.perf_counter()
    result = archive_pull(source_id=source.pk)
    elapsed = time.perf_counter() - started
    if result.error or result.stored != messages:
        raise SystemExit(f"archive pull failed: stored {result.stored}/{messages}: {result.error}")
    return {
        "messages": messages,
        "policy_words": len(words),
        "stored": result.stored,
        "cases": result.cases,
        "batches": result.batches,
        "seconds": elapsed,
        "messages_per_second": result.stored / elapsed,
    }


def _timed(function: Any, repeat: int) -> float:
    """Best of `repeat` wall-clock seconds: the least disturbed by other load on the box."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best


def matcher_bench(*, word_count: int, text_mb: float, repeat: int) -> dict[str, Any]:
    from apps.audit.filtering.matcher import WordMatcher
    from apps.audit.models import Action, AuditPolicy, PolicyWordList, SensitiveWordList
    from apps.audit.services.policy import policy_cache_clear, policy_evaluate

    words = words_make(word_count, seed=3)
    text = text_make(int(text_mb * 1_000_000), words=words, seed=4)
    megabytes = len(text.encode()) / 1_000_000

    started = time.perf_counter()
    matcher = WordMatcher((word, "bench") for word in words)
    build_seconds = time.perf_counter() - started
    matches = len(matcher.find(text))
    find_seconds = _timed(lambda: matcher.find(text), repeat)

    word_list, _ = SensitiveWordList.objects.update_or_create(
        name=MATCHER_POLICY_NAME, defaults={"words": "\n".join(words)}
    )
    policy, _ = AuditPolicy.objects.update_or_create(
        name=MATCHER_POLICY_NAME, defaults={"enabled": True, "pii_mobile": Action.FLAG}
    )
    PolicyWordList.objects.update_or_create(
        policy=policy, word_list=word_list, defaults={"action": Action.FLAG}
    )
    policy_cache_clear()
    policy_evaluate(policies=[policy], text="warm up: compile and cache the policy")
    evaluate_seconds = _timed(lambda: policy_evaluate(policies=[policy], text=text), repeat)

    def baseline() -> int:
        return sum(text.count(word) for word in words)

    baseline_hits = baseline()
    baseline_seconds = _timed(baseline, repeat)
    return {
        "words": len(words),
        "text_mb": megabytes,
        "matcher_build_seconds": build_seconds,
        "matches": matches,
        "find_mb_per_second": megabytes / find_seconds,
        "policy_evaluate_mb_per_second": megabytes / evaluate_seconds,
        "baseline_hits": baseline_hits,
        "baseline_str_count_mb_per_second": megabytes / baseline_seconds,
        "find_vs_baseline": baseline_seconds / find_seconds,
        "policy_evaluate_vs_baseline": baseline_seconds / evaluate_seconds,
    }


def render(result: dict[str, Any]) -> str:
    archive, m = result["archive"], result["matcher"]
    rows = [
        ("archive pull+decrypt+policy+store", f"{archive['messages_per_second']:,.0f} msg/s"),
        ("  messages / policy words", f"{archive['stored']:,} / {archive['policy_words']:,}"),
        ("  review cases opened", f"{archive['cases']:,}"),
        ("  wall time", f"{archive['seconds']:.1f} s"),
        (f"WordMatcher.find ({m['words']:,} words)", f"{m['find_mb_per_second']:.2f} MB/s"),
        ("policy_evaluate (words + mobile PII)", f"{m['policy_evaluate_mb_per_second']:.2f} MB/s"),
        ("baseline: str.count per word", f"{m['baseline_str_count_mb_per_second']:.2f} MB/s"),
        ("find / baseline speed", f"{m['find_vs_baseline']:.1f}x"),
        ("policy_evaluate / baseline speed", f"{m['policy_evaluate_vs_baseline']:.1f}x"),
        ("  text MB / matches", f"{m['text_mb']:.2f} / {m['matches']:,}"),
        ("  matcher build", f"{m['matcher_build_seconds']:.2f} s"),
    ]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000, help="archived records to pull")
    parser.add_argument("--policy-words", type=int, default=1000, help="words in the policy")
    parser.add_argument("--words", type=int, default=10000, help="words for the matcher bench")
    parser.add_argument("--text-mb", type=float, default=1.0, help="matcher text size in MB")
    parser.add_argument("--repeat", type=int, default=3, help="matcher timings: best of N")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if min(args.messages, args.policy_words, args.words, args.repeat) < 1 or args.text_mb <= 0:
        parser.error("all sizes must be positive")
    _database_prepare()
    with tempfile.TemporaryDirectory(prefix="bench-archive-") as workdir:
        result = {
            "archive": archive_bench(
                messages=args.messages, policy_words=args.policy_words, workdir=Path(workdir)
            ),
            "matcher": matcher_bench(
                word_count=args.words, text_mb=args.text_mb, repeat=args.repeat
            ),
        }
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
