"""pitchey_trace.botocore against moto's server: what a failed call records never quotes the
values of the request (message bodies, items, keys, tokens), whatever the sanitizer knows."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.exceptions
import pytest

from pitchey_trace.botocore import instrument_botocore, uninstrument_botocore
from pitchey_trace.testing import capture_spans
from tests.integration.exporters.conftest import s3_endpoint  # noqa: F401  (the moto server fixture)
from tests.support.instrumentation import instrumented

pytestmark = pytest.mark.integration

#: Nothing any sanitizer pattern would recognise: only the integration can keep it out.
SECRET = "plain-words-of-the-body-7f3a9c"


@pytest.fixture
def traced() -> Iterator[None]:
    with instrumented(instrument_botocore, uninstrument_botocore):
        yield


def test_parameter_validation_errors_name_the_parameter_not_the_value(
    s3_endpoint: str,  # noqa: F811
    traced: None,
) -> None:
    sqs: Any = boto3.client("sqs", endpoint_url=s3_endpoint, region_name="us-east-1")
    ddb: Any = boto3.client("dynamodb", endpoint_url=s3_endpoint, region_name="us-east-1")
    url = s3_endpoint + "/123456789012/q"
    with capture_spans() as mem:
        with pytest.raises(botocore.exceptions.ParamValidationError) as raised:
            sqs.send_message(QueueUrl=url, MessageBody={"note": SECRET}, DelaySeconds=f"{SECRET}\n2")
        assert SECRET in str(raised.value)  # (botocore's own text quotes the values)
        with pytest.raises(botocore.exceptions.ParamValidationError):
            ddb.put_item(TableName="t", Item={"id": {"S": SECRET, "N": "1"}}, Unknown=SECRET)
        with pytest.raises(botocore.exceptions.ParamValidationError):
            sqs.send_message(MessageBody="x")  # a missing parameter
    text = json.dumps(mem.records)
    at = text.find(SECRET)
    assert at < 0, text[max(0, at - 400) : at + 100]
    send, put, missing = mem.spans()
    assert send["name"] == "SQS.SendMessage"
    assert send["status"] == "error"
    assert send["attributes"]["error.type"] == "ParamValidationError"
    (event,) = send["events"]
    message = event["attributes"]["exception.message"]
    assert message.startswith("Parameter validation failed:")
    assert "Invalid type for parameter MessageBody" in message
    assert "Invalid type for parameter DelaySeconds" in message
    assert send["status_message"].startswith("ParamValidationError: Parameter validation failed:")
    assert 'Unknown parameter in input: "Unknown"' in put["events"][0]["attributes"]["exception.message"]
    assert 'Missing required parameter in input: "QueueUrl"' in missing["status_message"]
