"""pitchey_trace.botocore: boto3 calls to moto's server (server mode, over HTTP) become CLIENT
spans; the SDK's own logpush uploads through the same botocore stay untraced; SQS messages and
SNS publishes carry the trace context in their message attributes."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import pytest

import pitchey_trace as pt
from pitchey_trace.botocore import instrument_botocore, uninstrument_botocore
from pitchey_trace.exporters import LogpushExporter
from pitchey_trace.testing import capture_spans, swallowed_errors
from pitchey_trace.web import instrument_urllib3, uninstrument_urllib3
from tests.integration.exporters.servers import S3

pytestmark = pytest.mark.integration


@pytest.fixture
def traced() -> Iterator[None]:
    instrument_botocore()
    instrument_botocore()  # idempotent
    yield
    uninstrument_botocore()


def test_calls_are_client_spans_with_rpc_attributes(s3: S3, traced: None) -> None:
    bucket = s3.new_bucket()
    client: Any = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1")
    with capture_spans() as mem:
        with pt.span("upload"):
            client.put_object(Bucket=bucket, Key="users/alice@example.com/avatar", Body=b"secret-bytes")
            client.get_object(Bucket=bucket, Key="users/alice@example.com/avatar")["Body"].read()
            with pytest.raises(botocore.exceptions.ClientError):
                client.get_object(Bucket=bucket, Key="missing")
    *calls, upload = mem.spans()
    assert [c["name"] for c in calls] == ["S3.PutObject", "S3.GetObject", "S3.GetObject"]
    assert {c["parent_span_id"] for c in calls} == {upload["span_id"]}
    put, get, missing = calls
    host, port = s3.endpoint.removeprefix("http://").split(":")
    assert put["kind"] == "client"
    assert {k: v for k, v in put["attributes"].items() if k != "aws.request_id"} == {
        "rpc.system": "aws-api",
        "rpc.service": "S3",
        "rpc.method": "PutObject",
        "cloud.region": "us-east-1",
        "server.address": host,
        "server.port": int(port),
        "aws.s3.bucket": bucket,
        "http.response.status_code": 200,
    }
    assert get["status"] == "unset"
    assert missing["status"] == "error"
    assert missing["attributes"]["error.type"] == "NoSuchKey"
    assert missing["attributes"]["http.response.status_code"] == 404
    exported = str(mem.records)
    assert "alice" not in exported  # object keys are not recorded
    assert "secret-bytes" not in exported


def test_the_sdks_own_uploads_make_no_spans(s3: S3, traced: None, tmp_path: Path) -> None:
    bucket = s3.new_bucket()
    archive = LogpushExporter(
        bucket, endpoint_url=s3.endpoint, region="us-east-1", spool_dir=tmp_path / "spool"
    )
    with capture_spans(exporters=[archive]) as mem:
        with pt.span("job"):
            pass
        with pt.suppress_tracing():
            boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1").list_buckets()
        assert pt.force_flush(20)
    assert [s["name"] for s in mem.spans()] == ["job"]  # no S3.PutObject from the exporter
    [key] = s3.keys(bucket, "traces/")
    assert [r["name"] for r in s3.records(bucket, key) if r["type"] == "span"] == ["job"]


def test_uninstrument_restores_the_client(s3: S3) -> None:
    instrument_botocore()
    uninstrument_botocore()
    with capture_spans() as mem:
        boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1").list_buckets()
    assert mem.spans() == []


def test_an_aws_call_is_one_span_with_urllib3_instrumented(s3: S3, traced: None) -> None:
    """botocore sends with urllib3: an instrumented AWS call gets no second (HTTP) span, so the
    service map counts it once; without the botocore instrumentation the request is an HTTP
    client span (urllib3's)."""
    instrument_urllib3()
    try:
        client: Any = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1")
        with capture_spans() as mem:
            client.list_buckets()
        assert [s["name"] for s in mem.spans()] == ["S3.ListBuckets"]
        uninstrument_botocore()
        with capture_spans() as mem:
            client.list_buckets()
        [http] = mem.spans()
        assert (http["name"], http["kind"]) == ("GET", "client")
        assert http["attributes"]["url.full"].startswith(s3.endpoint)
    finally:
        uninstrument_urllib3()


def test_server_address_drops_userinfo_from_the_endpoint(s3: S3, traced: None) -> None:
    """An endpoint URL with ``user:password@`` (a MinIO-style URL) reaches the server, and the
    span's ``server.address`` is the host alone: the password is never recorded."""
    host, port = s3.endpoint.removeprefix("http://").split(":")
    url = f"http://minio-user:hunter2-secret@{host}:{port}"
    client: Any = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
    with capture_spans() as mem:
        client.list_buckets()
    [call] = mem.spans()
    assert call["attributes"]["http.response.status_code"] == 200
    assert call["attributes"]["server.address"] == host
    assert call["attributes"]["server.port"] == int(port)
    assert "hunter2" not in str(mem.records)
    assert "minio-user" not in str(mem.records)


@pytest.mark.parametrize(
    ("endpoint", "address", "port"),
    [
        ("http://[::1]:9000", "::1", 9000),  # an IPv6 address without its brackets, the port apart
        ("https://S3.Example.COM/", "s3.example.com", None),  # no explicit port: the address only
    ],
)
def test_server_address_and_port_from_the_endpoint(
    traced: None, endpoint: str, address: str, port: int | None
) -> None:
    """(botocore's Stubber: no request is sent, so no IPv6 loopback is needed.)"""
    from botocore.stub import Stubber

    client: Any = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    with Stubber(client) as stub, capture_spans() as mem:
        stub.add_response("list_buckets", {"Buckets": []})
        client.list_buckets()
    [call] = mem.spans()
    assert call["attributes"]["server.address"] == address
    assert call["attributes"].get("server.port") == port


# -- SQS: the trace context travels in the message attributes ------------------------------------
@pytest.fixture
def queue(s3_endpoint: str) -> tuple[Any, str]:
    """A boto3 SQS client to moto's server (the same server-mode moto as S3) and a new queue."""
    client: Any = boto3.client("sqs", endpoint_url=s3_endpoint, region_name="us-east-1")
    url = client.create_queue(QueueName=f"pt-{secrets.token_hex(6)}")["QueueUrl"]
    return client, url


def _string(value: str) -> dict[str, str]:
    return {"DataType": "String", "StringValue": value}


def _receive_all(client: Any, url: str, count: int) -> list[dict[str, Any]]:
    """Every message of the queue (``count`` of them), with all their attributes, untraced."""
    got: list[dict[str, Any]] = []
    with pt.suppress_tracing():
        while len(got) < count:
            reply = client.receive_message(
                QueueUrl=url, MessageAttributeNames=["All"], MaxNumberOfMessages=10, WaitTimeSeconds=1
            )
            got += reply.get("Messages", [])
    return sorted(got, key=lambda m: m["Body"])


def _traceparent(span: dict[str, Any]) -> str:
    """The ids of a sampled ``traceparent`` naming ``span`` (as :func:`_ids` leaves it)."""
    return f"{span['trace_id']}-{span['span_id']}"


def _ids(attributes: dict[str, Any]) -> dict[str, Any]:
    """A message's attributes with its ``traceparent`` cut to its ids (the flags checked)."""
    out = dict(attributes)
    if "traceparent" in out:
        version, trace_id, span_id, flags = out["traceparent"]["StringValue"].split("-")
        assert version == "00"
        assert int(flags, 16) & 1  # sampled
        out["traceparent"] = _string(f"{trace_id}-{span_id}")
    return out


def _assert_one_and_a_batch_carry(
    received: list[dict[str, Any]], single: dict[str, Any], batch: dict[str, Any]
) -> None:
    """The three messages the SQS and SNS send tests receive: one sent alone with the caller's
    ``tenant`` attribute, then a batch of two, the second with the caller's ``kind``; each
    with its call's context and the baggage, the caller's attributes kept."""
    a, b1, b2 = received
    assert _ids(a["MessageAttributes"]) == {
        "tenant": _string("acme"),
        "traceparent": _string(_traceparent(single)),
        "baggage": _string("user.id=u-42"),
    }
    for message in (b1, b2):  # every message of a batch, with the batch call's context
        assert _ids(message["MessageAttributes"])["traceparent"] == _string(_traceparent(batch))
        assert message["MessageAttributes"]["baggage"] == _string("user.id=u-42")
    assert b2["MessageAttributes"]["kind"] == _string("invoice")


def test_sqs_sends_carry_the_trace_context_in_message_attributes(
    queue: tuple[Any, str], traced: None
) -> None:
    client, url = queue
    mine = {"tenant": _string("acme")}
    entry = {"Id": "2", "MessageBody": "b2", "MessageAttributes": {"kind": _string("invoice")}}
    with capture_spans() as mem:
        with pt.span("checkout"), pt.set_baggage({"user.id": "u-42"}):
            client.send_message(QueueUrl=url, MessageBody="a", MessageAttributes=mine)
            client.send_message_batch(QueueUrl=url, Entries=[{"Id": "1", "MessageBody": "b1"}, entry])
    send, batch, _checkout = mem.spans()
    assert (send["name"], batch["name"]) == ("SQS.SendMessage", "SQS.SendMessageBatch")
    _assert_one_and_a_batch_carry(_receive_all(client, url, 3), send, batch)
    # the caller's objects are left as they were (a reused dict never carries a stale context)
    assert mine == {"tenant": _string("acme")}
    assert entry["MessageAttributes"] == {"kind": _string("invoice")}


def test_sqs_tracestate_goes_along(queue: tuple[Any, str], traced: None) -> None:
    client, url = queue
    caller = pt.extract({"traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01", "tracestate": "vendor=opaque-1"})
    with capture_spans() as mem:
        with pt.span("handler", context=caller):
            client.send_message(QueueUrl=url, MessageBody="a")
    send = mem.spans("SQS.SendMessage")[0]
    [message] = _receive_all(client, url, 1)
    assert _ids(message["MessageAttributes"]) == {
        "traceparent": _string(_traceparent(send)),
        "tracestate": _string("vendor=opaque-1"),
    }


def test_sqs_attribute_limit_is_respected(
    queue: tuple[Any, str], traced: None, caplog: pytest.LogCaptureFixture
) -> None:
    """SQS takes at most 10 message attributes: a message that has no room keeps its own
    attributes alone (counted, logged at debug, never an error); ``traceparent`` goes before
    ``baggage``."""
    caplog.set_level(logging.DEBUG, logger="pitchey_trace")
    client, url = queue
    ten = {f"a{i}": _string(str(i)) for i in range(10)}
    nine = {f"a{i}": _string(str(i)) for i in range(9)}
    with capture_spans() as mem:
        with pt.span("job"), pt.set_baggage({"user.id": "u-42"}):
            client.send_message(QueueUrl=url, MessageBody="full", MessageAttributes=ten)
            client.send_message(QueueUrl=url, MessageBody="one-left", MessageAttributes=nine)
            client.send_message_batch(
                QueueUrl=url,
                Entries=[
                    {"Id": "1", "MessageBody": "room", "MessageAttributes": {"x": _string("1")}},
                    {"Id": "2", "MessageBody": "no-room", "MessageAttributes": ten},
                ],
            )
    _full, one_left = mem.spans("SQS.SendMessage")
    [batch] = mem.spans("SQS.SendMessageBatch")
    assert all(s["status"] == "unset" for s in mem.spans())
    messages = {m["Body"]: _ids(m["MessageAttributes"]) for m in _receive_all(client, url, 4)}
    assert messages["full"] == ten
    assert messages["no-room"] == ten
    assert messages["one-left"] == {**nine, "traceparent": _string(_traceparent(one_left))}
    assert messages["room"]["traceparent"] == _string(_traceparent(batch))
    assert messages["room"]["baggage"] == _string("user.id=u-42")
    # three messages left without (all or part of) the context: full, one-left, no-room
    assert pt.stats()["botocore.sqs_context_not_injected"] == 3
    notes = [r for r in caplog.records if r.name == "pitchey_trace" and "no room" in r.getMessage()]
    assert [r.levelno for r in notes] == [logging.DEBUG] * 3
    assert "baggage" in notes[1].getMessage()
    assert "traceparent" not in notes[1].getMessage()


def test_sqs_attributes_the_caller_set_are_never_replaced(queue: tuple[Any, str], traced: None) -> None:
    """A message that carries its own ``traceparent`` (a relay forwarding its input's context)
    goes as it is: none of ours is added next to it."""
    client, url = queue
    theirs = f"00-{'12' * 16}-{'34' * 8}-01"
    with capture_spans():
        with pt.span("relay"), pt.set_baggage({"user.id": "u-42"}):
            client.send_message(
                QueueUrl=url, MessageBody="a", MessageAttributes={"traceparent": _string(theirs)}
            )
    [message] = _receive_all(client, url, 1)
    assert message["MessageAttributes"] == {"traceparent": _string(theirs)}


def test_sqs_nothing_is_injected_when_suppressed_or_unconfigured(
    queue: tuple[Any, str], traced: None
) -> None:
    client, url = queue
    client.send_message(QueueUrl=url, MessageBody="a")  # tracing not configured
    with capture_spans():
        with pt.suppress_tracing():
            client.send_message(QueueUrl=url, MessageBody="b")
    assert [m.get("MessageAttributes") for m in _receive_all(client, url, 2)] == [None, None]


def test_sqs_receive_links_to_the_senders_and_the_consumer_continues(
    queue: tuple[Any, str], traced: None
) -> None:
    """ReceiveMessage is sent as the caller wrote it: attributes asked for are read, never
    asked for on the caller's behalf. The receive span links to each message's send span
    (when its attributes came back), and ``sqs_message_context`` continues the trace."""
    from pitchey_trace.botocore import sqs_message_context

    client, url = queue
    with capture_spans() as mem:
        with pt.span("producer"):
            client.send_message(QueueUrl=url, MessageBody="a")
            client.send_message(QueueUrl=url, MessageBody="b")
        plain = client.receive_message(QueueUrl=url, MaxNumberOfMessages=1, VisibilityTimeout=0)
        got: list[dict[str, Any]] = []
        while len(got) < 2:
            got += client.receive_message(
                QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["traceparent"]
            ).get("Messages", [])
        for message in got:
            with pt.span("process", kind=pt.SpanKind.CONSUMER, context=sqs_message_context(message)):
                pass
    sends = mem.spans("SQS.SendMessage")
    first, *rest = mem.spans("SQS.ReceiveMessage")
    # not asked for: not fetched, and the caller's reply has none
    assert "MessageAttributes" not in plain["Messages"][0]
    assert first["links"] == []
    links = [link for r in rest for link in r["links"]]
    assert sorted(link["span_id"] for link in links) == sorted(s["span_id"] for s in sends)
    assert {link["trace_id"] for link in links} == {sends[0]["trace_id"]}
    processed = mem.spans("process")
    assert sorted(p["parent_span_id"] for p in processed) == sorted(s["span_id"] for s in sends)
    assert {p["trace_id"] for p in processed} == {sends[0]["trace_id"]}
    assert sqs_message_context({"Body": "no attributes"}) is None
    assert sqs_message_context({"MessageAttributes": {"traceparent": _string("garbage")}}) is None


# -- SNS: the same attributes, delivered by the topic to its SQS subscribers ---------------------
def _subscribed_topic(queue: tuple[Any, str], endpoint: str, raw: bool) -> tuple[Any, str]:
    """A boto3 SNS client to moto's server and a new topic, to which ``queue`` is subscribed
    (with raw message delivery or not)."""
    sqs, url = queue
    sns: Any = boto3.client("sns", endpoint_url=endpoint, region_name="us-east-1")
    with pt.suppress_tracing():
        arn = sns.create_topic(Name=f"pt-{secrets.token_hex(6)}")["TopicArn"]
        got = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        queue_arn = got["Attributes"]["QueueArn"]
        attributes = {"RawMessageDelivery": "true"} if raw else {}
        sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=queue_arn, Attributes=attributes)
    return sns, arn


