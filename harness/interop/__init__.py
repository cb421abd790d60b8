"""Other tools' formats: JMeter test plans and result files, Locust and k6 results."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from harness.errors import ConfigError


def parse_xml(path: Path, what: str) -> ET.Element:
    """The root of an XML file, refusing DOCTYPE/ENTITY declarations (the "billion laughs" family)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the {what} ({e.strerror}); check the path") from None
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        raise ConfigError(f"{path}: refusing a {what} with DOCTYPE/ENTITY declarations (JMeter never writes them)")
    try:
        return ET.fromstring(text)
    except ET.ParseError as e:
        raise ConfigError(f"{path}: not valid XML ({e}); is this a JMeter {what}?") from None
