"""AWS SDK calls (boto3 / botocore): every API call is a CLIENT span (extra ``s3``).

    from pitchey_trace.botocore import instrument_botocore
    instrument_botocore()          # every client, existing ones too; idempotent

A call is a span named ``{service}.{operation}`` (``S3.GetObject``, ``DynamoDB.Query``) with
the OpenTelemetry RPC attributes for AWS: ``rpc.system=aws-api``, ``rpc.service``,
``rpc.method``, ``cloud.region``, ``server.address``, ``aws.request_id``,
``http.response.status_code``, ``http.request.resend_count`` (the retries botocore made, when
it made any), and for S3 the bucket (``aws.s3.bucket``; object keys and request bodies are
never recorded). A failed call (``ClientError``) sets status error with the AWS error code as
``error.type`` (the HTTP status code, as a string, when the response has none: botocore's own
code for a HEAD error, whose response has no body) and is re-raised unchanged. A call botocore
refuses before sending (``ParamValidationError``, whose text quotes each refused value: a
message body, an item, a key) is recorded with the parameters named and the values left out.
The SDK's own exporters (S3/R2 logpush) run with tracing suppressed, so their uploads make no
spans.

SQS and SNS: ``SendMessage``, ``SendMessageBatch``, ``Publish`` and ``PublishBatch`` put the
call's trace context into each message's ``MessageAttributes`` (String attributes
``traceparent``, and ``tracestate`` / ``baggage`` when there are any), so the consumer can
continue the trace (:func:`sqs_message_context`, also for a queue subscribed to a topic with raw
message delivery). The caller's dicts are never changed (the request goes with copies), an
attribute the caller set under one of these names means the message goes as it is, and a
message with no room left under the limit of 10 attributes (SQS refuses more; SNS drops such a
message for its raw-delivery SQS subscribers) gets what fits, ``traceparent`` first, or nothing
(counted as ``botocore.sqs_context_not_injected`` / ``botocore.sns_context_not_injected``,
logged at debug; the call goes ahead). A queue subscribed to a topic without raw message
delivery (SNS's default) receives SNS's JSON envelope as the body, the attributes inside:
:func:`sqs_message_context` reads them there when the message has no context of its own.
``ReceiveMessage`` is sent as written (no attribute names are added to it); its span links to
the context of every returned message that brought one (its ``traceparent`` came back, or
its body is such an envelope).
"""

from __future__ import annotations

import functools
import json
import logging
import traceback
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from pitchey_trace import _safety, _stats
from pitchey_trace._context import CURRENT, IN_HTTP_CLIENT
from pitchey_trace._span import SUPPRESSED, AnySpan, SpanKind, TraceContext
from pitchey_trace._tracer import get_tracer
from pitchey_trace.exceptions import IntegrationUnavailable
from pitchey_trace.propagation import extract, inject

try:
    import botocore.client as _client
    from botocore.exceptions import ParamValidationError as _ParamValidationError
except ImportError as _exc:
    raise IntegrationUnavailable("pitchey_trace.botocore", "s3") from _exc

__all__ = ["instrument_botocore", "sqs_message_context", "uninstrument_botocore"]

_CLIENT = SpanKind.CLIENT
_tracer = get_tracer()
_start_span = _tracer.start_span
_original: list[Any] = []
_logger = logging.getLogger("pitchey_trace")
#: A send whose messages get the trace context in their message attributes: (its service, the
#: parameter listing a batch's entries or None for one message, the counter of messages left
#: without all of it).
_Send = tuple[str, str | None, str]
#: The sends, by operation name.
_SENDS: dict[str, _Send] = {
    "SendMessage": ("SQS", None, "botocore.sqs_context_not_injected"),
    "SendMessageBatch": ("SQS", "Entries", "botocore.sqs_context_not_injected"),
    "Publish": ("SNS", None, "botocore.sns_context_not_injected"),
    "PublishBatch": ("SNS", "PublishBatchRequestEntries", "botocore.sns_context_not_injected"),
}
#: At most this many message attributes: SQS refuses a message with more, SNS drops one for its
#: raw-delivery SQS subscribers.
_MAX_ATTRIBUTES = 10
#: Propagation fields a message can go without (the trace continues from ``traceparent``).
_OPTIONAL_FIELDS = ("tracestate", "baggage")
#: The longest SQS body read as an SNS envelope (characters): an SNS message is 256 KiB at
#: most, its envelope escapes it (a JSON message's quotes double) and adds about 1.5 kB. A
#: longer body is not parsed.
_MAX_ENVELOPE = 512 * 1024
_loads = json.loads


