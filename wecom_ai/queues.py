"""Celery queue names, in one import-light module shared by settings, tasks and the runner."""

INFERENCE = "inference"
INGEST = "ingest"
ARCHIVE = "archive"
DEFAULT = "default"

ALL = (INFERENCE, INGEST, ARCHIVE, DEFAULT)
NON_INFERENCE = (DEFAULT, INGEST, ARCHIVE)
