/**
 * The initrd's /init: the one script that runs in the initramfs, before the root filesystem is mounted,
 * and hands over to the root filesystem's init (scripts.ts) with switch_root. Embedded as a string so the
 * daemon bundles into one file; the image build writes it into the initrd (image/tree.ts).
 */
import { PROBE_ARG, PROBE_MARKER, ROOT_DEVICE } from './contract.js';
import { GUEST_PATHS } from './scripts.js';

/**
 * The initrd's /init (BusyBox sh): loads the virtio modules named in `modules` (file names under
 * /lib/modules of the initrd, in load order), waits for the root disk, mounts it and switch_roots into
 * the guest's init. With `banger.probe=1` on the command line it prints the probe marker and powers off.
 */
export function initrdInit(modules: readonly string[]): string {
  return `#!/bin/busybox sh
# banger initrd: load the virtio drivers, mount the root disk, hand over to the real init.
/bin/busybox mkdir -p /proc /sys /dev /newroot /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -t devtmpfs -o mode=0755,nosuid devtmpfs /dev

say() { echo "banger-initrd: $*" >/dev/console; }
die() {
  say "$*"
  usleep 200000
  poweroff -f
}

root=${ROOT_DEVICE}
fstype=ext4
mode=rw
init=${GUEST_PATHS.init}
probe=0
mmio=
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    root=*) root="\${arg#root=}" ;;
    rootfstype=*) fstype="\${arg#rootfstype=}" ;;
    ro) mode=ro ;;
    rw) mode=rw ;;
    init=*) init="\${arg#init=}" ;;
    virtio_mmio.device=*) mmio="$mmio \${arg#virtio_mmio.}" ;;
    ${PROBE_ARG}) probe=1 ;;
  esac
done

if [ "$probe" = 1 ]; then
  echo "${PROBE_MARKER}" >/dev/console
  # Let the UART drain before the machine goes away.
  usleep 100000
  poweroff -f
fi

# Devices a VMM lists on the command line (Firecracker: virtio_mmio.device=SIZE@ADDR:IRQ) are the
# virtio_mmio module's parameters; insmod does not read the command line, so they are passed to it.
for m in ${modules.join(' ')}; do
  params=
  case "$m" in */virtio_mmio.ko*) params=$mmio ;; esac
  insmod "/lib/modules/$m" $params || say "insmod $m failed"
done

i=0
while [ ! -b "$root" ]; do
  i=$((i + 1))
  [ "$i" -gt 1000 ] && die "root device $root did not appear"
  usleep 10000
done

mount -t "$fstype" -o "$mode" "$root" /newroot || die "cannot mount $root ($fstype, $mode)"
[ -e "/newroot$init" ] || [ -L "/newroot$init" ] || die "no $init on $root"

mount -o move /dev /newroot/dev
mount -o move /sys /newroot/sys
mount -o move /proc /newroot/proc
exec switch_root /newroot "$init"
`;
}
