"""Types of the optional C accelerator (pitchey_trace/_speedups.c)."""

from collections.abc import Callable
from typing import Any

def setup(cls: type, unset_status: object, no_items: list[Any], /) -> None: ...
def token_layout() -> bool: ...
def install_methods(current_var: Any, limits: type, getrandbits: Any, nonrecording: type, /) -> None: ...
def build_span_records(
    spans: list[Any],
    template: dict[str, Any],
    table: dict[str, tuple[float, float, float]],
    kind_str: dict[Any, str],
    status_str: dict[int, str],
    key_cache: dict[str, tuple[str, int, Any]],
    text_cache: dict[str, str],
    sql_cache: dict[str, str],
    max_attributes: int,
    slow: Callable[[Any], dict[str, Any]],
    /,
) -> list[dict[str, Any]]: ...
def rollup_chunk(
    spans: list[Any], interval_ns: int, error_status: object, inv_log_gamma: float, min_indexable: float, /
) -> dict[tuple[int, str, Any], tuple[int, int, float, float, float, int, dict[int, int]]]: ...
def take_chunk(
    popleft: Any, n: int, tail_on: bool, /
) -> tuple[int, list[Any], list[Any], list[Any], list[dict[str, Any]]]: ...
def install_tracer(tracer_cls: type, default_kind: Any, context_cls: type, /) -> None: ...
def untrack_records(records: list[dict[str, Any]], /) -> int: ...
def build_audit_record(
    pending: tuple[Any, ...],
    service: str,
    environment: str,
    key_cache: dict[str, Any],
    text_cache: dict[str, str],
    sql_cache: dict[str, str],
    max_attributes: int,
    /,
) -> dict[str, Any] | None: ...
def web_setup(
    state_cls: type,
    known_methods: frozenset[str],
    extract: Any,
    tracer: Any,
    server_kind: Any,
    mark: str,
    route_templates: dict[int, tuple[object, str]],
    route_template: Any,
    /,
) -> None: ...
def asgi_begin(scope: Any, path: str, start_ns: int, header_name: bytes | None, send: Any, /) -> Any: ...
def request_end(state: Any, start_ns: int, client: str | None, audit: bool, /) -> Any: ...
def tail_offer(
    spans: list[Any],
    start: int,
    out: list[Any],
    decided: dict[int, bool],
    decided_old: dict[int, bool],
    pending_map: Any,
    keep_errors: bool,
    slow_ns: int | None,
    error_status: Any,
    pending_cls: Any,
    n_pending: int,
    remember: int,
    max_pending: int,
    /,
) -> tuple[int, int, int, int]: ...
def build_audit_records(
    items: list[Any],
    mark: str,
    service: str,
    environment: str,
    key_cache: dict[str, Any],
    text_cache: dict[str, str],
    sql_cache: dict[str, str],
    max_attributes: int,
    /,
) -> tuple[list[dict[str, Any]], list[Any]]: ...
