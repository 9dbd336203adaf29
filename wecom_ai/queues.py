"""Celery queue names, in one import-light module shared by settings, tasks and the runner."""

INFERENCE = "inference"
INGEST = "ingest"
ARCHIVE = "archive"
DEFAULT = "default"

ALL = (INFERENCE, INGEST, ARCHIVE, DEFAULT)


def inference_queue(profile_id: int) -> str:
    """The queue of one model profile's answers: `inference.<profile id>`.

    Per profile, so that a worker started with `--profiles` takes only its models' turns
    (GPU hosts their models, CPU hosts the rest); a plain inference worker takes them all.
    """
    return f"{INFERENCE}.{profile_id}"


NON_INFERENCE = (DEFAULT, INGEST, ARCHIVE)
