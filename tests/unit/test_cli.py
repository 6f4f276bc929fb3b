"""The pitchey-trace command line and the logpush config file (the S3 side of setup/verify
runs against moto in tests/integration/exporters/test_cli_logpush.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pitchey_trace import logpush_config as lc
from pitchey_trace.cli import COMMANDS, build_parser, main
from pitchey_trace.exceptions import ConfigurationError


def test_defaults_give_the_standard_datasets_with_their_retention(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('bucket = "logs"\nregion = "auto"\nendpoint_url = "https://acct.r2.cloudflarestorage.com"\n')
    cfg = lc.load_config(p)
    assert {n: (d.bucket, d.prefix, d.retention_days) for n, d in cfg.datasets.items()} == {
        "traces": ("logs", "traces", 30),
        "audit": ("logs", "audit", 90),
        "performance": ("logs", "performance", 14),
        "logs": ("logs", "logs", 30),
    }
    assert cfg.region == "auto"
    assert cfg.buckets == ["logs"]


def test_toml_and_json_give_the_same_config(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text(
        'bucket = "main"\nspool_dir = "/var/spool/pt"\n'
        '[datasets.audit]\nprefix = "/sec/audit/"\nretention_days = 365\nbucket = "vault"\n'
        "[datasets.custom]\nretention_days = 0\n"
        "[batch]\nmax_records = 500\n"
    )
    js = tmp_path / "c.json"
    js.write_text(
        json.dumps(
            {
                "bucket": "main",
                "spool_dir": "/var/spool/pt",
                "batch": {"max_records": 500},
                "datasets": {
                    "audit": {"prefix": "/sec/audit/", "retention_days": 365, "bucket": "vault"},
                    "custom": {"retention_days": 0},
                },
            }
        )
    )
    a, b = lc.load_config(toml), lc.load_config(js)
    assert a == b
    assert a.datasets["audit"] == lc.DatasetConfig("audit", "vault", "sec/audit", 365)
    assert a.datasets["custom"] == lc.DatasetConfig("custom", "main", "custom", None)  # 0 = keep forever
    assert a.buckets == ["main", "vault"]
    assert a.batch == {"max_records": 500}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('bucket = "b"\ncolour = "red"\n', "unknown logpush config key"),
        ("region = 'auto'\n", "has no bucket"),
        ('bucket = "b"\n[datasets.traces]\nretention_days = -1\n', "retention_days"),
        ('bucket = "b"\n[datasets.traces]\nttl = 3\n', "unknown key(s) in datasets.traces"),
        ('bucket = "b"\n[batch]\nsize = 3\n', "batch accepts only"),
        ('bucket = "b"\naddressing_style = "weird"\n', "addressing_style"),
        ("bucket = [1]\n", "bucket must be a string"),
        ("bucket = \n", "invalid TOML"),
    ],
)
def test_invalid_configs_are_explained(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        lc.load_config(p)


def test_rules_and_table_helpers() -> None:
    d = lc.DatasetConfig("traces", "b", "traces", 30)
    assert lc._desired_rule(d) == {
        "ID": "pitchey-trace-traces",
        "Filter": {"Prefix": "traces/"},
        "Status": "Enabled",
        "Expiration": {"Days": 30},
    }
    whole_bucket = {"ID": "x", "Filter": {"Prefix": ""}, "Status": "Enabled", "Expiration": {"Days": 10}}
    assert lc._check_retention(d, [whole_bucket]).detail == "objects expire after 10 days, want 30"
    assert lc._check_retention(d, [dict(whole_bucket, Expiration={"Days": 30})]).ok
    assert not lc._check_retention(d, [dict(whole_bucket, Status="Disabled")]).ok
    assert not lc._check_retention(lc.DatasetConfig("t", "b", "t", None), [whole_bucket]).ok
    table = lc.format_table(
        [lc.Check("bucket", "b", True, "exists"), lc.Check("retention", "b/t", False, "no")]
    )
    lines = table.splitlines()
    assert lines[0].split() == ["CHECK", "TARGET", "RESULT", "DETAIL"]
    assert "PASS" in lines[1]
    assert "FAIL" in lines[2]
    assert lines[-1] == "1 passed, 1 failed"


def test_cli_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["logpush"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert "pitchey-trace" in capsys.readouterr().out
    assert main(["logpush", "verify", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_commands_are_pluggable() -> None:
    def add_hello(sub: object) -> None:
        p = sub.add_parser("hello", help="say hello")  # type: ignore[attr-defined]
        p.set_defaults(func=lambda args: 7)

    COMMANDS.append(add_hello)
    try:
        assert main(["hello"]) == 7
        assert "hello" in build_parser().format_help()
    finally:
        COMMANDS.remove(add_hello)