def _base(client: Any) -> tuple[str, dict[str, Any]]:
    """The service name and the attributes every call of ``client`` shares (once per client)."""
    cached: tuple[str, dict[str, Any]] | None = client.__dict__.get("_pitchey_trace_base")
    if cached is not None:
        return cached
    meta = client.meta
    service = meta.service_model.service_id or meta.service_model.service_name
    attrs: dict[str, Any] = {"rpc.system": "aws-api", "rpc.service": str(service)}
    if meta.region_name:
        attrs["cloud.region"] = meta.region_name
    address, port = _server(meta.endpoint_url)
    if address:
        attrs["server.address"] = address
        if port is not None:
            attrs["server.port"] = port
    cached = (str(service).replace(" ", ""), attrs)
    client.__dict__["_pitchey_trace_base"] = cached
    return cached


def _server(endpoint_url: object) -> tuple[str | None, int | None]:
    """``(host, explicit port)`` of an endpoint URL: IPv6 brackets and any userinfo dropped."""
    if not isinstance(endpoint_url, str) or not endpoint_url:
        return None, None
    parts = urlsplit(endpoint_url)
    host = parts.hostname  # lower-cased, without ``user:pass@``, ``[``/``]`` or ``:port``
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range
        port = None
    return host or None, port


def _make_api_call(original: Any) -> Any:
    @functools.wraps(original)
    def traced(self: Any, operation_name: str, api_params: dict[str, Any]) -> Any:
        if CURRENT.get() is SUPPRESSED:
            return original(self, operation_name, api_params)
        try:
            service, base = _base(self)
            attrs = {**base, "rpc.method": operation_name}
            bucket = api_params.get("Bucket") if isinstance(api_params, dict) else None
            if isinstance(bucket, str):
                attrs["aws.s3.bucket"] = bucket
            span = _start_span(f"{service}.{operation_name}", attrs, _CLIENT)
        except Exception as exc:
            _safety.report("botocore.start", exc)
            return original(self, operation_name, api_params)
        send = _SENDS.get(operation_name)
        if send is not None and send[0] == service and _tracer.enabled:
            try:
                api_params = _with_trace_context(span, send, api_params)
            except Exception as exc:  # (the call goes as the caller wrote it)
                _safety.report("botocore.sqs" if send[0] == "SQS" else "botocore.sns", exc)
        inside = IN_HTTP_CLIENT.set(True)  # (its HTTP requests, made with urllib3, are this call)
        try:
            result = original(self, operation_name, api_params)
        except BaseException as exc:
            IN_HTTP_CLIENT.reset(inside)
            try:
                response = getattr(exc, "response", None)
                code = _error_code(response) if isinstance(response, dict) else None
                if isinstance(response, dict):
                    _response_attributes(span, response)
                if isinstance(exc, Exception):
                    span.set_attribute("error.type", code or type(exc).__qualname__)
                    if isinstance(exc, _ParamValidationError):  # (its text quotes the values)
                        message = _validation_message(exc)
                        span.record_exception(exc, _validation_event(exc, message))
                    else:
                        message = str(exc)
                        span.record_exception(exc)
                    span.set_status("error", f"{type(exc).__name__}: {message}"[:512])
                span.end()
            except Exception as internal:
                _safety.report("botocore.end", internal)
            raise
        IN_HTTP_CLIENT.reset(inside)
        try:
            if isinstance(result, dict):
                _response_attributes(span, result)
                if operation_name == "ReceiveMessage" and service == "SQS":
                    _link_messages(span, result)
            span.end()
        except Exception as internal:
            _safety.report("botocore.end", internal)
        return result

    setattr(traced, "__pitchey_trace_wrapped__", original)  # noqa: B010
    return traced


#: Lines of botocore's parameter validation report that name parameters only (kept as they are).
_REPORT_NAMES = ("Missing required parameter", "Unknown parameter", "Invalid number of parameters")
#: Lines that quote the value refused (``..., value: {value}, type: ...``): cut before it.
_REPORT_VALUES = ("Invalid type for", "Invalid value for", "Invalid length for")


def _validation_message(exc: BaseException) -> str:
    """The text of a ``ParamValidationError`` without the values it quotes: botocore writes the
    whole refused value (a message body, an item, a key, a token) into it, sanitizer patterns
    or not. The parameter names and what was wrong stay."""
    lines = str(exc).split("\n")
    kept = [lines[0]]
    for line in lines[1:]:  # (a multi-line value's other lines match neither: dropped)
        if line.startswith(_REPORT_VALUES) and ", value: " in line:
            kept.append(line.split(", value: ", 1)[0] + ", value not recorded")
        elif line.startswith(_REPORT_NAMES):
            kept.append(line)
    return "\n".join(kept)


