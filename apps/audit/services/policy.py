"""Policy evaluation: sensitive words, regex rules and personal-data detectors → one decision.

Matchers are compiled once per process and policy version (id + `updated_at`); the services
that edit word lists or rules bump `updated_at` of the policies using them, so a change is
picked up by every worker on its next evaluation without a restart.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import Model
from django.utils import timezone
from django.utils.translation import gettext as _

from apps.audit.filtering import StreamGuard, WordMatcher, find_pii, mask
from apps.audit.models import (
    ACTION_STRENGTH,
    Action,
    AuditPolicy,
    PolicyWordList,
    RegexRule,
    SensitiveWordList,
    regex_problem,
)
from apps.audit.services.operator_audit import (
    model_snapshot,
    operator_audit_record,
    operator_audited,
)

# Characters a regex or personal-data match may span that the stream guard holds back.
PATTERN_HOLD = 64


class PolicyImportError(ValueError):
    """An import file has lines that cannot be used; nothing was imported."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


# --- compiled policies ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CompiledRegex:
    rule_id: str
    label: str
    pattern: re.Pattern[str]
    action: str


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    """Everything needed to check text against one policy, built from its rows once."""

    policy_id: int
    name: str
    refusal_message: str
    words: WordMatcher
    word_actions: dict[str, str]  # rule_id "words:<list id>" → action
    word_labels: dict[str, str]
    regexes: tuple[CompiledRegex, ...]
    pii: dict[str, str]  # PiiKind value → action
    # Words whose action is block or mask, for streaming.
    guarded_words: tuple[tuple[str, str], ...] = field(default=())


_cache: dict[int, tuple[datetime, CompiledPolicy]] = {}
_cache_lock = threading.Lock()


def _compile(policy: AuditPolicy) -> CompiledPolicy:
    entries: list[tuple[str, str]] = []
    word_actions: dict[str, str] = {}
    word_labels: dict[str, str] = {}
    guarded: list[tuple[str, str]] = []
    for rule in PolicyWordList.objects.filter(policy=policy).select_related("word_list"):
        rule_id = f"words:{rule.word_list_id}"
        word_actions[rule_id] = rule.action
        word_labels[rule_id] = rule.word_list.name
        for word in rule.word_list.word_lines():
            entries.append((word, rule_id))
            if rule.action in (Action.BLOCK, Action.MASK):
                guarded.append((word, rule_id))
    regexes = tuple(
        CompiledRegex(
            rule_id=f"regex:{rule.pk}",
            label=rule.name or rule.pattern,
            pattern=re.compile(rule.pattern),
            action=rule.action,
        )
        for rule in RegexRule.objects.filter(policy=policy)
    )
    return CompiledPolicy(
        policy_id=policy.pk,
        name=policy.name,
        refusal_message=policy.refusal_message,
        words=WordMatcher(entries),
        word_actions=word_actions,
        word_labels=word_labels,
        regexes=regexes,
        pii=policy.pii_actions(),
        guarded_words=tuple(guarded),
    )


def policy_compiled(policy: AuditPolicy) -> CompiledPolicy:
    """The compiled form of `policy`, rebuilt only when its `updated_at` moved."""
    cached = _cache.get(policy.pk)
    if cached is not None and cached[0] == policy.updated_at:
        return cached[1]
    with _cache_lock:
        cached = _cache.get(policy.pk)
        if cached is not None and cached[0] == policy.updated_at:
            return cached[1]
        compiled = _compile(policy)
        _cache[policy.pk] = (policy.updated_at, compiled)
        return compiled


_guard_cache: dict[tuple[tuple[int, datetime], ...], WordMatcher] = {}
_GUARD_CACHE_SIZE = 64


def _guard_matcher(policies: Sequence[AuditPolicy]) -> WordMatcher:
    """One matcher over the block and mask words of `policies`, cached per policy versions.

    Every streamed answer needs it, and building an automaton over thousands of words
    per answer would cost more than generating the answer's first tokens.
    """
    key = tuple(sorted((p.pk, p.updated_at) for p in policies))
    matcher = _guard_cache.get(key)
    if matcher is None:
        compiled = [policy_compiled(p) for p in policies]
        matcher = WordMatcher(entry for c in compiled for entry in c.guarded_words)
        with _cache_lock:
            if len(_guard_cache) >= _GUARD_CACHE_SIZE:
                _guard_cache.clear()
            _guard_cache[key] = matcher
    return matcher


def policy_cache_clear() -> None:
    with _cache_lock:
        _cache.clear()
        _guard_cache.clear()


