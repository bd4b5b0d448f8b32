#!/usr/bin/env python3
"""Regenerate daojia_msg/web/openapi.json (served at GET /v1/openapi.json)
from docs/openapi.yaml, the source of the HTTP API's spec.

Usage: .venv/bin/python tools/genopenapi.py [--check]
(--check: exit 1 when the JSON copy differs from the YAML instead of writing it).
Needs PyYAML (the dev extra).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "docs" / "openapi.yaml"
TARGET = ROOT / "daojia_msg" / "web" / "openapi.json"


def render(source: Path = SOURCE) -> str:
    """The JSON text of the YAML document ``source``."""
    with source.open(encoding="utf-8") as f:
        document = yaml.safe_load(f)
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if current != text:
            print(f"{TARGET.relative_to(ROOT)} is out of date: run tools/genopenapi.py",
                  file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
