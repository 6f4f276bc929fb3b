"""Logpush (S3 / R2) configuration file, S3 client construction, and the retention
``setup`` / ``verify`` operations behind ``pitchey-trace logpush setup|verify``.

The file is TOML (read with :mod:`tomllib` on Python 3.11+, ``tomli`` on 3.10 when installed)
or JSON (a ``.json`` file name), same keys either way::

    endpoint_url = "https://<account>.r2.cloudflarestorage.com"  # omit for AWS S3
    region = "auto"                     # R2: "auto"; S3: the bucket's region
    bucket = "pitchey-logs"             # default bucket of every dataset
    # profile = "logs"                  # optional boto3 profile; credentials: boto3's chain
    # spool_dir = "/var/spool/pitchey-trace"   # LogpushExporter.from_config only

    [datasets.traces]
    prefix = "traces"
    retention_days = 30
    [datasets.audit]
    prefix = "audit"
    retention_days = 90
    # bucket = "pitchey-audit"          # a dataset may have its own bucket
    [datasets.performance]
    prefix = "performance"
    retention_days = 14
    [datasets.logs]                     # the application's logs, when shipped (export_logs)
    prefix = "logs"
    retention_days = 30

    [batch]                             # optional, LogpushExporter.from_config only
    max_bytes = 5000000
    max_records = 100000
    max_interval_s = 30

Without a ``[datasets]`` table the four standard datasets are used with the prefixes and
retention shown. A dataset's ``retention_days`` may be omitted (or 0) for "keep forever".
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pitchey_trace.exceptions import ConfigurationError, IntegrationUnavailable

__all__ = [
    "DEFAULT_RETENTION_DAYS",
    "Check",
    "DatasetConfig",
    "LogpushConfig",
    "checked_bucket",
    "checked_prefix",
    "load_config",
    "make_s3_client",
    "rule_id",
    "setup",
    "verify",
]

DEFAULT_RETENTION_DAYS = {"traces": 30, "audit": 90, "performance": 14, "logs": 30}
_RULE_PREFIX = "pitchey-trace-"
_TOP_KEYS = {
    "endpoint_url",
    "region",
    "bucket",
    "profile",
    "spool_dir",
    "addressing_style",
    "datasets",
    "batch",
}
_DATASET_KEYS = {"prefix", "retention_days", "bucket"}
_BATCH_KEYS = {"max_bytes", "max_records", "max_interval_s"}


def checked_prefix(label: str, prefix: str) -> str:
    """An object key prefix without its outer ``/``; ``ConfigurationError`` for a prefix whose
    keys would leave their folder (``..``/``.`` segments: a local archive outside its
    directory), that has empty segments (``a//b``) or a backslash or control character."""
    stripped = prefix.strip("/")
    if stripped and (
        any(seg in ("", ".", "..") for seg in stripped.split("/"))
        or any(c == "\\" or ord(c) < 0x20 or ord(c) == 0x7F for c in stripped)
    ):
        raise ConfigurationError(
            f"{label} {prefix!r} is not a usable key prefix (no '.', '..' or empty segments, "
            "backslashes or control characters)"
        )
    return stripped


# botocore's own check (``validate_bucket_name``): any other name fails every request with
# ParamValidationError before it is sent, so the exporter would retry it forever.
_BUCKET_OK = re.compile(r"[a-zA-Z0-9.\-_]{1,255}|arn:.+")


def checked_bucket(label: str, bucket: str) -> str:
    """``bucket`` if botocore can send requests for it, else ``ConfigurationError``."""
    if not _BUCKET_OK.fullmatch(bucket) or any(ord(c) < 0x20 or ord(c) == 0x7F for c in bucket):
        raise ConfigurationError(
            f"{label} {bucket!r} is not a valid bucket name (letters, digits, '.', '-', '_', "
            "at most 255; or an access point ARN)"
        )
    return bucket


def _check_overlaps(datasets: Mapping[str, DatasetConfig]) -> None:
    """A lifecycle rule expires every key under its prefix: one dataset's rule must never
    reach the objects of another dataset of the same bucket with another retention."""
    for d in datasets.values():
        if not d.retention_days:
            continue
        mine = f"{d.prefix}/" if d.prefix else ""
        for other in datasets.values():
            if other is d or other.bucket != d.bucket or other.retention_days == d.retention_days:
                continue
            theirs = f"{other.prefix}/" if other.prefix else ""
            if theirs.startswith(mine):
                where = f"prefix {d.prefix!r}" if d.prefix else "an empty prefix (the whole bucket)"
                raise ConfigurationError(
                    f"datasets.{d.name} ({where}, {d.retention_days} days) would expire the objects "
                    f"of datasets.{other.name} (prefix {other.prefix!r}) in bucket {d.bucket!r}: "
                    "give them prefixes that do not contain one another, or the same retention_days"
                )


@dataclass(frozen=True)
class DatasetConfig:
    """One dataset's destination and retention."""

    name: str
    bucket: str
    prefix: str
    retention_days: int | None


@dataclass(frozen=True)
class LogpushConfig:
    """A parsed logpush configuration (see the module docstring for the file format)."""

    datasets: dict[str, DatasetConfig]
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    addressing_style: str | None = None
    spool_dir: str | None = None
    batch: dict[str, Any] = field(default_factory=dict)

    @property
    def buckets(self) -> list[str]:
        """Every bucket used, sorted."""
        return sorted({d.bucket for d in self.datasets.values()})

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> LogpushConfig:
        """Validate and build from parsed TOML/JSON. Raises ConfigurationError."""
        if not isinstance(data, Mapping):
            raise ConfigurationError("logpush config must be a table/object")
        unknown = set(data) - _TOP_KEYS
        if unknown:
            raise ConfigurationError(f"unknown logpush config key(s): {', '.join(sorted(unknown))}")
        default_bucket = _opt_str(data, "bucket")
        raw = data.get("datasets")
        if raw is None:
            raw = {name: {} for name in DEFAULT_RETENTION_DAYS}
        if not isinstance(raw, Mapping) or not raw:
            raise ConfigurationError("datasets must be a non-empty table of dataset tables")
        datasets: dict[str, DatasetConfig] = {}
        for name, spec in raw.items():
            if not isinstance(spec, Mapping):
                raise ConfigurationError(f"datasets.{name} must be a table")
            bad = set(spec) - _DATASET_KEYS
            if bad:
                raise ConfigurationError(f"unknown key(s) in datasets.{name}: {', '.join(sorted(bad))}")
            own_bucket = _opt_str(spec, "bucket", f"datasets.{name}.")
            bucket = own_bucket or default_bucket
            if not bucket:
                raise ConfigurationError(
                    f"dataset {name!r} has no bucket (set bucket or datasets.{name}.bucket)"
                )
            checked_bucket(f"datasets.{name}.bucket" if own_bucket else "bucket", bucket)
            prefix = _opt_str(spec, "prefix", f"datasets.{name}.")
            prefix = checked_prefix(f"datasets.{name}.prefix", name if prefix is None else prefix)
            days = spec.get("retention_days", DEFAULT_RETENTION_DAYS.get(name))
            if days is not None and (isinstance(days, bool) or not isinstance(days, int) or days < 0):
                raise ConfigurationError(f"datasets.{name}.retention_days must be an int >= 0")
            datasets[name] = DatasetConfig(name, bucket, prefix, days or None)
        _check_overlaps(datasets)
        batch = data.get("batch") or {}
        if not isinstance(batch, Mapping) or set(batch) - _BATCH_KEYS:
            raise ConfigurationError(f"batch accepts only {', '.join(sorted(_BATCH_KEYS))}")
        _check_batch(batch)
        style = _opt_str(data, "addressing_style")
        if style not in (None, "path", "virtual", "auto"):
            raise ConfigurationError("addressing_style must be path, virtual or auto")
        endpoint_url = _opt_str(data, "endpoint_url")
        if endpoint_url is not None:
            _check_endpoint_url(endpoint_url)
        return cls(
            datasets=datasets,
            endpoint_url=endpoint_url,
            region=_opt_str(data, "region"),
            profile=_opt_str(data, "profile"),
            addressing_style=style,
            spool_dir=_opt_str(data, "spool_dir"),
            batch=dict(batch),
        )


def _check_batch(batch: Mapping[str, Any]) -> None:
    """The ``[batch]`` values LogpushExporter accepts: a file that ``logpush setup`` and
    ``verify`` pass must not be refused later by ``LogpushExporter.from_config``."""
    from pitchey_trace._validate import finite, positive_int

    for key in ("max_bytes", "max_records"):
        if key in batch:
            positive_int(f"batch.{key}", batch[key], 1 << 50)
    if "max_interval_s" in batch and not finite(
        "batch.max_interval_s", batch["max_interval_s"], 0.0, 86_400.0
    ):
        raise ConfigurationError("batch.max_interval_s must be > 0")


def _check_endpoint_url(url: str) -> None:
    """``http(s)://host[:port]``: botocore takes anything at first, then fails every request
    (``localhost:9000`` has no scheme; ``ftp://`` answered "bucket missing")."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:  # a port that is not a number, or out of range
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise ConfigurationError(f"endpoint_url must be http(s)://host[:port], got {url!r}")


def _opt_str(data: Mapping[str, Any], key: str, where: str = "") -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigurationError(f"{where}{key} must be a string")
    return value


def load_config(path: str | os.PathLike[str]) -> LogpushConfig:
    """Read a TOML (or ``.json``) logpush config file. Raises ConfigurationError."""
    p = Path(path)
    try:
        text = p.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read {p}: {exc}") from exc
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigurationError(f"{p}: invalid JSON: {exc}") from exc
    else:
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - Python 3.10
            try:
                import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]
            except ImportError:
                raise ConfigurationError(
                    f"{p}: reading TOML on Python 3.10 needs 'tomli'; or use a .json config"
                ) from None
        try:
            data = tomllib.loads(text.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"{p}: invalid TOML: {exc}") from exc
    return LogpushConfig.from_mapping(data)


def make_s3_client(
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    profile: str | None = None,
    addressing_style: str | None = None,
    connect_timeout_s: float = 5.0,
    read_timeout_s: float = 30.0,
    max_attempts: int = 1,
    max_pool_connections: int = 10,
) -> Any:
    """A boto3 S3 client that works with AWS S3, Cloudflare R2 and S3-compatible servers.

    Credentials come from boto3's usual chain (environment, shared files, profile, instance
    role). With a custom ``endpoint_url`` path-style addressing is the default; checksums are
    only computed when an operation requires them (what R2 and most S3-compatible servers
    accept). ``max_attempts=1`` leaves retrying to the caller. ``max_pool_connections``:
    botocore's connections kept per host (10 by default; the archive reader asks for as many
    as its concurrent downloads).
    """
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise IntegrationUnavailable("LogpushExporter", "s3") from None
    style = addressing_style or ("path" if endpoint_url else "auto")
    kwargs: dict[str, Any] = {
        "connect_timeout": connect_timeout_s,
        "read_timeout": read_timeout_s,
        # total_max_attempts counts the first request (botocore's max_attempts counts retries
        # only: max_attempts=1 made two requests, the second after botocore's own sleep)
        "retries": {"total_max_attempts": max_attempts, "mode": "standard"},
        "s3": {"addressing_style": style},
        "max_pool_connections": max_pool_connections,
    }
    try:
        cfg = Config(
            **kwargs,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
    except TypeError:  # pragma: no cover - botocore < 1.36 has neither option
        cfg = Config(**kwargs)
    from botocore.exceptions import BotoCoreError

    try:
        session = boto3.session.Session(profile_name=profile) if profile else boto3.session.Session()
        return session.client("s3", endpoint_url=endpoint_url, region_name=region, config=cfg)
    except BotoCoreError as exc:  # ProfileNotFound, a malformed shared config file...
        raise ConfigurationError(f"cannot make the S3 client: {exc}") from None


def client_for(config: LogpushConfig, max_attempts: int = 3, max_pool_connections: int = 10) -> Any:
    """The S3 client described by ``config``."""
    return make_s3_client(
        endpoint_url=config.endpoint_url,
        region=config.region,
        profile=config.profile,
        addressing_style=config.addressing_style,
        max_attempts=max_attempts,
        max_pool_connections=max_pool_connections,
    )


# -- setup / verify --------------------------------------------------------------------------------
@dataclass
class Check:
    """One row of the setup/verify report."""

    check: str
    target: str
    ok: bool
    detail: str


def rule_id(dataset: str) -> str:
    """The lifecycle rule id pitchey-trace manages for a dataset."""
    return f"{_RULE_PREFIX}{dataset}"


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", type(exc).__name__))


# Answers that no request of this run can succeed after: a wrong endpoint or credentials.
_REFUSED_CREDENTIALS = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "InvalidClientTokenId"}
)


def _raise_if_fatal(exc: Exception, config: LogpushConfig) -> None:
    """``ConfigurationError`` (one line, exit 2) for an error every other check would repeat:
    no credentials, credentials the store refuses, or an endpoint that cannot be reached.
    Anything else is one failed check of the report."""
    try:
        from botocore.exceptions import (
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
        )
    except ImportError:  # pragma: no cover - a client exists, so botocore does
        return
    where = config.endpoint_url or f"AWS S3 ({config.region or 'default region'})"
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        raise ConfigurationError(
            f"no usable S3 credentials ({exc}): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(R2: an API token's access key pair) or a profile"
        ) from None
    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError)):
        raise ConfigurationError(f"cannot connect to {where}: {exc}") from None
    code = _error_code(exc)
    if code in _REFUSED_CREDENTIALS:
        raise ConfigurationError(
            f"{where} refused the credentials ({code}): check AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY or the profile"
        ) from None


def _bucket_exists(client: Any, bucket: str) -> bool:
    try:
        client.head_bucket(Bucket=bucket)
        return True
    except Exception as exc:
        code = _error_code(exc)
        if code in ("404", "NoSuchBucket", "NotFound"):
            return False
        if code != "403":
            raise
    # HEAD answers have no body: a 403 does not say whether the key is unknown
    # (InvalidAccessKeyId) or lacks a permission (AccessDenied). A listing says which.
    client.list_objects_v2(Bucket=bucket, MaxKeys=1)
    return True


def _get_rules(client: Any, bucket: str) -> list[dict[str, Any]]:
    try:
        resp = client.get_bucket_lifecycle_configuration(Bucket=bucket)
    except Exception as exc:
        if _error_code(exc) in ("NoSuchLifecycleConfiguration", "404"):
            return []
        raise
    return list(resp.get("Rules", []))


def _rule_prefix(rule: Mapping[str, Any]) -> str | None:
    filt = rule.get("Filter")
    if isinstance(filt, Mapping):
        if "Prefix" in filt:
            return str(filt["Prefix"])
        if filt.get("And") is None and not filt:
            return ""
        return None  # tag/size filters: not a plain prefix rule
    prefix = rule.get("Prefix")
    return str(prefix) if prefix is not None else ""


def _rule_days(rule: Mapping[str, Any]) -> int | None:
    days = (rule.get("Expiration") or {}).get("Days")
    return int(days) if days is not None else None


def _noncurrent(rule: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """The rule's ``NoncurrentVersionExpiration`` as (NoncurrentDays, NewerNoncurrentVersions)."""
    nve = rule.get("NoncurrentVersionExpiration") or {}
    days, newer = nve.get("NoncurrentDays"), nve.get("NewerNoncurrentVersions")
    return (int(days) if days is not None else None, int(newer) if newer is not None else None)