@pytest.fixture
def topic(queue: tuple[Any, str], s3_endpoint: str) -> tuple[Any, str]:
    """A topic ``queue`` is subscribed to with raw message delivery (the message attributes
    arrive as SQS message attributes)."""
    return _subscribed_topic(queue, s3_endpoint, raw=True)


@pytest.fixture
def enveloping_topic(queue: tuple[Any, str], s3_endpoint: str) -> tuple[Any, str]:
    """A topic ``queue`` is subscribed to as SNS subscribes by default, without raw message
    delivery: each SQS message's body is SNS's JSON envelope, the message attributes inside."""
    return _subscribed_topic(queue, s3_endpoint, raw=False)


def test_sns_publishes_carry_the_trace_context_to_the_subscribers(
    topic: tuple[Any, str], queue: tuple[Any, str], traced: None
) -> None:
    """``Publish`` and ``PublishBatch`` (every entry) send the context as SQS sends do; the
    subscribed queue's consumer continues the trace with ``sqs_message_context``."""
    from pitchey_trace.botocore import sqs_message_context

    sns, arn = topic
    sqs, url = queue
    mine = {"tenant": _string("acme")}
    entry = {"Id": "2", "Message": "b2", "MessageAttributes": {"kind": _string("invoice")}}
    with capture_spans() as mem:
        with pt.span("checkout"), pt.set_baggage({"user.id": "u-42"}):
            sns.publish(TopicArn=arn, Message="a", MessageAttributes=mine)
            sns.publish_batch(TopicArn=arn, PublishBatchRequestEntries=[{"Id": "1", "Message": "b1"}, entry])
        a, b1, b2 = _receive_all(sqs, url, 3)
        for message in (a, b1, b2):
            with pt.span("process", kind=pt.SpanKind.CONSUMER, context=sqs_message_context(message)):
                pass
    [publish] = mem.spans("SNS.Publish")
    [batch] = mem.spans("SNS.PublishBatch")
    _assert_one_and_a_batch_carry([a, b1, b2], publish, batch)
    processed = mem.spans("process")
    assert [p["parent_span_id"] for p in processed] == [publish["span_id"]] + [batch["span_id"]] * 2
    assert {p["trace_id"] for p in processed} == {publish["trace_id"]}
    # the caller's objects are left as they were
    assert mine == {"tenant": _string("acme")}
    assert entry["MessageAttributes"] == {"kind": _string("invoice")}


