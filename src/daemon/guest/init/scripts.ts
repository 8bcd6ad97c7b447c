/**
 * The guest-side scripts of the root filesystem, embedded as strings so the daemon bundles into one file.
 * The initrd's own /init, which runs before the root filesystem is mounted, is in initrd.ts.
 *
 * Init choice: BusyBox `init` (from busybox-static, already in the image) is PID 1, driven by
 * {@link INITTAB}. It reaps every orphan (a SIGCHLD handler around waitpid(-1)), respawns sshd, maps
 * SIGUSR2 / Ctrl-Alt-Del to a shutdown that runs our `::shutdown:` script, and starts in milliseconds.
 * A hand-written shell PID 1 reaps only while it sits in `wait` and has no shutdown path of its own;
 * systemd costs ~15 s of boot under TCG; tini is not in Debian's minbase and would still need a
 * supervisor for sshd.
 */
import {
  POWEROFF_COMMAND,
  NO_AGENT_ARG,
  READY_AGENT_SUFFIX,
  READY_MARKER,
  ROOT_SKEL_DIR,
  SEED_DEVICE_FALLBACK,
  SEED_DISK_SERIAL,
  SEED_FILES,
  SEED_MOUNT_DIR,
  WORK_DEVICE_FALLBACK,
  WORK_DISK_SERIAL,
} from './contract.js';
import { AGENT_VSOCK_PORT } from '../../../protocol/agent.js';
import { VSOCK_BRIDGE } from './vsock-bridge.js';

/** Paths of the guest files, inside the root filesystem. */
export const GUEST_PATHS = {
  /** switch_root target: a symlink to /bin/busybox, so busybox runs as `init`. */
  init: '/usr/lib/banger/init',
  inittab: '/etc/inittab',
  sysinit: '/usr/lib/banger/sysinit',
  ready: '/usr/lib/banger/ready',
  runSshd: '/usr/lib/banger/run-sshd',
  runAgent: '/usr/lib/banger/run-agent',
  /** Firecracker guests: the agent's vsock port passed on to its unix socket (vsock-bridge.ts). */
  vsockBridge: '/usr/lib/banger/vsock-bridge.py',
  /** The agent's unix socket when it is reached over vsock. */
  agentSocket: '/run/banger-agent.sock',
  /** The guest agent (bundled for the guest's Node); images built without it fall back to SSH. */
  agent: '/usr/lib/banger/agent.mjs',
  /** Created by the agent once it holds its channel; `ready` waits for it. */
  agentReady: '/run/banger-agent.ready',
  agentLog: '/var/log/banger-agent.log',
  shutdown: '/usr/lib/banger/shutdown',
  poweroff: POWEROFF_COMMAND,
  sshdConfig: '/etc/ssh/sshd_config.d/banger.conf',
  profile: '/etc/profile.d/banger.sh',
} as const;

/** Environment every SSH session gets (sshd `SetEnv` and pam_env's /etc/environment), login shell or not. */
export const GUEST_ENVIRONMENT: Readonly<Record<string, string>> = {
  // mise otherwise waits ~10 s on an update check that cannot reach out.
  MISE_OFFLINE: '1',
};

/** BusyBox init's table. sysinit runs to completion first; `ready` and sshd start right after it. */
export const INITTAB = `# banger guest: BusyBox init (PID 1) reaps orphans, keeps sshd running and powers off on request.
::sysinit:${GUEST_PATHS.sysinit}
::once:${GUEST_PATHS.ready}
::respawn:${GUEST_PATHS.runSshd}
::respawn:${GUEST_PATHS.runAgent}
::ctrlaltdel:${GUEST_PATHS.poweroff}
::shutdown:${GUEST_PATHS.shutdown}
`;

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
  if mount -t ext4 -o noatime "$work_dev" /root; then
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

# install_changed SRC DEST MODE: installs SRC as DEST (root-owned, MODE) unless DEST is a file that already
# holds it (a symlink is replaced).
install_changed() {
  if [ ! -L "$2" ] && cmp -s "$1" "$2"; then
    chown 0:0 "$2" && chmod "$3" "$2"
  else
    install -o 0 -g 0 -m "$3" "$1" "$2"
  fi
}
if [ -s "$seed/${SEED_FILES.hostKey}" ]; then
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

/**
 * Prints the ready marker once something listens on TCP port 22 (IPv4 or IPv6), followed by " agent" when
 * init is starting the guest agent. It does not wait for the agent: Node takes seconds to start under
 * software emulation, and the host uses SSH until the agent answers.
 */
