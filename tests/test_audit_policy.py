"""Policies: evaluation and actions, the compiled-matcher cache, streaming, imports."""

from __future__ import annotations

from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse
from django.utils import translation

from apps.audit.models import (
    Action,
    AuditPolicy,
    OperatorAuditEntry,
    PolicyWordList,
    RegexRule,
    SensitiveWordList,
)
from apps.audit.services import policy as policy_service
from apps.audit.services.policy import (
    PolicyImportError,
    policy_evaluate,
    policy_stream_guard,
    regex_rules_import,
    word_list_import,
)

pytestmark = pytest.mark.django_db

MOBILE = "13812345678"


@pytest.fixture
def policy() -> AuditPolicy:
    """Block 机密 words, mask 工资 words, flag order numbers except test ones, mask mobiles."""
    policy = AuditPolicy.objects.create(
        name="默认策略", pii_mobile=Action.MASK, refusal_message="该内容无法回答。"
    )
    blocked = SensitiveWordList.objects.create(
        name="机密", words="绝密文件\n# comment\n\nsecret plan"
    )
    masked = SensitiveWordList.objects.create(name="薪酬", words="工资单")
    PolicyWordList.objects.create(policy=policy, word_list=blocked, action=Action.BLOCK)
    PolicyWordList.objects.create(policy=policy, word_list=masked, action=Action.MASK)
    RegexRule.objects.create(policy=policy, name="order", pattern=r"ORD-\d{6}", action=Action.FLAG)
    RegexRule.objects.create(policy=policy, pattern=r"ORD-000000", action=Action.ALLOW)
    policy.refresh_from_db()
    return policy


def test_clean_text_is_allowed_unchanged(policy: AuditPolicy) -> None:
    decision = policy_evaluate(policies=[policy], text="年假怎么算？")
    assert (decision.action, decision.matches, decision.masked_text) == (
        Action.ALLOW,
        (),
        "年假怎么算？",
    )
    assert not decision.needs_review


def test_each_action_and_the_strongest_wins(policy: AuditPolicy) -> None:
    # Given text with a masked word, a mobile number and a flagged order number
    text = f"请把工 资单发到{MOBILE}，订单ORD-123456"
    decision = policy_evaluate(policies=[policy], text=text)
    # Then mask is the strongest action, both mask spans are hidden, the order is flagged
    assert decision.action == Action.MASK
    assert {(m.rule.split(":")[0], m.action) for m in decision.matches} == {
        ("words", Action.MASK),
        ("pii", Action.MASK),
        ("regex", Action.FLAG),
    }
    assert decision.masked_text == "请把****发到***********，订单ORD-123456"
    assert decision.needs_review
    # And the record kept for the ledger has spans and listed words, never the text
    record = decision.as_record()
    assert MOBILE not in str(record) and "工资单" in str(record)
    # When a blocked word appears too, block wins and the policy's refusal is used
    blocked = policy_evaluate(policies=[policy], text=text + "，附上絕密文件")
    assert blocked.action == Action.BLOCK and blocked.blocked
    assert blocked.refusal_message == "该内容无法回答。"


def test_allow_rule_is_an_exception_within_its_policy(policy: AuditPolicy) -> None:
    decision = policy_evaluate(policies=[policy], text="测试单号 ORD-000000")
    assert [m.action for m in decision.matches] == [Action.ALLOW]
    assert decision.action == Action.ALLOW and not decision.needs_review


def test_disabled_policies_are_ignored(policy: AuditPolicy) -> None:
    policy.enabled = False
    assert policy_evaluate(policies=[policy], text="绝密文件").action == Action.ALLOW


def test_compiled_matchers_are_cached_until_the_policy_changes(policy: AuditPolicy) -> None:
    # Given a compiled policy
    first = policy_service.policy_compiled(policy)
    assert policy_service.policy_compiled(policy) is first
    # When a word list it uses is re-imported (the service bumps the policy's updated_at)
    word_list_import(name="机密", text="绝密文件\n内部价格")
    policy.refresh_from_db()
    # Then the next evaluation recompiles and sees the new word
    assert policy_service.policy_compiled(policy) is not first
    assert policy_evaluate(policies=[policy], text="内部价格是多少").blocked


def stream(guard: policy_service.PolicyStreamGuard, pieces: list[str]) -> tuple[list[str], str]:
    released = [guard.feed(piece) for piece in pieces]
    return released, guard.finish()


