"""The collector's OpenAPI document, published at ``collector/openapi.json`` and served at
``/openapi.json``; a test keeps the two identical. Regenerate the file with
``python -m mailpath.collector.openapi collector/openapi.json``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

PUBLISHED = Path(__file__).resolve().with_name("openapi.json")


def document() -> dict:
    """The document the app serves (no database is opened to make it)."""
    from mailpath.collector.app import create_app
    from mailpath.collector.settings import CollectorSettings

    app = create_app(CollectorSettings(database_url="sqlite:///unused-openapi.db"), migrate_on_start=False)
    return app.openapi()


def text() -> str:
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else PUBLISHED
    path.write_text(text())
    print(path)
