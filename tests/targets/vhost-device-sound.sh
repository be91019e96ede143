#!/bin/bash
# A real vhost-user-sound back-end: rust-vmm vhost-device-sound 0.3.0 built with
# --no-default-features (ci/install-devices.sh sound), the null audio back-end: output frames are
# dropped, input gets nothing. Two streams (0 output, 1 input), no jack, two channel maps.
# Listens on $1 and keeps serving front-ends one after another.
#   usage: vhost-device-sound.sh SOCKET_PATH   env: VHU_TARGETS (default ../../../shared/targets)
set -u
. "${VHU_TARGETS:-$(dirname "$0")/../../../shared/targets}/_run.sh"
SOCK=${1:?usage: $0 SOCKET_PATH}
BIN=$(targets_dir)/bin/vhost-device-sound
[ -x "$BIN" ] || { echo "$BIN missing: run ci/install-devices.sh sound" >&2; exit 127; }
rm -f "$SOCK"
run_child "$BIN" --socket "$SOCK" --backend null
