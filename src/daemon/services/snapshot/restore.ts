import { randomBytes } from 'node:crypto';
import { mkdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { BangerError, ErrorCode } from '../../../errors/index.js';
import type { CommandRunner } from '../../../shared/command.js';
import type { VmPaths } from '../../../shared/paths.js';
import { AgentGuestSession } from '../../guest/agent-session.js';
import { shq } from '../../guest/shell.js';
import { launchVmm, network, writeSeed, type BootStep } from '../vm/boot.js';
import { SPACE_NEEDED, asNoSpace, ensureFreeSpace } from '../vm/disks.js';
import { writeHandles } from '../vm/handles.js';
import { writeHostKey } from '../vm/files.js';
import { qcow2VirtualSize } from '../vm/settings.js';
import {
  SNAPSHOT_FILES,
  VM_RESTORE_FILE,
  addVmSnapshotIds,
  markerState,
  snapshotState,
  writeJson,
  type RestoreMarker,
  type SnapshotRecord,
} from './store.js';

/** What a VM restored from a snapshot is made from: the snapshot and where its files are. */
export interface RestoreSource {
  snapshot: SnapshotRecord;
  dir: string;
}

/**
 * A restored VM's files: qcow2 overlays over the snapshot's frozen root and work disks (nothing is copied),
 * its own SSH host key, the marker that makes its first start resume the saved state, and the snapshot named
 * as one its disks depend on. The caller removes the directory when this fails.
 */
export async function makeRestoredFiles(vp: VmPaths, src: RestoreSource, run: CommandRunner, name: string, signal?: AbortSignal): Promise<void> {
  const what = `create VM '${name}' from snapshot '${src.snapshot.name}'`;
  const needed = SPACE_NEEDED.create(0);
  try {
    await mkdir(vp.dir, { recursive: true, mode: 0o700 });
    await ensureFreeSpace(vp.dir, needed, what);
    const s = src.snapshot;
    if (s.rootFormat === 'raw') {
      // A snapshot by copies (a VMM without disk layers): the VM gets copies of its own, shared blocks where
      // the filesystem has reflinks. It is not layered on the snapshot.
      await run('cp', ['--reflink=auto', '--sparse=always', join(src.dir, SNAPSHOT_FILES.rootRaw), vp.rootDiskRaw], { signal });
      await run('cp', ['--reflink=auto', '--sparse=always', join(src.dir, SNAPSHOT_FILES.work), vp.workDisk], { signal });
    } else {
      await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', join(src.dir, SNAPSHOT_FILES.root), '-F', 'qcow2', vp.rootDisk], { signal });
      await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', join(src.dir, SNAPSHOT_FILES.work), '-F', s.workFormat, vp.workDisk], {
        signal,
      });
      await addVmSnapshotIds(vp.dir, [s.id]);
    }
    const marker: RestoreMarker = {
      snapshotId: s.id,
      state: snapshotState(s, src.dir),
      accel: s.accel,
      agent: s.agent,
      sourceVmName: s.sourceVmName,
      mac: s.mac,
    };
    await writeJson(join(vp.dir, VM_RESTORE_FILE), marker);
    await writeHostKey(vp, name);
  } catch (e) {
    throw asNoSpace(e, vp.dir, what, needed);
  }
}

/** The virtual size of a disk file (qcow2 header, else the file's length). */
export function virtualSize(path: string, size: number): number {
  return qcow2VirtualSize(path) ?? size;
}

/** A tap guest's own place on the bridge: its NIC's MAC, its address with prefix, and the gateway. */
export interface GuestTapIdentity {
  mac: string;
  ipCidr: string;
  gateway: string;
}