export const READY = `#!/bin/sh
i=0
while [ "$i" -lt 1200 ]; do
  if grep -qs ':0016 [0-9A-F]*:0000 0A' /proc/net/tcp /proc/net/tcp6; then
    break
  fi
  i=$((i + 1))
  sleep 0.05
done
[ "$i" -lt 1200 ] || echo "banger-guest: sshd is not listening after 60 s" >/dev/console
if { [ -f ${SEED_MOUNT_DIR}/${SEED_FILES.agent} ] || [ -f ${GUEST_PATHS.agent} ]; } && command -v node >/dev/null && ! grep -qw ${NO_AGENT_ARG} /proc/cmdline; then
  echo "${READY_MARKER}${READY_AGENT_SUFFIX}" >/dev/console
else
  echo "${READY_MARKER}" >/dev/console
fi
`;

/**
 * Runs the guest agent in the foreground for init to respawn, on the virtio-serial port named banger.0
 * (found by name: there is no udev to make /dev/virtio-ports/ links): the seed's agent (the daemon's own)
 * when the seed carries one, else the image's. Without the agent or its port it
 * idles, so init does not respawn it in a loop.
 *
 * Node takes seconds of CPU to start under software emulation, and boot-to-ready does not need the agent
 * (the first command goes over SSH): the agent starts once sshd listens, at the lowest priority, and takes
 * the normal priority back when it serves (so the commands it runs are not niced). For its idle memory:
 * one malloc arena that returns freed memory early, and a 1 MiB young generation; the agent drops these
 * MALLOC_* variables from the environment its commands get.
 */
export const RUN_AGENT = `#!/bin/sh
# The agent's log is on the root disk and outlives boots: it keeps one rotated copy past 1 MiB.
log=${GUEST_PATHS.agentLog}
if [ "$(stat -c %s "$log" 2>/dev/null || echo 0)" -gt 1048576 ]; then
  mv -f "$log" "$log.1"
fi
exec >>"$log" 2>&1
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
dev=
for n in /sys/class/virtio-ports/*/name; do
  [ -r "$n" ] || continue
  if [ "$(cat "$n")" = banger.0 ]; then
    p=\${n%/name}
    dev=/dev/\${p##*/}
  fi
done
# The seed's agent is the daemon's own (it speaks that daemon's protocol); the image's is the fallback.
agent=${SEED_MOUNT_DIR}/${SEED_FILES.agent}
[ -f "$agent" ] || agent=${GUEST_PATHS.agent}
# No virtio-serial port but a vsock device (Firecracker): the host reaches the agent over vsock, through the
# Python bridge to the agent's unix socket.
# /dev/vsock needs the device's transport module (a virtio vsock device has virtio device id 19).
if [ -z "$dev" ] && [ ! -e /dev/vsock ] && grep -qsx 0x0013 /sys/bus/virtio/devices/*/device; then
  modprobe vmw_vsock_virtio_transport || echo "banger-agent: cannot load vmw_vsock_virtio_transport"
fi
vsock=
if [ -z "$dev" ] && [ -e /dev/vsock ] && command -v python3 >/dev/null; then vsock=1; fi
if [ ! -f "$agent" ] || { [ -z "$dev" ] && [ -z "$vsock" ]; } || ! command -v node >/dev/null; then
  echo "banger-agent: not started (agent, port or node missing)"
  exec sleep 2147483647
fi
case " $(cat /proc/cmdline) " in *" ${NO_AGENT_ARG} "*)
  echo "banger-agent: not started (${NO_AGENT_ARG})"
  exec sleep 2147483647
esac
i=0
while [ "$i" -lt 1200 ] && ! grep -qs ':0016 [0-9A-F]*:0000 0A' /proc/net/tcp /proc/net/tcp6; do
  i=$((i + 1))
  sleep 0.05
done
MALLOC_ARENA_MAX=1 MALLOC_TRIM_THRESHOLD_=65536
export MALLOC_ARENA_MAX MALLOC_TRIM_THRESHOLD_
if [ -n "$vsock" ]; then
  # A bridge left by an agent that init respawned still holds the port and serves the new agent: then this
  # one exits at once.
  python3 ${GUEST_PATHS.vsockBridge} ${AGENT_VSOCK_PORT} ${GUEST_PATHS.agentSocket} &
  rm -f ${GUEST_PATHS.agentSocket}
  exec nice -n 19 node --max-semi-space-size=1 "$agent" --listen ${GUEST_PATHS.agentSocket} --priority 0
fi
exec nice -n 19 node --max-semi-space-size=1 "$agent" \\
  --port "$dev" --ready-file ${GUEST_PATHS.agentReady} --priority 0
`;

/** Runs sshd in the foreground for init to respawn; the pause keeps a failing sshd from spinning. */
export const RUN_SSHD = `#!/bin/sh
/usr/sbin/sshd -D -e
echo "banger-guest: sshd exited with status $?" >/dev/console
sleep 1
`;

