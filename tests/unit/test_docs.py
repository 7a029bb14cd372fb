"""The operator docs must not drift from the code they describe."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from faasd_py.config import Settings

REPO = Path(__file__).resolve().parents[2]


def setting_keys(obj: Any, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            keys += setting_keys(value, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def test_configuration_reference_documents_every_setting_and_nothing_else() -> None:
    text = (REPO / "docs" / "configuration.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_.]+)` \|", text, flags=re.MULTILINE))
    keys = set(setting_keys(Settings()))
    assert len(keys) > 20
    assert keys - documented == set(), "settings missing from docs/configuration.md"
    assert documented - keys == set(), "docs/configuration.md documents settings that do not exist"


def test_readme_links_and_commands_point_at_real_files() -> None:
    readme = (REPO / "README.md").read_text()
    for cmd in ("sudo ./install.sh", "sudo ./scripts/test.sh"):
        assert cmd in readme
    assert (REPO / "install.sh").stat().st_mode & 0o111 and (REPO / "scripts" / "test.sh").stat().st_mode & 0o111
    for link in re.findall(r"\]\(((?:docs|scripts|tests)/[^)]+)\)", readme):
        assert (REPO / link).exists(), link
