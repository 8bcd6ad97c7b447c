/**
 * The guest's boot-time setup script, run by BusyBox init (see INITTAB in scripts.ts) before sshd starts.
 */
import {
  ROOT_SKEL_DIR,
  SEED_DEVICE_FALLBACK,
  SEED_DISK_SERIAL,
  SEED_FILES,
  SEED_MOUNT_DIR,
  WORK_DEVICE_FALLBACK,
  WORK_DISK_SERIAL,
} from './contract.js';
import { INSTALL_CHANGED_FN } from '../shell.js';

/**
 * Boot-time setup (POSIX sh): mounts, seed, hostname, work disk at /root, SSH keys, network.
 * Never exits early: a missing piece is reported on the console and the rest still runs, so SSH
 * comes up whenever it can.
 */
export const SYSINIT = `#!/bin/sh
# banger guest setup, run once by init before sshd starts.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
umask 022
exec </dev/null >/dev/console 2>&1
say() { echo "banger-guest: $*"; }

mountpoint -q /proc || mount -t proc -o nosuid,nodev,noexec proc /proc
mountpoint -q /sys || mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mountpoint -q /dev || mount -t devtmpfs -o mode=0755,nosuid devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o nosuid,noexec,gid=5,mode=0620,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /dev/shm
ln -sfn /proc/self/fd /dev/fd
ln -sfn /proc/self/fd/0 /dev/stdin
ln -sfn /proc/self/fd/1 /dev/stdout
ln -sfn /proc/self/fd/2 /dev/stderr
mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs /run
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /tmp
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup 2>/dev/null
mkdir -p /run/lock /run/sshd
chmod 0755 /run/sshd

if [ ! -s /etc/machine-id ] || grep -q uninitialized /etc/machine-id; then
  tr -d '-' </proc/sys/kernel/random/uuid >/etc/machine-id
fi

# Disks are found by their virtio serial; by name only when no disk carries a banger serial.
have_serials=0
for s in /sys/block/vd*/serial; do
  case "$(cat "$s" 2>/dev/null)" in banger-*) have_serials=1 ;; esac
done
find_disk() { # serial fallback-device
  if [ "$have_serials" = 1 ]; then
    for s in /sys/block/vd*/serial; do
      if [ "$(cat "$s" 2>/dev/null)" = "$1" ]; then
        d=\${s%/serial}
        echo "/dev/\${d##*/}"
        return
      fi
    done
  elif [ -b "$2" ]; then
    echo "$2"
  fi
}

seed=${SEED_MOUNT_DIR}
mkdir -p "$seed"
chmod 0700 "$seed"
seed_dev=$(find_disk ${SEED_DISK_SERIAL} ${SEED_DEVICE_FALLBACK})
if [ -n "$seed_dev" ]; then
  tar -xf "$seed_dev" -C "$seed" || say "cannot read the seed disk $seed_dev"
else
  say "no seed disk"
fi
if [ -f "$seed/${SEED_FILES.env}" ]; then
  if sh -n "$seed/${SEED_FILES.env}"; then
    . "$seed/${SEED_FILES.env}"
  else
    say "seed env is not valid shell; ignored"
  fi
fi

# Files on the root disk are written only when they change: a VM started a thousand times does not
# rewrite (and so reallocate) them a thousand times in its copy-on-write overlay.
if [ -n "$BANGER_HOSTNAME" ]; then
  echo "$BANGER_HOSTNAME" >/proc/sys/kernel/hostname
  [ "$(cat /etc/hostname 2>/dev/null)" = "$BANGER_HOSTNAME" ] || echo "$BANGER_HOSTNAME" >/etc/hostname
  if [ "$(grep '# banger$' /etc/hosts 2>/dev/null)" != "127.0.1.1 $BANGER_HOSTNAME # banger" ]; then
    sed -i '/# banger$/d' /etc/hosts
    echo "127.0.1.1 $BANGER_HOSTNAME # banger" >>/etc/hosts
  fi
fi

work_dev=$(find_disk ${WORK_DISK_SERIAL} ${WORK_DEVICE_FALLBACK})
if [ -n "$work_dev" ]; then
  e2fsck -p "$work_dev" >/dev/null 2>&1
  rc=$?
  [ $((rc & 4)) -ne 0 ] && say "e2fsck left errors on $work_dev (exit $rc)"
  # discard: blocks the guest frees (a workspace an import replaced, a deleted build tree) are released in the
  # host's sparse file (QEMU's drive has discard=unmap), so the disk keeps costing what it holds.
  if mount -t ext4 -o noatime,discard "$work_dev" /root; then
    if [ -z "$(ls -A /root | grep -vx 'lost+found')" ]; then
      cp -a ${ROOT_SKEL_DIR}/. /root/
    fi
    chmod 0700 /root
  else
    say "cannot mount the work disk $work_dev; /root is on the root disk"
  fi
else
  say "no work disk; /root is on the root disk"
fi

# install_changed SRC DEST MODE: DEST becomes a root-owned copy of SRC, rewritten only when it differs.
${INSTALL_CHANGED_FN}if [ -s "$seed/${SEED_FILES.hostKey}" ]; then
  install_changed "$seed/${SEED_FILES.hostKey}" /etc/ssh/ssh_host_ed25519_key 0600
  install_changed "$seed/${SEED_FILES.hostKeyPub}" /etc/ssh/ssh_host_ed25519_key.pub 0644
elif [ ! -s /etc/ssh/ssh_host_ed25519_key ]; then
  say "no host key in the seed; generating one"
  ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key
fi
mkdir -p /root/.ssh
chmod 0700 /root/.ssh
if [ -f "$seed/${SEED_FILES.authorizedKeys}" ]; then
  install_changed "$seed/${SEED_FILES.authorizedKeys}" /root/.ssh/authorized_keys 0600
fi

ip link set lo up
if [ -e /sys/class/net/eth0 ]; then
  ip link set eth0 up
  [ -n "$BANGER_IP" ] && ip addr add "$BANGER_IP" dev eth0
  [ -n "$BANGER_GW" ] && ip route add default via "$BANGER_GW" dev eth0
else
  say "no network interface eth0"
fi
resolv=
for ns in $(echo "$BANGER_DNS" | tr ',' ' '); do
  resolv="\${resolv}nameserver $ns
"
done
if [ -L /etc/resolv.conf ] || [ ! -f /etc/resolv.conf ] || [ "$(cat /etc/resolv.conf)" != "\${resolv%?}" ]; then
  rm -f /etc/resolv.conf
  printf '%s' "$resolv" >/etc/resolv.conf
fi
exit 0
`;
