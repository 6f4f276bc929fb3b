"""LogpushExporter: gzip NDJSON batches to S3, Cloudflare R2 or any S3-compatible storage,
through a durable on-disk spool.

Objects are named like Cloudflare Logpush's: ``{prefix}/{YYYYMMDD}/{start}_{end}_{unique}.log.gz``
(UTC, compact ISO-8601). The batching, spool and retry engine is shared with
:class:`~pitchey_trace.exporters.LocalArchiveExporter`; see ``docs/exporters.md`` for the
durability guarantee and the bound on loss.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pitchey_trace import _stats
from pitchey_trace._validate import finite, str_map, text
from pitchey_trace.exceptions import ConfigurationError, IntegrationUnavailable
from pitchey_trace.exporters._archive import (
    DEFAULT_COMPRESSLEVEL,
    DEFAULT_FSYNC_INTERVAL_S,
    DEFAULT_MAX_BATCH_BYTES,
    DEFAULT_MAX_BATCH_RECORDS,
    DEFAULT_MAX_INTERVAL_S,
    DEFAULT_SPOOL_MAX_BYTES,
    ArchiveExporter,
)
from pitchey_trace.exporters._http import RetryPolicy, is_http_url, warn_limited
from pitchey_trace.exporters._spool import UnsafeSpoolDir, check_private_dir, safe_dataset
from pitchey_trace.logpush_config import LogpushConfig, checked_bucket, load_config, make_s3_client
from pitchey_trace.records import Record

__all__ = ["LogpushExporter", "S3Store"]


class S3Store:
    """Puts objects into per-dataset buckets with one lazily created boto3 client."""

    def __init__(
        self,
        *,
        bucket: str | None,
        buckets: Mapping[str, str],
        client: Any = None,
        client_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.bucket = bucket
        self.buckets = {safe_dataset(k): v for k, v in buckets.items()}
        self._given_client = client
        self._client = client
        self._factory = client_factory
        self._lock = threading.Lock()

    def bucket_for(self, dataset: str) -> str:
        """The bucket of a dataset."""
        bucket = self.buckets.get(dataset, self.bucket)
        if bucket is None:  # prevented by LogpushExporter's checks; kept for direct use
            raise ConfigurationError(f"no bucket configured for dataset {dataset!r}")
        return bucket

    def client(self) -> Any:
        """The boto3 client (created on first use, on the uploader thread)."""
        c = self._client
        if c is None:
            with self._lock:
                c = self._client
                if c is None:
                    assert self._factory is not None
                    c = self._client = self._factory()
        return c

    def put(self, dataset: str, key: str, body: bytes) -> None:
        """PUT one object; raises on any failure (the engine retries with backoff)."""
        self.client().put_object(
            Bucket=self.bucket_for(dataset), Key=key, Body=body, ContentType="application/gzip"
        )

    def persistent_error(self, dataset: str, exc: BaseException) -> tuple[str, str] | None:
        """``(counter, explanation)`` when ``exc`` is an answer that retrying will not change
        soon (credentials refused, bucket missing); None for anything else (network, 5xx,
        throttling). The engine then warns once and retries slowly instead of logging every
        attempt: the records stay in the spool until the configuration is fixed."""
        bucket = self.buckets.get(dataset, self.bucket)
        if type(exc).__name__ in ("NoCredentialsError", "PartialCredentialsError"):
            return "access_denied", (
                f"no usable credentials for bucket {bucket!r} ({exc}): set AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY, a profile, or an instance role"
            )
        response = getattr(exc, "response", None)
        if not isinstance(response, Mapping):
            return None
        error = response.get("Error") or {}
        code = str(error.get("Code") or "") if isinstance(error, Mapping) else ""
        meta = response.get("ResponseMetadata") or {}
        status = meta.get("HTTPStatusCode") if isinstance(meta, Mapping) else None
        if code == "NoSuchBucket" or (status == 404 and code in ("", "404", "NotFound")):
            return (
                "missing_bucket",
                f"bucket {bucket!r} does not exist (pitchey-trace logpush setup creates it)",
            )
        if code in _CREDENTIAL_ERRORS or status in (401, 403):
            return "access_denied", (
                f"the storage refused the credentials for bucket {bucket!r} ({code or status}): "
                "check the access key, secret and the key's permissions on the bucket"
            )
        return None

    def reset(self) -> None:
        """A forked child builds its own client (boto3 clients must not cross a fork)."""
        self._lock = threading.Lock()
        if self._factory is not None:
            self._client = None


_CREDENTIAL_ERRORS = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "ExpiredToken",
        "InvalidAccessKeyId",
        "InvalidToken",
        "SignatureDoesNotMatch",
        "TokenRefreshRequired",
        "Unauthorized",
    }
)

# What botocore accepts; anything else failed every upload (InvalidS3AddressingStyleError).
_ADDRESSING_STYLES = ("auto", "virtual", "path")


def _check_endpoint_url(url: str) -> None:
    """An S3 endpoint must be ``http(s)://host[:port]``: botocore takes anything at first and
    then fails every upload (``localhost:9000`` has no scheme)."""
    if not is_http_url(urlsplit(url)):
        raise ConfigurationError(f"endpoint_url must be http(s)://host[:port], got {url!r}")


def default_spool_dir(name: str, identity: str) -> Path:
    """``<tmp>/pitchey-trace-spool-<uid>/<name>-<hash of destination>``: exporters share
    leftover files only when they write to the same place.

    That name is predictable in a shared ``/tmp``: when another user made it (or any part of
    it) first, or it is a symbolic link or writable by others, a fresh private directory from
    ``tempfile.mkdtemp`` is used instead (warned about, counted in ``logpush.spool_unsafe``;
    leftovers there are not found by the next process)."""
    digest = hashlib.sha256(identity.encode()).hexdigest()[:12]
    # per user: another account's directory in a shared /tmp would not be writable
    user = str(os.getuid()) if hasattr(os, "getuid") else "user"
    per_user = Path(tempfile.gettempdir()) / f"pitchey-trace-spool-{user}"
    path = per_user / f"{safe_dataset(name)}-{digest}"
    try:
        check_private_dir(per_user, tighten=True)  # (its owner could swap the leaf for a directory of theirs)
        check_private_dir(path)
    except UnsafeSpoolDir as exc:
        try:
            fallback = Path(tempfile.mkdtemp(prefix=f"pitchey-trace-spool-{user}-"))  # (0700)
        except OSError:
            return path  # (refused by the exporter with the reason above)
        _stats.incr("logpush.spool_unsafe")
        warn_limited(
            "logpush.spool_unsafe",
            "pitchey_trace logpush %s: %s; using the private directory %s instead",
            name,
            exc,
            fallback,
        )
        return fallback
    except OSError:  # (cannot be created: the exporter reports it as for any spool_dir)
        pass
    return path


class LogpushExporter(ArchiveExporter):
    """Archive records to S3 / R2 as Logpush-style gzip NDJSON objects, one per batch.

    Args:
        bucket: bucket of every dataset (unless ``buckets`` names another).
        buckets: ``{dataset: bucket}`` overrides.
        endpoint_url: for R2 ``https://<account>.r2.cloudflarestorage.com`` (with
            ``region="auto"``), or any S3-compatible server; None for AWS S3.
        region, profile: passed to boto3 (credentials come from boto3's usual chain).
        client: a ready boto3 S3 client (then endpoint/region/profile are ignored).
        datasets: datasets to archive (default all).
        prefixes: ``{dataset: prefix}`` (default: the dataset name).
        max_batch_bytes / max_batch_records / max_interval_s: a batch closes at the first limit
            hit (defaults: 5 MB uncompressed, 100,000 records, 30 s), and on flush/shutdown.
        spool_dir: the durable spool (default ``<tmp>/pitchey-trace-spool-<uid>/<name>-<hash>``;
            give each exporter its own directory). Records handed to the exporter are written
            there at once and survive a crash; leftovers are uploaded first on the next start.
        spool_max_bytes: spool cap (default 1 GiB; closed batches are kept gzip-compressed and
            count by their compressed size); when full the oldest closed batches are
            dropped first (``dropped.spool_cap``).
        fsync_interval_s: open spool files are fsynced at least this often (default 1 s).
        router: the Router given to ``configure()`` if you route to custom datasets.
        retry: backoff for failed uploads (retried until they succeed or shutdown).
        connect_timeout_s / read_timeout_s: S3 request timeouts.

    Counters in ``pt.stats()``: ``logpush.uploaded`` (records), ``logpush.objects``,
    ``logpush.bytes``, ``logpush.retried`` / ``retried``, ``logpush.spooled`` / ``spooled``,
    ``logpush.recovered``, ``dropped.spool_cap``, ``dropped.spool_write_error``.
    """

    kind = "logpush"

    def __init__(
        self,
        bucket: str | None = None,
        *,
        buckets: Mapping[str, str] | None = None,
        endpoint_url: str | None = None,
        region: str | None = None,
        profile: str | None = None,
        addressing_style: str | None = None,
        client: Any = None,
        datasets: Iterable[str] | None = None,
        prefixes: Mapping[str, str] | None = None,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        max_batch_records: int = DEFAULT_MAX_BATCH_RECORDS,
        max_interval_s: float = DEFAULT_MAX_INTERVAL_S,
        compresslevel: int = DEFAULT_COMPRESSLEVEL,
        spool_dir: str | os.PathLike[str] | None = None,
        spool_max_bytes: int = DEFAULT_SPOOL_MAX_BYTES,
        fsync_interval_s: float = DEFAULT_FSYNC_INTERVAL_S,
        router: Callable[[Record], Iterable[str]] | None = None,
        retry: RetryPolicy | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
        name: str = "logpush",
    ) -> None:
        if bucket is not None:
            checked_bucket("bucket", text("bucket", bucket))
        buckets = str_map("buckets", buckets)
        for ds, b in buckets.items():
            checked_bucket(f"buckets[{ds!r}]", b)
        prefixes = str_map("prefixes", prefixes)
        if endpoint_url is not None:
            _check_endpoint_url(text("endpoint_url", endpoint_url))
        if addressing_style is not None:
            if not isinstance(addressing_style, str):
                raise TypeError(f"addressing_style must be a str or None, got {addressing_style!r}")
            if addressing_style not in _ADDRESSING_STYLES:
                raise ConfigurationError(
                    f"addressing_style must be path, virtual or auto (or None), got {addressing_style!r}"
                )
        finite("connect_timeout_s", connect_timeout_s, 0.001, 3600.0)
        finite("read_timeout_s", read_timeout_s, 0.001, 3600.0)
        text("name", name)
        if bucket is None:
            if not buckets:
                raise ConfigurationError("LogpushExporter needs bucket= (or buckets={dataset: bucket})")
            if datasets is None or not set(datasets) <= set(buckets):
                raise ConfigurationError(
                    "without a default bucket, datasets= must list only datasets "
                    "that have a bucket in buckets="
                )
        if client is None:
            try:
                import boto3  # noqa: F401  (fail at configure time, not on the uploader thread)
            except ImportError:
                raise IntegrationUnavailable("LogpushExporter", "s3") from None

        def factory() -> Any:
            return make_s3_client(
                endpoint_url=endpoint_url,
                region=region,
                profile=profile,
                addressing_style=addressing_style,
                connect_timeout_s=connect_timeout_s,
                read_timeout_s=read_timeout_s,
            )

        self.endpoint_url = endpoint_url
        store = S3Store(
            bucket=bucket, buckets=buckets, client=client, client_factory=None if client else factory
        )
        if spool_dir is None:
            identity = repr((endpoint_url, bucket, sorted(buckets.items()), sorted(prefixes.items())))
            spool_dir = default_spool_dir(name, identity)
        super().__init__(
            store,
            name=name,
            datasets=datasets,
            prefixes=prefixes,
            max_batch_bytes=max_batch_bytes,
            max_batch_records=max_batch_records,
            max_interval_s=max_interval_s,
            compresslevel=compresslevel,
            spool_dir=spool_dir,
            spool_max_bytes=spool_max_bytes,
            fsync_interval_s=fsync_interval_s,
            router=router,
            retry=retry,
        )

    @classmethod
    def from_config(cls, config: LogpushConfig | str | os.PathLike[str], **overrides: Any) -> LogpushExporter:
        """Build from the ``pitchey-trace logpush`` config file (or a parsed
        :class:`~pitchey_trace.logpush_config.LogpushConfig`); keyword arguments override."""
        cfg = config if isinstance(config, LogpushConfig) else load_config(config)
        batch = cfg.batch
        kwargs: dict[str, Any] = {
            "buckets": {d.name: d.bucket for d in cfg.datasets.values()},
            "prefixes": {d.name: d.prefix for d in cfg.datasets.values()},
            "datasets": set(cfg.datasets),
            "endpoint_url": cfg.endpoint_url,
            "region": cfg.region,
            "profile": cfg.profile,
            "addressing_style": cfg.addressing_style,
        }
        if cfg.spool_dir:
            kwargs["spool_dir"] = cfg.spool_dir
        for key, arg in (
            ("max_bytes", "max_batch_bytes"),
            ("max_records", "max_batch_records"),
            ("max_interval_s", "max_interval_s"),
        ):
            if key in batch:
                kwargs[arg] = batch[key]
        kwargs.update(overrides)
        return cls(**kwargs)

    def __repr__(self) -> str:
        return (
            f"LogpushExporter(name={self.name!r}, endpoint_url={self.endpoint_url!r}, "
            f"datasets={self.datasets!r})"
        )
