"""Resource detection: where this process runs, read once from its environment and local files.

Added to every record's ``resource`` (OpenTelemetry resource conventions), under what
``OTEL_RESOURCE_ATTRIBUTES`` and ``configure(resource_attributes=...)`` say, which win:

- ``service.instance.id``: a random UUID per process (a forked child gets its own), so
  records of two replicas or two workers of one service can be told apart;
- ``os.type`` and ``process.executable.name``;
- ``container.id``: from ``/proc/self/cgroup`` (cgroup v1) or ``/proc/self/mountinfo`` (v2:
  Docker, containerd, Podman rootful and rootless, CRI-O);
- Kubernetes (``KUBERNETES_SERVICE_HOST`` set): ``k8s.pod.name`` (``K8S_POD_NAME`` /
  ``POD_NAME``, else ``HOSTNAME``), ``k8s.namespace.name`` (``K8S_NAMESPACE_NAME`` /
  ``POD_NAMESPACE``, else the service account's namespace file), ``k8s.node.name``
  (``K8S_NODE_NAME`` / ``NODE_NAME``) and ``k8s.pod.uid`` (``K8S_POD_UID`` / ``POD_UID``);
- AWS Lambda, AWS ECS, Google Cloud Run and Azure App Service: ``cloud.provider``,
  ``cloud.platform`` and, where their variables say, ``cloud.region``, ``faas.name``,
  ``faas.version``, ``faas.instance`` and ``faas.max_memory``.

Nothing here goes to the network (no cloud metadata endpoint is called), so configuring never
waits. ``PITCHEY_TRACE_RESOURCE_DETECTION=false`` turns it off (the SDK's own attributes,
``service.name``, ``process.pid``, ``host.name``... stay); ``configure()`` refuses a value that
is neither true nor false, as for the other ``PITCHEY_TRACE_*`` switches.
"""

from __future__ import annotations

import os
import re
import sys
import uuid
from collections.abc import Mapping
from typing import Any

__all__ = ["detect", "enabled"]

# Read through these so the tests can point them at files of their own.
CGROUP_PATH = "/proc/self/cgroup"
MOUNTINFO_PATH = "/proc/self/mountinfo"
K8S_NAMESPACE_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

# A 64-hex container id ending a cgroup path segment: /docker/<id>, docker-<id>.scope,
# cri-containerd-<id>.scope, crio-<id>.scope, /kubepods/.../<id>; Podman's libpod-<id>.scope,
# also with the "container" sub-cgroup crun puts the container's processes in
# (/machine.slice/libpod-<id>.scope/container).
_CGROUP_ID = re.compile(r"(?:^|[/-])([0-9a-f]{64})(?:\.scope)?(?:/container)?$")
# cgroup v2 has no id in /proc/self/cgroup (a private cgroup namespace shows "0::/"); the
# runtime's bind mounts of the container's own files show it: Docker's
# /var/lib/docker/containers/<id>/hostname, containerd's .../sandboxes/<id>/hosts, and
# containers/storage's (Podman, CRI-O) <driver>-containers/<id>/userdata/hostname:
# /containers/storage/overlay-containers/<id>/userdata/... (rootful, on the /run tmpfs),
# /containers/overlay-containers/<id>/... (rootless, on /run/user/<uid>),
# /var/lib/containers/storage/..., ~/.local/share/containers/storage/... (on disk).
_MOUNT_ID = re.compile(r"/(?:containers|sandboxes|[a-z0-9]{1,16}-containers)/([0-9a-f]{64})/")
# Only those bind mounts: on a host, the runtime's mounts of OTHER containers (their shm,
# volumes) are listed too, under other mount points.
_OWN_MOUNT_POINTS = frozenset({"/etc/hostname", "/etc/hosts", "/etc/resolv.conf"})
# Files that are the container's own, where /etc/hostname, hosts and resolv.conf can be its pod's
# (CRI-O and containerd mount the pod sandbox's): Podman's /run/.containerenv, and the
# /run/secrets CRI-O and Podman mount from the container's own userdata directory.
_OWN_CONTAINER_FILES = frozenset({"/run/.containerenv", "/run/secrets"})
_MAX_FILE = 1 << 20  # (procfs files are small; never read an unbounded one)

