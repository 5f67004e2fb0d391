"""config/mxd.example.toml documents exactly the fields of Config, with their defaults and variables."""
from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

from mxd import config

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "mxd.example.toml"
SETTING = re.compile(r"^# (?=[a-z_]+ = )")
DYNAMIC = {"data_dir", "hostname"}      # defaults depend on the machine; the example shows a typical value


def uncommented() -> str:
    return "\n".join(SETTING.sub("", line) for line in EXAMPLE.read_text().splitlines())


def test_every_line_is_commented_out() -> None:
    assert tomllib.loads(EXAMPLE.read_text()) == {}


def test_keys_are_exactly_the_config_fields() -> None:
    keys = list(tomllib.loads(uncommented()))
    assert sorted(keys) == sorted(f.name for f in dataclasses.fields(config.Config))
    assert len(keys) == len(set(keys))


def test_shown_values_are_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "mxd.toml"
    path.write_text(uncommented())
    loaded = config.load(path, env={})
    defaults = config.Config()
    for f in dataclasses.fields(config.Config):
        if f.name not in DYNAMIC:
            assert getattr(loaded, f.name) == getattr(defaults, f.name), f.name


def test_each_field_names_its_default_and_variable() -> None:
    blocks = re.split(r"\n\n", EXAMPLE.read_text())
    for f in dataclasses.fields(config.Config):
        [block] = [b for b in blocks if re.search(rf"^# {f.name} = ", b, re.M)]
        assert "Default:" in block, f.name
        assert f"Env: MXD_{f.name.upper()}" in block, f.name
