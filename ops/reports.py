"""The dated report files that operator runs leave under reports/."""

import json
from datetime import UTC, datetime
from pathlib import Path


def write_report_files(report: dict[str, object], markdown: list[str], report_dir: Path, name: str) -> Path:
    """Writes report_dir/<name>-<UTC time>.json (the report) and .md (the lines); returns the JSON path."""
    report_dir.mkdir(parents=True, exist_ok=True)
    stem = report_dir / f"{name}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text("\n".join(markdown) + "\n")
    return stem.with_suffix(".json")
