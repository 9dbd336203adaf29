"""Ensure the superuser `admin`, the default model profile and the demo bot exist."""

from __future__ import annotations

import os
import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from apps.audit.services.accounts import superuser_ensure
from apps.audit.services.operator_audit import command_actor
from apps.bots.models import Bot
from apps.bots.services.config import bot_credentials_set, bot_save, model_profile_save
from apps.inference.models import ModelProfile
from wecom.crypto import (
    generate_encoding_aes_key,
    generate_token,
    validate_encoding_aes_key,
)

DEMO_PROMPT = (
    "You are a helpful HR and IT assistant for the company's employees. "
    "Answer briefly and politely, in the language of the question."
)


class Command(BaseCommand):
    help = "Create or update the admin user, the default model profile and the demo bot."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--actor",
            metavar="USERNAME",
            help="Record the changes in the operator audit as this user's "
            "(default: system:demo_setup).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            self.actor = command_actor(command="demo_setup", username=options["actor"])
        except LookupError as exc:
            raise CommandError(str(exc)) from exc
        with transaction.atomic():
            self._admin()
            profile = self._profile()
            self._demo_bot(profile)

    def _admin(self) -> None:
        password = os.environ.get("ADMIN_PASSWORD")
        generated = None
        if not password and not get_user_model()._default_manager.filter(username="admin").exists():
            generated = secrets.token_urlsafe(12)
        _user, outcome = superuser_ensure(
            username="admin", password=password or generated, actor=self.actor
        )
        if outcome == "created":
            shown = generated or "(from ADMIN_PASSWORD)"
            self.stdout.write(f"admin user created · username admin · password {shown}")
        elif outcome == "password_set":
            self.stdout.write("admin user password set from ADMIN_PASSWORD")
        else:
            self.stdout.write("admin user exists (password unchanged)")

    def _profile(self) -> ModelProfile:
        profile = ModelProfile.objects.filter(name="SmolLM2-135M-Instruct").first()
        if profile is None:
            profile = model_profile_save(
                profile=ModelProfile(
                    name="SmolLM2-135M-Instruct",
                    gguf_path=settings.DEFAULT_MODEL_PATH,
                    context_size=2048,
                ),
                actor=self.actor,
            )
            self.stdout.write(f"model profile created · {profile.gguf_path}")
        return profile

    def _demo_bot(self, profile: ModelProfile) -> None:
        token = os.environ.get("DEMO_BOT_TOKEN")
        key = os.environ.get("DEMO_BOT_AES_KEY")
        if key:
            try:
                validate_encoding_aes_key(key)
            except ValueError as exc:
                raise CommandError(f"DEMO_BOT_AES_KEY: {exc}") from exc
        bot = Bot.objects.filter(slug="demo").first()
        generated = []
        if bot is None:
            generated = [name for name, value in (("token", token), ("key", key)) if not value]
            bot = Bot(
                name="demo",
                slug="demo",
                token=token or generate_token(),
                encoding_aes_key=key or generate_encoding_aes_key(),
                model_profile=profile,
                system_prompt=DEMO_PROMPT,
                max_tokens=256,
                welcome_message="你好！我是演示助手，有问题请直接问我。",
            )
            bot_save(bot=bot, actor=self.actor)
            self.stdout.write("demo bot created")
        else:
            changed = bot_credentials_set(
                bot=bot, actor=self.actor, token=token, encoding_aes_key=key
            )
            if changed:
                self.stdout.write(f"demo bot updated from the environment: {', '.join(changed)}")
        # Secrets are printed once, when generated; afterwards they live in the admin only.
        if "token" in generated:
            self.stdout.write(f"demo bot token (generated): {bot.token}")
        if "key" in generated:
            self.stdout.write(f"demo bot EncodingAESKey (generated): {bot.encoding_aes_key}")
        self.stdout.write(f"demo bot callback URL: {bot.callback_url()}")
