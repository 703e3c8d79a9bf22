"""The documents say what the code does: where a statement can be checked against the code, it is checked here."""

import re
from pathlib import Path

import yaml

from gateway.config import Settings, variable_of

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", ROOT / "deploy" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def table_rows(markdown: str, heading: str) -> list[list[str]]:
    """The cells of the first table under `heading`, header and rule lines left out."""
    section = markdown.split(heading, 1)[1]
    rows, started = [], False
    for line in section.splitlines():
        if line.startswith("|"):
            started = True
            rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
        elif started:
            break
    return rows[2:]


def test_the_alert_table_lists_every_alert_with_its_severity_and_no_other():
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "rules" / "recsys.yml").read_text())
    alerts = {rule["alert"]: rule["labels"]["severity"] for group in rules["groups"] for rule in group["rules"]
              if "alert" in rule}
    documented = {}
    for row in table_rows((ROOT / "deploy" / "README.md").read_text(), "\n## Alerts\n"):
        cell = re.fullmatch(r"`(\w+)` \((\w+)\)", row[0])
        assert cell, f"an alert row names `Alert` (severity): {row[0]}"
        documented[cell[1]] = cell[2]
    assert documented == alerts


def test_the_configuration_document_lists_every_variable_the_gateway_reads_and_no_other():
    text = (ROOT / "docs" / "configuration.md").read_text()
    gateway_table = text.split("\n## The gateway\n", 1)[1].split("\n## ", 1)[0]
    first_cells = [line.split(" | ")[0] for line in gateway_table.splitlines() if line.startswith("| `")]
    documented = {name for cell in first_cells for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", cell)}
    assert documented == {variable_of(field) for field in Settings.model_fields}


def test_every_make_target_the_documents_name_exists():
    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), re.MULTILINE))
    for document in DOCUMENTS:
        named = set(re.findall(r"`make ([a-z][\w-]*)", document.read_text()))
        assert named <= targets, f"{document.relative_to(ROOT)}: {sorted(named - targets)}"