def test_sns_attribute_limit_and_the_callers_own_context(
    topic: tuple[Any, str], queue: tuple[Any, str], traced: None, caplog: pytest.LogCaptureFixture
) -> None:
    """SNS drops a message with more than 10 attributes for a raw-delivery SQS subscriber: what
    does not fit is left out (counted as ``botocore.sns_context_not_injected``, logged at
    debug); a message with its own ``traceparent`` goes as it is."""
    caplog.set_level(logging.DEBUG, logger="pitchey_trace")
    sns, arn = topic
    sqs, url = queue
    ten = {f"a{i}": _string(str(i)) for i in range(10)}
    nine = {f"a{i}": _string(str(i)) for i in range(9)}
    theirs = f"00-{'12' * 16}-{'34' * 8}-01"
    with capture_spans() as mem:
        with pt.span("job"), pt.set_baggage({"user.id": "u-42"}):
            sns.publish(TopicArn=arn, Message="full", MessageAttributes=ten)
            sns.publish(TopicArn=arn, Message="one-left", MessageAttributes=nine)
            sns.publish_batch(
                TopicArn=arn,
                PublishBatchRequestEntries=[
                    {"Id": "1", "Message": "relayed", "MessageAttributes": {"TraceParent": _string(theirs)}},
                    {"Id": "2", "Message": "no-room", "MessageAttributes": ten},
                ],
            )
    _full, one_left = mem.spans("SNS.Publish")
    assert all(s["status"] == "unset" for s in mem.spans())
    messages = {m["Body"]: _ids(m["MessageAttributes"]) for m in _receive_all(sqs, url, 4)}
    assert messages["full"] == ten
    assert messages["no-room"] == ten
    assert messages["one-left"] == {**nine, "traceparent": _string(_traceparent(one_left))}
    assert messages["relayed"] == {"TraceParent": _string(theirs)}
    stats = pt.stats()
    assert stats["botocore.sns_context_not_injected"] == 3
    assert "botocore.sqs_context_not_injected" not in stats
    notes = [r.getMessage() for r in caplog.records if r.name == "pitchey_trace"]
    notes = [note for note in notes if "no room" in note]
    assert len(notes) == 3
    assert all("SNS message" in note for note in notes)


