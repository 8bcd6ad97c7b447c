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
  SEED_FILES,
  SEED_MOUNT_DIR,
} from './contract.js';
import { AGENT_VSOCK_PORT } from '../../../protocol/agent.js';
import { GUEST_MISE_ENV } from '../../../protocol/mise.js';
import { VSOCK_BRIDGE } from './vsock-bridge.js';
import { SYSINIT } from './sysinit.js';

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
export const GUEST_ENVIRONMENT: Readonly<Record<string, string>> = { ...GUEST_MISE_ENV };

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
