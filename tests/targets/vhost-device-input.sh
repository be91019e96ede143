#!/bin/bash
# A real vhost-user-input back-end: rust-vmm vhost-device-input 0.1.0 (ci/install-devices.sh
# input) over the evdev device VHU_INPUT_EVDEV (default: the first /dev/input/event*). It listens
# on "${1}0" (it appends the event device's index); $1 is made a link to it.
#   usage: vhost-device-input.sh SOCKET_PATH   env: VHU_INPUT_EVDEV, VHU_TARGETS
set -u
. "${VHU_TARGETS:-$(dirname "$0")/../../../shared/targets}/_run.sh"
SOCK=${1:?usage: $0 SOCKET_PATH}
BIN=$(targets_dir)/bin/vhost-device-input
[ -x "$BIN" ] || { echo "$BIN missing: run ci/install-devices.sh input" >&2; exit 127; }
EV=${VHU_INPUT_EVDEV:-$(ls /dev/input/event* 2>/dev/null | head -n1)}
[ -n "$EV" ] && [ -r "$EV" ] || { echo "no evdev device (/dev/input/event*, or VHU_INPUT_EVDEV): vhost-device-input needs one" >&2; exit 127; }
run_suffix0 "$SOCK" "$BIN" --socket-path "$SOCK" --event-list "$EV"
