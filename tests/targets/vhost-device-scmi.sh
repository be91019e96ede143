#!/bin/bash
# A real vhost-user-scmi back-end: rust-vmm vhost-device-scmi 0.4.0 (ci/install-devices.sh scmi),
# an SCMI platform with the BASE and SENSOR protocols over one fake accelerometer. It listens on
# SOCKET_PATH itself (no "0" suffix). Two queues (cmdq, eventq: it offers P2A_CHANNELS),
# REPLY_ACK, no CONFIG; keeps serving after a front-end leaves.
#   usage: vhost-device-scmi.sh SOCKET_PATH   env: VHU_TARGETS (default ../../../shared/targets)
set -u
. "${VHU_TARGETS:-$(dirname "$0")/../../../shared/targets}/_run.sh"
SOCK=${1:?usage: $0 SOCKET_PATH}
BIN=$(targets_dir)/bin/vhost-device-scmi
[ -x "$BIN" ] || { echo "$BIN missing: run ci/install-devices.sh scmi" >&2; exit 127; }
rm -f "$SOCK"
# The fake sensor names fd 1 as its notification fd and the daemon adds it to epoll, which
# refuses a regular file (EPERM, a panic at start): stdout goes through a pipe.
exec 1> >(cat >&2)
run_child "$BIN" --socket-path "$SOCK" --device fake,name=vhu-fake0
