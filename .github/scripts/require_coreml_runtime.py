"""Fail unless CoreML itself produced every CoreML number in the given parity reports.

The macOS CI job exists to run packages on the real CoreML runtime; our MIL executor can
stand in for it elsewhere, so a passing report alone does not say CoreML ran. Each argument is
a parity report written by `edgesam-export parity DIR --json FILE`; its `inputs.runtimes`
names the runtime of every artifact. Exit 1, naming the artifacts, when a `.mlpackage` was run
by anything but the CoreML runtime, or when a report holds no `.mlpackage` at all.

Usage: python .github/scripts/require_coreml_runtime.py parity.json [more.json ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from edgesam_export.device.runtime.coreml import COREML_RUNTIME


def problems(report_path: Path) -> list[str]:
    runtimes = json.loads(report_path.read_text()).get("inputs", {}).get("runtimes", {})
    packages = {name: runtime for name, runtime in runtimes.items() if name.endswith(".mlpackage")}
    if not packages:
        return [f"{report_path}: no CoreML package was run"]
    return [
        f"{report_path}: {name} ran on {runtime!r}, not on {COREML_RUNTIME!r}"
        for name, runtime in sorted(packages.items())
        if runtime != COREML_RUNTIME
    ]


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    found = [line for arg in argv for line in problems(Path(arg))]
    for line in found:
        print(f"CoreML did not run: {line}", file=sys.stderr)
    if not found:
        print(f"CoreML ran every package in {', '.join(argv)}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
