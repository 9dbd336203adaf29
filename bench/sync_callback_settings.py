"""The product's settings with the callback served by its sync body: the `sync` variant of
`bench/callback.py --web`, measured against the async view in the same run."""

from wecom_ai.settings import *  # noqa: F403

ROOT_URLCONF = "bench.sync_callback_urls"
