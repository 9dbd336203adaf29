"""Index files and folders into a knowledge base, in this process, printing progress."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files import File
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.validators import validate_slug

from apps.audit.services.operator_audit import command_actor
from apps.knowledge.models import Document
from apps.knowledge.parsing import SUPPORTED_EXTENSIONS
from apps.knowledge.services.config import document_upload, knowledge_base_ensure
from apps.knowledge.services.ingest import ProgressCallback, document_ingest


class Command(BaseCommand):
    help = (
        "Index files (folders: every supported file inside, recursively) into the knowledge "
        "base with this slug, creating it if missing. Runs in this process, no worker needed; "
        "a file whose bytes did not change is skipped. Exits non-zero if any file failed."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("kb_slug")
        parser.add_argument("paths", nargs="+", type=Path)
        parser.add_argument(
            "--department",
            action="append",
            dest="departments",
            metavar="NAME",
            help="Restrict the knowledge base to this department (repeatable).",
        )
        parser.add_argument(
            "--actor",
            metavar="USERNAME",
            help="Record the changes in the operator audit as this user's "
            "(default: system:kb_ingest).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            validate_slug(options["kb_slug"])
        except ValidationError as exc:
            raise CommandError(f"{options['kb_slug']!r} is not a valid slug") from exc
        try:
            actor = command_actor(command="kb_ingest", username=options["actor"])
        except LookupError as exc:
            raise CommandError(str(exc)) from exc
        files = self._files(options["paths"])
        kb, created = knowledge_base_ensure(
            slug=options["kb_slug"], departments=options["departments"], actor=actor
        )
        audience = ", ".join(kb.allowed_departments) or "everyone"
        verb = "created" if created else "using"
        self.stdout.write(f"{verb} knowledge base {kb.slug} (audience: {audience})")
        failed: list[str] = []
        for path in files:
            if path.suffix.lower().lstrip(".") not in SUPPORTED_EXTENSIONS:
                failed.append(path.name)
                self.stderr.write(f"{path}: unsupported file type")
                continue
            limit = settings.KNOWLEDGE_MAX_UPLOAD_BYTES
            if path.stat().st_size > limit:
                failed.append(path.name)
                self.stderr.write(f"{path}: larger than the {limit} byte limit")
                continue
            with path.open("rb") as handle:
                result = document_upload(
                    kb=kb,
                    content=File(handle, name=path.name),
                    filename=path.name,
                    actor=actor,
                    enqueue=False,
                )
            if not result.needs_ingest:
                self.stdout.write(f"{path.name}: unchanged (v{result.document.version})")
                continue
            document = document_ingest(
                document_id=result.document.pk, on_progress=self._progress(path.name)
            )
            if document is None:
                failed.append(path.name)
                self.stderr.write(f"{path.name}: deleted while it was being indexed")
            elif document.status == Document.Status.READY:
                self.stdout.write(
                    f"{path.name}: ready · v{document.version} · {document.chunk_count} passages"
                )
            else:
                failed.append(path.name)
                self.stderr.write(
                    f"{path.name}: failed ({document.error_code}) {document.error_message}"
                )
        if failed:
            raise CommandError(f"{len(failed)} of {len(files)} files failed: {', '.join(failed)}")

    def _files(self, paths: list[Path]) -> list[Path]:
        files: list[Path] = []
        for path in paths:
            if path.is_dir():
                files.extend(
                    candidate
                    for candidate in sorted(path.rglob("*"))
                    if candidate.is_file()
                    and not any(part.startswith(".") for part in candidate.relative_to(path).parts)
                    and candidate.suffix.lower().lstrip(".") in SUPPORTED_EXTENSIONS
                )
            elif path.is_file():
                files.append(path)
            else:
                raise CommandError(f"{path} does not exist")
        names = [file.name for file in files]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            # Documents are identified by file name within a knowledge base.
            raise CommandError(f"several files share a name: {', '.join(duplicates)}")
        if not files:
            raise CommandError("no supported files found")
        return files

    def _progress(self, name: str) -> ProgressCallback:
        def report(document: Document, stage: str) -> None:
            self.stdout.write(f"{name}: {stage} {document.progress}%")

        return report
