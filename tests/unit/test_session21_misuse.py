"""Misuse and edge cases of the core span API as users write it: @traced on descriptors,
partials and callable objects; spans exited in the order they were entered; cancellations
and very deep nesting.

Run on the C accelerator and (``PITCHEY_TRACE_PURE_PYTHON=1``) on Python: same expectations.
"""

from __future__ import annotations

import asyncio
import functools
from contextlib import ExitStack
from typing import Any

import pytest

import pitchey_trace as pt
from pitchey_trace._context import CURRENT
from pitchey_trace.testing import capture_spans

EXIT = (None, None, None)


# -- spans exited in the order they were entered ------------------------------------------------
@pytest.mark.parametrize("count", [3, 300])
def test_spans_exited_in_entry_order_leave_their_parent_current(count: int) -> None:
    # Each exit but the first makes an ended span current again (out of order): what replaces
    # it was found by walking back through every span exited before it, at most 256 of them,
    # and beyond that nothing was current: the rest of the block started new traces.
    with capture_spans() as mem:
        with pt.span("parent") as parent:
            spans = [pt.span(f"s{i}") for i in range(count)]
            for s in spans:
                s.__enter__()
            for s in spans:
                s.__exit__(*EXIT)
                assert CURRENT.get() is parent
            with pt.span("child"):
                pass
    records = {r["name"]: r for r in mem.spans()}
    assert records["child"]["parent_span_id"] == records["parent"]["span_id"]
    assert records["child"]["trace_id"] == records["parent"]["trace_id"]


# -- @traced on descriptors, partials and callable objects --------------------------------------
def test_bare_traced_above_classmethod() -> None:
    # A classmethod object is not callable: the bare form refused it ("takes a function").
    class Shop:
        @pt.traced
        @classmethod
        def open(cls) -> str:
            return cls.__name__

    with capture_spans() as mem:
        assert Shop.open() == "Shop"
        assert Shop().open() == "Shop"
    assert [r["name"] for r in mem.spans()] == [f"{Shop.open.__module__}.{Shop.open.__qualname__}"] * 2


def test_traced_above_property_keeps_it_a_property() -> None:
    # @traced(name=...) above @property turned it into a method: reading the attribute gave a
    # bound method instead of the value, silently. Now each accessor is traced.
    class Pitch:
        def __init__(self) -> None:
            self._title = "t"

        @pt.traced
        @property
        def size(self) -> int:
            return len(self._title)

        def _get(self) -> str:
            return self._title

        def _set(self, value: str) -> None:
            self._title = value

        def _delete(self) -> None:
            self._title = ""

        title = pt.traced(name="Pitch.title")(property(_get, _set, _delete, "The title."))

    with capture_spans() as mem:
        pitch = Pitch()
        assert pitch.size == 1
        assert pitch.title == "t"
        pitch.title = "new"
        assert pitch.title == "new"
        del pitch.title
        assert pitch.title == ""
    assert isinstance(Pitch.__dict__["title"], property)
    assert Pitch.__dict__["title"].__doc__ == "The title."
    names = [r["name"] for r in mem.spans()]
    assert names.count("Pitch.title") == 5  # three reads, a write and a delete
    assert names[0].endswith("Pitch.size")


def _add(a: int, b: int) -> int:
    return a + b


async def _fetch(uid: int) -> str:
    with pt.span("fetch.inner"):
        await asyncio.sleep(0)
    return f"u{uid}"


class _Adder:
    def __call__(self, a: int) -> int:
        return a + 1


class _AsyncLoader:
    async def __call__(self, key: str) -> str:
        with pt.span("loader.inner"):
            await asyncio.sleep(0)
        return key.upper()


def test_traced_partials_and_callable_objects_are_named_after_what_they_call() -> None:
    # A partial or a callable object has no __qualname__: @traced raised AttributeError.
    with capture_spans() as mem:
        assert pt.traced(functools.partial(_add, 1))(2) == 3
        assert pt.traced(_Adder())(1) == 2
        assert asyncio.run(pt.traced(functools.partial(_fetch, 7))()) == "u7"
    names = [r["name"] for r in mem.spans()]
    assert f"{__name__}._add" in names
    assert f"{__name__}._Adder" in names
    assert f"{__name__}._fetch" in names
    spans = {r["name"]: r for r in mem.spans()}
    # the partial of a coroutine function got the async wrapper: the span covers the await
    assert spans["fetch.inner"]["parent_span_id"] == spans[f"{__name__}._fetch"]["span_id"]


