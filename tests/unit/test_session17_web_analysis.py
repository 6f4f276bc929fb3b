"""Session 17, in-process: which file-wrapper responses are handed back to the server as they
are (and which stay a traced iterable), a wrapper closed twice ends its span once, and
an analysis source's dataset names are read once."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any
from wsgiref.util import FileWrapper, setup_testing_defaults

import pytest
from waitress.buffers import ReadOnlyFileBasedBuffer

from pitchey_trace import force_flush
from pitchey_trace.analysis import LocalSource
from pitchey_trace.testing import capture_spans, swallowed_errors
from pitchey_trace.web import WSGITracingMiddleware


def environ(wrapper: Any) -> dict[str, Any]:
    env: dict[str, Any] = {"PATH_INFO": "/files/x", "wsgi.file_wrapper": wrapper}
    setup_testing_defaults(env)
    return env


def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
    return lambda data: None


def opener(tmp_path: Path, data: bytes, at: int = 0) -> Callable[[], Any]:
    """Opens the file ``f.bin`` in ``tmp_path``, written with ``data``, afresh at each call
    (positioned at the offset ``at`` if one is given)."""
    path = tmp_path / "f.bin"
    path.write_bytes(data)

    def open_file() -> Any:
        f = open(path, "rb")  # noqa: SIM115
        if at:
            f.seek(at)
        return f

    return open_file


def file_app(make_file: Any) -> Any:
    def app(env: dict[str, Any], start: Any) -> Any:
        start("200 OK", [("Content-Type", "application/octet-stream")])
        return env["wsgi.file_wrapper"](make_file(), 4)

    return app


class Pipe(io.RawIOBase):
    """A readable file that cannot seek (a pipe)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), len(self.data))
        buffer[:n] = self.data[:n]
        self.data = self.data[n:]
        return n


def test_a_seekable_file_wrapper_is_handed_back_and_counted_by_its_position(tmp_path: Path) -> None:
    mw = WSGITracingMiddleware(file_app(opener(tmp_path, b"0123456789")))
    with capture_spans() as exporter:
        result = mw(environ(FileWrapper), start_response)
        assert type(result) is FileWrapper
        body = b"".join(result)
        force_flush(10.0)
        assert exporter.spans() == []  # (the span ends as the server closes the wrapper)
        result.close()
        result.close()  # (a second close ends nothing more)
    [span] = exporter.spans()
    assert body == b"0123456789"
    assert span["attributes"]["http.response.body.size"] == 10
    assert "client.disconnected" not in [e["name"] for e in span["events"]]


def test_a_pipe_in_a_file_wrapper_stays_a_traced_iterable() -> None:
    mw = WSGITracingMiddleware(file_app(lambda: Pipe(b"abcdef")))
    with capture_spans() as exporter:
        result = mw(environ(FileWrapper), start_response)
        assert type(result) is not FileWrapper
        body = b"".join(result)
    [span] = exporter.spans()
    assert body == b"abcdef"
    assert span["attributes"]["http.response.body.size"] == 6


def test_a_wrapper_without_instance_attributes_stays_a_traced_iterable(tmp_path: Path) -> None:
    class Slotted:
        __slots__ = ("blksize", "filelike")

        def __init__(self, filelike: Any, blksize: int = 8192) -> None:
            self.filelike = filelike
            self.blksize = blksize

        def __iter__(self) -> Any:
            return iter(lambda: self.filelike.read(self.blksize), b"")

    mw = WSGITracingMiddleware(file_app(opener(tmp_path, b"x" * 9)))
    with capture_spans() as exporter:
        result = mw(environ(Slotted), start_response)
        assert type(result) is not Slotted
        body = b"".join(result)
    [span] = exporter.spans()
    assert body == b"x" * 9
    assert span["attributes"]["http.response.body.size"] == 9


def test_a_file_iterated_then_cut_short_by_the_client(tmp_path: Path) -> None:
    """The server's write fails on the third block (a client-gone ``OSError`` on its way up
    as the server closes the wrapper): the failed block is not counted."""
    mw = WSGITracingMiddleware(file_app(opener(tmp_path, b"y" * 10)))
    with capture_spans() as exporter:
        result = mw(environ(FileWrapper), start_response)
        assert type(result) is FileWrapper
        written = 0
        try:
            try:
                for n, block in enumerate(result):
                    if n == 2:
                        raise BrokenPipeError("client went away")
                    written += len(block)
            finally:
                result.close()
        except BrokenPipeError:
            pass
    [span] = exporter.spans()
    assert written == 8
    assert span["attributes"]["http.response.body.size"] == 8
    assert "client.disconnected" in [e["name"] for e in span["events"]]
    assert span["status"] != "error"


