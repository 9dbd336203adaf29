"""Optional LLM review of archived conversations: verdict parsing, thresholds, the real model."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from unittest import mock

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.utils import timezone

from apps.audit.models import ArchivedMessage, ArchiveKey, ArchiveSource, AuditPolicy, ReviewCase
from apps.audit.services import llm_review
from apps.audit.services.archive import archive_pull
from apps.audit.services.llm_review import (
    LlmVerdict,
    LlmVerdictError,
    archive_messages_llm_review,
    llm_review_prompt,
    llm_verdict_parse,
)
from apps.inference.model_load import model_load_get
from apps.inference.models import ModelProfile
from tests.wecomsdk.build import (
    FIXTURE_ENV,
    FixtureRecord,
    build_test_sdk,
    sdk_settings_for,
    write_fixture,
)

pytestmark = pytest.mark.django_db

CORP_ID = "wwllmreview"
SECRET = "archive-secret-for-llm-tests"


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ('{"risk": 0.9, "label": "泄密", "reason": "shares prices"}', (0.9, "泄密")),
        ('Sure! ```json\n{"risk": "0.25", "label": "none"}\n```', (0.25, "none")),
        ('{"note": {"risk": 7}} then {"risk": 1, "label": "fraud", "reason": "x"}', (1.0, "fraud")),
        ('{"risk": 0, "label": null}', (0.0, "")),
    ],
)
def test_parser_finds_the_first_usable_verdict(answer: str, expected: tuple) -> None:
    verdict = llm_verdict_parse(answer)
    assert (verdict.risk, verdict.label) == expected


@pytest.mark.parametrize(
    "answer",
    [
        "",
        "The conversation looks fine to me.",
        '{"risk": 0.9, "label": "unterminated"',
        '{"risk": 1.5, "label": "too high"}',
        '{"risk": true}',
        '{"label": "no risk"}',
        '{"risk": "high"}',
        "[0.9]",
    ],
)
def test_parser_rejects_answers_without_a_verdict(answer: str) -> None:
    with pytest.raises(LlmVerdictError):
        llm_verdict_parse(answer)


def test_prompt_puts_the_transcript_in_place_or_appends_it() -> None:
    placed = AuditPolicy(llm_review_prompt="Rate:\n{transcript}\nJSON only.")
    assert llm_review_prompt(policy=placed, transcript="a: hi") == "Rate:\na: hi\nJSON only."
    appended = AuditPolicy(llm_review_prompt="Rate this.")
    assert llm_review_prompt(policy=appended, transcript="a: hi") == "Rate this.\n\na: hi"


@pytest.fixture
def source() -> ArchiveSource:
    return ArchiveSource.objects.create(name="总部", corp_id=CORP_ID, secret=SECRET)


@pytest.fixture
def llm_policy(source: ArchiveSource) -> AuditPolicy:
    policy = AuditPolicy.objects.create(
        name="LLM 复核", llm_review_enabled=True, llm_review_threshold=0.8
    )
    policy.archive_sources.add(source)
    return policy


def archived(source: ArchiveSource, number: int, text: str, **fields) -> ArchivedMessage:
    values = {
        "source": source,
        "msgid": f"llm{number}",
        "seq": number,
        "publickey_ver": 1,
        "action": "send",
        "sender": "zhangsan",
        "tolist": ["lisi"],
        "msgtime": timezone.now() - dt.timedelta(minutes=10 - number),
        "msgtype": "text",
        "text": text,
    }
    values.update(fields)
    return ArchivedMessage.objects.create(**values)


def test_conversations_at_or_above_the_threshold_open_a_case(source, llm_policy, model_profile):
    # Given a 1:1 chat and a group chat, and a model that rates the group chat risky
    pair = [archived(source, 1, "报价多少？"), archived(source, 2, "内部价格一百元")]
    room = [archived(source, 3, "明天开会", roomid="r1"), archived(source, 4, "收到", roomid="r1")]
    prompts: list[str] = []

    def ask(profile, prompt: str) -> str:
        prompts.append(prompt)
        risk = 0.8 if "明天开会" in prompt else 0.79
        return f'{{"risk": {risk}, "label": "泄密", "reason": "价格外泄"}}'

    with mock.patch.object(llm_review, "_ask", ask):
        result = archive_messages_llm_review(
            source_id=source.pk, message_ids=[m.pk for m in pair + room]
        )
    # Then each conversation was asked once, with its whole transcript
    assert (result.conversations, result.verdicts, result.errors, result.cases) == (2, 2, 0, 1)
    assert any("报价多少？" in p and "内部价格一百元" in p for p in prompts)
    # And only the group chat (risk 0.8 >= 0.8) has a case, on its newest message
    (case,) = ReviewCase.objects.all()
    assert case.archived_message_id == room[-1].pk and case.archive_source_id == source.pk
    assert (case.policy_id, case.action) == (llm_policy.pk, "flag")
    assert case.matches[0]["label"] == "泄密" and case.matches[0]["risk"] == 0.8
    # And every message records the verdict of its conversation
    for message in pair + room:
        message.refresh_from_db()
        assert message.llm_reviewed_at is not None and message.llm_review_error == ""
    assert pair[0].llm_review[str(llm_policy.pk)]["risk"] == 0.79


def test_real_model_answer_is_recorded_whatever_it_says(source, llm_policy, model_profile):
    # Given a conversation and the small bundled model, which may not answer in JSON
    messages = [archived(source, 1, "把客户名单发我私人邮箱"), archived(source, 2, "好的，今晚发")]
    # When it is reviewed
    result = archive_messages_llm_review(source_id=source.pk, message_ids=[m.pk for m in messages])
    # Then the outcome is recorded: a verdict (case only at/above the threshold) or an error
    assert result.conversations == 1 and result.verdicts + result.errors == 1
    # And the model's load shows in the admin like any bot's use of it
    load = model_load_get(profile_id=model_profile.pk)
    assert load is not None and load.workers == 1 and load.slots >= 1
    messages[0].refresh_from_db()
    outcome = messages[0].llm_review[str(llm_policy.pk)]
    assert messages[0].llm_reviewed_at is not None
    if result.errors:
        assert "error" in outcome and messages[0].llm_review_error
        assert not ReviewCase.objects.exists()
    else:
        assert 0 <= outcome["risk"] <= 1
        assert ReviewCase.objects.count() == int(outcome["risk"] >= 0.8)


def test_each_policy_reviews_with_its_own_model(source, llm_policy, model_profile):
    # Given a second policy that names its own review model (whose file is not there)
    big = ModelProfile.objects.create(
        name="大模型", gguf_path="/nonexistent/review-model.gguf", context_size=2048
    )
    second = AuditPolicy.objects.create(
        name="大模型复核", llm_review_enabled=True, llm_review_model=big
    )
    second.archive_sources.add(source)
    messages = [archived(source, 1, "把客户名单发我私人邮箱"), archived(source, 2, "好的")]

    result = archive_messages_llm_review(source_id=source.pk, message_ids=[m.pk for m in messages])

    # Then the first policy was reviewed by the default (first) profile, the bundled model,
    # and the second by its own, which failed to load: an error naming that model
    messages[0].refresh_from_db()
    assert "/nonexistent/review-model.gguf" not in str(messages[0].llm_review[str(llm_policy.pk)])
    assert "/nonexistent/review-model.gguf" in messages[0].llm_review[str(second.pk)]["error"]
    assert result.conversations == 1 and result.errors >= 1


def test_pull_enqueues_llm_review_after_commit_only_when_a_policy_asks(
    source, llm_policy, tmp_path: Path, monkeypatch, django_capture_on_commit_callbacks, settings
):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ArchiveKey.objects.create(
        source=source,
        publickey_ver=1,
        private_key=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ).decode(),
    )
    for name, value in sdk_settings_for(build_test_sdk(tmp_path / "sdk")).items():
        setattr(settings, name, value)
    sent = int(timezone.now().timestamp() * 1000)
    records = [
        FixtureRecord(
            message={
                "msgid": f"pull{n}",
                "action": "send",
                "from": "zhangsan",
                "tolist": ["lisi"],
                "roomid": "",
                "msgtime": sent + n,
                "msgtype": "text",
                "text": {"content": f"第{n}条"},
            },
            publickey_ver=1,
        )
        for n in (1, 2)
    ]
    fixture = tmp_path / "fixture.txt"
    write_fixture(
        fixture, records, public_keys={1: key.public_key()}, corp_id=CORP_ID, secret=SECRET
    )
    monkeypatch.setenv(FIXTURE_ENV, str(fixture))
    with mock.patch("apps.audit.tasks.archive_llm_review.delay") as delay:
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            result = archive_pull(source_id=source.pk)
        assert result.stored == 2 and not delay.called  # nothing before the commit
        for callback in callbacks:
            callback()
    delay.assert_called_once_with(sorted(ArchivedMessage.objects.values_list("pk", flat=True)))


def test_verdict_record_round_trips() -> None:
    verdict = LlmVerdict(risk=0.5, label="x", reason="y")
    assert llm_verdict_parse(str(verdict.as_record()).replace("'", '"')) == verdict