def _validation_event(exc: BaseException, message: str) -> dict[str, Any]:
    """The ``exception`` event's message and stack trace (whose last line is the message)."""
    frames = traceback.format_list(traceback.extract_tb(exc.__traceback__, limit=-32))
    kind = f"{type(exc).__module__}.{type(exc).__qualname__}"
    stack = "Traceback (most recent call last):\n" + "".join(frames) + f"{kind}: {message}\n"
    return {"exception.message": message, "exception.stacktrace": stack[-8192:]}


def _error_code(response: dict[str, Any]) -> str | None:
    """A failed call's ``error.type``: the service's error code (``NoSuchKey``), else the HTTP
    status code as a string (OpenTelemetry's HTTP conventions for an error response without a
    more specific type; botocore itself takes it as the code of a HEAD error, whose response
    has no body), else None (the exception's type is used)."""
    error = response.get("Error")
    code = error.get("Code") if isinstance(error, dict) else None
    if code:
        return str(code)
    meta = response.get("ResponseMetadata")
    status = meta.get("HTTPStatusCode") if isinstance(meta, dict) else None
    return str(status) if status.__class__ is int and status >= 400 else None


def _response_attributes(span: Any, response: dict[str, Any]) -> None:
    meta = response.get("ResponseMetadata")
    if isinstance(meta, dict):
        if meta.get("RequestId"):
            span.set_attribute("aws.request_id", str(meta["RequestId"]))
        status = meta.get("HTTPStatusCode")
        if isinstance(status, int):
            span.set_attribute("http.response.status_code", status)
        retries = meta.get("RetryAttempts")  # (botocore's: the attempts after the first)
        if retries.__class__ is int and retries > 0:
            span.set_attribute("http.request.resend_count", retries)


def _with_trace_context(span: AnySpan, send: _Send, params: Any) -> Any:
    """``params`` of a send (``send`` as in ``_SENDS``) with ``span``'s context in the message
    attributes of each message sent: a new dict (and new entries / attribute maps where they
    change), the caller's untouched."""
    if not isinstance(params, dict):
        return params
    fields: dict[str, str] = {}
    inject(fields, span)
    if not fields:
        return params
    # (the value maps are shared by the messages of a batch: botocore only reads them)
    ours = {name: {"DataType": "String", "StringValue": value} for name, value in fields.items()}
    names = {name.lower() for name in ours}
    key = send[1]
    if key is None:  # one message
        attributes = _message_attributes(params.get("MessageAttributes"), ours, names, send)
        return params if attributes is None else {**params, "MessageAttributes": attributes}
    entries = params.get(key)
    if not isinstance(entries, list):
        return params
    sent: list[Any] = []
    changed = False
    for entry in entries:
        if isinstance(entry, dict):
            attributes = _message_attributes(entry.get("MessageAttributes"), ours, names, send)
            if attributes is not None:
                entry = {**entry, "MessageAttributes": attributes}
                changed = True
        sent.append(entry)
    return {**params, key: sent} if changed else params


def _message_attributes(
    existing: Any, ours: dict[str, dict[str, str]], names: set[str], send: _Send
) -> dict[str, Any] | None:
    """One message's attributes plus ``ours`` (the propagation fields as String attributes,
    ``names`` their lowercase names) or the part of them that fits, or None to send the
    message as it is: it already has one of these names (in any case: the caller's own
    propagation wins), or not even the required ones fit under the limit."""
    if existing is None:
        count = 0
    elif not isinstance(existing, dict):
        return None  # (botocore's validation answers for it)
    else:
        for name in existing:
            if name.__class__ is str and name.lower() in names:
                return None
        count = len(existing)
    if len(ours) > _MAX_ATTRIBUTES - count:
        ours = _fitting(ours, count, send)
        if not ours:
            return None
    return {**existing, **ours} if count else dict(ours)


def _fitting(ours: dict[str, dict[str, str]], count: int, send: _Send) -> dict[str, dict[str, str]]:
    """The fields that fit next to ``count`` attributes (``traceparent``, or whatever a custom
    propagator requires, first: all of them or nothing; then ``tracestate``, ``baggage``);
    the message left without the others is counted (``send``'s counter) and logged."""
    room = _MAX_ATTRIBUTES - count
    required = {name: value for name, value in ours.items() if name not in _OPTIONAL_FIELDS}
    fit = dict(required) if len(required) <= room else {}
    if fit:
        for name in _OPTIONAL_FIELDS:
            if name in ours and len(fit) < room:
                fit[name] = ours[name]
    _stats.incr(send[2])
    _logger.debug(
        "pitchey_trace: an %s message with %d message attributes has no room for %s (limit %d)",
        send[0],
        count,
        ", ".join(name for name in ours if name not in fit),
        _MAX_ATTRIBUTES,
    )
    return fit


