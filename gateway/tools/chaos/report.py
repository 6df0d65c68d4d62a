"""What chaos prints, one line per case, and the same as JUnit XML for CI."""

from __future__ import annotations

import socket
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

from gateway.tools.chaos.scenario import FAIL, SKIP, CaseResult


def _money(value: Decimal | None, currency: str) -> str:
    return "?" if value is None else f"{value} {currency}"


def expected_text(result: CaseResult, currency: str) -> str:
    return " or ".join(_money(e, currency) for e in result.expected) if result.expected else "?"


def line(result: CaseResult, currency: str) -> str:
    diff = "?" if result.difference is None else f"{result.difference:+}"
    text = (f"{result.verdict}  {result.name:<32} expected {expected_text(result, currency)}, "
            f"actual {_money(result.actual, currency)}, difference {diff}  "
            f"[{'; '.join(s.brief() for s in result.steps)}] ({result.seconds:.1f} s)")
    if result.verdict != "PASS":
        text += f"\n      {result.reason}"
    return text


def write_junit(path: str | Path, results: list[CaseResult], currency: str, properties: dict[str, str]) -> None:
    """One ``<testsuite name="igsp-chaos">``, one ``<testcase>`` per fault and operation."""
    failures = sum(r.verdict == FAIL for r in results)
    skipped = str(sum(r.verdict == SKIP for r in results))
    total = f"{sum(r.seconds for r in results):.3f}"
    root = ET.Element("testsuites", name="igsp-chaos", tests=str(len(results)), failures=str(failures),
                      errors="0", skipped=skipped, time=total)
    suite = ET.SubElement(root, "testsuite", name="igsp-chaos", tests=str(len(results)), failures=str(failures),
                          errors="0", skipped=skipped, time=total,
                          timestamp=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
                          hostname=socket.gethostname())
    props = ET.SubElement(suite, "properties")
    for key, value in properties.items():
        ET.SubElement(props, "property", name=key, value=value)
    for result in results:
        case = ET.SubElement(suite, "testcase", classname=f"igsp-chaos.{result.fault}", name=result.name,
                             time=f"{result.seconds:.3f}")
        detail = (f"expected {expected_text(result, currency)}, actual {_money(result.actual, currency)}, "
                  f"difference {result.difference}\n" + "\n".join(s.brief() for s in result.steps))
        if result.verdict == FAIL:
            failure = ET.SubElement(case, "failure", message=result.reason, type="MoneyNotReconciled")
            failure.text = detail
        elif result.verdict == SKIP:
            ET.SubElement(case, "skipped", message=result.reason)
        else:
            ET.SubElement(case, "system-out").text = detail
    ET.indent(root)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
