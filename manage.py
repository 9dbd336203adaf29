#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "wecom_ai.settings")
    # Settings only read the environment: on a development machine, start the embedded
    # servers (unless DATABASE_URL / REDIS_URL name others) and supply the development
    # secrets first, so `manage.py wecom_sim …` works as it is. Production is left alone.
    from wecom_ai import embedded

    os.environ.update(embedded.environment(os.environ))
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
