"""Resource detection (pitchey_trace._resource): container ids from procfs contents, Kubernetes
and cloud platforms from the environment, one instance id per process, and how it merges
into every record's resource."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pitchey_trace import _resource
from pitchey_trace.records import make_resource

ID = "3f4b2c1d" * 8  # 64 hex


@pytest.mark.parametrize(
    "cgroup",
    [
        f"12:pids:/docker/{ID}\n11:memory:/docker/{ID}\n",
        f"1:name=systemd:/system.slice/docker-{ID}.scope\n",
        f"8:cpuset:/kubepods/besteffort/pod0b1c2d3e-aaaa-bbbb-cccc-123456789abc/{ID}\n",
        f"4:memory:/kubepods.slice/kubepods-pod1.slice/cri-containerd-{ID}.scope\n",
        f"0::/system.slice/crio-{ID}.scope\n",
    ],
)
def test_container_id_from_cgroup_v1_and_systemd_paths(cgroup: str) -> None:
    assert _resource.container_id(cgroup, None) == ID


def test_container_id_from_cgroup_v2_mountinfo() -> None:
    mountinfo = (
        "634 612 0:62 / / rw,relatime master:300 - overlay overlay rw\n"
        f"651 634 254:1 /var/lib/docker/containers/{ID}/hostname /etc/hostname"
        " rw,relatime - ext4 /dev/vda1 rw\n"
    )
    assert _resource.container_id("0::/\n", mountinfo) == ID
    sandbox = f"12 1 0:1 /var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/{ID}/hosts /etc/hosts rw - x"
    assert _resource.container_id(None, sandbox) == ID
    resolv = f"13 1 0:1 /var/lib/docker/containers/{ID}/resolv.conf /etc/resolv.conf rw - x"
    assert _resource.container_id(None, HOST_MOUNTINFO + resolv) == ID  # (the other lines skipped)


OTHER = "b" * 64
# A plain host process sees other containers' runtime mounts (their shm, or a volume under the
# runtime's directory): only the container's own /etc/hostname, hosts, resolv.conf mounts count.
HOST_MOUNTINFO = (
    "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
    f"1250 22 0:95 / /var/lib/docker/containers/{OTHER}/mounts/shm rw,nosuid shared:600 - tmpfs shm rw\n"
    f"1251 22 8:1 /var/lib/docker/containers/{OTHER}/hostname /mnt/copy rw - ext4 /dev/sda1 rw\n"
)


@pytest.mark.parametrize(
    ("cgroup", "mountinfo"),
    [
        ("0::/\n", "25 1 0:23 / / rw - ext4 /dev/root rw\n"),
        ("0::/user.slice/user-1000.slice/session-1.scope\n", HOST_MOUNTINFO),
        ("4:memory:/process_api/6971df9a81bc3f7f0a20d0455f8ea188\n", None),  # 32 hex: not an id
        (f"1:cpu:/docker/{ID}xyz\n", None),
        (None, None),
        ("", ""),
    ],
)
def test_no_container_id_where_there_is_none(cgroup: str | None, mountinfo: str | None) -> None:
    assert _resource.container_id(cgroup, mountinfo) is None


def test_kubernetes_from_the_downward_api_and_the_service_account(tmp_path: Path, monkeypatch: Any) -> None:
    namespace = tmp_path / "namespace"
    namespace.write_text("pitches-prod\n")
    monkeypatch.setattr(_resource, "K8S_NAMESPACE_PATH", str(namespace))
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "HOSTNAME": "api-7d9f-xk2", "NODE_NAME": "node-3"}
    attrs = _resource._detect(env)
    assert attrs["k8s.pod.name"] == "api-7d9f-xk2"
    assert attrs["k8s.namespace.name"] == "pitches-prod"
    assert attrs["k8s.node.name"] == "node-3"
    assert "k8s.pod.uid" not in attrs
    # explicit downward-API variables win over HOSTNAME and the file
    env |= {"K8S_POD_NAME": "api-0", "POD_NAMESPACE": "staging", "POD_UID": "0b1c"}
    attrs = _resource._detect(env)
    assert (attrs["k8s.pod.name"], attrs["k8s.namespace.name"], attrs["k8s.pod.uid"]) == (
        "api-0",
        "staging",
        "0b1c",
    )
    # not in Kubernetes: nothing, even with a HOSTNAME
    assert not any(k.startswith("k8s.") for k in _resource._detect({"HOSTNAME": "api-0"}))


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {
                "AWS_LAMBDA_FUNCTION_NAME": "render-pitch",
                "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512",
                "AWS_LAMBDA_LOG_STREAM_NAME": "2026/12/01/[$LATEST]abc",
                "AWS_REGION": "eu-west-1",
            },
            {
                "cloud.provider": "aws",
                "cloud.platform": "aws_lambda",
                "faas.name": "render-pitch",
                "faas.version": "$LATEST",
                "faas.instance": "2026/12/01/[$LATEST]abc",
                "faas.max_memory": 512 * 1024 * 1024,
                "cloud.region": "eu-west-1",
            },
        ),
        (
            {"ECS_CONTAINER_METADATA_URI_V4": "http://169.254.170.2/v4/x", "AWS_REGION": "us-east-2"},
            {"cloud.provider": "aws", "cloud.platform": "aws_ecs", "cloud.region": "us-east-2"},
        ),
        (
            {"K_SERVICE": "pitch-api", "K_REVISION": "pitch-api-00042-abc", "K_CONFIGURATION": "pitch-api"},
            {
                "cloud.provider": "gcp",
                "cloud.platform": "gcp_cloud_run",
                "faas.name": "pitch-api",
                "faas.version": "pitch-api-00042-abc",
            },
        ),
        (
            {"WEBSITE_SITE_NAME": "pitch-web", "REGION_NAME": "West Europe"},
            {"cloud.provider": "azure", "cloud.platform": "azure_app_service", "cloud.region": "West Europe"},
        ),
        ({"AWS_REGION": "eu-west-1"}, {}),  # a region alone says nothing about the platform
        ({"K_SERVICE": "x"}, {}),
    ],
)
def test_cloud_platforms_from_their_variables(env: dict[str, str], expected: dict[str, Any]) -> None:
    attrs = _resource._detect(env)
    assert {k: v for k, v in attrs.items() if k.startswith(("cloud.", "faas."))} == expected


def test_every_process_has_its_own_instance_id_and_a_forked_child_a_new_one() -> None:
    first = _resource.detect()
    assert first["service.instance.id"] == _resource.detect()["service.instance.id"]  # once per process
    assert first["os.type"] == "linux"
    assert first["process.executable.name"] == os.path.basename(sys.executable)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, _resource.detect()["service.instance.id"].encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 100).decode()
    os.close(read)
    assert len(child) == 36
    assert child != first["service.instance.id"]


def test_the_users_attributes_win_and_detection_can_be_turned_off(monkeypatch: Any) -> None:
    res = make_resource("svc", "prod", {"service.instance.id": "api-0", "os.type": "custom"})
    assert res["service.instance.id"] == "api-0"
    assert res["os.type"] == "custom"
    assert res["service.name"] == "svc"
    for off in ("false", "0", "OFF", " no "):
        monkeypatch.setenv("PITCHEY_TRACE_RESOURCE_DETECTION", off)
        res = make_resource("svc", "prod")
        assert "service.instance.id" not in res
        assert res["process.pid"] == os.getpid()
    monkeypatch.setenv("PITCHEY_TRACE_RESOURCE_DETECTION", "true")
    assert "service.instance.id" in make_resource("svc", "prod")


def test_a_failing_detector_never_stops_tracing(monkeypatch: Any) -> None:
    from pitchey_trace import _stats
    from pitchey_trace.testing import swallowed_errors

    def broken() -> dict[str, Any]:
        raise RuntimeError("procfs went away")

    monkeypatch.setattr(_resource, "detect", broken)
    with swallowed_errors() as errors:
        res = make_resource("svc", "prod")
    assert res["service.name"] == "svc"
    assert [kind for kind, _ in errors] == ["resource.detect"]
    assert _stats.get("internal_errors.resource.detect") >= 1


PROGRAM = """
import pitchey_trace as pt
pt.configure(service="pitch-api", exporters=[pt.ConsoleExporter()])
with pt.span("job"):
    pass