/**
 * The shell that gives a resumed guest its own identity: the clock set to `epochMs` (it stood still since the
 * snapshot; in this script rather than the agent's setClock, which would start a process of its own), the RNG
 * reseeded from fresh host bytes (written to
 * /dev/urandom, then RNDRESEEDCRNG so the next read uses them), hostname, machine-id, and sshd re-read
 * (SIGHUP: it re-executes itself and loads the new host key the agent wrote just before).
 *
 * Under loopback networking the MAC stays the snapshot's (the NIC's saved state carries it; a guest-side change
 * broke the restored guest's user-mode network in a test here, and no one outside the VM sees it). A tap guest
 * (`tap`) shares the bridge with its source and siblings, whose taps pass only their own MAC and address: it
 * takes its new ones first, in one `ip` process (virtio-net passes the MAC change to QEMU's receive filter).
 */
export function identityScript(o: { name: string; machineId: string; seedHex: string; epochMs: number; tap?: GuestTapIdentity }): string {
  return [
    'set -u',
    ...(o.tap ? [tapScript(o.tap)] : []),
    clockScript(o.epochMs),
    // perl-base is in every Debian system and starts several times faster than python3 in an emulated guest.
    `perl -e 'open(my $f, ">", "/dev/urandom") or die "urandom: $!"; syswrite($f, pack("H*", $ARGV[0])) or die "write: $!"; ioctl($f, 0x5207, 0) or die "RNDRESEEDCRNG: $!"' ${o.seedHex}`,
    hostnameScript(o.name),
    `echo ${o.machineId} >/etc/machine-id`,
    'if [ -s /run/sshd.pid ]; then read -r sshd </run/sshd.pid && kill -HUP "$sshd"; fi',
    'true',
  ].join('\n');
}

/** The shell that moves a resumed tap guest's eth0 to its own MAC and address (the old ones are its source's). */
export function tapScript(t: GuestTapIdentity): string {
  if (!/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i.test(t.mac) || !/^\d{1,3}(\.\d{1,3}){3}\/\d{1,2}$/.test(t.ipCidr) || !/^\d{1,3}(\.\d{1,3}){3}$/.test(t.gateway))
    throw new BangerError(ErrorCode.Internal, `bad tap identity ${JSON.stringify(t)}`);
  return [
    "ip -batch - <<'EOF'",
    `link set dev eth0 address ${t.mac}`,
    'addr flush dev eth0 scope global',
    `addr add ${t.ipCidr} dev eth0`,
    `route replace default via ${t.gateway} dev eth0`,
    'neigh flush dev eth0',
    'EOF',
  ].join('\n');
}

/** The shell line that sets a guest's wall clock to `epochMs` (GNU date takes fractional epoch seconds). */
export function clockScript(epochMs: number): string {
  return `date -u -s @${(epochMs / 1000).toFixed(3)} >/dev/null`;
}

/**
 * The shell that renames a running guest: its hostname, /etc/hostname and banger's line in /etc/hosts. Shell
 * builtins only (no sed): each process started costs tens of milliseconds in an emulated guest, and a warm
 * pool's hand-over waits for this.
 */
export function hostnameScript(
  name: string,
  files = { kernel: '/proc/sys/kernel/hostname', hostname: '/etc/hostname', hosts: '/etc/hosts' },
): string {
  return [
    `echo ${shq(name)} >${shq(files.kernel)}`,
    `echo ${shq(name)} >${shq(files.hostname)}`,
    // The lines other than banger's, kept in a variable: /etc/hosts is rewritten in place, with no temp file
    // to move (mv would be another process).
    `nl='\n'`,
    `hosts=`,
    `while IFS= read -r l || [ -n "$l" ]; do case "$l" in *'# banger') ;; *) hosts="$hosts$l$nl" ;; esac; done <${shq(files.hosts)}`,
    `printf '%s%s\\n' "$hosts" ${shq(`127.0.1.1 ${name} # banger`)} >${shq(files.hosts)}`,
  ].join('\n');
}