# Versioning states in which an Expiration only adds a delete marker and keeps the data as a
# noncurrent version: "Suspended" still holds every version written while it was "Enabled".
_VERSIONED = ("Enabled", "Suspended")
# A store without versioning answers GetBucketVersioning so (R2 does not implement it and
# answers such operations with 501 NotImplemented): no noncurrent versions can exist there.
_NO_VERSIONING_API = frozenset({"NotImplemented", "501"})
# Archive keys are unique, so a noncurrent version is an expired (or deleted) archive: delete it
# one day (the minimum) after it became noncurrent, keeping retention_days + 1 at most.
_NONCURRENT_DAYS = 1


def _versioning(client: Any, bucket: str) -> str | None:
    """``"Enabled"`` or ``"Suspended"`` when the bucket may hold noncurrent versions, else None
    (versioning never enabled, or a store without versioning such as R2)."""
    try:
        resp = client.get_bucket_versioning(Bucket=bucket)
    except Exception as exc:
        if _error_code(exc) in _NO_VERSIONING_API:
            return None
        raise
    status = resp.get("Status")
    return str(status) if status in _VERSIONED else None


def _desired_rule(ds: DatasetConfig, versioning: str | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {
        "ID": rule_id(ds.name),
        "Filter": {"Prefix": f"{ds.prefix}/" if ds.prefix else ""},
        "Status": "Enabled",
        "Expiration": {"Days": ds.retention_days},
    }
    if versioning in _VERSIONED:
        # Expiration only hides the current version behind a delete marker; this deletes the
        # data itself. (The marker left behind is removed by Expiration once it is Days old:
        # ExpiredObjectDeleteMarker may not be combined with Days in one rule.)
        rule["NoncurrentVersionExpiration"] = {"NoncurrentDays": _NONCURRENT_DAYS}
    return rule


def _same_rule(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return (
        a.get("ID") == b.get("ID")
        and _rule_prefix(a) == _rule_prefix(b)
        and a.get("Status") == b.get("Status")
        and _rule_days(a) == _rule_days(b)
        and _noncurrent(a) == _noncurrent(b)
    )


def _create_bucket(client: Any, bucket: str, region: str | None) -> None:
    if region and region not in ("us-east-1", "auto"):
        client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
    else:
        client.create_bucket(Bucket=bucket)


class _StepError(Exception):
    """A failed step of setup whose message is the whole detail of its row."""


def setup(config: LogpushConfig, client: Any) -> list[Check]:
    """Create missing buckets and put one lifecycle expiration rule per dataset prefix
    (``pitchey-trace-<dataset>``; in a versioned bucket it also expires noncurrent versions),
    keeping every other rule. Idempotent: nothing is written when the buckets and rules are
    already as configured."""
    rows: list[Check] = []
    for bucket in config.buckets:
        try:
            if _bucket_exists(client, bucket):
                rows.append(Check("bucket", bucket, True, "exists"))
            else:
                _create_bucket(client, bucket, config.region)
                rows.append(Check("bucket", bucket, True, "created"))
        except Exception as exc:
            _raise_if_fatal(exc, config)
            rows.append(Check("bucket", bucket, False, f"{_error_code(exc)}: {exc}"))
            continue
        managed_ids = {rule_id(d.name) for d in config.datasets.values() if d.bucket == bucket}
        try:
            try:
                versioning = _versioning(client, bucket)
            except Exception as exc:
                _raise_if_fatal(exc, config)
                # unknown: rules without NoncurrentVersionExpiration could keep the data forever
                raise _StepError(f"cannot read the bucket versioning: {_error_code(exc)}: {exc}") from exc
            wanted = [
                _desired_rule(d, versioning)
                for d in config.datasets.values()
                if d.bucket == bucket and d.retention_days
            ]
            existing = _get_rules(client, bucket)
            by_id = {r.get("ID"): r for r in existing}
            unchanged = all(r["ID"] in by_id and _same_rule(by_id[r["ID"]], r) for r in wanted)
            stale = [
                r
                for r in existing
                if r.get("ID") in managed_ids and r.get("ID") not in {w["ID"] for w in wanted}
            ]
            keep = [r for r in existing if r.get("ID") not in managed_ids]
            rules = keep + wanted
            if unchanged and not stale:
                detail = "unchanged"
            else:
                if rules:
                    client.put_bucket_lifecycle_configuration(
                        Bucket=bucket, LifecycleConfiguration={"Rules": rules}
                    )
                else:
                    client.delete_bucket_lifecycle(Bucket=bucket)
                detail = "updated"
            for d in config.datasets.values():
                if d.bucket != bucket:
                    continue
                what = (
                    f"expire {d.prefix or '(whole bucket)'}/ after {d.retention_days} days"
                    if d.retention_days
                    else "no expiration (keep forever)"
                )
                if d.retention_days and versioning:
                    what += f", noncurrent versions {_NONCURRENT_DAYS} day later (versioning {versioning})"
                # Rules of other ids are kept, so one of them may still expire this dataset's
                # objects sooner (or at all): say so now rather than at the next verify.
                effective = _check_retention(d, rules, versioning)
                if effective.ok:
                    rows.append(Check("lifecycle", f"{bucket}/{d.prefix}", True, f"{what} ({detail})"))
                else:
                    culprit = (_expiring_rule(d, rules) or {}).get("ID")
                    why = f"{effective.detail}: rule {culprit!r}, kept" if culprit else effective.detail
                    rows.append(Check("lifecycle", f"{bucket}/{d.prefix}", False, f"{why} ({detail})"))
        except _StepError as exc:
            rows.append(Check("lifecycle", bucket, False, str(exc)))
        except Exception as exc:
            _raise_if_fatal(exc, config)
            rows.append(Check("lifecycle", bucket, False, f"{_error_code(exc)}: {exc}"))
    return rows


def verify(config: LogpushConfig, client: Any) -> list[Check]:
    """Check every bucket exists, every dataset has its expiration rule (and, in a versioned
    bucket, a noncurrent version expiration), and a write/read/delete round trip works under
    every dataset prefix."""
    rows: list[Check] = []
    missing: set[str] = set()
    for bucket in config.buckets:
        try:
            ok = _bucket_exists(client, bucket)
            rows.append(Check("bucket exists", bucket, ok, "ok" if ok else "missing (run logpush setup)"))
            if not ok:
                missing.add(bucket)
        except Exception as exc:
            _raise_if_fatal(exc, config)
            # (say AccessDenied: a key allowed to write objects only can still pass the rest)
            rows.append(Check("bucket exists", bucket, False, f"{_error_code(exc)}: {exc}"))
    rules_of: dict[str, list[dict[str, Any]] | Exception] = {}
    versioning_of: dict[str, str | Exception | None] = {}
    for bucket in config.buckets:
        if bucket in missing:
            continue
        try:
            rules_of[bucket] = _get_rules(client, bucket)
        except Exception as exc:
            _raise_if_fatal(exc, config)
            rules_of[bucket] = exc
        try:
            versioning_of[bucket] = _versioning(client, bucket)
        except Exception as exc:
            _raise_if_fatal(exc, config)
            versioning_of[bucket] = exc
    for d in config.datasets.values():
        target = f"{d.bucket}/{d.prefix}"
        if d.bucket in missing:
            rows.append(Check("retention", target, False, "bucket missing"))
            rows.append(Check("write/read/delete", target, False, "bucket missing"))
            continue
        rules = rules_of[d.bucket]
        if isinstance(rules, Exception):
            rows.append(Check("retention", target, False, f"{_error_code(rules)}: {rules}"))
        else:
            rows.append(_check_retention(d, rules, versioning_of[d.bucket]))
        rows.append(_round_trip(client, d, config))
    return rows


def _expiring_rule(d: DatasetConfig, rules: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The enabled rule that expires the dataset's objects first (any id), or None."""
    want_prefix = f"{d.prefix}/" if d.prefix else ""
    applying = [
        r
        for r in rules
        if r.get("Status") == "Enabled"
        and _rule_prefix(r) is not None
        and want_prefix.startswith(_rule_prefix(r) or "")
        and _rule_days(r) is not None
    ]
    return min(applying, key=lambda r: _rule_days(r) or 0) if applying else None


def _expires_noncurrent(d: DatasetConfig, rules: list[dict[str, Any]]) -> bool:
    """Whether an enabled plain-prefix rule deletes the dataset's noncurrent versions. One that
    keeps the newest N (NewerNoncurrentVersions) does not: an archive key has one version."""
    want_prefix = f"{d.prefix}/" if d.prefix else ""
    return any(
        r.get("Status") == "Enabled"
        and _rule_prefix(r) is not None
        and want_prefix.startswith(_rule_prefix(r) or "")
        and _noncurrent(r)[0] is not None
        and _noncurrent(r)[1] is None
        for r in rules
    )


def _check_retention(
    d: DatasetConfig, rules: list[dict[str, Any]], versioning: str | Exception | None = None
) -> Check:
    """``versioning``: the bucket's state from :func:`_versioning`, or the error reading it."""
    target = f"{d.bucket}/{d.prefix}"
    first = _expiring_rule(d, rules)
    days = None if first is None else _rule_days(first) or 0
    if d.retention_days is None:
        if days is not None:
            return Check(
                "retention", target, False, f"configured to keep forever but a rule expires after {days} days"
            )
        return Check("retention", target, True, "no expiration (as configured)")
    if days is None:
        return Check(
            "retention",
            target,
            False,
            f"no expiration rule (want {d.retention_days} days; run logpush setup)",
        )
    if days != d.retention_days:
        return Check("retention", target, False, f"objects expire after {days} days, want {d.retention_days}")
    if _expires_noncurrent(d, rules):
        return Check("retention", target, True, f"{days} days (noncurrent versions expire too)")
    if isinstance(versioning, Exception):
        return Check(
            "retention",
            target,
            False,
            f"{days} days, but the bucket versioning cannot be read ({_error_code(versioning)}) "
            "and no rule expires noncurrent versions",
        )
    if versioning is not None:
        return Check(
            "retention",
            target,
            False,
            f"versioning {versioning} but no rule expires noncurrent versions: expired objects "
            "are kept forever behind delete markers (run logpush setup)",
        )
    return Check("retention", target, True, f"{days} days")


def _round_trip(client: Any, d: DatasetConfig, config: LogpushConfig) -> Check:
    target = f"{d.bucket}/{d.prefix}"
    key = (
        f"{d.prefix}/_pitchey_trace_verify/{secrets.token_hex(8)}.txt"
        if d.prefix
        else f"_pitchey_trace_verify/{secrets.token_hex(8)}.txt"
    )
    body = f"pitchey-trace verify {secrets.token_hex(8)}\n".encode()
    step = "write"
    try:
        put = client.put_object(Bucket=d.bucket, Key=key, Body=body)
        # In a versioned bucket a plain delete only hides the object behind a delete marker:
        # deleting the version written removes it for good, leaving nothing behind.
        version = {"VersionId": put["VersionId"]} if put.get("VersionId") else {}
        step = "read"
        got = client.get_object(Bucket=d.bucket, Key=key)["Body"].read()
        if got != body:
            return Check("write/read/delete", target, False, "read back different bytes")
        step = "delete"
        client.delete_object(Bucket=d.bucket, Key=key, **version)
        try:
            client.head_object(Bucket=d.bucket, Key=key)
        except Exception as exc:
            if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return Check("write/read/delete", target, True, f"ok ({key})")
            raise
        return Check("write/read/delete", target, False, "object still present after delete")
    except Exception as exc:
        _raise_if_fatal(exc, config)
        return Check("write/read/delete", target, False, f"{step} failed: {_error_code(exc)}: {exc}")


def format_table(rows: list[Check]) -> str:
    """The report as an aligned text table with a PASS/FAIL column and a summary line."""
    header = ("CHECK", "TARGET", "RESULT", "DETAIL")
    table = [header] + [(r.check, r.target, "PASS" if r.ok else "FAIL", r.detail) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    lines = ["  ".join([*(row[i].ljust(widths[i]) for i in range(3)), row[3]]).rstrip() for row in table]
    failed = sum(1 for r in rows if not r.ok)
    lines.append(f"{len(rows) - failed} passed, {failed} failed")
    return "\n".join(lines) + "\n"
