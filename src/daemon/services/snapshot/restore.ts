import { randomBytes } from 'node:crypto';
import { mkdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { BangerError, ErrorCode } from '../../../errors/index.js';
import type { CommandRunner } from '../../../shared/command.js';
import type { VmPaths } from '../../../shared/paths.js';
import { AgentGuestSession } from '../../guest/agent-session.js';
import { launchVmm, network, writeSeed, type BootStep } from '../vm/boot.js';
import { SPACE_NEEDED, asNoSpace, ensureFreeSpace } from '../vm/disks.js';
import { writeHandles } from '../vm/handles.js';
import { writeHostKey } from '../vm/files.js';
import { applyIdentity, applyIdentityHeld } from '../../guest/identity.js';
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
      ...(s.bulkPort ? { bulkPort: true as const } : {}),
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
        b.bulkPort = marker.bulkPort === true;
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
        const [priv, pub] = await Promise.all([readFile(b.vp.hostKeyPrivate), readFile(b.vp.hostKeyPublic)]);
        // Under loopback networking the MAC stays the snapshot's (the NIC's saved state carries it; a
        // guest-side change broke the restored guest's user-mode network in a test here, and no one outside
        // the VM sees it). A tap guest shares the bridge with its source and siblings, whose taps pass only
        // their own MAC and address: it takes its own.
        const tap = b.vm.networkMode === 'tap' ? { mac: b.vm.mac, ipCidr: b.net!.ipCidr, gateway: b.net!.gateway } : undefined;
        const identity = {
          name: b.vm.name,
          clock: true,
          machineId: randomBytes(16).toString('hex'),
          seedHex: randomBytes(64).toString('hex'),
          hostKey: { private: priv, public: pub },
          tap,
        };
        const guest = new AgentGuestSession(agent);
        // The program the snapshot's guest holds, started before it was saved (SnapshotService.take).
        if (d.live.agentFeatures(b.vm.id).has('prespawn')) {
          const how = await applyIdentityHeld(guest, identity, b.signal);
          if (how === 'started') d.log?.info({ vm: b.vm.name }, 'identity: no program held in the snapshot; started one');
        } else await applyIdentity(guest, identity, b.signal);
        await rm(join(b.vp.dir, VM_RESTORE_FILE), { force: true });
      },
    },
  ];
}