/**
 * The steps of a restored VM's first start, in place of a boot: the saved accelerator, its network and seed,
 * the VMM resuming the saved state, then a new identity through the guest agent. The VM is ready once the agent
 * has answered: the daemon's SSH connection (workspaces, a stop's poweroff) is made on first use
 * (LiveVms.session), checking the new host key. Made here, it cost a restore ~1 s, and a fork of 4 ~2.5 s on 2
 * host cores, of guest CPU spent on a handshake nobody had asked for yet.
 */
export function restoreSteps(marker: RestoreMarker): BootStep[] {
  return [
    {
      name: 'choose accelerator',
      async run(b) {
        // The saved CPU state is of this accelerator's CPU model; another one would not load it.
        b.accel = marker.accel;
        b.incoming = markerState(marker);
      },
    },
    network,
    writeSeed,
    { name: 'launch', run: launchVmm },
    {
      name: 'load saved state',
      async run(b, d) {
        const snaps = b.driver.snapshots;
        if (!snaps) throw new BangerError(ErrorCode.FailedPrecondition, `the ${b.driver.name} driver cannot restore snapshots`);
        if (marker.agent && b.driver.features.has('virtioSerial')) {
          b.live!.hasAgent = true;
          // Connected before the state loads, so the guest resumes with the host end of its port still
          // connected. Connecting after would make the guest see its host end close and open again: the
          // agent's read ends, and what the daemon sent meanwhile is discarded with the closed port (seen
          // here as a first hello lost 4 times in 10 restores). Its greeting waits in QEMU until the guest
          // runs, and restarts the agent's saved connection in place (AGENT_SYNC, protocol/agent.ts).
          d.live.agent(b.vm, b.signal, { firstHelloMs: Math.max(10_000, b.deadline - Date.now()) }).catch(() => {});
        }
        await snaps.waitRestored(b.live!.handle, b.deadline, b.signal);
        // Over vsock (Firecracker) the host connects once the guest runs: the identity step below does.
        if (marker.agent && !b.driver.features.has('virtioSerial') && b.driver.features.has('vsock')) b.live!.hasAgent = true;
        if (b.live!.hasAgent) await writeHandles(b.vp.handles, { ...b.live!.handle, agent: true });
      },
    },
    {
      name: 'new identity',
      async run(b, d) {
        if (!b.live!.hasAgent)
          throw new BangerError(ErrorCode.FailedPrecondition, `the snapshot's guest has no agent: banger cannot give the restored VM its own identity`);
        // The connection made before the state loaded (an agent older than restarts drops it and serves the retry).
        const agent = await d.live.agent(b.vm, b.signal);
        const opts = { signal: b.signal, timeoutMs: 30_000 };
        // The two key files side by side (the script below HUPs sshd, so it comes after them).
        await Promise.all([
          readFile(b.vp.hostKeyPrivate).then((k) => agent.writeFile('/etc/ssh/ssh_host_ed25519_key', Buffer.from(k), 0o600, opts)),
          readFile(b.vp.hostKeyPublic).then((k) => agent.writeFile('/etc/ssh/ssh_host_ed25519_key.pub', Buffer.from(k), 0o644, opts)),
        ]);
        const script = identityScript({
          name: b.vm.name,
          machineId: randomBytes(16).toString('hex'),
          seedHex: randomBytes(64).toString('hex'),
          // As late as possible: the clock is set when the script runs, a guest process start after this.
          epochMs: Date.now(),
          tap: b.vm.networkMode === 'tap' ? { mac: b.vm.mac, ipCidr: b.net!.ipCidr, gateway: b.net!.gateway } : undefined,
        });
        const r = await new AgentGuestSession(agent).exec(script, { signal: b.signal });
        if (r.code !== 0)
          throw new BangerError(ErrorCode.Internal, `giving the restored guest its identity failed (exit ${r.code}): ${r.stderr.toString().trim()}`);
        await rm(join(b.vp.dir, VM_RESTORE_FILE), { force: true });
      },
    },
  ];
}
