"""A cheap Argon2 for tests: the same algorithm and hash format, a fraction of the memory and time.

Production's Argon2 parameters take a good part of a second per hash on CI's two cores; every sign-in,
failed sign-in and new user in the tests would pay it.
"""

from __future__ import annotations

from django.contrib.auth.hashers import Argon2PasswordHasher


class FastArgon2PasswordHasher(Argon2PasswordHasher):
    time_cost = 1
    memory_cost = 64
    parallelism = 1
