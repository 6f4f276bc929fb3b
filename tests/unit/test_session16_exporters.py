"""Session 16: the payload spool refuses a request larger than its whole cap (nothing kept is
lost for it); the byte cap per request of the HTTP exporters (split, or drop an item too large
on its own); AWSAccessKeyId and presigned URL parameters in the sanitizer (Python and C
paths); container ids of Podman and CRI-O under cgroup v2."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import pitchey_trace as pt
from pitchey_trace import _resource, _stats
from pitchey_trace._json import dumps
from pitchey_trace.exporters import _http
from pitchey_trace.exporters._http import HttpResult, SenderExporter
from pitchey_trace.exporters._spool import PayloadSpool
from pitchey_trace.exporters.http_analytics import HttpAnalyticsExporter
from pitchey_trace.exporters.zipkin import ZipkinExporter
from pitchey_trace.sanitize import Sanitizer


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_http, "_last_warned", {})  # (each test sees its first warning)


# -- 1. the payload spool ------------------------------------------------------------------------


def _ready(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.ready"))


def test_a_request_larger_than_the_whole_spool_is_not_kept_and_nothing_kept_goes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = PayloadSpool(
        tmp_path, tag="zipkin", counter="zipkin", items_counter="zipkin.spans", max_bytes=1000
    )
    assert spool.put(b"a" * 400, 4)
    assert spool.put(b"b" * 400, 4)
    with caplog.at_level(logging.WARNING, logger="pitchey_trace"):
        assert not spool.put(b"c" * 1001, 9)
        assert not spool.put(b"d" * 5000, 9)
    assert len(spool) == 2
    assert spool.bytes == 800
    assert [p.read_bytes()[:1] for p in _ready(tmp_path)] == [b"a", b"b"]
    assert _stats.get("zipkin.spool_oversize") == 2
    assert _stats.get("dropped.spool_cap") == 0  # (what was kept was not pushed out)
    assert _stats.get("zipkin.spool_dropped") == 0
    warnings = [r for r in caplog.records if "larger than the whole spool" in r.getMessage()]
    assert len(warnings) == 1  # at most once a minute
    assert "1001 bytes" in warnings[0].getMessage()
    # A payload of exactly the cap fits (and the older ones make room for it, as before).
    assert spool.put(b"e" * 1000, 1)
    assert [p.read_bytes()[:1] for p in _ready(tmp_path)] == [b"e"]
    spool.close()


def test_an_adopted_file_larger_than_a_smaller_cap_now_goes_too(tmp_path: Path) -> None:
    dead = "999999-deadbeef"
    stamp = "20261130T053700Z_20261130T053700Z_00000000000000aa"
    (tmp_path / f"{dead}.0000000001.zipkin.{stamp}.ready").write_bytes(b"x" * 2000)
    spool = PayloadSpool(
        tmp_path, tag="zipkin", counter="zipkin", items_counter="zipkin.spans", max_bytes=1000
    )
    assert len(spool) == 0
    assert spool.bytes == 0
    assert _ready(tmp_path) == []
    assert _stats.get("zipkin.spool_dropped") == 1
    spool.close()


# -- 2. the byte cap per request -----------------------------------------------------------------


class Recording(SenderExporter):
    """A SenderExporter whose requests are recorded instead of sent."""

    def __init__(self, cap: int | None, *, ok: bool = True) -> None:
        self._sender = _http.HttpSender("http://127.0.0.1:9/x", counter="rec")
        self._max_request_bytes = cap
        self.name = "rec"
        self.sent: list[bytes] = []
        self.ok = ok

    def _deliver(self, payload: bytes, items: int) -> HttpResult | None:
        self.sent.append(payload)
        return HttpResult(self.ok, 200 if self.ok else 500)


def _items(sizes: Sequence[int]) -> list[dict[str, Any]]:
    return [{"i": i, "pad": "x" * n} for i, n in enumerate(sizes)]


def _decoded(exp: Recording) -> list[list[int]]:
    import json

    return [[item["i"] for item in json.loads(p)] for p in exp.sent]


def test_a_batch_under_the_cap_is_one_request_as_before() -> None:
    exp = Recording(10_000)
    assert exp._post_in_chunks(_items([100] * 20), 1000, dumps, "rec.items") is True
    assert _decoded(exp) == [list(range(20))]
    assert _stats.get("rec.items") == 20


def test_a_batch_over_the_cap_goes_as_several_requests_in_order() -> None:
    exp = Recording(2_000)
    items = _items([300] * 9 + [1500] + [100] * 30)
    assert exp._post_in_chunks(items, 1000, dumps, "rec.items") is True
    assert all(len(p) <= 2_000 for p in exp.sent)
    assert len(exp.sent) >= 3
    assert [i for req in _decoded(exp) for i in req] == list(range(len(items)))  # all, in order
    assert _stats.get("rec.items") == len(items)
    assert _stats.get("dropped.request_too_large") == 0


def test_an_item_too_large_alone_is_dropped_counted_and_the_rest_sent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    exp = Recording(1_000)
    items = _items([50, 50, 5000, 50, 3000])
    with caplog.at_level(logging.WARNING, logger="pitchey_trace"):
        result = exp._post_in_chunks(items, 1000, dumps, "rec.items")
        exp._post_in_chunks(_items([4000]), 1000, dumps, "rec.items")
    assert result == 2
    assert isinstance(result, _stats.PartlyRejected)  # (the worker counts the rest as exported)
    assert [i for req in _decoded(exp) for i in req] == [0, 1, 3]
    assert _stats.get("rec.items") == 3
    assert _stats.get("dropped.request_too_large") == 3
    assert _stats.get("dropped.request_too_large.rec") == 3
    assert _stats.get("rec.too_large") == 3
    warnings = [r for r in caplog.records if "max_request_bytes" in r.getMessage()]
    assert len(warnings) == 1


def test_too_large_items_of_a_failed_batch_are_in_its_export_failed_count() -> None:
    exp = Recording(1_000, ok=False)
    assert exp._post_in_chunks(_items([50, 5000]), 1000, dumps, "rec.items") is False
    assert _stats.get("dropped.request_too_large") == 0  # (the worker counts the whole batch)
    assert _stats.get("rec.too_large") == 1


def test_an_encoding_that_is_not_additive_is_halved_until_it_fits() -> None:
    exp = Recording(1_000)

    def padded(chunk: Sequence[Any]) -> bytes:  # 40 bytes more per item in a group than alone
        return dumps(list(chunk)) + b" " * (40 * len(chunk) * (len(chunk) > 1))

    assert exp._post_in_chunks(_items([100] * 12), 1000, padded, "rec.items") is True
    assert all(len(p) <= 1_000 for p in exp.sent)
    assert _stats.get("rec.items") == 12


def test_the_cap_is_an_option_of_the_zipkin_and_analytics_exporters() -> None:
    z = ZipkinExporter("http://127.0.0.1:9/api/v2/spans")
    a = HttpAnalyticsExporter("http://127.0.0.1:9/x")
    assert z.max_request_bytes == a.max_request_bytes == _http.DEFAULT_MAX_REQUEST_BYTES == 4 << 20
    assert ZipkinExporter("http://127.0.0.1:9/a", max_request_bytes=1000).max_request_bytes == 1000
    assert HttpAnalyticsExporter("http://127.0.0.1:9/a", max_request_bytes=1000)._max_request_bytes == 1000
    for bad in (0, -1, 1.5, True, "1", None, (1 << 30) + 1):
        with pytest.raises(pt.ConfigurationError, match="max_request_bytes"):
            ZipkinExporter("http://127.0.0.1:9/a", max_request_bytes=bad)  # type: ignore[arg-type]
        with pytest.raises(pt.ConfigurationError, match="max_request_bytes"):
            HttpAnalyticsExporter("http://127.0.0.1:9/a", max_request_bytes=bad)  # type: ignore[arg-type]


# -- 4. presigned URLs in the sanitizer ----------------------------------------------------------

V2 = (
    "https://pitches.s3.amazonaws.com/decks/q3.pdf?AWSAccessKeyId={kid}&Expires=1700000000"
    "&Signature=vjbyPxybdZaNmGa%2ByT272YEAiv4%3D&x-amz-security-token=IQoJb3JpZ2luX2VjEHgaCXVz"
)
V4 = (
    "https://pitches.s3.us-east-1.amazonaws.com/decks/q3.pdf?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential={kid}%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z"
    "&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Security-Token=FwoGZXIvYXdzEBYaDHqa0AP"
    "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
)
SECRETS = (
    "vjbyPxybdZaNmGa",
    "IQoJb3JpZ2luX2VjEHgaCXVz",
    "FwoGZXIvYXdzEBYaDHqa0AP",
    "aeeed9bbccd4d02ee5c0109b86d86835",
    "aws4_request",
)


@pytest.mark.parametrize("kid", ["AKIAIOSFODNN7EXAMPLE", "ASIAXYZ123", "test-key-id"])
@pytest.mark.parametrize("template", [V2, V4])
def test_presigned_s3_urls_keep_no_secret(template: str, kid: str) -> None:
    url = template.format(kid=kid)
    s = Sanitizer()
    for key in ("url.full", "url.query", "http.response.header.location"):
        for text in (url, url.partition("?")[2]):
            out = s.scrub(text, key)
            assert kid not in out, out
            for secret in SECRETS:
                assert secret not in out, out
    # What is not secret stays readable.
    out = s.scrub(url, "url.full")
    assert "pitches.s3" in out
    assert ("Expires=1700000000" in out) or ("X-Amz-Expires=86400" in out)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("AWSAccessKeyId=ASIAXYZ&Expires=1", "AWSAccessKeyId=[REDACTED]&Expires=1"),
        ("awsaccesskeyid=abc", "awsaccesskeyid=[REDACTED]"),
        ("aws_access_key_id=abc123 region=us-east-1", "aws_access_key_id=[REDACTED] region=us-east-1"),
        ('{"AccessKeyId": "ASIAEXAMPLE"}', '{"AccessKeyId": "[REDACTED]"}'),
        ("access_key_id_count=3", "access_key_id_count=3"),  # (a name not ending in the word)
    ],
)
def test_access_key_id_names_are_secret_names(text: str, expected: str) -> None:
    assert Sanitizer().scrub(text, "message") == expected


def test_presigned_urls_in_span_records_built_by_either_path() -> None:
    """The record builder (C when compiled) hands undecided values to Python and reuses its
    decisions: the same URL twice (cold, then warm cache) is masked both times."""
    from pitchey_trace.testing import capture_spans

    url = V2.format(kid="ASIAXYZ123")
    with capture_spans() as exporter:
        for _ in range(2):
            with pt.span("GET", kind=pt.SpanKind.CLIENT, attributes={"url.full": url}):
                pass
    records = exporter.spans()
    assert len(records) == 2
    for rec in records:
        value = rec["attributes"]["url.full"]
        assert "ASIAXYZ123" not in value
        assert "AWSAccessKeyId=[REDACTED]" in value
        assert "Signature=[REDACTED]" in value


# -- 5. container ids under cgroup v2: Podman and CRI-O ------------------------------------------

CID = "5e5914d9351994648b28b8b58ba3c67ce06a48ccdd3a52679b82ae4dc693fa53"
POD = "1a2de27e7157106568f7e081e42a8c14858c02bd9df30d6e352b298178b46809"
OTHER = "b" * 64


def _mounts(*lines: tuple[str, str, str]) -> str:
    """mountinfo text: one line per (root, mount point, file system type)."""
    return "".join(
        f"{700 + n} 700 0:{24 + n} {root} {point} rw,nosuid,nodev,relatime - {fs} {fs} rw,mode=755\n"
        for n, (root, point, fs) in enumerate(lines)
    )


STORE = f"/containers/storage/overlay-containers/{CID}/userdata"  # rootful: on the /run tmpfs
PODMAN_ROOTFUL = _mounts(
    ("/", "/", "overlay"),
    ("/", "/proc", "proc"),
    ("/", "/sys/fs/cgroup", "cgroup2"),
    (f"{STORE}/.containerenv", "/run/.containerenv", "tmpfs"),
    (f"{STORE}/hostname", "/etc/hostname", "tmpfs"),
    (f"{STORE}/resolv.conf", "/etc/resolv.conf", "tmpfs"),
    (f"{STORE}/hosts", "/etc/hosts", "tmpfs"),
)
# rootless: on the /run/user/<uid> tmpfs
PODMAN_ROOTLESS = _mounts(
    ("/", "/", "overlay"),
    (f"/containers/overlay-containers/{CID}/userdata/hostname", "/etc/hostname", "tmpfs"),
)
PODMAN_ON_DISK = _mounts(
    (
        f"/home/ops/.local/share/containers/storage/overlay-containers/{CID}/userdata/hosts",
        "/etc/hosts",
        "btrfs",
    )
)
PODMAN_VFS = _mounts(
    (f"/var/lib/containers/storage/vfs-containers/{CID}/userdata/hostname", "/etc/hostname", "ext4")
)
# CRI-O in a Kubernetes pod: /etc/hostname and resolv.conf are the pod sandbox's, /etc/hosts the
# kubelet's; the container's own id is in the /run/secrets mount of its userdata.
POD_STORE = f"/containers/storage/overlay-containers/{POD}/userdata"
CRIO_POD_NO_SECRETS = _mounts(
    ("/", "/", "overlay"),
    ("/", "/sys/fs/cgroup", "cgroup2"),
    (f"{POD_STORE}/resolv.conf", "/etc/resolv.conf", "tmpfs"),
    (f"{POD_STORE}/hostname", "/etc/hostname", "tmpfs"),
    ("/var/lib/kubelet/pods/0b1c2d3e-aaaa-bbbb-cccc-123456789abc/etc-hosts", "/etc/hosts", "xfs"),
)
CRIO_POD = CRIO_POD_NO_SECRETS + _mounts((f"{STORE}/run/secrets", "/run/secrets", "tmpfs"))
# CRI-O (or any runtime) sharing the host's cgroup namespace: the cgroup2 mount's root is the
# container's own cgroup.
KUBEPODS = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0b1c.slice"
CRIO_HOST_CGROUPNS = _mounts(
    (f"{KUBEPODS}/crio-{CID}.scope", "/sys/fs/cgroup", "cgroup2"),
    (f"{POD_STORE}/hostname", "/etc/hostname", "tmpfs"),
)


@pytest.mark.parametrize(
    ("cgroup", "mountinfo", "expected"),
    [
        ("0::/\n", PODMAN_ROOTFUL, CID),
        ("0::/\n", PODMAN_ROOTLESS, CID),
        ("0::/\n", PODMAN_ON_DISK, CID),
        ("0::/\n", PODMAN_VFS, CID),
        ("0::/\n", CRIO_POD, CID),
        ("0::/\n", CRIO_POD_NO_SECRETS, POD),  # the pod sandbox's id: the best there is
        ("0::/\n", CRIO_HOST_CGROUPNS, CID),
        (f"0::/machine.slice/libpod-{CID}.scope/container\n", None, CID),
        (f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope\n", None, CID),
    ],
)
def test_podman_and_crio_container_ids(cgroup: str, mountinfo: str | None, expected: str) -> None:
    assert _resource.container_id(cgroup, mountinfo) == expected


@pytest.mark.parametrize(
    "mountinfo",
    [
        # a host: other containers' storage under other mount points, a host cgroup mount
        _mounts(
            ("/", "/", "ext4"),
            ("/", "/sys/fs/cgroup", "cgroup2"),
            (f"/containers/storage/overlay-containers/{OTHER}/userdata/shm", "/mnt/shm", "tmpfs"),
        ),
        # a container id in a root that is not a cgroup file system's
        _mounts((f"/system.slice/docker-{OTHER}.scope", "/sys/fs/cgroup", "tmpfs")),
        # an overlay-containers path without the 64-hex id
        _mounts(("/containers/storage/overlay-containers/abc/userdata/hostname", "/etc/hostname", "tmpfs")),
        "",
    ],
)
def test_no_podman_id_where_there_is_none(mountinfo: str) -> None:
    assert _resource.container_id("0::/\n", mountinfo) is None


def test_the_detector_reads_podman_mountinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    (tmp_path / "cgroup").write_text("0::/\n")
    (tmp_path / "mountinfo").write_text(PODMAN_ROOTLESS)
    monkeypatch.setattr(_resource, "CGROUP_PATH", str(tmp_path / "cgroup"))
    monkeypatch.setattr(_resource, "MOUNTINFO_PATH", str(tmp_path / "mountinfo"))
    monkeypatch.setattr(sys, "platform", "linux")
    assert _resource._container({}) == {"container.id": CID}
