"""Alerts: each incident is announced once and resolved once, through the group-robot
simulator (with WeCom's 20-a-minute limit) and e-mail, configured in the admin."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator

import pytest
from django.core import mail
from django.db import connection, transaction
from django.test import Client
from django.utils import timezone

from apps.audit.models import ArchiveSource, OperatorAuditEntry
from apps.audit.services.ledger import ledger_append
from apps.bots.models import Conversation, Turn
from apps.monitoring.models import AlertChannel, AlertIncident, AlertRule
from apps.monitoring.services.alerts import ALERTS_LOCK_KEY, alerts_run
from wecom.robot import RATE_LIMITED, RobotError, markdown_fit, robot_send_markdown
from wecom.simulator_robot import RobotWebhookServer

pytestmark = pytest.mark.django_db

KEY = "robot-key-0b9d2c"


@pytest.fixture
def robot(settings) -> Iterator[RobotWebhookServer]:
    with RobotWebhookServer(keys={KEY}) as server:
        settings.WECOM_API_BASE = server.base_url
        yield server


@pytest.fixture
def robot_channel(robot) -> AlertChannel:
    return AlertChannel.objects.create(name="ops group", kind="wecom_robot", webhook_key=KEY)


def _rule(channel: AlertChannel, **fields) -> AlertRule:
    values = {"name": "failures", "kind": AlertRule.Kind.FAILURE_RATE, "threshold": 0.3}
    rule = AlertRule.objects.create(**(values | fields))
    rule.channels.add(channel)
    return rule


def _ended(bot, *, failed: int, answered: int, error: str = "") -> None:
    conversation, _ = Conversation.objects.get_or_create(bot=bot, chat_type="single", userid="u")
    now = timezone.now()
    for number in range(failed + answered):
        status = Turn.Status.FAILED if number < failed else Turn.Status.ANSWERED
        Turn.objects.create(
            bot=bot,
            conversation=conversation,
            msgid=f"m-{Turn.objects.count()}",
            stream_id=f"s-{Turn.objects.count()}",
            question="q",
            status=status,
            error=error,
            received_at=now - dt.timedelta(seconds=20),
            finished_at=now,
        )


# --- the webhook client and WeCom's side --------------------------------------------------


def test_the_robot_client_sends_markdown_and_learns_the_limit(robot):
    for number in range(20):
        robot_send_markdown(key=KEY, content=f"**alert {number}**", base_url=robot.base_url)
    with pytest.raises(RobotError) as caught:
        robot_send_markdown(key=KEY, content="one too many", base_url=robot.base_url)
    assert caught.value.errcode == RATE_LIMITED and caught.value.retryable
    assert len(robot.messages(KEY)) == 20
    assert robot.messages(KEY)[0] == {"msgtype": "markdown", "markdown": {"content": "**alert 0**"}}


def test_a_wrong_key_is_refused_and_never_echoed(robot):
    with pytest.raises(RobotError) as caught:
        robot_send_markdown(key="stolen-or-stale", content="x", base_url=robot.base_url)
    assert caught.value.errcode == 93000 and not caught.value.retryable
    assert "stolen-or-stale" not in str(caught.value)


def test_markdown_over_the_limit_is_cut_and_says_so():
    content = "告警" * 3000
    fitted = markdown_fit(content)
    assert len(fitted.encode()) <= 4096 and fitted.endswith("…")
    assert markdown_fit("short") == "short"


# --- incidents ---------------------------------------------------------------------------------


def test_an_incident_is_announced_once_and_resolved_once(bot, robot, robot_channel):
    rule = _rule(robot_channel, min_turns=5)
    _ended(bot, failed=3, answered=2)  # 60 % failed

    first = alerts_run()
    second = alerts_run()

    assert (first.opened, first.sent) == (1, 1)
    assert (second.opened, second.sent) == (0, 0)
    [message] = robot.messages(KEY)
    assert (
        rule.name in message["markdown"]["content"] and "bot:hr" in message["markdown"]["content"]
    )
    incident = AlertIncident.objects.get()
    assert incident.value == pytest.approx(0.6) and incident.announced_at is not None

    # When enough answers come in to bring the share under the threshold
    _ended(bot, failed=0, answered=10)  # 3 of 15 = 20 %
    resolved = alerts_run()
    again = alerts_run()

    assert (resolved.resolved, resolved.sent) == (1, 1)
    assert again.sent == 0
    assert len(robot.messages(KEY)) == 2
    assert "已恢复" in robot.messages(KEY)[1]["markdown"]["content"]  # deployment language
    incident.refresh_from_db()
    assert incident.resolved_at is not None and incident.resolution_sent_at is not None


def test_too_few_turns_do_not_fire(bot, robot, robot_channel):
    _rule(robot_channel, min_turns=5)
    _ended(bot, failed=2, answered=0)
    assert alerts_run().opened == 0


def test_a_second_incident_opens_after_a_resolution(bot, robot, robot_channel):
    _rule(robot_channel, min_turns=1, window_minutes=1)
    _ended(bot, failed=1, answered=0)
    alerts_run()
    later = timezone.now() + dt.timedelta(minutes=5)  # the failure left the window
    assert alerts_run(now=later).resolved == 1
    _ended(bot, failed=1, answered=0)
    assert alerts_run().opened == 1
    assert AlertIncident.objects.count() == 2
    assert len(robot.messages(KEY)) == 3  # fired, resolved, fired


def test_reminders_follow_the_rule_and_stop_at_resolution(bot, robot, robot_channel):
    _rule(robot_channel, min_turns=1, repeat_minutes=10)
    _ended(bot, failed=1, answered=0)
    now = timezone.now()
    alerts_run(now=now)
    alerts_run(now=now + dt.timedelta(minutes=5))  # too early for a reminder
    alerts_run(now=now + dt.timedelta(minutes=11))
    contents = [m["markdown"]["content"] for m in robot.messages(KEY)]
    assert len(contents) == 2 and "持续告警" in contents[1]


def test_the_robot_limit_delays_messages_but_loses_none(make_bot, robot, robot_channel):
    clock = [1000.0]
    robot.clock = lambda: clock[0]
    for number in range(24):
        bot = make_bot(slug=f"bot-{number}", name=f"bot {number}")
        _ended(bot, failed=1, answered=0)
    _rule(robot_channel, min_turns=1)
    now = timezone.now()

    first = alerts_run(now=now)
    assert (first.opened, first.sent) == (24, 20)
    assert AlertIncident.objects.filter(announced_at__isnull=True).count() == 4
    assert robot.refused == []  # our own limiter held back, WeCom never had to refuse

    clock[0] += 61
    second = alerts_run(now=now + dt.timedelta(seconds=61))
    assert second.sent == 4
    subjects = [m["markdown"]["content"] for m in robot.messages(KEY)]
    assert len(subjects) == 24 and len(set(subjects)) == 24


def test_a_failed_channel_is_retried_without_repeating_the_others(bot, robot, settings):
    broken = AlertChannel.objects.create(name="stale robot", kind="wecom_robot", webhook_key="old")
    email = AlertChannel.objects.create(name="oncall", kind="email", email_to="ops@example.com")
    rule = _rule(broken, min_turns=1)
    rule.channels.add(email)
    _ended(bot, failed=1, answered=0)

    run = alerts_run()
    assert run.sent == 1 and len(run.failed) == 1 and "93000" in run.failed[0]
    assert len(mail.outbox) == 1 and "failures" in mail.outbox[0].subject
    assert mail.outbox[0].to == ["ops@example.com"]
    incident = AlertIncident.objects.get()
    assert incident.announced_at is None and "stale robot" in incident.last_error

    # When the admin fixes the key, the robot gets the alert and e-mail is not sent again
    broken.webhook_key = KEY
    broken.save()
    assert alerts_run().sent == 1
    assert len(mail.outbox) == 1 and len(robot.messages(KEY)) == 1
    incident.refresh_from_db()
    assert incident.announced_at is not None and incident.last_error == ""


@pytest.mark.django_db(transaction=True)  # the other evaluator needs its own connection
def test_only_one_evaluator_runs_at_a_time(bot, robot, robot_channel):
    _rule(robot_channel, min_turns=1)
    _ended(bot, failed=1, answered=0)
    held, release = threading.Event(), threading.Event()

    def other_evaluator() -> None:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [ALERTS_LOCK_KEY])
            held.set()
            release.wait(10)
        connection.close()

    thread = threading.Thread(target=other_evaluator)
    thread.start()
    assert held.wait(10)
    try:
        assert alerts_run() is None
    finally:
        release.set()
        thread.join()
    assert alerts_run().opened == 1


# --- what each measure watches -----------------------------------------------------------------


def test_an_archive_source_nearing_the_five_day_window_fires(robot, robot_channel):
    source = ArchiveSource.objects.create(name="corp", corp_id="ww1", secret="s")
    ArchiveSource.objects.filter(pk=source.pk).update(
        created_at=timezone.now() - dt.timedelta(days=4)
    )
    _rule(robot_channel, kind=AlertRule.Kind.ARCHIVE_WINDOW, threshold=72)
    assert alerts_run().opened == 1
    assert AlertIncident.objects.get().subject == "source:corp"
    ArchiveSource.objects.filter(pk=source.pk).update(last_success_at=timezone.now())
    assert alerts_run().resolved == 1


@pytest.mark.django_db(transaction=True)  # the owner edits the ledger on its own connection
def test_a_broken_ledger_fires(robot, robot_channel, owner_sql, settings, tmp_path):
    settings.AUDIT_LEDGER_ANCHOR_FILE = str(tmp_path / "anchors.jsonl")
    for number in range(3):
        ledger_append(kind="turn", ref=f"bots.turn:{number}", payload={"turn": number})
    _rule(robot_channel, kind=AlertRule.Kind.LEDGER, threshold=0)
    assert alerts_run().opened == 0
    owner_sql(
        "ALTER TABLE audit_ledgerentry DISABLE TRIGGER ALL",
        "UPDATE audit_ledgerentry SET payload = jsonb_set(payload, '{turn}', '42') WHERE seq = 2",
        "ALTER TABLE audit_ledgerentry ENABLE TRIGGER ALL",
    )
    from django.core.cache import cache

    cache.delete("alerts:ledger-verified")  # verification is cached for an hour
    assert alerts_run().opened == 1
    assert AlertIncident.objects.get().subject == "ledger"


@pytest.mark.parametrize(
    ("kind", "threshold", "subject"),
    [
        (AlertRule.Kind.QUEUE_WAIT, 30, "model:SmolLM2 test"),
        (AlertRule.Kind.LATENCY, 10, "bot:hr"),
        (AlertRule.Kind.DELIVERY, 0, "bot:hr"),
        (AlertRule.Kind.DATABASE_SIZE, 0.001, "database"),
    ],
)
def test_each_measure_fires_on_its_own_signal(bot, robot, robot_channel, kind, threshold, subject):
    _rule(robot_channel, kind=kind, threshold=threshold, min_turns=1)
    conversation = Conversation.objects.create(bot=bot, chat_type="single", userid="u")
    now = timezone.now()
    assert alerts_run().opened == (1 if kind == AlertRule.Kind.DATABASE_SIZE else 0)
    Turn.objects.create(
        bot=bot, conversation=conversation, msgid="slow", stream_id="s-slow", question="q",
        status=Turn.Status.ANSWERED, received_at=now - dt.timedelta(seconds=40), finished_at=now,
        error="response_url delivery failed: HTTP 502",
    )  # fmt: skip
    Turn.objects.create(
        bot=bot, conversation=conversation, msgid="waiting", stream_id="s-wait", question="q",
        received_at=now - dt.timedelta(seconds=45), queued_at=now - dt.timedelta(seconds=45),
    )  # fmt: skip
    alerts_run()
    assert list(AlertIncident.objects.values_list("subject", flat=True)) == [subject]


# --- the admin ---------------------------------------------------------------------------------


def test_the_webhook_key_is_write_only_and_changes_are_audited(admin_client, robot):
    response = admin_client.post(
        "/admin/monitoring/alertchannel/add/",
        {"name": "ops", "kind": "wecom_robot", "new_webhook_key": KEY, "enabled": "on"},
    )
    assert response.status_code == 302
    channel = AlertChannel.objects.get()
    assert channel.webhook_key == KEY
    page = admin_client.get(f"/admin/monitoring/alertchannel/{channel.pk}/change/")
    assert KEY not in page.content.decode()
    entry = OperatorAuditEntry.objects.get(action="monitoring.alert_channel.create")
    assert KEY not in str(entry.after)

    # The test action reaches the group
    admin_client.post(
        "/admin/monitoring/alertchannel/",
        {"action": "send_test", "_selected_action": [channel.pk]},
    )
    assert len(robot.messages(KEY)) == 1


def test_a_robot_without_a_key_or_mail_without_addresses_is_refused(admin_client):
    response = admin_client.post(
        "/admin/monitoring/alertchannel/add/", {"name": "ops", "kind": "wecom_robot"}
    )
    assert "webhook key" in response.content.decode().lower() or response.status_code == 200
    assert not AlertChannel.objects.exists()
    response = admin_client.post(
        "/admin/monitoring/alertchannel/add/",
        {"name": "mail", "kind": "email", "email_to": "ops@example.com\nnot-an-address"},
    )
    assert "not-an-address" in response.content.decode()
    assert not AlertChannel.objects.exists()


def test_staff_without_the_permission_cannot_see_alerts(django_user_model):
    user = django_user_model.objects.create_user("clerk", password="pw-12345678", is_staff=True)
    client = Client()
    client.force_login(user)
    for path in ("alertchannel", "alertrule", "alertincident"):
        assert client.get(f"/admin/monitoring/{path}/").status_code == 403


def test_incidents_are_read_only_in_the_admin(admin_client, bot, robot, robot_channel):
    _rule(robot_channel, min_turns=1)
    _ended(bot, failed=1, answered=0)
    alerts_run()
    incident = AlertIncident.objects.get()
    page = admin_client.get(f"/admin/monitoring/alertincident/{incident.pk}/change/")
    assert page.status_code == 200 and 'name="_save"' not in page.content.decode()
    assert admin_client.get("/admin/monitoring/alertincident/add/").status_code == 403


def test_a_full_data_disk_fires(robot, robot_channel):
    import shutil
    import socket

    from django.conf import settings

    usage = shutil.disk_usage(settings.DATA_DIR)
    used = usage.used / usage.total
    _rule(robot_channel, kind=AlertRule.Kind.DISK_USAGE, threshold=used / 2)
    _rule(robot_channel, name="disk, lenient", kind=AlertRule.Kind.DISK_USAGE, threshold=0.9999)
    assert alerts_run().opened == 1
    incident = AlertIncident.objects.get()
    assert incident.subject == f"disk:{socket.gethostname()}"
    assert incident.value == pytest.approx(used, abs=0.01)
