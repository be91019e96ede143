#!/bin/bash
# ../shared/targets/dpdk-testpmd.sh with the vhost PMD's iommu-support=1: DPDK 22.11 testpmd offers
# VIRTIO_F_IOMMU_PLATFORM (bit 33) and translates ring and descriptor addresses through the IOTLB
# (tests/iotlb_dpdk.rs). Same io forwarding in the loop topology, no hugepages.
#   usage: dpdk-testpmd-iommu.sh SOCKET_PATH   env: VHU_TARGETS (default ../../../shared/targets)
set -u
. "${VHU_TARGETS:-$(dirname "$0")/../../../shared/targets}/_run.sh"
SOCK=${1:?usage: $0 SOCKET_PATH}
command -v dpdk-testpmd > /dev/null || { echo "dpdk-testpmd missing: run ../shared/targets/install.sh net" >&2; exit 127; }
PREFIX=vhuio$$
rm -f "$SOCK"
_CLEANUP='rm -rf "/var/run/dpdk/$PREFIX"'
run_child dpdk-testpmd --file-prefix="$PREFIX" --no-huge -m 512 --no-pci \
  --vdev "net_vhost0,iface=$SOCK,queues=1,iommu-support=1" \
  -- --forward-mode=io --port-topology=loop --total-num-mbufs=2048 --stats-period=3600 --no-mlockall