# -- SNS without raw message delivery: the context is in the envelope the SQS body carries ------
def test_sns_without_raw_delivery_the_consumer_continues_from_the_envelope(
    enveloping_topic: tuple[Any, str], queue: tuple[Any, str], traced: None
) -> None:
    """A subscription without raw message delivery (SNS's default) delivers SNS's JSON envelope
    as the SQS body, the message attributes inside it (``{"Type": "String", "Value": ...}``),
    none as SQS message attributes: ``sqs_message_context`` reads the envelope's, and the
    ReceiveMessage span links to the publishers (the body always comes back, no attribute
    names need to be asked for)."""
    from pitchey_trace.botocore import sqs_message_context

    sns, arn = enveloping_topic
    sqs, url = queue
    with capture_spans() as mem:
        with pt.span("checkout"), pt.set_baggage({"user.id": "u-42"}):
            sns.publish(TopicArn=arn, Message="a", MessageAttributes={"tenant": _string("acme")})
            sns.publish_batch(TopicArn=arn, PublishBatchRequestEntries=[{"Id": "1", "Message": "b"}])
        got: list[dict[str, Any]] = []
        while len(got) < 2:
            got += sqs.receive_message(
                QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"], WaitTimeSeconds=1
            ).get("Messages", [])
        baggage: list[str | None] = []
        for message in sorted(got, key=lambda m: json.loads(m["Body"])["Message"]):
            with pt.span("process", kind=pt.SpanKind.CONSUMER, context=sqs_message_context(message)):
                baggage.append(pt.get_baggage("user.id"))
    [publish] = mem.spans("SNS.Publish")
    [batch] = mem.spans("SNS.PublishBatch")
    # what moto delivers, as SNS does: the envelope, no SQS message attributes
    assert [m.get("MessageAttributes") for m in got] == [None, None]
    envelopes = [json.loads(m["Body"]) for m in got]
    assert {e["Type"] for e in envelopes} == {"Notification"}
    a = next(e for e in envelopes if e["Message"] == "a")
    assert a["MessageAttributes"]["tenant"] == {"Type": "String", "Value": "acme"}
    assert a["MessageAttributes"]["traceparent"]["Value"].split("-")[1:3] == [
        publish["trace_id"],
        publish["span_id"],
    ]
    processed = mem.spans("process")
    assert [p["parent_span_id"] for p in processed] == [publish["span_id"], batch["span_id"]]
    assert {p["trace_id"] for p in processed} == {publish["trace_id"]}
    assert baggage == ["u-42", "u-42"]
    links = [link for r in mem.spans("SQS.ReceiveMessage") for link in r["links"]]
    assert sorted(link["span_id"] for link in links) == sorted([publish["span_id"], batch["span_id"]])