def test_a_file_sent_whole_without_iterating_is_counted_from_its_size(tmp_path: Path) -> None:
    """What gunicorn's ``sendfile`` leaves: the position back where it was, no exception."""
    mw = WSGITracingMiddleware(file_app(opener(tmp_path, b"z" * 50, at=10)))
    with capture_spans() as exporter:
        result = mw(environ(FileWrapper), start_response)
        assert type(result) is FileWrapper
        result.close()  # (the bytes went out by sendfile: never through Python)
    [span] = exporter.spans()
    assert span["attributes"]["http.response.body.size"] == 40


def test_a_dataset_named_twice_is_one_dataset(tmp_path: Path) -> None:
    source = LocalSource(tmp_path, datasets=["audit", "traces", "audit"])
    assert source.datasets == ("audit", "traces")


@pytest.mark.parametrize("prefixes", [{"traces": "a", "audit": "a"}, {"traces": "a", "audit": "./a/"}])
def test_a_folder_shared_by_two_datasets_is_listed_under_the_first(
    tmp_path: Path, prefixes: dict[str, str]
) -> None:
    day = tmp_path / "a" / "20260101"
    day.mkdir(parents=True)
    (day / "20260101T000000Z_20260101T000005Z_1.log.gz").write_bytes(b"")
    source = LocalSource(tmp_path, prefixes=prefixes, datasets=["traces", "audit"])
    assert len(source.objects("traces", None)) == 1
    assert source.objects("audit", None) == []


# -- the response's Content-Length caps the count; a file without a descriptor; no body ------
def sized_app(make_file: Any, length: int, status: str = "206 Partial Content") -> Any:
    """Answers ``status`` with ``Content-Length: length`` (as the app gives it) and the file."""

    def app(env: dict[str, Any], start: Any) -> Any:
        start(status, [("Content-Type", "application/octet-stream"), ("content-length", f"{length} ")])
        return env["wsgi.file_wrapper"](make_file(), 4)

    return app


@pytest.mark.parametrize(("length", "expected"), [(10, 10), (0, 0), (80, 40)])
def test_a_file_sent_whole_is_counted_up_to_its_content_length(
    tmp_path: Path, length: int, expected: int
) -> None:
    """gunicorn's ``sendfile`` sends ``Content-Length`` bytes (less if the file has fewer),
    not the rest of the file."""
    mw = WSGITracingMiddleware(sized_app(opener(tmp_path, b"z" * 50, at=10), length))
    with capture_spans() as exporter:
        result = mw(environ(FileWrapper), start_response)
        assert type(result) is FileWrapper
        result.close()
    [span] = exporter.spans()
    assert span["attributes"]["http.response.body.size"] == expected


def test_an_iterated_file_is_counted_up_to_its_content_length(tmp_path: Path) -> None:
    """gunicorn without ``sendfile`` reads the whole file but writes ``Content-Length`` bytes."""
    mw = WSGITracingMiddleware(sized_app(opener(tmp_path, b"q" * 50), 10))
    with capture_spans() as exporter:
        result = mw(environ(FileWrapper), start_response)
        assert type(result) is FileWrapper
        body = b"".join(result)
        result.close()
    [span] = exporter.spans()
    assert len(body) == 50
    assert span["attributes"]["http.response.body.size"] == 10


def test_a_prepared_file_is_counted_as_waitress_prepared_it(tmp_path: Path) -> None:
    """waitress prepares ``min(Content-Length, rest of the file)``: still counted so."""
    mw = WSGITracingMiddleware(sized_app(opener(tmp_path, b"w" * 50), 10))
    with capture_spans() as exporter:
        result = mw(environ(ReadOnlyFileBasedBuffer), start_response)
        assert type(result) is ReadOnlyFileBasedBuffer
        assert result.prepare(10) == 10
        assert result.get(100, skip=True) == b"w" * 10
        result.close()
    [span] = exporter.spans()
    assert span["attributes"]["http.response.body.size"] == 10
    assert "client.disconnected" not in [e["name"] for e in span["events"]]