/**
 * init's `::shutdown:` action: stop every process, sync, unmount /root, remount / read-only, power off.
 * It powers off itself (BusyBox `poweroff -f`) instead of returning to init, which would add ~2 s of
 * fixed sleeps. `kill -TERM -1` is the shell builtin: it signals everything but this script and PID 1.
 */
export const SHUTDOWN = `#!/bin/sh
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
exec </dev/null >/dev/console 2>&1
echo "banger-guest: shutting down"
others_alive() {
  for p in /proc/[0-9]*; do
    case "\${p#/proc/}" in 1 | $$) continue ;; esac
    # Kernel threads and zombies have no exe.
    [ -e "$p/exe" ] && return 0
  done
  return 1
}
kill -TERM -1 2>/dev/null
i=0
while [ "$i" -lt 50 ] && others_alive; do
  sleep 0.1
  i=$((i + 1))
done
kill -KILL -1 2>/dev/null
sync
if mountpoint -q /root; then
  umount /root || umount -l /root
fi
mount -o remount,ro / || echo "banger-guest: cannot remount / read-only"
sync
echo "banger-guest: power off"
/bin/busybox poweroff -f
`;

/**
 * Clean shutdown, callable over SSH. It returns at once: init starts the shutdown a moment later, so
 * the caller gets this command's exit status before sshd goes away.
 */
export const POWEROFF = `#!/bin/sh
# Powers the guest off cleanly (init runs ${GUEST_PATHS.shutdown}). Returns at once.
setsid -f /bin/sh -c 'sleep 0.3; kill -USR2 1' </dev/null >/dev/null 2>&1
`;

/** Drop-in read before Debian's sshd_config (the first value of a keyword wins). */
export const SSHD_CONFIG = `# banger: key-only root login, no DNS lookups, one host key provided per VM.
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
PrintMotd no
PrintLastLog no
SetEnv ${Object.entries(GUEST_ENVIRONMENT)
  .map(([k, v]) => `${k}=${v}`)
  .join(' ')}
`;

/** Login shells: mise's shims on PATH (per-user, so tools installed with `mise use -g` just work). */
export const PROFILE = `# banger guest defaults for login shells.
${Object.entries(GUEST_ENVIRONMENT)
  .map(([k, v]) => `export ${k}=${v}`)
  .join('\n')}
case ":$PATH:" in
  *":$HOME/.local/share/mise/shims:"*) ;;
  *) PATH="$HOME/.local/share/mise/shims:$PATH" ;;
esac
export PATH
`;

export interface GuestFile {
  path: string;
  mode: number;
  content: string;
}

/** Every script and config file the image build writes into the root filesystem. */
export function guestFiles(): GuestFile[] {
  return [
    { path: GUEST_PATHS.inittab, mode: 0o644, content: INITTAB },
    { path: GUEST_PATHS.sysinit, mode: 0o755, content: SYSINIT },
    { path: GUEST_PATHS.ready, mode: 0o755, content: READY },
    { path: GUEST_PATHS.runAgent, mode: 0o755, content: RUN_AGENT },
    { path: GUEST_PATHS.vsockBridge, mode: 0o644, content: VSOCK_BRIDGE },
    { path: GUEST_PATHS.runSshd, mode: 0o755, content: RUN_SSHD },
    { path: GUEST_PATHS.shutdown, mode: 0o755, content: SHUTDOWN },
    { path: GUEST_PATHS.poweroff, mode: 0o755, content: POWEROFF },
    { path: GUEST_PATHS.sshdConfig, mode: 0o644, content: SSHD_CONFIG },
    { path: GUEST_PATHS.profile, mode: 0o644, content: PROFILE },
    {
      path: '/etc/hosts',
      mode: 0o644,
      content: '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n',
    },
    { path: '/etc/hostname', mode: 0o644, content: 'banger\n' },
    { path: '/etc/fstab', mode: 0o644, content: '# banger: the guest init mounts everything itself.\n' },
    { path: '/etc/motd', mode: 0o644, content: '' },
  ];
}

/** /etc/environment with banger's variables set (pam_env reads it for every SSH session). */
export function withGuestEnvironment(etcEnvironment: string): string {
  const keys = new Set(Object.keys(GUEST_ENVIRONMENT));
  const kept = etcEnvironment.split('\n').filter((l) => l.trim() !== '' && !keys.has(l.split('=')[0]?.trim() ?? ''));
  return [...kept, ...Object.entries(GUEST_ENVIRONMENT).map(([k, v]) => `${k}=${v}`)].join('\n') + '\n';
}