#: An SQS message body as moto's server delivers it (captured; moto sorts the keys and indents).
MOTO_ENVELOPE = """{
  "Message": "hello",
  "MessageAttributes": {
    "n": {
      "Type": "Number",
      "Value": "3"
    },
    "traceparent": {
      "Type": "String",
      "Value": "00-abababababababababababababababab-cdcdcdcdcdcdcdcd-01"
    }
  },
  "MessageId": "64788940-1d97-4a77-a746-2ec0fd5b9d1f",
  "Signature": "MIyiAgrfLSAIeNZtkgSBwrDR5Bp8VYEjCcH9zdni/CuBNt2yLsss2lrKz0Tr4ru2DgQj0LxYIfRW2fe5LLWG==",
  "SignatureVersion": "2",
  "SigningCertURL": "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-1acff32791504e768e1c5d8b9f74c181.pem",
  "Subject": "subj",
  "Timestamp": "2026-12-01T13:31:01.373Z",
  "TopicArn": "arn:aws:sns:us-east-1:123456789012:t1",
  "Type": "Notification",
  "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=arn:aws:sns:us-east-1:123456789012:t1:2bcfbf39-05c3-41de-beaa-fcfcc21c8f55"
}"""

#: The layout AWS documents for an SQS subscriber without raw message delivery (and SQS bodies
#: show): its own key order, ``" : "``, the attributes last, each on one line.
AWS_ENVELOPE = """{
  "Type" : "Notification",
  "MessageId" : "1f4c2a6e-7b1d-5c3e-9a8f-0d2b4e6c8a10",
  "TopicArn" : "arn:aws:sns:us-east-2:111122223333:orders",
  "Message" : "{\\"order\\": 42, \\"Type\\": \\"Notification\\"}",
  "Timestamp" : "2026-02-16T21:41:19.978Z",
  "SignatureVersion" : "1",
  "Signature" : "EXAMPLEpH+DcEwjAPg8O9mY8dReBSwksfg2S7WKQcikcNKWLQjwu6A4VbeS0QHVCkhRS7fUQvi2egU3N85==",
  "SigningCertURL" : "https://sns.us-east-2.amazonaws.com/SimpleNotificationService-0000000000000000000000.pem",
  "UnsubscribeURL" : "https://sns.us-east-2.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=arn:aws:sns:us-east-2:111122223333:orders:e1039402-24e7-40a3-a0d4-797da162b297",
  "MessageAttributes" : {
    "tenant" : {"Type":"String","Value":"acme"},
    "traceparent" : {"Type":"String","Value":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
    "tracestate" : {"Type":"String","Value":"vendor=opaque-1"},
    "baggage" : {"Type":"String","Value":"user.id=u-42"}
  }
}"""


