"""pages.shared: the bounded store the pages keep server-wide results in."""
from __future__ import annotations

import numpy as np

from pages.shared import LruCache


def test_the_least_recently_used_values_leave_first_once_the_size_is_exceeded():
    cache = LruCache(max_size=10, size=len)
    cache.put("a", b"1234")
    cache.put("b", b"1234")
    assert cache.get("a") == b"1234"  # "a" is now the most recently used
    cache.put("c", b"1234")  # 12 bytes > 10: "b" goes
    assert cache.get("b") is None
    assert cache.get("a") == b"1234" and cache.get("c") == b"1234"


def test_a_value_larger_than_the_limit_is_kept_alone_and_arrays_count_their_bytes():
    cache = LruCache(max_size=100, size=lambda array: array.nbytes)
    cache.put("small", np.zeros(50, np.uint8))
    cache.put("large", np.zeros(400, np.uint8))
    assert cache.get("small") is None
    assert cache.get("large") is not None


def test_putting_a_known_key_again_keeps_the_first_value():
    cache = LruCache(max_size=100, size=len)
    cache.put("a", b"first")
    cache.put("a", b"second")
    assert cache.get("a") == b"first"
