"""Import a sensitive-word list, or regex rules into a policy, from a text file.

    manage.py policy_import words "政治敏感词" words.txt [--append] [--policy P --action block]
    manage.py policy_import regex "默认策略" rules.txt [--action flag] [--replace]

Regex files hold one pattern per line, optionally `action<TAB>pattern`; a file with any
invalid pattern is refused with the line numbers, and nothing is imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from apps.audit.models import Action, AuditPolicy
from apps.audit.services.operator_audit import command_actor
from apps.audit.services.policy import (
    PolicyImportError,
    decode_import_file,
    policy_word_list_attach,
    regex_rules_import,
    word_list_import,
)


class Command(BaseCommand):
    help = "Import a sensitive-word list or a policy's regex rules from a text file."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("what", choices=["words", "regex"])
        parser.add_argument("name", help="Word list name (words) or policy name (regex).")
        parser.add_argument("file", type=Path)
        parser.add_argument(
            "--action",
            choices=Action.values,
            help="regex: action of lines without one (default flag); "
            "words: action of the list in --policy (default block).",
        )
        parser.add_argument("--append", action="store_true", help="words: add, don't replace.")
        parser.add_argument("--replace", action="store_true", help="regex: drop existing rules.")
        parser.add_argument("--policy", help="words: also attach the list to this policy.")
        parser.add_argument(
            "--actor",
            metavar="USERNAME",
            help="Record the change in the operator audit as this user's "
            "(default: system:policy_import).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            self.actor = command_actor(command="policy_import", username=options["actor"])
        except LookupError as exc:
            raise CommandError(str(exc)) from exc
        try:
            text = decode_import_file(options["file"].read_bytes())
        except OSError as exc:
            raise CommandError(f"cannot read {options['file']}: {exc}") from exc
        try:
            if options["what"] == "words":
                self._words(text, options)
            else:
                self._regex(text, options)
        except PolicyImportError as exc:
            raise CommandError(
                "nothing imported:\n" + "\n".join(f"  {problem}" for problem in exc.problems)
            ) from exc

    def _words(self, text: str, options: dict[str, Any]) -> None:
        with transaction.atomic():
            word_list = word_list_import(
                name=options["name"], text=text, replace=not options["append"], actor=self.actor
            )
            if options.get("policy"):
                policy_word_list_attach(
                    policy=self._policy(options["policy"]),
                    word_list=word_list,
                    action=options.get("action") or Action.BLOCK,
                    actor=self.actor,
                )
        self.stdout.write(f"word list {word_list.name!r}: {word_list.word_count} words")

    def _regex(self, text: str, options: dict[str, Any]) -> None:
        policy = self._policy(options["name"])
        created = regex_rules_import(
            policy=policy,
            text=text,
            default_action=options.get("action") or Action.FLAG,
            replace=options["replace"],
            actor=self.actor,
        )
        self.stdout.write(f"policy {policy.name!r}: {len(created)} regex rules imported")

    def _policy(self, name: str) -> AuditPolicy:
        policy = AuditPolicy.objects.filter(name=name).first()
        if policy is None:
            raise CommandError(f"no policy named {name!r}")
        return policy