def test_sqs_message_context_reads_the_envelope_moto_and_aws_deliver() -> None:
    from pitchey_trace.botocore import sqs_message_context

    with swallowed_errors() as errors:
        moto = sqs_message_context({"MessageId": "m1", "Body": MOTO_ENVELOPE})
        aws = sqs_message_context({"MessageId": "m2", "Body": AWS_ENVELOPE, "MessageAttributes": {}})
    assert errors == []
    assert moto is not None
    assert (moto.trace_id, moto.span_id) == (int("ab" * 16, 16), int("cd" * 8, 16))
    assert aws is not None
    assert (f"{aws.trace_id:032x}", f"{aws.span_id:016x}") == (
        "0af7651916cd43dd8448eb211c80319c",
        "b7ad6b7169203331",
    )
    assert aws.trace_state == (("vendor", "opaque-1"),)
    assert dict(aws.baggage) == {"user.id": "u-42"}


def test_sqs_message_context_reads_the_records_of_a_lambda_sqs_event() -> None:
    """A Lambda function fed by SQS gets records with camel-case keys (``messageAttributes``
    with ``stringValue``, ``body``): the same contexts come from them."""
    from pitchey_trace.botocore import sqs_message_context

    sent = f"00-{'12' * 16}-{'34' * 8}-01"
    direct = {
        "messageId": "m1",
        "body": "order 7",
        "eventSource": "aws:sqs",
        "messageAttributes": {
            "traceparent": {"stringValue": sent, "dataType": "String", "stringListValues": []},
            "baggage": {"stringValue": "user.id=u-7", "dataType": "String"},
        },
    }
    via_sns = {"messageId": "m2", "body": AWS_ENVELOPE, "messageAttributes": {}, "eventSource": "aws:sqs"}
    with swallowed_errors() as errors:
        first, second = sqs_message_context(direct), sqs_message_context(via_sns)
        bare = sqs_message_context({"messageId": "m3", "body": "x", "messageAttributes": {"a": 1}})
    assert errors == []
    assert first is not None
    assert first.span_id == int("34" * 8, 16)
    assert dict(first.baggage) == {"user.id": "u-7"}
    assert second is not None
    assert f"{second.span_id:016x}" == "b7ad6b7169203331"
    assert bare is None


