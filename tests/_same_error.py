"""Shared check: the C++ extension and its numpy reference reject bad input identically."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest


def assert_same_error(impls: Sequence[Callable[..., object]], exc_type: type[Exception], text: str,
                      make: Callable[[], tuple[tuple, dict]]) -> None:
    """Every implementation raises ``exc_type`` with ``text`` in the message, and the same message."""
    messages = []
    for impl in impls:
        args, kwargs = make()
        with pytest.raises(exc_type) as info:
            impl(*args, **kwargs)
        assert text in str(info.value)
        messages.append((type(info.value) is TypeError, str(info.value)))
    assert all(m == messages[0] for m in messages), messages  # same kind, same words
