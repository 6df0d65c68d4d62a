"""JUnit XML, the report format every CI system reads.

One ``<testsuite>`` per run (``igsp-conformance.platform`` or ``.provider``), one
``<testcase>`` per check: ``classname`` is the suite plus the check's group
(``signature``, ``wallet`` …), ``name`` the check id; a failure carries the reason as
``message``, a skip its reason.
"""

from __future__ import annotations

import socket
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

from gateway.tools.conformance.runner import FAIL, SKIP, Result, counts


def build(results: list[Result], suite: str, properties: dict[str, str] | None = None) -> ET.ElementTree:
    found = counts(results)
    total_time = sum(r.seconds for r in results)
    root = ET.Element("testsuites", name="igsp-conformance", tests=str(len(results)), failures=str(found[FAIL]),
                      errors="0", skipped=str(found[SKIP]), time=f"{total_time:.3f}")
    node = ET.SubElement(root, "testsuite", name=suite, tests=str(len(results)), failures=str(found[FAIL]),
                         errors="0", skipped=str(found[SKIP]), time=f"{total_time:.3f}",
                         timestamp=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
                         hostname=socket.gethostname())
    if properties:
        props = ET.SubElement(node, "properties")
        for key, value in properties.items():
            ET.SubElement(props, "property", name=key, value=value)
    for result in results:
        case = ET.SubElement(node, "testcase", classname=f"{suite}.{result.check.group}", name=result.check.id,
                             time=f"{result.seconds:.3f}")
        if result.outcome == FAIL:
            failure = ET.SubElement(case, "failure", message=result.reason, type="ConformanceFailure")
            failure.text = f"{result.check.title}\n{result.reason}"
        elif result.outcome == SKIP:
            ET.SubElement(case, "skipped", message=result.reason)
    ET.indent(root)
    return ET.ElementTree(root)


def write(path: str | Path, results: list[Result], suite: str, properties: dict[str, str] | None = None) -> None:
    build(results, suite, properties).write(path, encoding="utf-8", xml_declaration=True)
