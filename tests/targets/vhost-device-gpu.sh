#!/bin/bash
# A real vhost-user-gpu back-end: rust-vmm vhost-device-gpu 0.2.0 built with --no-default-features
# (ci/install-devices.sh gpu): the null renderer only, since Debian 12's virglrenderer 0.10.4 is
# older than the virglrenderer crate's bindings need. Listens on $1, keeps serving.
# Queues: 0 control, 1 cursor; GPU_SET_SOCKET hands it the vhost-user-gpu socket.
#   usage: vhost-device-gpu.sh SOCKET_PATH   env: VHU_TARGETS (default ../../../shared/targets)
set -u
. "${VHU_TARGETS:-$(dirname "$0")/../../../shared/targets}/_run.sh"
SOCK=${1:?usage: $0 SOCKET_PATH}
BIN=$(targets_dir)/bin/vhost-device-gpu
[ -x "$BIN" ] || { echo "$BIN missing: run ci/install-devices.sh gpu" >&2; exit 127; }
rm -f "$SOCK"
run_child "$BIN" --socket-path "$SOCK" --gpu-mode null