class NoDescriptor(io.BytesIO):
    """An in-memory file whose ``fileno()`` fails as ``error`` says."""

    def __init__(self, data: bytes, error: BaseException) -> None:
        super().__init__(data)
        self.error = error

    def fileno(self) -> int:
        raise self.error


@pytest.mark.parametrize(
    "make_file",
    [
        lambda data: io.BytesIO(data),
        lambda data: NoDescriptor(data, OSError(9, "Bad file descriptor")),
        lambda data: NoDescriptor(data, ValueError("I/O operation on closed file")),
    ],
    ids=["bytesio", "oserror", "valueerror"],
)
@pytest.mark.parametrize("data", [b"", b"hello"], ids=["empty", "five"])
def test_a_file_without_a_descriptor_is_handed_over_and_counted_without_an_error(
    make_file: Any, data: bytes
) -> None:
    """No server sends it with ``sendfile``: iterated, its position counts it; an empty one is
    0 bytes, not an internal error of its ``fileno()``."""
    mw = WSGITracingMiddleware(file_app(lambda: make_file(data)))
    with swallowed_errors() as swallowed, capture_spans() as exporter:
        result = mw(environ(FileWrapper), start_response)
        assert type(result) is FileWrapper
        body = b"".join(result)
        result.close()
    [span] = exporter.spans()
    assert body == data
    assert swallowed == []
    assert span["attributes"]["http.response.body.size"] == len(data)
    assert "client.disconnected" not in [e["name"] for e in span["events"]]


def test_a_file_without_a_descriptor_in_waitress_s_wrapper() -> None:
    mw = WSGITracingMiddleware(file_app(lambda: io.BytesIO(b"abcdef")))
    with swallowed_errors() as swallowed, capture_spans() as exporter:
        result = mw(environ(ReadOnlyFileBasedBuffer), start_response)
        assert type(result) is ReadOnlyFileBasedBuffer
        assert result.prepare(None) == 6
        assert result.get(100, skip=True) == b"abcdef"
        result.close()
    [span] = exporter.spans()
    assert swallowed == []
    assert span["attributes"]["http.response.body.size"] == 6


@pytest.mark.parametrize(
    ("method", "status"), [("HEAD", "200 OK"), ("GET", "204 No Content"), ("GET", "304 Not Modified")]
)
def test_a_response_without_a_body_ends_as_waitress_prepares_its_file(
    tmp_path: Path, method: str, status: str
) -> None:
    """waitress sends the file even for HEAD (204, 304); a client that reads only the headers
    leaves it unsent: the span ends as waitress prepares it, with no body and no
    ``client.disconnected``, not as the connection closes."""
    env = environ(ReadOnlyFileBasedBuffer)
    env["REQUEST_METHOD"] = method
    mw = WSGITracingMiddleware(sized_app(opener(tmp_path, b"h" * 100), 100, status))
    with swallowed_errors() as swallowed, capture_spans() as exporter:
        result = mw(env, start_response)
        assert type(result) is ReadOnlyFileBasedBuffer
        assert result.prepare(100) == 100
        force_flush(10.0)
        ended = exporter.spans()
        result.get(10, skip=True)
        result.close()  # (the connection closed with 90 bytes left)
        result.close()
    [span] = ended
    assert exporter.spans() == ended
    assert swallowed == []
    assert span["attributes"]["http.response.body.size"] == 0
    assert span["attributes"]["http.response.status_code"] == int(status[:3])
    assert "client.disconnected" not in [e["name"] for e in span["events"]]
    assert span["status"] != "error"


def test_a_response_with_a_body_closed_early_by_waitress_says_the_client_left(tmp_path: Path) -> None:
    mw = WSGITracingMiddleware(sized_app(opener(tmp_path, b"g" * 100), 100, "200 OK"))
    with capture_spans() as exporter:
        result = mw(environ(ReadOnlyFileBasedBuffer), start_response)
        assert result.prepare(100) == 100
        force_flush(10.0)
        assert exporter.spans() == []
        result.get(10, skip=True)
        result.close()
    [span] = exporter.spans()
    assert span["attributes"]["http.response.body.size"] == 10
    assert "client.disconnected" in [e["name"] for e in span["events"]]