# --- evaluation ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RuleMatch:
    """One rule hit; `word` is the listed word (never the user's text, which may be PII)."""

    policy_id: int
    rule: str
    label: str
    action: str
    start: int
    end: int
    word: str | None = None

    def as_record(self) -> dict[str, Any]:
        return {
            "policy": self.policy_id,
            "rule": self.rule,
            "label": self.label,
            "action": self.action,
            "start": self.start,
            "end": self.end,
            "word": self.word,
        }


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    """The outcome for one text: the strongest action, every match, the masked text."""

    action: str
    matches: tuple[RuleMatch, ...]
    masked_text: str
    refusal_message: str
    policy_ids: tuple[int, ...]

    @property
    def blocked(self) -> bool:
        return self.action == Action.BLOCK

    @property
    def needs_review(self) -> bool:
        """Flagged or blocked content opens a review case."""
        return any(m.action in (Action.FLAG, Action.BLOCK) for m in self.matches)

    def matches_for(self, policy_id: int) -> list[RuleMatch]:
        return [m for m in self.matches if m.policy_id == policy_id]

    def as_record(self) -> dict[str, Any]:
        """A JSON form without the text (for the ledger and review cases)."""
        return {
            "action": self.action,
            "policies": list(self.policy_ids),
            "matches": [m.as_record() for m in self.matches],
        }


def _strongest(actions: Iterable[str]) -> str:
    return max(actions, key=lambda action: ACTION_STRENGTH[Action(action)], default=Action.ALLOW)


def _policy_matches(compiled: CompiledPolicy, text: str) -> list[RuleMatch]:
    found: list[RuleMatch] = []
    for match in compiled.words.find(text):
        found.append(
            RuleMatch(
                policy_id=compiled.policy_id,
                rule=match.rule_id,
                label=compiled.word_labels[match.rule_id],
                action=compiled.word_actions[match.rule_id],
                start=match.start,
                end=match.end,
                word=match.word,
            )
        )
    for regex in compiled.regexes:
        for hit in regex.pattern.finditer(text):
            if hit.end() > hit.start():
                found.append(
                    RuleMatch(
                        policy_id=compiled.policy_id,
                        rule=regex.rule_id,
                        label=regex.label,
                        action=regex.action,
                        start=hit.start(),
                        end=hit.end(),
                    )
                )
    if compiled.pii:
        for item in find_pii(text):
            action = compiled.pii.get(item.kind.value)
            if action is not None:
                found.append(
                    RuleMatch(
                        policy_id=compiled.policy_id,
                        rule=f"pii:{item.kind.value}",
                        label=item.kind.value,
                        action=action,
                        start=item.start,
                        end=item.end,
                    )
                )
    # An allow rule is an exception inside its own policy: what it covers is not acted on.
    allowed = [(m.start, m.end) for m in found if m.action == Action.ALLOW]
    return [
        m
        for m in found
        if m.action == Action.ALLOW
        or not any(start <= m.start and m.end <= end for start, end in allowed)
    ]


def policy_evaluate(*, policies: Sequence[AuditPolicy], text: str) -> PolicyDecision:
    """Check `text` against every enabled policy and combine the results.

    The decision's action is the strongest of all matches (block > mask > flag > allow);
    the masked text hides every mask and block span; the refusal message is that of the
    first blocking policy (by name), or the built-in one.
    """
    matches: list[RuleMatch] = []
    refusal = ""
    used: list[int] = []
    for policy in sorted((p for p in policies if p.enabled), key=lambda p: p.name):
        compiled = policy_compiled(policy)
        used.append(policy.pk)
        found = _policy_matches(compiled, text)
        if not refusal and any(m.action == Action.BLOCK for m in found):
            refusal = compiled.refusal_message
        matches.extend(found)
    matches.sort(key=lambda m: (m.start, -m.end, m.policy_id, m.rule))
    hidden = [m for m in matches if m.action in (Action.MASK, Action.BLOCK)]
    action = _strongest(m.action for m in matches)
    return PolicyDecision(
        action=action,
        matches=tuple(matches),
        masked_text=mask(text, hidden) if hidden else text,
        refusal_message=refusal or default_refusal_message(),
        policy_ids=tuple(used),
    )


def default_refusal_message() -> str:
    return _("Sorry, I can't answer that. Please contact the compliance team if you need help.")


# --- streaming ----------------------------------------------------------------------------


