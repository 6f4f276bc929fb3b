"""pitchey_trace.grpc's parsing of method paths, peers and channel targets (the calls
themselves are tested over real servers in tests/integration/test_grpc.py)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pitchey_trace as pt
from pitchey_trace import grpc as pgrpc


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("localhost:50051", {"server.address": "localhost", "server.port": 50051}),
        ("127.0.0.1:8080", {"server.address": "127.0.0.1", "server.port": 8080}),
        ("[::1]:50051", {"server.address": "::1", "server.port": 50051}),
        ("dns:///pitches.internal:443", {"server.address": "pitches.internal", "server.port": 443}),
        ("dns://8.8.8.8/pitches.internal:443", {"server.address": "pitches.internal", "server.port": 443}),
        ("ipv4:10.0.0.1:80,10.0.0.2:80", {"server.address": "10.0.0.1", "server.port": 80}),
        ("ipv6:[::1]:9000", {"server.address": "::1", "server.port": 9000}),
        ("unix:/run/pitches.sock", {"server.address": "/run/pitches.sock"}),
        ("unix:", {}),
        ("pitches.internal", {"server.address": "pitches.internal"}),
        (b"localhost:1", {"server.address": "localhost", "server.port": 1}),
        ("host:notaport", {"server.address": "host"}),
        ("", {}),
        (None, {}),
        (42, {}),
    ],
)
def test_target_attributes(target: Any, expected: dict[str, Any]) -> None:
    assert pgrpc._target_attributes(target) == expected


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        (
            "ipv4:127.0.0.1:50412",
            {"client.address": "127.0.0.1", "network.peer.address": "127.0.0.1", "network.peer.port": 50412},
        ),
        (
            "ipv6:%5B::1%5D:50412",
            {"client.address": "::1", "network.peer.address": "::1", "network.peer.port": 50412},
        ),
        ("unix:/run/s.sock", {"network.peer.address": "/run/s.sock", "network.transport": "unix"}),
        ("unix:", {}),
        ("something-else", {}),
        (None, {}),
    ],
)
def test_peer_attributes(peer: Any, expected: dict[str, Any]) -> None:
    assert pgrpc._peer_attributes(peer) == expected


def test_method_names_and_their_bounded_cache() -> None:
    assert pgrpc._method("/demo.v1.Pitches/Get") == (
        "demo.v1.Pitches/Get",
        {"rpc.system": "grpc", "rpc.service": "demo.v1.Pitches", "rpc.method": "Get"},
    )
    assert pgrpc._method(b"/demo.Pitches/List")[0] == "demo.Pitches/List"
    # not a gRPC path: never named after the arbitrary string
    assert pgrpc._method("/no-slash-here") == ("grpc", {"rpc.system": "grpc"})
    assert pgrpc._method("") == ("grpc", {"rpc.system": "grpc"})
    for i in range(3 * pgrpc._MAX_METHODS):
        pgrpc._method(f"/svc/M{i}")
    assert len(pgrpc._methods) <= pgrpc._MAX_METHODS


_TRACEPARENTS = st.sampled_from(
    [
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",
        "zz",
        "",
    ]
)
_ENTRIES = st.one_of(
    st.tuples(st.just("traceparent"), _TRACEPARENTS),
    st.tuples(st.just("tracestate"), st.sampled_from(["congo=t61rcWkgMzE", "a=1,b=2", "=bad", "x" * 600])),
    st.tuples(st.just("baggage"), st.sampled_from(["user=alice", "k=v;p=1", "%%%", ""])),
    st.tuples(
        st.sampled_from(["user-agent", "x-tenant", "trace-bin"]),
        st.one_of(st.text(max_size=20), st.binary(max_size=8)),
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_ENTRIES, max_size=6))
def test_the_servers_metadata_fast_path_agrees_with_extract(metadata: list[tuple[str, Any]]) -> None:
    # gRPC gives lowercase keys; the dict fast path must read what the general path reads,
    # repeated and malformed entries included
    assert pgrpc._parent(tuple(metadata)) == pt.extract(tuple(metadata))


def test_intercept_channel_under_instrument_grpc_keeps_grpcs_own_behaviour() -> None:
    import grpc

    from pitchey_trace.testing import swallowed_errors

    class Passing(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
        def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            return continuation(details, request)

    before = grpc.insecure_channel("127.0.0.1:1")  # (channels connect lazily: no server needed)
    pgrpc.instrument_grpc()
    try:
        with swallowed_errors() as errors, grpc.insecure_channel("127.0.0.1:1") as made:
            # not an interceptor: the TypeError gRPC raises, not an internal error of ours
            with pytest.raises(TypeError, match="interceptor must be"):
                grpc.intercept_channel(made, object())
            app = Passing()
            wrapped = grpc.intercept_channel(made, app)
            assert wrapped._pitchey_trace_chain[2] == (app,)
            # a channel instrument_grpc() did not make is wrapped as gRPC does
            plain = grpc.intercept_channel(before, app)
            assert plain._interceptor is app
            assert plain._channel is before
            assert "_pitchey_trace_chain" not in vars(plain)
        assert errors == []
    finally:
        pgrpc.uninstrument_grpc()
        before.close()


def test_an_inner_client_interceptor_passes_only_its_outer_ones_call_through() -> None:
    injected = (("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),)

    class Details:
        def __init__(self, metadata: Any) -> None:
            self.metadata = metadata

    assert pgrpc._same_call(Details([("x-tenant", "a"), *injected]), injected)
    assert not pgrpc._same_call(Details([("x-tenant", "a")]), injected)  # another call
    assert not pgrpc._same_call(Details(None), injected)
    assert not pgrpc._same_call(Details(42), injected)  # (odd metadata: not ours)
    assert pgrpc._same_call(Details(None), ())  # nothing injected: nothing to tell apart
