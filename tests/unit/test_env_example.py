"""`.env.example` documents every setting the keeper reads, and nothing it does not."""

from __future__ import annotations

import re
from pathlib import Path

from keeper.config import Settings

EXAMPLE = Path(__file__).resolve().parents[2] / ".env.example"


def test_env_example_lists_exactly_the_settings() -> None:
    listed = set(re.findall(r"^(KEEPER_[A-Z0-9_]+)=", EXAMPLE.read_text(), flags=re.M))
    fields = {f"KEEPER_{name.upper()}" for name in Settings.model_fields}
    assert listed == fields, {"undocumented": fields - listed, "unknown": listed - fields}


def test_every_setting_in_env_example_has_a_comment_above_it() -> None:
    lines = EXAMPLE.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("KEEPER_"):
            above = next(lines[j] for j in range(i - 1, -1, -1) if not lines[j].startswith("KEEPER_"))
            assert above.startswith("#"), f"{line.split('=')[0]} has no comment"
