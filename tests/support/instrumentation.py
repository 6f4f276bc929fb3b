"""An integration instrumented for the length of a block, which must not swallow an internal
error meanwhile:

    @pytest.fixture
    def traced() -> Iterator[None]:
        with instrumented(instrument_botocore, uninstrument_botocore):
            yield
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

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
