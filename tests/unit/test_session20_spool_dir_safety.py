"""A spool directory another local user can write (or made first, or swapped for a symbolic
link) is never used: a given ``spool_dir`` is refused with the reason, the default Logpush spool
falls back to a private directory, and adoption takes only regular files of this user."""

# ruff: noqa: S103  (permissive modes are what these tests are about)

from __future__ import annotations

import gzip
import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

import pytest

from pitchey_trace import _stats
from pitchey_trace.exceptions import ConfigurationError
from pitchey_trace.exporters import LocalArchiveExporter
from pitchey_trace.exporters._spool import PayloadSpool, UnsafeSpoolDir, check_private_dir
from pitchey_trace.exporters.logpush import LogpushExporter

OTHER = 54321  # another local user (no account needed to own files)
KEY = "20261130T053700Z_20261130T053700Z_0123456789abcdef"
FORGED = b'{"type":"span","dataset":"traces","forged":true}\n'


def foreign(path: Path) -> None:
    """Make ``path`` another local user's (the suite runs as root, like its PostgreSQL fixture)."""
    os.chown(path, OTHER, OTHER, follow_symlinks=False)


@pytest.fixture
def shared_tmp(tmp_path: Path) -> Path:
    """A world-writable sticky directory, like ``/tmp``."""
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    return shared


def archived(root: Path) -> list[bytes]:
    return [line for p in root.rglob("*.gz") for line in gzip.decompress(p.read_bytes()).splitlines()]


def test_spool_dir_made_first_by_another_user_is_refused_and_its_files_never_uploaded(
    tmp_path: Path, shared_tmp: Path
) -> None:
    spool = shared_tmp / "spool"
    spool.mkdir()
    os.chmod(spool, 0o777)
    planted = spool / f"999-abcdef.0000000001.traces.{KEY}.ready"
    planted.write_bytes(FORGED)
    foreign(planted)
    foreign(spool)
    with pytest.raises(ConfigurationError, match=r"owned by uid \d+, not by this user"):
        LocalArchiveExporter(tmp_path / "archive", spool_dir=spool)
    assert archived(tmp_path / "archive") == []
    assert planted.read_bytes() == FORGED  # (left alone: not ours)


