#!/usr/bin/env bash
# Gate a back-end project's CI on vhu-conform.
#
#   ci/vhu-gate.sh --spawn 'path/to/my-backend --socket-path {socket}' [more vhu-conform options]
#
# Builds vhu-conform from this checkout (or uses $VHU_CONFORM if set), runs the suite against the
# back-end, writes the JUnit and JSON reports to $VHU_REPORT_DIR (default: vhu-report/) and exits
# with vhu-conform's exit code: 0 all applicable scenarios passed, 1 conformance failures, 2 usage
# error, 3 setup error (back-end never reached), 4 nothing ran.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
report_dir=${VHU_REPORT_DIR:-vhu-report}
mkdir -p "$report_dir"
if [ -z "${VHU_CONFORM:-}" ]; then
  cargo build --release --manifest-path "$here/Cargo.toml" --bin vhu-conform >&2
  VHU_CONFORM="$here/target/release/vhu-conform"
fi
set +e
"$VHU_CONFORM" --junit "$report_dir/junit.xml" --json-report "$report_dir/report.json" "$@"
code=$?
set -e
echo "vhu-conform exit code: $code (reports in $report_dir/)" >&2
exit "$code"
