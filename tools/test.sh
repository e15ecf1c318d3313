#!/bin/bash
# Sets up a fresh Debian 12 machine and runs the whole test suite (unit, integration,
# kill -9 crash test, benchmark smoke runs). Prints a final "N passed, N failed" line
# counting individual test cases.
set -uo pipefail
cd "$(dirname "$0")/.."
tools/install_deps.sh || exit 1

bazel test //... --test_summary=short "$@"
status=$?

# Sum test cases from every JUnit report Bazel wrote (GoogleTest and the Python harness).
python3 - <<'PY'
import glob, xml.etree.ElementTree as ET
passed = failed = 0
for path in glob.glob("bazel-testlogs/**/test.xml", recursive=True):
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        failed += 1
        continue
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed += 1
        elif case.find("skipped") is None and case.get("status", "run") != "notrun":
            passed += 1
print(f"{passed} passed, {failed} failed")
PY
bazel shutdown >/dev/null 2>&1
exit $status
