"""Review cases: opened when a policy flags or blocks content, decided by an officer.

Officers are assigned to bots and archive sources (guardian object permissions), not to
single cases: cases arrive continuously, and one assignment then covers every case,
transcript and export of that bot or source, including cases not opened yet.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.db import transaction
from django.utils import timezone
from guardian.shortcuts import assign_perm, get_objects_for_user, remove_perm

from apps.audit.models import Action, ArchivedMessage, ArchiveSource, LedgerEntry, ReviewCase
from apps.audit.registry import bot_side_get
from apps.audit.selectors import REVIEW_BOT_PERM, REVIEW_SOURCE_PERM
from apps.audit.services.ledger import ledger_append, object_ref
from apps.audit.services.operator_audit import model_snapshot, operator_audit_record
from apps.audit.services.policy import PolicyDecision
from apps.audit.streams import review_cases_publish


class ReviewedTurn(Protocol):
    """A bot turn as a case needs it (`ReviewCase.turn` and the bot it is scoped to)."""

    pk: Any
    bot_id: int


class ReviewError(ValueError):
    """A decision that cannot be taken (case already decided, unknown decision)."""


def _open_cases(
    *,
    decision: PolicyDecision,
    source: dict[str, Any],
    policies: dict[int, Any],
    subject: str,
) -> list[ReviewCase]:
    cases = []
    for policy_id in decision.policy_ids:
        matches = decision.matches_for(policy_id)
        review = [m for m in matches if m.action in (Action.FLAG, Action.BLOCK)]
        if not review:
            continue
        blocked = any(m.action == Action.BLOCK for m in review)
        strongest = Action.BLOCK if blocked else Action.FLAG
        cases.append(
            ReviewCase(
                policy=policies.get(policy_id),
                action=strongest,
                matches=[{**m.as_record(), "in": subject} for m in matches],
                **source,
            )
        )
    created = ReviewCase.objects.bulk_create(cases)
    if created:
        transaction.on_commit(lambda: review_cases_publish(created))
    return created


def review_cases_open_for_turn(
    *,
    turn: ReviewedTurn,
    decision: PolicyDecision,
    policies: Iterable[Any],
    subject: str = "answer",
) -> list[ReviewCase]:
    """One case per policy whose flag or block rules matched the turn's `subject` text.

    `subject` ("question" or "answer") says which text the match spans refer to.
    """
    if subject not in ("question", "answer"):
        raise ValueError(f"subject must be 'question' or 'answer', not {subject!r}")
    return _open_cases(
        decision=decision,
        source={"turn": turn, "bot_id": turn.bot_id},
        policies={p.pk: p for p in policies},
        subject=subject,
    )


def review_cases_open_for_message(
    *, message: ArchivedMessage, decision: PolicyDecision, policies: Iterable[Any]
) -> list[ReviewCase]:
    return _open_cases(
        decision=decision,
        source={"archived_message": message, "archive_source_id": message.source_id},
        policies={p.pk: p for p in policies},
        subject="text",
    )


def review_decide(
    *, case: ReviewCase, user: Any, decision: str, note: str = "", request_id: str = ""
) -> ReviewCase:
    """Close a case with a decision; audited and written to the ledger in one transaction."""
    if decision not in (ReviewCase.Decision.DISMISSED, ReviewCase.Decision.CONFIRMED):
        raise ReviewError(f"unknown decision {decision!r}")
    with transaction.atomic():
        locked = ReviewCase.objects.select_for_update().get(pk=case.pk)
        if locked.status != ReviewCase.Status.OPEN:
            raise ReviewError(f"case #{case.pk} is already decided")
        before = model_snapshot(locked)
        locked.status = ReviewCase.Status.DECIDED
        locked.decision = decision
        locked.note = note
        locked.decided_by = user
        locked.decided_at = timezone.now()
        if locked.assignee_id is None:
            locked.assignee = user
        locked.save()
        operator_audit_record(
            actor=user,
            action="audit.review_case.decide",
            obj=locked,
            before=before,
            after=model_snapshot(locked),
            request_id=request_id,
        )
        ledger_append(
            kind=LedgerEntry.Kind.REVIEW_DECISION,
            ref=object_ref(locked),
            payload={
                "case": locked.pk,
                "source": locked.source_ref,
                "policy": locked.policy_id,
                "decision": decision,
                "decided_by": user.get_username(),
                "decided_at": locked.decided_at.isoformat(),
            },
        )
    case.refresh_from_db()
    return case


def review_assign(
    *, case: ReviewCase, assignee: Any, actor: Any, request_id: str = ""
) -> ReviewCase:
    """Give an open case to an officer (who must already see it through their scope)."""
    with transaction.atomic():
        locked = ReviewCase.objects.select_for_update().get(pk=case.pk)
        if locked.status != ReviewCase.Status.OPEN:
            raise ReviewError(f"case #{case.pk} is already decided")
        before = {"assignee": locked.assignee_id}
        locked.assignee = assignee
        locked.save(update_fields=["assignee"])
        operator_audit_record(
            actor=actor,
            action="audit.review_case.assign",
            obj=locked,
            before=before,
            after={"assignee": assignee.pk if assignee else None},
            request_id=request_id,
        )
    return locked


# --- assignments ------------------------------------------------------------------------------


def review_bot_permission() -> Permission:
    """`bots.review_bot`, created on first use (the bots app does not declare it)."""
    content_type = ContentType.objects.get_for_model(bot_side_get().bot_model)
    permission, _created = Permission.objects.get_or_create(
        content_type=content_type,
        codename=REVIEW_BOT_PERM.split(".", 1)[1],
        defaults={"name": "Can review cases and transcripts of this bot"},
    )
    return permission


def review_scope(*, officer: Any) -> dict[str, list[int]]:
    """The bots and sources assigned to `officer` directly (not through groups)."""
    bots = get_objects_for_user(
        officer,
        "review_bot",
        klass=bot_side_get().bot_model,
        use_groups=False,
        with_superuser=False,
    )
    sources = get_objects_for_user(
        officer,
        "review_archivesource",
        klass=ArchiveSource,
        use_groups=False,
        with_superuser=False,
    )
    return {
        "bots": sorted(bots.values_list("pk", flat=True)),
        "archive_sources": sorted(sources.values_list("pk", flat=True)),
    }


def review_scope_set(
    *,
    officer: Any,
    bots: Iterable[Any],
    sources: Iterable[ArchiveSource],
    actor: Any,
    request_id: str = "",
) -> dict[str, list[int]]:
    """Make `officer` responsible for exactly these bots and archive sources."""
    permission = review_bot_permission()
    bots, sources = list(bots), list(sources)
    with transaction.atomic():
        before = review_scope(officer=officer)
        assigned = bot_side_get().bot_model._default_manager.filter(pk__in=before["bots"])
        for bot in assigned.exclude(pk__in=[b.pk for b in bots]):
            remove_perm(permission, officer, bot)
        for bot in bots:
            assign_perm(permission, officer, bot)
        for source in ArchiveSource.objects.filter(pk__in=before["archive_sources"]).exclude(
            pk__in=[s.pk for s in sources]
        ):
            remove_perm(REVIEW_SOURCE_PERM, officer, source)
        for source in sources:
            assign_perm(REVIEW_SOURCE_PERM, officer, source)
        after = review_scope(officer=officer)
        operator_audit_record(
            actor=actor,
            action="audit.review_scope.update",
            obj=officer,
            object_repr=officer.get_username(),
            before=before,
            after=after,
            request_id=request_id,
        )
    return after


def review_officers_set(
    *, target: Any, officers: Iterable[Any], actor: Any, request_id: str = ""
) -> list[int]:
    """Make exactly `officers` directly responsible for one bot or archive source.

    Goes officer by officer through `review_scope_set`, so each changed officer gets the
    same audit entry as an edit on the officer's own assignment page.
    """
    from apps.audit.selectors import officers_assigned_to

    is_source = isinstance(target, ArchiveSource)
    wanted = {officer.pk: officer for officer in officers}
    with transaction.atomic():
        current = {u.pk: u for u in officers_assigned_to(target=target, with_groups=False)}
        for pk in set(current) ^ set(wanted):
            officer = wanted.get(pk) or current[pk]
            scope = review_scope(officer=officer)
            key = "archive_sources" if is_source else "bots"
            ids = set(scope[key]) - {target.pk} if pk in current else {*scope[key], target.pk}
            scope[key] = sorted(ids)
            review_scope_set(
                officer=officer,
                bots=bot_side_get().bot_model._default_manager.filter(pk__in=scope["bots"]),
                sources=ArchiveSource.objects.filter(pk__in=scope["archive_sources"]),
                actor=actor,
                request_id=request_id,
            )
    return sorted(wanted)