pt.shutdown()
"""


def test_records_of_a_pod_carry_where_it_runs(tmp_path: Path) -> None:
    def run(**env: str) -> dict[str, Any]:
        environ = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PITCHEY_TRACE_", "OTEL_", "K8S_", "POD_"))
        }
        environ |= {
            "KUBERNETES_SERVICE_HOST": "10.0.0.1",
            "HOSTNAME": "api-7d9f-xk2",
            "POD_NAMESPACE": "pitches",
            **env,
        }
        out = subprocess.run(
            [sys.executable, "-c", PROGRAM],
            capture_output=True,
            text=True,
            timeout=60,
            env=environ,
            check=True,
        ).stdout
        records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        (record,) = [r for r in records if r["type"] == "span"]
        assert record["name"] == "job"
        return dict(record["resource"])

    first, second = run(), run(OTEL_RESOURCE_ATTRIBUTES="k8s.pod.name=from-operator")
    assert first["k8s.pod.name"] == "api-7d9f-xk2"
    assert first["k8s.namespace.name"] == "pitches"
    assert first["service.name"] == "pitch-api"
    assert second["k8s.pod.name"] == "from-operator"  # OTEL_RESOURCE_ATTRIBUTES wins
    assert first["service.instance.id"] != second["service.instance.id"]
    off = run(PITCHEY_TRACE_RESOURCE_DETECTION="off")
    assert "k8s.pod.name" not in off
    assert "service.instance.id" not in off