# Values taken from the environment or a file: control characters removed, at most this long
# (Kubernetes names are at most 253 characters; a runaway variable must not bloat every record).
_MAX_VALUE = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

_OS_TYPES = {"linux": "linux", "darwin": "darwin", "win32": "windows", "cygwin": "windows"}

_cache: tuple[int, dict[str, Any]] | None = None


def enabled(environ: Mapping[str, str] = os.environ) -> bool:
    """False when ``PITCHEY_TRACE_RESOURCE_DETECTION`` says off (false, 0, no, off, any case).
    Never raises: ``configure()`` refuses a value that is neither on nor off before a resource
    is built, so one seen here (set later) keeps the default, on."""
    value = environ.get("PITCHEY_TRACE_RESOURCE_DETECTION", "").strip().lower()
    return value not in ("false", "0", "no", "off")


def detect() -> dict[str, Any]:
    """The detected attributes of this process (computed once per process; a copy)."""
    global _cache
    pid = os.getpid()
    if _cache is None or _cache[0] != pid:
        _cache = (pid, _detect(os.environ))
    return dict(_cache[1])


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(_MAX_FILE)
    except OSError:
        return None


def container_id(cgroup: str | None, mountinfo: str | None) -> str | None:
    """The container id in the contents of ``/proc/self/cgroup`` or ``/proc/self/mountinfo``.

    In ``mountinfo``, best first: the root of the cgroup file system mounted on
    ``/sys/fs/cgroup`` (the container's own cgroup, when the runtime shares the host's cgroup
    namespace: ``.../crio-<id>.scope``, ``.../libpod-<id>.scope/container``), then the
    runtime's bind mount of a file of the container's own (``/run/.containerenv``,
    ``/run/secrets``), then of ``/etc/hostname``, ``hosts`` or ``resolv.conf`` (in a
    Kubernetes pod under CRI-O or containerd, those are the pod sandbox's: its id)."""
    for line in (cgroup or "").splitlines():
        path = line.split(":", 2)[-1].strip()
        found = _CGROUP_ID.search(path)
        if found:
            return found.group(1)
    own: str | None = None
    shared: str | None = None
    for line in (mountinfo or "").splitlines():
        # mount id, parent id, major:minor, root (field 4), mount point (field 5), options,
        # optional fields, "-", file system type, ...
        fields = line.split()
        if len(fields) < 5:
            continue
        root, point = fields[3], fields[4]
        if point == "/sys/fs/cgroup" or point.startswith("/sys/fs/cgroup/"):
            if _is_cgroup_mount(fields):
                found = _CGROUP_ID.search(root)
                if found:
                    return found.group(1)
        elif point in _OWN_CONTAINER_FILES:
            if own is None:
                found = _MOUNT_ID.search(root)
                if found:
                    own = found.group(1)
        elif point in _OWN_MOUNT_POINTS and shared is None:
            found = _MOUNT_ID.search(root)
            if found:
                shared = found.group(1)
    return own or shared


def _is_cgroup_mount(fields: list[str]) -> bool:
    """Whether a split mountinfo line is a cgroup (v1 or v2) file system's."""
    try:
        dash = fields.index("-", 6)  # (after the optional fields, which start at 6)
    except ValueError:
        return False
    return dash + 1 < len(fields) and fields[dash + 1] in ("cgroup2", "cgroup")


def _clean(value: str | None) -> str | None:
    """A detected text value: control characters removed, trimmed, bounded; None when empty."""
    if not value:
        return None
    value = _CONTROL.sub("", value).strip()[:_MAX_VALUE].strip()
    return value or None


