#!/usr/bin/env bash
# The CI templates' steps, run by this project's own CI so they are known to work: the gate
# script (ci/vhu-gate.sh, what ci/github-actions.yml and ci/gitlab-ci.yml call) against
#   1. the bundled reference back-end: exit 0, JUnit and JSON reports written and well formed;
#   2. the bundled back-end with a fault: exit 1, the failure in the JUnit report;
#   3. qemu-storage-daemon with ci/expect/qemu-storage-daemon.toml: exit 0 (its known departures
#      expected, each with its reason), anything new would fail it.
# Uses $VHU_CONFORM if set (CI passes the binary `cargo test` built), else the gate builds one.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
gate="$here/ci/vhu-gate.sh"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -z "${VHU_CONFORM:-}" ]; then
  cargo build --release --manifest-path "$here/Cargo.toml" --bin vhu-conform >&2
  export VHU_CONFORM="$here/target/release/vhu-conform"
fi
mock="'$VHU_CONFORM' mock-backend --socket-path {socket} --shmem 0:0x100000"
fail() { echo "ci/self-test.sh: $*" >&2; exit 1; }

echo "== gate against the bundled reference back-end" >&2
VHU_REPORT_DIR="$work/mock" "$gate" --spawn "$mock" >"$work/mock.out" 2>&1 \
  || { cat "$work/mock.out" >&2; fail "the gate failed against the reference back-end"; }
grep -q '<testsuites' "$work/mock/junit.xml" || fail "no JUnit report"
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); assert r["schema_version"]==1 and r["totals"]["fail"]==0' \
  "$work/mock/report.json" || fail "JSON report malformed or not all passed"

echo "== gate against the reference back-end with fault ignore-rem-mem-reg: must fail" >&2
set +e
VHU_REPORT_DIR="$work/fault" "$gate" --spawn "$mock --fault ignore-rem-mem-reg" memory >"$work/fault.out" 2>&1
code=$?
set -e
[ "$code" -eq 1 ] || { cat "$work/fault.out" >&2; fail "expected exit 1 with a fault, got $code"; }
grep -q 'R-MEM-11' "$work/fault/junit.xml" || fail "the failure is not in the JUnit report"

echo "== gate against qemu-storage-daemon with its expectations" >&2
command -v qemu-storage-daemon >/dev/null || fail "qemu-storage-daemon is not installed (apt-get install qemu-utils)"
qsd="$here/../shared/targets/qemu-storage-daemon.sh"
[ -x "$qsd" ] || fail "$qsd not found: the qemu-storage-daemon target script is needed"
VHU_REPORT_DIR="$work/qsd" "$gate" --spawn "$qsd {socket}" --device blk \
  --expect "$here/ci/expect/qemu-storage-daemon.toml" --strict-expectations >"$work/qsd.out" 2>&1 \
  || { cat "$work/qsd.out" >&2; fail "the gate failed against qemu-storage-daemon: a new departure, or a stale expectation"; }
grep -E '^[0-9]+ passed' "$work/qsd.out" >&2
echo "ci/self-test.sh: all three gates behaved as the templates promise" >&2
