"""Per Airflow minor: how many compatibility tests ran, passed, failed and were skipped.

Reads the junit XML files ``scripts/test.sh`` and ``scripts/compat.sh`` write in ``.compat/``:
``junit-3.3.xml`` is the full suite on Airflow 3.3 (its ``tests/compat`` and
``tests/test_airflow_compat.py`` cases are the 3.3 row), ``junit-<minor>.xml`` the
compatibility suite in that minor's venv. Exits 1 when a minor ran no test, or any failed or
was skipped: nothing is skipped on a supported version. The last line is the whole run's
``N passed, N failed``.

usage: python scripts/compat_summary.py DIR
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

COMPAT = ("tests.compat.", "tests.test_airflow_compat")
#: what each minor supports (airflow_compat.FEATURES, kept in the README's table)
SCOPE = {"3.0": "the XCom backend only", "3.1": "everything", "3.2": "everything", "3.3": "everything"}


def counts(path: Path, only_compat: bool) -> dict[str, int]:
    result = {"ran": 0, "passed": 0, "failed": 0, "skipped": 0}
    for case in ET.parse(path).getroot().iter("testcase"):
        if only_compat and not case.get("classname", "").startswith(COMPAT):
            continue
        outcome = {child.tag for child in case}
        if "skipped" in outcome:
            result["skipped"] += 1
            continue
        result["ran"] += 1
        if outcome & {"failure", "error"}:
            result["failed"] += 1
        else:
            result["passed"] += 1
    return result


def version_of(path: Path) -> str:
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    name = suite.get("name", "") if suite is not None else ""
    return name.removeprefix("airflow-") if name.startswith("airflow-") else ""


def main(folder: str) -> int:
    root = Path(folder)
    ok = True
    total_passed = total_failed = 0
    print("Airflow compatibility suite (tests/compat, tests/test_airflow_compat.py), per minor:")
    for minor in ("3.3", "3.2", "3.1", "3.0"):
        path = root / f"junit-{minor}.xml"
        if not path.exists():
            print(f"  Airflow {minor}:  NOT RUN ({path} is missing)")
            ok = False
            continue
        full = minor == "3.3"
        c = counts(path, only_compat=full)
        version = version_of(path) or minor
        where = "in the full suite" if full else f".compat/{minor}"
        print(
            f"  Airflow {version:<6} ({SCOPE[minor]}, {where}): {c['ran']} ran, {c['passed']} passed, "
            f"{c['failed']} failed, {c['skipped']} skipped"
        )
        ok &= c["ran"] > 0 and c["failed"] == 0 and c["skipped"] == 0
        if full:  # the whole suite counts once, with its compat cases
            c = counts(path, only_compat=False)
        total_passed += c["passed"]
        total_failed += c["failed"]
    if not ok:
        print("compatibility: a supported Airflow minor failed, skipped or ran no test")
    print(f"total: {total_passed} passed, {total_failed} failed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ".compat"))