def _first(environ: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = _clean(environ.get(name))
        if value:
            return value
    return None


def _kubernetes(environ: Mapping[str, str]) -> dict[str, Any]:
    if not environ.get("KUBERNETES_SERVICE_HOST"):
        return {}
    attrs: dict[str, Any] = {}
    pod = _first(environ, "K8S_POD_NAME", "POD_NAME", "HOSTNAME")
    namespace = _first(environ, "K8S_NAMESPACE_NAME", "POD_NAMESPACE")
    if namespace is None:
        namespace = _clean(_read(K8S_NAMESPACE_PATH))
    for key, value in (
        ("k8s.pod.name", pod),
        ("k8s.namespace.name", namespace),
        ("k8s.node.name", _first(environ, "K8S_NODE_NAME", "NODE_NAME")),
        ("k8s.pod.uid", _first(environ, "K8S_POD_UID", "POD_UID")),
    ):
        if value:
            attrs[key] = value
    return attrs


def _cloud(environ: Mapping[str, str]) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    if _first(environ, "AWS_LAMBDA_FUNCTION_NAME"):
        attrs = {"cloud.provider": "aws", "cloud.platform": "aws_lambda"}
        attrs["faas.name"] = _first(environ, "AWS_LAMBDA_FUNCTION_NAME")
        optional = {
            "faas.version": "AWS_LAMBDA_FUNCTION_VERSION",
            "faas.instance": "AWS_LAMBDA_LOG_STREAM_NAME",
            "cloud.region": "AWS_REGION",
        }
        memory = environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "").strip()
        # (ASCII digits: "²".isdigit() is true but int() refuses it; Lambda allows at most 10 GB)
        if memory.isascii() and memory.isdigit() and len(memory) <= 6:
            attrs["faas.max_memory"] = int(memory) * 1024 * 1024  # (MB -> bytes, as the convention says)
    elif environ.get("ECS_CONTAINER_METADATA_URI_V4") or environ.get("ECS_CONTAINER_METADATA_URI"):
        attrs = {"cloud.provider": "aws", "cloud.platform": "aws_ecs"}
        optional = {"cloud.region": "AWS_REGION"}
    elif _first(environ, "K_SERVICE") and _first(environ, "K_REVISION"):
        attrs = {"cloud.provider": "gcp", "cloud.platform": "gcp_cloud_run"}
        attrs["faas.name"] = _first(environ, "K_SERVICE")
        optional = {"faas.version": "K_REVISION"}
    elif _first(environ, "WEBSITE_SITE_NAME"):
        attrs = {"cloud.provider": "azure", "cloud.platform": "azure_app_service"}
        optional = {"cloud.region": "REGION_NAME", "faas.instance": "WEBSITE_INSTANCE_ID"}
    else:
        return {}
    for key, name in optional.items():
        value = _first(environ, name)
        if value:
            attrs[key] = value
    return attrs


def _detect(environ: Mapping[str, str]) -> dict[str, Any]:
    attrs: dict[str, Any] = {"service.instance.id": str(uuid.uuid4())}
    os_type = _OS_TYPES.get(sys.platform) or ("freebsd" if sys.platform.startswith("freebsd") else None)
    if os_type:
        attrs["os.type"] = os_type
    if sys.executable:
        attrs["process.executable.name"] = os.path.basename(sys.executable)
    # Each detector on its own: one that fails is reported, the others' attributes stay.
    for detector in (_container, _kubernetes, _cloud):
        try:
            attrs.update(detector(environ))
        except Exception as exc:
            from pitchey_trace import _safety

            _safety.report("resource.detect", exc)
    return attrs


def _container(_environ: Mapping[str, str]) -> dict[str, Any]:
    if sys.platform != "linux":
        return {}
    found = container_id(_read(CGROUP_PATH), None)
    if found is None:
        found = container_id(None, _read(MOUNTINFO_PATH))
    return {"container.id": found} if found else {}
