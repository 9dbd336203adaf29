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

# Message priorities on the Redis broker: 0 is taken first (kombu's Redis transport keeps
# one list per step of `priority_steps` and pops them in order; the reverse of AMQP).
# A turn sent again has used part of WeCom's window already, so it goes before fresh ones.
PRIORITY_RESUMED = 0  # its worker died mid-answer, or a transient error is retried
PRIORITY_RESENT = 3  # never enqueued, or queued but not started for a while
PRIORITY_FRESH = 6  # a question just received
PRIORITY_STEPS = [PRIORITY_RESUMED, PRIORITY_RESENT, PRIORITY_FRESH, 9]
