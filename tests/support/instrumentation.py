"""An integration instrumented for the length of a block, which must not swallow an internal
error meanwhile:

    @pytest.fixture
    def traced() -> Iterator[None]:
        with instrumented(instrument_botocore, uninstrument_botocore):
            yield

or, the same fixture: ``traced = instrumented_fixture(instrument_botocore, uninstrument_botocore)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from pitchey_trace.testing import swallowed_errors


@contextmanager
def instrumented(instrument: Callable[[], object], uninstrument: Callable[[], object]) -> Iterator[None]:
    """``instrument()`` before the block, ``uninstrument()`` after it; then asserts that the SDK
    swallowed no internal error in the block."""
    instrument()
    with swallowed_errors() as swallowed:
        yield
    uninstrument()
    assert swallowed == []


def instrumented_fixture(instrument: Callable[[], object], uninstrument: Callable[[], object]) -> Any:
    """A pytest fixture (named by the module-level name it is given) that keeps the integration
    :func:`instrumented` through each test using it."""

    @pytest.fixture
    def fixture() -> Iterator[None]:
        with instrumented(instrument, uninstrument):
            yield

    return fixture
