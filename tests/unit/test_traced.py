"""@traced on every kind of function, and carrying context into threads and executors."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Generator, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

import pitchey_trace as pt
from pitchey_trace.exporters.memory import InMemoryExporter
from pitchey_trace.records import json_schema
from pitchey_trace.testing import capture_spans

_VALIDATOR = Draft202012Validator(json_schema())


@contextmanager
def captured(**configure_kwargs: Any) -> Iterator[InMemoryExporter]:
    """capture_spans, then check every exported record against the JSON Schema."""
    with capture_spans(**configure_kwargs) as mem:
        yield mem
    for rec in mem.records:
        _VALIDATOR.validate(rec)


def only(mem: InMemoryExporter, name: str) -> dict[str, Any]:
    found = mem.spans(name)
    assert len(found) == 1, f"expected one span {name!r}, got {[r['name'] for r in mem.spans()]}"
    return found[0]


class Boom(Exception):
    pass


# Module-level functions so the default span name is predictable: module.qualname.
@pt.traced
def add(a: int, b: int = 0) -> int:
    """Adds."""
    with pt.span("inside add"):
        return a + b


@pt.traced
async def fetch(uid: int) -> str:
    await asyncio.sleep(0)
    with pt.span("inside fetch"):
        await asyncio.sleep(0)
    return f"user-{uid}"


@pt.traced
def countdown(n: int) -> Generator[int, None, str]:
    while n:
        with pt.span("step"):
            yield n
        n -= 1
    return "done"


@pt.traced
async def acount(n: int) -> AsyncIterator[int]:
    for i in range(n):
        with pt.span("astep"):
            await asyncio.sleep(0)
        yield i


@pt.traced(name="custom.op", kind=pt.SpanKind.CLIENT, attributes={"peer.service": "billing"})
def charge() -> str:
    return "charged"


@pt.traced
def fail(exc: BaseException) -> None:
    raise exc


@pt.traced
async def afail(exc: BaseException) -> None:
    await asyncio.sleep(0)
    raise exc


@pt.traced
def gen_fail(exc: BaseException) -> Iterator[int]:
    yield 1
    raise exc


@pt.traced
async def agen_fail(exc: BaseException) -> AsyncIterator[int]:
    yield 1
    raise exc


class Repo:
    def __init__(self) -> None:
        self.calls = 0

    @pt.traced
    def load(self, key: str) -> str:
        self.calls += 1
        return key.upper()

    @classmethod
    @pt.traced
    def build(cls) -> Repo:
        return cls()

    @staticmethod
    @pt.traced
    def helper(x: int) -> int:
        return x * 2

    @pt.traced
    async def aload(self, key: str) -> str:
        await asyncio.sleep(0)
        return key


# -- sync ---------------------------------------------------------------------------------------
def test_sync_function_default_name_and_children() -> None:
    with captured() as mem:
        assert add(2, b=3) == 5
    rec = only(mem, f"{__name__}.add")
    assert rec["kind"] == "internal"
    assert only(mem, "inside add")["parent_span_id"] == rec["span_id"]


def test_metadata_is_preserved() -> None:
    assert add.__name__ == "add"
    assert add.__doc__ == "Adds."
    assert add.__qualname__ == "add"
    assert getattr(add, "__wrapped__", None) is not None


def test_name_kind_and_attributes_options() -> None:
    with captured() as mem:
        assert charge() == "charged"
    rec = only(mem, "custom.op")
    assert rec["kind"] == "client"
    assert rec["attributes"] == {"peer.service": "billing"}


def test_traced_parent_is_current_span() -> None:
    with captured() as mem, pt.span("request") as req:
        add(1)
    assert only(mem, f"{__name__}.add")["parent_span_id"] == req.span_id_hex


def test_sync_exception_propagates_unchanged() -> None:
    original = Boom("no")
    with captured() as mem, pytest.raises(Boom) as info:
        fail(original)
    assert info.value is original
    rec = only(mem, f"{__name__}.fail")
    assert rec["status"] == "error"
    assert rec["status_message"] == "Boom: no"


def test_base_exception_propagates_without_error_status() -> None:
    original = KeyboardInterrupt()
    with captured() as mem, pytest.raises(KeyboardInterrupt) as info:
        fail(original)
    assert info.value is original
    assert only(mem, f"{__name__}.fail")["status"] == "unset"


def test_traced_rejects_non_callables() -> None:
    with pytest.raises(TypeError):
        pt.traced(42)  # type: ignore[call-overload]
    # A class would have become a function (isinstance() broken); attributes that are not a
    # mapping failed with an unclear message.
    with pytest.raises(TypeError, match="not classes"):
        pt.traced(Repo)
    with pytest.raises(TypeError, match="takes a mapping"):
        pt.traced(attributes=5)  # type: ignore[arg-type]


def test_traced_above_classmethod_and_staticmethod() -> None:
    # Above the descriptor (it used to wrap the classmethod object: "not callable" at call time).
    class Shop:
        @pt.traced(name="Shop.open")
        @classmethod
        def open(cls) -> str:
            return cls.__name__

        @pt.traced
        @staticmethod
        def price(n: int) -> int:
            return n * 2

    with captured() as mem:
        assert Shop.open() == "Shop"
        assert Shop().open() == "Shop"
        assert Shop.price(3) == 6
    assert sorted(r["name"] for r in mem.spans()) == sorted(
        [
            "Shop.open",
            "Shop.open",
            f"{__name__}.test_traced_above_classmethod_and_staticmethod.<locals>.Shop.price",
        ]
    )


# -- methods ------------------------------------------------------------------------------------
def test_methods_classmethods_and_staticmethods() -> None:
    with captured() as mem:
        repo = Repo.build()
        assert isinstance(repo, Repo)
        assert repo.load("k") == "K"
        assert repo.calls == 1
        assert Repo.helper(4) == 8
        assert repo.helper(5) == 10
        assert asyncio.run(repo.aload("x")) == "x"
    names = sorted(r["name"] for r in mem.spans())
    assert names == sorted(
        [
            f"{__name__}.Repo.build",
            f"{__name__}.Repo.load",
            f"{__name__}.Repo.helper",
            f"{__name__}.Repo.helper",
            f"{__name__}.Repo.aload",
        ]
    )


# -- async --------------------------------------------------------------------------------------
def test_async_function_span_covers_the_await() -> None:
    with captured() as mem:
        assert asyncio.run(fetch(7)) == "user-7"
    rec = only(mem, f"{__name__}.fetch")
    child = only(mem, "inside fetch")
    assert child["parent_span_id"] == rec["span_id"]
    assert rec["start_time_unix_nano"] <= child["start_time_unix_nano"]
    assert child["end_time_unix_nano"] <= rec["end_time_unix_nano"]


def test_async_exception_propagates_unchanged() -> None:
    original = Boom("async")
    with captured() as mem, pytest.raises(Boom) as info:
        asyncio.run(afail(original))
    assert info.value is original
    assert only(mem, f"{__name__}.afail")["status"] == "error"


def test_async_cancellation_is_not_an_error() -> None:
    async def main() -> None:
        task = asyncio.create_task(afail(Boom("never")))
        await asyncio.sleep(0)  # let it start and reach its first await
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with captured() as mem:
        asyncio.run(main())
    assert only(mem, f"{__name__}.afail")["status"] == "unset"


def test_concurrent_async_calls_get_their_own_parents() -> None:
    async def handler(i: int) -> str:
        with pt.span(f"request {i}"):
            return await fetch(i)

    async def main() -> list[str]:
        return await asyncio.gather(*(handler(i) for i in range(5)))

    with captured() as mem:
        assert asyncio.run(main()) == [f"user-{i}" for i in range(5)]
    fetches = {r["span_id"]: r for r in mem.spans(f"{__name__}.fetch")}
    requests = {r["span_id"]: r for r in mem.spans() if r["name"].startswith("request ")}
    assert len(fetches) == len(requests) == 5
    assert {f["parent_span_id"] for f in fetches.values()} == set(requests)
    for child in mem.spans("inside fetch"):
        assert child["parent_span_id"] in fetches


# -- generators ---------------------------------------------------------------------------------
def test_generator_span_covers_the_whole_iteration() -> None:
    with captured() as mem:
        gen = countdown(3)
        assert mem.spans() == []
        assert list(gen) == [3, 2, 1]
    rec = only(mem, f"{__name__}.countdown")
    steps = mem.spans("step")
    assert len(steps) == 3
    for step in steps:
        assert step["parent_span_id"] == rec["span_id"]
        assert step["trace_id"] == rec["trace_id"]
        assert rec["start_time_unix_nano"] <= step["start_time_unix_nano"]
        assert step["end_time_unix_nano"] <= rec["end_time_unix_nano"]


def test_generator_return_value_and_send_pass_through() -> None:
    @pt.traced
    def echo() -> Generator[str, str, int]:
        received = yield "ready"
        received = yield f"got {received}"
        return len(received)

    with captured() as mem:
        gen = echo()
        assert next(gen) == "ready"
        assert gen.send("a") == "got a"
        with pytest.raises(StopIteration) as stop:
            gen.send("abcd")
        assert stop.value.value == 4
    assert len(mem.spans()) == 1


def test_generator_throw_reaches_the_generator() -> None:
    @pt.traced
    def guarded() -> Generator[str, None, None]:
        try:
            yield "first"
        except Boom:
            yield "handled"

    with captured() as mem:
        gen = guarded()
        assert next(gen) == "first"
        assert gen.throw(Boom("in")) == "handled"
        gen.close()
    assert only(mem, f"{__name__}.test_generator_throw_reaches_the_generator.<locals>.guarded")["status"] == (
        "unset"
    )


def test_generator_exception_propagates_unchanged() -> None:
    original = Boom("gen")
    with captured() as mem:
        gen = gen_fail(original)
        assert next(gen) == 1
        with pytest.raises(Boom) as info:
            next(gen)
        assert info.value is original
    assert only(mem, f"{__name__}.gen_fail")["status"] == "error"


def test_generator_closed_early_ends_its_span_without_error() -> None:
    with captured() as mem:
        for n in countdown(5):
            if n == 4:
                break
        assert pt.current_span() is pt.INVALID_SPAN
    rec = only(mem, f"{__name__}.countdown")
    assert rec["status"] == "unset"
    assert len(mem.spans("step")) == 2


def test_async_generator_span_covers_the_whole_iteration() -> None:
    async def main() -> list[int]:
        return [i async for i in acount(3)]

    with captured() as mem:
        assert asyncio.run(main()) == [0, 1, 2]
    rec = only(mem, f"{__name__}.acount")
    steps = mem.spans("astep")
    assert len(steps) == 3
    for step in steps:
        assert step["parent_span_id"] == rec["span_id"]
        assert step["end_time_unix_nano"] <= rec["end_time_unix_nano"]


def test_async_generator_exception_propagates_unchanged() -> None:
    original = Boom("agen")

    async def main() -> list[int]:
        return [i async for i in agen_fail(original)]

    with captured() as mem, pytest.raises(Boom) as info:
        asyncio.run(main())
    assert info.value is original
    assert only(mem, f"{__name__}.agen_fail")["status"] == "error"


# -- threads and executors ----------------------------------------------------------------------
def test_wrap_context_carries_the_parent_into_a_thread() -> None:
    def work(tag: str) -> None:
        with pt.span(f"thread {tag}"):
            pass

    with captured() as mem, pt.span("parent") as parent:
        wrapped = threading.Thread(target=pt.wrap_context(work), args=("wrapped",))
        plain = threading.Thread(target=work, args=("plain",))
        wrapped.start()
        plain.start()
        wrapped.join()
        plain.join()
    assert only(mem, "thread wrapped")["parent_span_id"] == parent.span_id_hex
    assert only(mem, "thread wrapped")["trace_id"] == parent.trace_id_hex
    # Without the wrapper a thread starts from an empty context: a new trace.
    assert only(mem, "thread plain")["parent_span_id"] is None
    assert only(mem, "thread plain")["trace_id"] != parent.trace_id_hex


def test_wrap_context_captures_the_context_at_wrap_time() -> None:
    def work() -> str:
        return pt.current_span().span_id_hex

    with captured():
        with pt.span("at wrap time") as first:
            wrapped = pt.wrap_context(work)
        with pt.span("at call time"):
            assert wrapped() == first.span_id_hex


def test_context_thread_pool_executor_propagates_the_submitter_span() -> None:
    def work(i: int) -> int:
        with pt.span(f"task {i}"):
            return i * i

    with captured() as mem, pt.ContextThreadPoolExecutor(max_workers=2) as pool:
        with pt.span("submit") as submitter:
            futures = [pool.submit(work, i) for i in range(4)]
            assert [f.result() for f in futures] == [0, 1, 4, 9]
            assert list(pool.map(work, [10, 11])) == [100, 121]
        with pt.span("second batch") as second:
            assert pool.submit(work, 5).result() == 25
    for i in (0, 1, 2, 3, 10, 11):
        assert only(mem, f"task {i}")["parent_span_id"] == submitter.span_id_hex
    assert only(mem, "task 5")["parent_span_id"] == second.span_id_hex
