import type { GuestFile } from './scripts.js';

/**
 * Docker in the guest, started on first use: nothing of it runs at boot (under TCG dockerd and containerd
 * would take seconds of CPU from every start). `/usr/local/bin/docker` (ahead of /usr/bin on PATH) starts
 * dockerd once, waits for its socket, then runs the real client. Installed only in images that have dockerd.
 */

export const DOCKER_PATHS = {
  shim: '/usr/local/bin/docker',
  start: '/usr/local/sbin/banger-dockerd-start',
  daemonJson: '/etc/docker/daemon.json',
} as const;

/** Images, containers and build cache live on the VM's work disk (sized per VM, grown with `vm set`). */
export const DOCKER_DATA_ROOT = '/root/.local/share/docker';

const START = `#!/bin/sh
# banger: start containerd, then dockerd, once, and wait until dockerd serves its API. containerd is started
# here rather than by dockerd, whose wait for it is too short under software emulation.
# The docker command runs this first; other clients of /run/docker.sock can run it themselves.
running() { [ -S /run/docker.sock ] && [ -r /run/docker.pid ] && kill -0 "$(cat /run/docker.pid)" 2>/dev/null; }
running && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "docker: dockerd is not running; start it as root with $0" >&2
  exit 1
fi
exec 9>/run/banger-dockerd.lock
flock 9
running && exit 0
# wait_for WHAT SECONDS TEST...: polls TEST until it passes, or fails naming WHAT and its log.
wait_for() {
  what=$1 limit=$(($2 * 4)) n=0
  shift 2
  until "$@"; do
    n=$((n + 1))
    if [ "$n" -gt "$limit" ]; then
      echo "docker: $what did not start within $((limit / 4)) s; see /var/log/$what.log" >&2
      exit 1
    fi
    sleep 0.25
  done
}
ctr=/run/containerd/containerd.sock
if ! [ -S "$ctr" ]; then
  setsid /usr/bin/containerd >/var/log/containerd.log 2>&1 </dev/null &
  wait_for containerd 180 test -S "$ctr"
fi
pkill -x dockerd 2>/dev/null
setsid /usr/sbin/dockerd --containerd="$ctr" >/var/log/dockerd.log 2>&1 </dev/null &
wait_for dockerd 300 grep -q 'API listen on' /var/log/dockerd.log
running
`;

const SHIM = `#!/bin/sh
# banger: dockerd starts on first use; see ${DOCKER_PATHS.start}.
${DOCKER_PATHS.start} || exit $?
exec /usr/bin/docker "$@"
`;

export function dockerGuestFiles(): GuestFile[] {
  return [
    { path: DOCKER_PATHS.start, mode: 0o755, content: START },
    { path: DOCKER_PATHS.shim, mode: 0o755, content: SHIM },
    { path: DOCKER_PATHS.daemonJson, mode: 0o644, content: JSON.stringify({ 'data-root': DOCKER_DATA_ROOT }, null, 2) + '\n' },
  ];
}