class PolicyStreamGuard:
    """Release a streamed answer only as far as no block or mask rule can still match.

    Block and mask words go through :class:`StreamGuard`, so a blocked word is never sent
    and then retracted. Regex and personal-data rules that block or mask hold back the last
    `PATTERN_HOLD` characters. After a mask hit the rest is held until `finish`, which
    releases it masked; after a block hit nothing more is released and the caller sends
    `refusal_message`. `decision` (set by `finish`) is the full evaluation for the ledger.
    """

    def __init__(self, policies: Sequence[AuditPolicy]) -> None:
        self._policies = [p for p in policies if p.enabled]
        compiled = [policy_compiled(p) for p in self._policies]
        self._guard = StreamGuard(_guard_matcher(self._policies))
        self._patterns = any(
            r.action in (Action.BLOCK, Action.MASK) for c in compiled for r in c.regexes
        ) or any(a in (Action.BLOCK, Action.MASK) for c in compiled for a in c.pii.values())
        self._text = ""
        self._released = 0
        self._word_safe = 0
        self._holding = False
        self._finished = False
        self.blocked = False
        self.decision: PolicyDecision | None = None
        self._refusal = ""

    @property
    def refusal_message(self) -> str:
        if self.decision is not None:
            return self.decision.refusal_message
        return self._refusal or default_refusal_message()

    def feed(self, piece: str) -> str:
        """Add the next piece; return the text that is now safe to send (maybe "")."""
        if self._finished:
            raise RuntimeError("PolicyStreamGuard.feed() called after finish()")
        self._text += piece
        if self.blocked or self._holding:
            return ""
        self._word_safe += len(self._guard.feed(piece))
        if self._guard.blocked:
            # A block or mask word (the same word may do both under two policies): the
            # full evaluation decides, with the refusal message of the blocking policy.
            decision = policy_evaluate(policies=self._policies, text=self._text)
            if decision.blocked:
                return self._block(decision.refusal_message)
            self._holding = True  # a mask word: the rest goes out masked at finish
            return ""
        # The word guard sees the same text, so what it released is a prefix of ours.
        safe_end = self._word_safe
        if self._patterns:
            safe_end = min(safe_end, max(self._released, len(self._text) - PATTERN_HOLD))
            window_start = max(0, self._released - PATTERN_HOLD)
            decision = policy_evaluate(policies=self._policies, text=self._text[window_start:])
            for match in decision.matches:
                if match.action not in (Action.BLOCK, Action.MASK):
                    continue
                if match.end + window_start > self._released:
                    if match.action == Action.BLOCK:
                        return self._block(decision.refusal_message)
                    self._holding = True
                    safe_end = min(safe_end, match.start + window_start)
        return self._release(safe_end)

    def finish(self) -> str:
        """Evaluate the whole answer; return what is left to send (masked), unless blocked."""
        if self._finished:
            return ""
        self._finished = True
        self.decision = policy_evaluate(policies=self._policies, text=self._text)
        if self.blocked or self.decision.blocked:
            self.blocked = True
            return ""
        remainder = self.decision.masked_text[self._released :]
        self._released = len(self._text)
        return remainder

    def _block(self, refusal: str = "") -> str:
        self.blocked = True
        self._refusal = refusal
        return ""

    def _release(self, safe_end: int) -> str:
        safe_end = max(safe_end, self._released)
        out = self._text[self._released : safe_end]
        self._released = safe_end
        return out


def policy_stream_guard(*, policies: Sequence[AuditPolicy]) -> PolicyStreamGuard:
    """A guard for one streamed answer under `policies`."""
    return PolicyStreamGuard(policies)


# --- editing and import -------------------------------------------------------------------


def _policies_touch(policy_ids: Iterable[int]) -> None:
    """Move `updated_at` so every process recompiles these policies."""
    AuditPolicy.objects.filter(pk__in=list(policy_ids)).update(updated_at=timezone.now())


def decode_import_file(data: bytes) -> str:
    """UTF-8 (with or without BOM), else GB18030, the encodings word lists arrive in."""
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise PolicyImportError([_("The file is neither UTF-8 nor GB18030 text.")])


def word_lines_check(text: str) -> list[str]:
    """Problems ("line N: ...") with a word list, e.g. a word of symbols only."""
    from apps.audit.filtering import normalize

    problems = []
    for number, line in enumerate(text.splitlines(), start=1):
        word = line.strip()
        if not word or word.startswith("#"):
            continue
        if not normalize(word)[0]:
            problems.append(
                _("line %(line)d: %(word)r has no letters or characters to match")
                % {"line": number, "word": word}
            )
    return problems