def test_spool_dir_writable_by_everyone_is_refused_with_its_mode(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    os.chmod(spool, 0o777)
    with pytest.raises(ConfigurationError, match="mode 0777 lets other users write it"):
        LocalArchiveExporter(tmp_path / "archive", spool_dir=spool)
    with pytest.raises(ConfigurationError, match="mode 0777"):
        PayloadSpool(spool, tag="payload-x", counter="x", items_counter="x.items", max_bytes=1000)


def test_a_chosen_spool_dir_may_be_a_group_writable_or_root_owned_volume(tmp_path: Path) -> None:
    """Container volumes (Kubernetes' fsGroup: root-owned, 2775; an emptyDir: 0777 parent) are
    the deployment's choice: only what shows another user at work is refused there."""
    volume = tmp_path / "volume"
    volume.mkdir()
    os.chmod(volume, 0o2775)
    spool = PayloadSpool(volume, tag="payload-x", counter="x", items_counter="x.items", max_bytes=1000)
    assert spool.put(b"kept", 1)
    spool.close()
    open_parent = tmp_path / "emptydir"
    open_parent.mkdir()
    os.chmod(open_parent, 0o777)
    exporter = LocalArchiveExporter(tmp_path / "archive", spool_dir=open_parent / "spool")
    exporter.shutdown(1)
    assert stat.S_IMODE(os.stat(open_parent / "spool").st_mode) == 0o700


def test_spool_dir_that_is_a_symlink_is_refused_and_its_target_untouched(
    tmp_path: Path, shared_tmp: Path
) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    link = shared_tmp / "spool"
    link.symlink_to(target)
    with pytest.raises(ConfigurationError, match="symbolic link"):
        LocalArchiveExporter(tmp_path / "archive", spool_dir=link)
    with pytest.raises(ConfigurationError, match="symbolic link"):
        PayloadSpool(link, tag="payload-x", counter="x", items_counter="x.items", max_bytes=1000)
    assert os.listdir(target) == []


def test_default_spool_in_a_parent_others_can_write_without_sticky_bit_is_refused(tmp_path: Path) -> None:
    parent = tmp_path / "open"
    parent.mkdir()
    os.chmod(parent, 0o777)  # (anyone could rename our directory away and put theirs there)
    with pytest.raises(UnsafeSpoolDir, match=r"parent directory .* lets another user replace it"):
        check_private_dir(parent / "spool")  # (strict: as for the default path under the temp dir)


def test_private_spool_dir_still_works_and_a_new_one_is_0700_whatever_the_umask(
    tmp_path: Path, shared_tmp: Path
) -> None:
    old = os.umask(0)
    try:
        exp = LocalArchiveExporter(tmp_path / "archive", spool_dir=shared_tmp / "spool")
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(os.stat(shared_tmp / "spool").st_mode) == 0o700
        assert exp.export([{"type": "span", "dataset": "traces", "n": 1}]) is True
        assert exp.force_flush(10) is True
    finally:
        exp.shutdown(5)
    assert len(archived(tmp_path / "archive")) == 1


def test_adoption_skips_symlinks_and_files_of_other_users(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    secret = tmp_path / "secret"
    secret.write_bytes(b'{"type":"span","dataset":"traces","secret":"only-root"}\n')
    os.chmod(secret, 0o600)
    link = spool / f"998-abcdef.0000000001.traces.{KEY}.ready"
    link.symlink_to(secret)
    theirs = spool / f"997-abcdef.0000000001.traces.{KEY}.ready"
    theirs.write_bytes(FORGED)
    foreign(theirs)
    mine = spool / f"996-abcdef.0000000001.traces.{KEY}.ready"
    mine.write_bytes(b'{"type":"span","dataset":"traces","mine":true}\n')
    exp = LocalArchiveExporter(tmp_path / "archive", spool_dir=spool)
    try:
        assert exp.force_flush(10) is True
    finally:
        exp.shutdown(5)
    assert archived(tmp_path / "archive") == [b'{"type":"span","dataset":"traces","mine":true}']
    assert _stats.get("local_archive.spool_skipped") == 2
    assert link.is_symlink()
    assert theirs.exists()
    assert secret.read_bytes().startswith(b'{"type"')


def test_payload_spool_counts_entries_it_skips(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    secret = tmp_path / "secret"
    secret.write_bytes(b"payload-of-someone-else")
    (spool / f"995-abcdef.0000000001.payload-x.{KEY}.ready").symlink_to(secret)
    ps = PayloadSpool(spool, tag="payload-x", counter="x", items_counter="x.items", max_bytes=1000)
    try:
        assert len(ps) == 0
        assert _stats.get("x.spool_skipped") == 1
    finally:
        ps.close()


class _Client:
    def put_object(self, **kw: Any) -> None:
        pass


def _default_exporter(shared: Path, monkeypatch: pytest.MonkeyPatch) -> LogpushExporter:
    monkeypatch.setattr(tempfile, "tempdir", str(shared))
    return LogpushExporter("bucket-a", client=_Client())


def test_default_spool_falls_back_when_another_user_made_the_per_user_dir(
    shared_tmp: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    per_user = shared_tmp / f"pitchey-trace-spool-{os.getuid()}"
    per_user.mkdir()
    os.chmod(per_user, 0o777)
    foreign(per_user)
    with caplog.at_level(logging.WARNING, logger="pitchey_trace"):
        exp = _default_exporter(shared_tmp, monkeypatch)
    try:
        assert exp.spool_path is not None
        assert per_user not in exp.spool_path.parents
        assert exp.spool_path.parent == shared_tmp
        st = os.lstat(exp.spool_path)
        assert stat.S_ISDIR(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o700
        assert st.st_uid == os.geteuid()
        assert os.listdir(per_user) == []  # nothing of ours in their directory
        assert _stats.get("logpush.spool_unsafe") == 1
        assert "owned by uid" in caplog.text
        assert str(exp.spool_path) in caplog.text
    finally:
        exp.shutdown(5)


def test_default_spool_falls_back_when_the_leaf_is_a_symlink(
    tmp_path: Path, shared_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _default_exporter(shared_tmp, monkeypatch)
    leaf = first.spool_path
    first.shutdown(5)
    assert leaf is not None
    leaf.rmdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    leaf.symlink_to(elsewhere)
    exp = _default_exporter(shared_tmp, monkeypatch)
    try:
        assert exp.spool_path is not None
        assert exp.spool_path != leaf
        assert os.listdir(elsewhere) == []
        assert _stats.get("logpush.spool_unsafe") == 1
    finally:
        exp.shutdown(5)


def test_default_spool_per_user_dir_is_private_and_reused(
    shared_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = os.umask(0)  # (before: the per-user directory was made 0777 under this umask)
    try:
        a = _default_exporter(shared_tmp, monkeypatch)
    finally:
        os.umask(old)
    a.shutdown(5)
    per_user = shared_tmp / f"pitchey-trace-spool-{os.getuid()}"
    assert a.spool_path is not None
    assert a.spool_path.parent == per_user
    assert stat.S_IMODE(os.stat(per_user).st_mode) == 0o700
    os.chmod(per_user, 0o775)  # ours, made by an older version under umask 002: tightened
    b = _default_exporter(shared_tmp, monkeypatch)
    try:
        assert b.spool_path == a.spool_path
        assert stat.S_IMODE(os.stat(per_user).st_mode) == 0o700
        assert _stats.get("logpush.spool_unsafe") == 0
    finally:
        b.shutdown(5)