def _link_messages(span: AnySpan, result: dict[str, Any]) -> None:
    """Link a ReceiveMessage span to the context of every message that brought one back."""
    messages = result.get("Messages")
    if isinstance(messages, list):
        for message in messages:
            context = sqs_message_context(message)
            if context is not None:
                span.add_link(context)


def _attribute_value(attributes: Any, name: str) -> Any:
    value = attributes.get(name)
    return value.get("StringValue") if isinstance(value, Mapping) else None


def _event_attribute_value(attributes: Any, name: str) -> Any:
    """An attribute of an SQS record of a Lambda event (``stringValue``, camel case)."""
    value = attributes.get(name)
    return value.get("stringValue") if isinstance(value, Mapping) else None


def _envelope_value(attributes: Any, name: str) -> Any:
    """An attribute of an SNS envelope: ``{"Type": "String", "Value": "..."}`` (a Binary one's
    value is base64 text: not read)."""
    value = attributes.get(name)
    if value.__class__ is dict and value.get("Type") != "Binary":
        text = value.get("Value")
        return text if text.__class__ is str else None
    return None


def _envelope_attributes(body: Any) -> dict[str, Any] | None:
    """The message attributes in ``body`` when it is an SNS notification's JSON envelope (what
    an SQS queue subscribed without raw message delivery receives), else None. Parsed only
    when it looks like one (``{`` first, ``"Notification"`` in it) and is not longer than an
    envelope can be (``_MAX_ENVELOPE``). Never raises."""
    if (
        body.__class__ is not str
        or not body.startswith("{")
        or len(body) > _MAX_ENVELOPE
        or '"Notification"' not in body
    ):
        return None
    try:
        envelope = _loads(body)
    except (ValueError, RecursionError):  # (not JSON, or nested too deep: no envelope)
        return None
    if envelope.__class__ is not dict or envelope.get("Type") != "Notification":
        return None
    attributes = envelope.get("MessageAttributes")
    if not isinstance(attributes, dict) or envelope.get("TopicArn").__class__ is not str:
        return None
    return attributes


def sqs_message_context(message: Any) -> TraceContext | None:
    """The trace context an SQS message carries (as :func:`instrument_botocore` sends it), for
    the span that processes it:
    ``pt.span("process", kind=pt.SpanKind.CONSUMER, context=sqs_message_context(message))``.
    ``message`` is one of ``receive_message(...)["Messages"]``, or one of the ``Records`` of
    the SQS event a Lambda function is invoked with. Read from its message
    attributes (sent to SQS, or published to an SNS topic the queue is subscribed to with raw
    message delivery): ask for them (``MessageAttributeNames=["All"]``, or ``traceparent``,
    ``tracestate``, ``baggage``), SQS returns none otherwise. When they have none, from the
    attributes in its body when that is SNS's JSON envelope (a subscription without raw
    message delivery, SNS's default; a body over 512 Ki characters is not read). None when
    neither has a valid ``traceparent`` (or the fields of the configured propagators). Never
    raises."""
    try:
        if not isinstance(message, Mapping):
            return None
        attributes = message.get("MessageAttributes")
        body_key = "Body"
        getter = _attribute_value
        if attributes is None and "messageAttributes" in message:
            # a record of the SQS event a Lambda function gets (camel-case keys)
            attributes, body_key, getter = message["messageAttributes"], "body", _event_attribute_value
        if isinstance(attributes, Mapping) and attributes:
            context = extract(attributes, getter)
            if context is not None:
                return context
        attributes = _envelope_attributes(message.get(body_key))
        return None if attributes is None else extract(attributes, _envelope_value)
    except Exception as exc:
        _safety.report("botocore.sqs", exc)
        return None


def instrument_botocore() -> None:
    """Make every botocore API call (boto3 clients and resources included) a CLIENT span.
    Idempotent."""
    if _original:
        return
    original = _client.BaseClient._make_api_call
    _original.append(original)
    _client.BaseClient._make_api_call = _make_api_call(original)


def uninstrument_botocore() -> None:
    """Undo :func:`instrument_botocore`."""
    if _original:
        _client.BaseClient._make_api_call = _original.pop()