def test_stream_guard_never_releases_a_blocked_word(policy: AuditPolicy) -> None:
    # Given an answer whose blocked word arrives split over pieces, in traditional script
    pieces = ["您好，", "这是", "絕", "密", "文件的内容", "……"]
    guard = policy_stream_guard(policies=[policy])
    released = [guard.feed(piece) for piece in pieces]
    # Then the block is known as soon as the word completes, with the policy's refusal
    assert guard.blocked and guard.refusal_message == "该内容无法回答。"
    # And nothing from the word on is ever released
    sent = "".join(released) + guard.finish()
    assert "絕" not in sent and sent == "您好，这是"[: len(sent)]
    assert guard.decision is not None and guard.decision.blocked


def test_stream_guard_streams_clean_text_and_masks_the_rest(policy: AuditPolicy) -> None:
    # A clean answer streams out (minus the held tail) and ends whole
    clean = policy_stream_guard(policies=[policy])
    released, rest = stream(clean, ["年假", "按工龄计算，" * 20, "详见制度。"])
    assert "".join(released)
    assert "".join(released) + rest == "年假" + "按工龄计算，" * 20 + "详见制度。"
    # A mobile number (mask) is never released in clear; the answer ends masked
    masked = policy_stream_guard(policies=[policy])
    pieces = ["请联系", MOBILE[:5], MOBILE[5:], "，" + "谢谢" * 40]
    released, rest = stream(masked, pieces)
    assert "".join(released) + rest == "请联系" + "*" * 11 + "，" + "谢谢" * 40
    assert not any(MOBILE[:5] in piece for piece in released)
    assert not masked.blocked and masked.decision.action == Action.MASK


def test_regex_import_refuses_an_invalid_pattern_with_its_line_number(
    policy: AuditPolicy, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.txt"
    rules.write_text("# order numbers\nORD-\\d{6}\nblock\t(unclosed\n\nmask\t工号\\d+\n")
    # The service names the line, in the admin's language, and imports nothing
    for language, line_label in (("en", "line 3:"), ("zh-hans", "第 3 行")):
        with translation.override(language), pytest.raises(PolicyImportError) as caught:
            regex_rules_import(policy=policy, text=rules.read_text())
        assert len(caught.value.problems) == 1
        assert caught.value.problems[0].startswith(line_label)
    # So does the command
    with translation.override("en"), pytest.raises(CommandError, match="line 3"):
        call_command("policy_import", "regex", policy.name, str(rules))
    assert policy.regex_rules.count() == 2
    # A valid file imports every line with its action
    rules.write_text("ORD-\\d{6}\nblock\t(?i)confidential\n")
    out = StringIO()
    with translation.override("en"):
        call_command("policy_import", "regex", policy.name, str(rules), "--replace", stdout=out)
    assert "2 regex rules" in out.getvalue()
    assert list(policy.regex_rules.values_list("action", "pattern")) == [
        (Action.FLAG, "ORD-\\d{6}"),
        (Action.BLOCK, "(?i)confidential"),
    ]
    assert OperatorAuditEntry.objects.filter(action="audit.policy.regex_import").count() == 1


def test_word_list_import_from_a_gb18030_file(policy: AuditPolicy, tmp_path: Path) -> None:
    words = tmp_path / "words.txt"
    words.write_bytes("\n".join(f"敏感词{n}" for n in range(3000)).encode("gb18030"))
    call_command(
        "policy_import", "words", "大名单", str(words), "--policy", policy.name, "--action", "flag"
    )
    word_list = SensitiveWordList.objects.get(name="大名单")
    assert word_list.word_count == 3000
    policy.refresh_from_db()
    decision = policy_evaluate(policies=[policy], text="这里有敏感词2999")
    assert decision.action == Action.FLAG
    words.write_text("正常\n***\n")
    with translation.override("en"), pytest.raises(CommandError, match="line 2"):
        call_command("policy_import", "words", "大名单", str(words))


def test_admin_imports_a_word_list_file_and_records_the_change(admin_client, policy) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    upload = SimpleUploadedFile("words.txt", "甲方底价\n乙方底价\n".encode())
    response = admin_client.post(
        reverse("admin:audit_sensitivewordlist_add"),
        {"name": "报价", "description": "", "words": "", "import_file": upload,
         "import_mode": "replace"},
    )  # fmt: skip
    assert response.status_code == 302, response.content.decode()[:2000]
    assert SensitiveWordList.objects.get(name="报价").word_lines() == ["甲方底价", "乙方底价"]
    entry = OperatorAuditEntry.objects.get(action="audit.word_list.create")
    assert entry.actor_username == "admin" and entry.after["word_count"] == 2
