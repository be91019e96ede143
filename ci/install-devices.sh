#!/bin/bash
# Installs the rust-vmm vhost-device back-ends of the devices beyond ../shared/targets (issue 17),
# from crates.io, for the end-to-end tests tests/<device>_real.rs. Idempotent; shares the cargo
# target directory of ../shared/targets/install.sh so the common rust-vmm crates build once.
#   usage: ci/install-devices.sh [DEVICE...]   DEVICE: console sound scmi input gpio i2c gpu
#                                               (default: all that build here)
#   env:   VHU_TARGETS_DIR  where the programs go (default: ~/.cache/vhu-targets, bin/ under it)
set -euo pipefail
DIR=${VHU_TARGETS_DIR:-$HOME/.cache/vhu-targets}
PARTS=" ${*:-console sound scmi input gpio i2c gpu} "
want() { [[ "$PARTS" == *" $1 "* ]]; }
log() { printf '[devices] %s\n' "$*"; }
mkdir -p "$DIR"
cargo_install() { # CRATE VERSION [EXTRA...]
  local name=$1 ver=$2; shift 2
  if [ -x "$DIR/bin/$name" ] && [ -f "$DIR/bin/.$name-$ver" ]; then return 0; fi
  log "cargo: $name $ver (a few minutes on 2 cores; log: $DIR/cargo-$name.log)"
  CARGO_TARGET_DIR="$DIR/target" timeout 1200 cargo install --locked --root "$DIR" "$name" --version "$ver" "$@" \
    > "$DIR/cargo-$name.log" 2>&1 || { log "cargo: $name failed, see $DIR/cargo-$name.log"; exit 1; }
  touch "$DIR/bin/.$name-$ver"
}
want console && cargo_install vhost-device-console 0.1.0
want sound && cargo_install vhost-device-sound 0.3.0 --no-default-features
want scmi && cargo_install vhost-device-scmi 0.4.0
want input && cargo_install vhost-device-input 0.1.0
# vhost-device-gpio 0.1.0 (the only release) needs libgpiod >= 2 to build (Debian 12 has 1.6)
# and a kernel GPIO chip (/dev/gpiochipN, gpio-sim) to run: neither is here, so it is not
# installed, and there is no tests/gpio_real.rs (README, "vhost-device-gpio").
want gpio && log "gpio: vhost-device-gpio 0.1.0 needs libgpiod >= 2 and /dev/gpiochipN: not installed"
want i2c && cargo_install vhost-device-i2c 0.1.0
# The null renderer only: Debian 12's libvirglrenderer-dev (0.10.4) is older than the bindings of
# the virglrenderer crate the virgl back-end needs, and gfxstream is not packaged.
# rutabaga_gfx's build looks for these even without a renderer (what the build here had).
gpu_deps() {
  local missing=()
  for p in pkg-config libclang-dev libdrm-dev libepoxy-dev; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  log "apt: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 apt-get update -qq && timeout 1200 apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
}
want gpu && { gpu_deps; cargo_install vhost-device-gpu 0.2.0 --no-default-features; }
true