def word_list_snapshot(obj: Model | None) -> dict[str, Any] | None:
    """Thousands of words: the entry keeps a count and a fingerprint, not the full text."""
    snapshot = model_snapshot(obj)
    if snapshot is not None:
        words = snapshot.pop("words", "")
        snapshot["words_sha256"] = hashlib.sha256(words.encode()).hexdigest()
    return snapshot


def word_list_save(
    *,
    word_list: SensitiveWordList,
    actor: Any = None,
    request_id: str = "",
    related: Callable[[], None] | None = None,
) -> SensitiveWordList:
    """Validate and save a word list, recompile the policies using it, audit the change."""
    problems = word_lines_check(word_list.words)
    if problems:
        raise PolicyImportError(problems)
    with operator_audited(
        actor=actor,
        action_prefix="audit.word_list",
        obj=word_list,
        snapshot=word_list_snapshot,
        request_id=request_id,
    ):
        word_list.save()
        if related is not None:
            related()
        _policies_touch(word_list.policy_rules.values_list("policy_id", flat=True))
    return word_list


def word_list_import(
    *,
    name: str,
    text: str,
    replace: bool = True,
    actor: Any = None,
    request_id: str = "",
) -> SensitiveWordList:
    """Create or update the list `name` from file text (one word per line)."""
    word_list = SensitiveWordList.objects.filter(name=name).first()
    if word_list is None:
        word_list = SensitiveWordList(name=name)
    if replace or not word_list.words:
        word_list.words = text
    else:
        word_list.words = word_list.words.rstrip("\n") + "\n" + text
    return word_list_save(word_list=word_list, actor=actor, request_id=request_id)


def policy_word_list_attach(
    *,
    policy: AuditPolicy,
    word_list: SensitiveWordList,
    action: str = Action.BLOCK,
    actor: Any = None,
    request_id: str = "",
) -> PolicyWordList:
    """Apply `word_list` under `policy` with `action` (replacing an earlier action)."""
    with transaction.atomic():
        previous = PolicyWordList.objects.filter(policy=policy, word_list=word_list).first()
        rule, _created = PolicyWordList.objects.update_or_create(
            policy=policy, word_list=word_list, defaults={"action": action}
        )
        _policies_touch([policy.pk])
        operator_audit_record(
            actor=actor,
            action="audit.policy.word_list_attach",
            obj=policy,
            before={"word_list": word_list.pk, "action": previous.action} if previous else None,
            after={"word_list": word_list.pk, "action": action},
            request_id=request_id,
        )
    return rule


def regex_rules_parse(text: str, *, default_action: str) -> list[tuple[str, str]]:
    """Parse `[action<TAB>]pattern` lines; raise PolicyImportError naming every bad line."""
    rules: list[tuple[str, str]] = []
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        action, pattern = default_action, line.rstrip("\r\n")
        head, tab, tail = line.partition("\t")
        if tab and head.strip() in Action.values:
            action, pattern = head.strip(), tail
        problem = regex_problem(pattern)
        if problem:
            problems.append(_("line %(line)d: %(problem)s") % {"line": number, "problem": problem})
            continue
        rules.append((action, pattern))
    if problems:
        raise PolicyImportError(problems)
    return rules


def regex_rules_import(
    *,
    policy: AuditPolicy,
    text: str,
    default_action: str = Action.FLAG,
    replace: bool = False,
    actor: Any = None,
    request_id: str = "",
) -> list[RegexRule]:
    """Add (or with `replace`, swap in) regex rules from file text; all or nothing."""
    if default_action not in Action.values:
        raise PolicyImportError([_("Unknown action %(action)r.") % {"action": default_action}])
    rules = regex_rules_parse(text, default_action=default_action)
    with transaction.atomic():
        before = [
            {"pattern": r.pattern, "action": r.action} for r in policy.regex_rules.order_by("id")
        ]
        if replace:
            policy.regex_rules.all().delete()
        created = RegexRule.objects.bulk_create(
            RegexRule(policy=policy, pattern=pattern, action=action) for action, pattern in rules
        )
        _policies_touch([policy.pk])
        operator_audit_record(
            actor=actor,
            action="audit.policy.regex_import",
            obj=policy,
            before={"regex_rules": before},
            after={
                "regex_rules": [
                    {"pattern": r.pattern, "action": r.action}
                    for r in policy.regex_rules.order_by("id")
                ]
            },
            request_id=request_id,
        )
    return created