def test_sqs_message_context_prefers_the_messages_own_attributes() -> None:
    """The message's own attributes win when they carry a context (a relay that sent the
    envelope on as an SQS message with its own context); other attributes of its own do not
    hide the envelope's."""
    from pitchey_trace.botocore import sqs_message_context

    own = f"00-{'12' * 16}-{'34' * 8}-01"
    relayed = sqs_message_context({"Body": AWS_ENVELOPE, "MessageAttributes": {"traceparent": _string(own)}})
    assert relayed is not None
    assert relayed.span_id == int("34" * 8, 16)
    tagged = sqs_message_context({"Body": AWS_ENVELOPE, "MessageAttributes": {"tenant": _string("acme")}})
    assert tagged is not None
    assert tagged.span_id == int("b7ad6b7169203331", 16)


def _envelope(**changes: Any) -> str:
    envelope = json.loads(AWS_ENVELOPE)
    envelope.update(changes)
    return json.dumps(envelope)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(None, id="no-body"),
        pytest.param(b'{"Type": "Notification"}', id="bytes"),
        pytest.param(" " + AWS_ENVELOPE, id="not-starting-with-brace"),
        pytest.param(AWS_ENVELOPE.replace("Notification", "Note"), id="no-notification"),
        pytest.param(AWS_ENVELOPE[:-1], id="truncated-json"),
        pytest.param('{"Type": "Notification"} trailing', id="extra-data"),
        pytest.param('{"Type": "Notification", "x": ' + "[" * 100_000, id="deeply-nested"),
        pytest.param('{"Notification": [1, 2]}', id="no-type"),
        pytest.param(_envelope(Type="SubscriptionConfirmation", Message="Notification"), id="other-type"),
        pytest.param(_envelope(TopicArn=None), id="no-topic"),
        pytest.param(_envelope(MessageAttributes=["traceparent"]), id="attributes-not-a-map"),
        pytest.param(_envelope(MessageAttributes={"traceparent": "00-ab"}), id="value-not-a-map"),
        pytest.param(
            _envelope(MessageAttributes={"traceparent": {"Type": "Binary", "Value": "AAE="}}), id="binary"
        ),
        pytest.param(
            _envelope(MessageAttributes={"traceparent": {"Type": "String", "Value": 7}}), id="not-str"
        ),
        pytest.param(
            _envelope(MessageAttributes={"traceparent": _string(f"00-{'ab' * 16}-{'cd' * 8}-01")}),
            id="sqs-shaped",
        ),
        pytest.param('"{"', id="json-string"),
    ],
)
def test_sqs_message_context_is_none_for_what_is_no_envelope(body: Any) -> None:
    from pitchey_trace.botocore import sqs_message_context

    with swallowed_errors() as errors:
        assert sqs_message_context({"Body": body}) is None
    assert errors == []


def test_sqs_message_context_does_not_parse_a_large_body(monkeypatch: pytest.MonkeyPatch) -> None:
    """An envelope is parsed only up to a size no SNS message in its envelope reaches (256 KiB,
    its quotes escaped): a larger body, or one that cannot be an envelope, is never parsed."""
    import pitchey_trace.botocore as module
    from pitchey_trace.botocore import sqs_message_context

    parsed: list[int] = []

    def loads(text: str) -> Any:
        parsed.append(len(text))
        return json.loads(text)

    monkeypatch.setattr(module, "_loads", loads)
    large = _envelope(Message="x" * (module._MAX_ENVELOPE + 1))
    assert sqs_message_context({"Body": large}) is None
    assert sqs_message_context({"Body": "{" + "x" * 5_000_000 + "}"}) is None  # no "Notification"
    assert sqs_message_context({"Body": "plain text, Notification"}) is None
    assert parsed == []
    fits = _envelope(Message="x" * (module._MAX_ENVELOPE - len(AWS_ENVELOPE) - 100))
    assert sqs_message_context({"Body": fits}) is not None
    assert parsed == [len(fits)]
