"""Suite-wide test settings."""

from __future__ import annotations

from hypothesis import settings

# Timing is measured by `netconformance bench`, never asserted: on a shared,
# noisy machine a per-example deadline only makes tests flaky.
settings.register_profile("netconformance", deadline=None)
settings.load_profile("netconformance")
