"""The versions requirements.lock pins, for tests that check what is installed elsewhere (images, Triton)."""

from pathlib import Path

from packaging.utils import canonicalize_name

LOCK = Path(__file__).resolve().parent.parent / "requirements.lock"


def lock_pins() -> dict[str, str]:
    """Each pinned package's version, by its canonical name."""
    pins = (line.split("==") for line in LOCK.read_text().splitlines() if "==" in line and not line.startswith("#"))
    return {canonicalize_name(name): pinned.strip() for name, pinned in pins}
