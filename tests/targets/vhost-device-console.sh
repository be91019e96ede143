#!/bin/bash
# A real vhost-user-console back-end: rust-vmm vhost-device-console 0.1.0 (ci/install-devices.sh
# console) with its `network` back-end: port 0's host side is the TCP port VHU_CONSOLE_TCP_PORT
# (default 12345) on 127.0.0.1, where vhu-conform --console-tcp reads what the guest writes. It
# listens on "${1}0" (it appends 0); $1 is made a link to it. Keeps serving after a front-end
# leaves.
#   usage: vhost-device-console.sh SOCKET_PATH   env: VHU_CONSOLE_TCP_PORT, VHU_TARGETS
set -u
. "${VHU_TARGETS:-$(dirname "$0")/../../../shared/targets}/_run.sh"
SOCK=${1:?usage: $0 SOCKET_PATH}
BIN=$(targets_dir)/bin/vhost-device-console
[ -x "$BIN" ] || { echo "$BIN missing: run ci/install-devices.sh console" >&2; exit 127; }
run_suffix0 "$SOCK" "$BIN" --socket-path "$SOCK" --backend network --tcp-port "${VHU_CONSOLE_TCP_PORT:-12345}"
