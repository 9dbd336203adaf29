"""The password hasher of the in-process test run (tests/conftest.py)."""

from django.contrib.auth.hashers import PBKDF2PasswordHasher


class OneRoundPBKDF2PasswordHasher(PBKDF2PasswordHasher):
    """Django's PBKDF2 with one round instead of a million (0.25 s of CPU per hash).

    Same algorithm and stored format (`pbkdf2_sha256$…`), so tests that look for a hash in
    what they read still find one; only the cost, which no test measures, goes.
    """

    iterations = 1