def test_traced_callable_object_with_an_async_call_covers_the_await() -> None:
    # An object whose __call__ is a coroutine function got the sync wrapper: its span ended
    # before the coroutine ran, and the spans inside were not its children.
    async def main() -> str:
        return await pt.traced(name="loader")(_AsyncLoader())("k")

    with capture_spans() as mem:
        assert asyncio.run(main()) == "K"
    spans = {r["name"]: r for r in mem.spans()}
    outer = spans["loader"]
    assert spans["loader.inner"]["parent_span_id"] == outer["span_id"]
    assert outer["end_time_unix_nano"] >= spans["loader.inner"]["end_time_unix_nano"]


@pytest.mark.parametrize("bad", [42, "name", None.__class__])
def test_traced_with_options_refuses_what_it_cannot_call(bad: Any) -> None:
    # @traced(name=...) took anything and returned a wrapper that failed at the first call.
    decorate = pt.traced(name="x")
    if bad is None.__class__:  # a class: its own message
        with pytest.raises(TypeError, match="not classes"):
            decorate(bad)
        return
    with pytest.raises(TypeError, match="takes a function"):
        decorate(bad)
    with pytest.raises(TypeError, match="takes a function"):
        pt.traced(bad)


# -- cancellations and deep nesting: guards ----------------------------------------------------
def test_cancelled_traced_coroutines_end_their_spans_and_restore_the_caller() -> None:
    @pt.traced(name="slow")
    async def slow() -> None:
        with pt.span("slow.inner"):
            await asyncio.sleep(10)

    async def boom() -> None:
        await asyncio.sleep(0)
        raise ValueError("x")

    async def main() -> list[bool]:
        seen = []
        with pt.span("caller") as caller:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(slow(), 0.01)
            seen.append(CURRENT.get() is caller)
            task = asyncio.create_task(slow())
            await asyncio.sleep(0.01)
            task.cancel()  # (what asyncio.timeout() does)
            with pytest.raises(asyncio.CancelledError):
                await task
            seen.append(CURRENT.get() is caller)
            # A sibling fails and the other is cancelled (what a TaskGroup does).
            sibling = asyncio.create_task(slow())
            with pytest.raises(ValueError):
                await boom()
            sibling.cancel()
            await asyncio.gather(sibling, return_exceptions=True)
            seen.append(CURRENT.get() is caller)
        return seen

    with capture_spans() as mem:
        assert asyncio.run(main()) == [True, True, True]
    records = mem.spans()
    caller = next(r for r in records if r["name"] == "caller")
    slow_spans = [r for r in records if r["name"] == "slow"]
    assert len(slow_spans) == 3
    assert all(r["parent_span_id"] == caller["span_id"] for r in slow_spans)
    assert all(r["status"] == "unset" for r in slow_spans)  # cancellation is not an error
    assert len([r for r in records if r["name"] == "slow.inner"]) == 3


def test_ten_thousand_nested_spans() -> None:
    with capture_spans() as mem:
        with ExitStack() as stack:
            for i in range(10_000):
                stack.enter_context(pt.span(f"n{i}"))
            assert pt.current_span().name == "n9999"
        assert CURRENT.get() is None
    records = {r["name"]: r for r in mem.spans()}
    assert len(records) == 10_000
    assert records["n9999"]["parent_span_id"] == records["n9998"]["span_id"]


def test_a_span_exited_first_by_another_thread_is_reset_by_its_own_exit() -> None:
    """A ``with`` span whose ``__exit__`` another thread called first (a failed context reset
    there) stayed current, ended, in the context that entered it: later spans were its
    children. The entering context's own exit now resets it."""
    import threading

    with capture_spans() as mem:
        with pt.span("w") as w:
            t = threading.Thread(target=lambda: w.__exit__(None, None, None))
            t.start()
            t.join()
        assert CURRENT.get() is None
        with pt.span("after") as after:
            pass
        scope = pt.use_context(pt.TraceContext(0x1234, 0x5678))
        with scope:
            t = threading.Thread(target=lambda: scope.__exit__(None, None, None))
            t.start()
            t.join()
        assert CURRENT.get() is None
    assert after.parent_span_id == 0
    assert [s["name"] for s in mem.spans()] == ["w", "after"]
