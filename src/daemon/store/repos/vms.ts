import type { Db } from '../db.js';
import type { Accel, AccelChoice, NetworkMode, VmmName, VmState } from '../../../protocol/common.js';
import type { WorkspaceInfo } from '../../../protocol/workspace.js';
import { vmSyncInfoSchema, type VmSyncInfo } from '../../../protocol/vm.js';

/** What a VM is: identity and intent. What is true right now about its process lives in handles.json. */
export interface VmRecord {
  id: string;
  name: string;
  imageId: string;
  state: VmState;
  vcpus: number;
  memoryMib: number;
  diskSizeMib: number;
  vmm: VmmName;
  /** What the user asked for; `accel` is what the last boot used. */
  accelChoice: AccelChoice;
  accel: Accel | null;
  /** loopback: QEMU user networking behind a per-VM 127.x address; tap: a tap on banger's bridge. */
  networkMode: NetworkMode;
  hostAddress: string;
  sshPort: number;
  guestAddress: string;
  egress: boolean;
  mac: string;
  dir: string;
  lastError: string | null;
  createdAt: string;
  startedAt: string | null;
  updatedAt: string;
  /** The last workspace imported into the VM; null before the first `vm workspace prepare`. */
  workspace: WorkspaceInfo | null;
  /** Start the guest agent at boot (`--no-agent` turns it off: commands then go over SSH). */
  agent: boolean;
  /** What the last identity sync put into the guest (paths, never contents). */
  synced: VmSyncInfo | null;
  /**
   * Set while the VM is a warm pool's (booted and parked for `vm run` to take): the name of the image whose
   * pool it is in. Such a VM is not the user's: `vm list` leaves it out. Null for every other VM.
   */
  pool: string | null;
}

interface Row {
  id: string;
  name: string;
  image_id: string;
  state: VmState;
  vcpus: number;
  memory_mib: number;
  disk_size_mib: number;
  vmm: VmRecord['vmm'];
  accel_choice: VmRecord['accelChoice'];
  accel: VmRecord['accel'];
  network_mode: VmRecord['networkMode'];
  host_address: string;
  ssh_port: number;
  guest_address: string;
  egress: number;
  mac: string;
  dir: string;
  last_error: string | null;
  created_at: string;
  started_at: string | null;
  updated_at: string;
  guest_path: string | null;
  source_path: string | null;
  head_commit: string | null;
  base_commit: string | null;
  include_untracked: number;
  prepared_at: string | null;
  agent: number;
  synced: string | null;
  pool: string | null;
}

/** A stored sync record; one that no longer parses is shown as none rather than failing every listing. */
function parseSynced(text: string | null): VmSyncInfo | null {
  if (text === null) return null;
  try {
    const r = vmSyncInfoSchema.safeParse(JSON.parse(text));
    return r.success ? r.data : null;
  } catch {
    return null;
  }
}

const fromRow = (r: Row): VmRecord => ({
  id: r.id,
  name: r.name,
  imageId: r.image_id,
  state: r.state,
  vcpus: r.vcpus,
  memoryMib: r.memory_mib,
  diskSizeMib: r.disk_size_mib,
  vmm: r.vmm,
  accelChoice: r.accel_choice,
  accel: r.accel,
  networkMode: r.network_mode,
  hostAddress: r.host_address,
  sshPort: r.ssh_port,
  guestAddress: r.guest_address,
  egress: r.egress === 1,
  mac: r.mac,
  dir: r.dir,
  lastError: r.last_error,
  createdAt: r.created_at,
  startedAt: r.started_at,
  updatedAt: r.updated_at,
  workspace:
    r.guest_path === null
      ? null
      : {
          guestPath: r.guest_path,
          sourcePath: r.source_path ?? '',
          headCommit: r.head_commit,
          baseCommit: r.base_commit ?? '',
          includeUntracked: r.include_untracked === 1,
          preparedAt: r.prepared_at ?? '',
        },
  agent: r.agent !== 0,
  synced: parseSynced(r.synced),
  pool: r.pool,
});

const toParams = (v: VmRecord) => ({
  id: v.id,
  name: v.name,
  image_id: v.imageId,
  state: v.state,
  vcpus: v.vcpus,
  memory_mib: v.memoryMib,
  disk_size_mib: v.diskSizeMib,
  vmm: v.vmm,
  accel_choice: v.accelChoice,
  accel: v.accel,
  network_mode: v.networkMode,
  host_address: v.hostAddress,
  ssh_port: v.sshPort,
  guest_address: v.guestAddress,
  egress: v.egress ? 1 : 0,
  mac: v.mac,
  dir: v.dir,
  last_error: v.lastError,
  created_at: v.createdAt,
  started_at: v.startedAt,
  updated_at: v.updatedAt,
  guest_path: v.workspace?.guestPath ?? null,
  source_path: v.workspace?.sourcePath ?? null,
  head_commit: v.workspace?.headCommit ?? null,
  base_commit: v.workspace?.baseCommit ?? null,
  include_untracked: v.workspace?.includeUntracked ? 1 : 0,
  prepared_at: v.workspace?.preparedAt ?? null,
  agent: v.agent ? 1 : 0,
  synced: v.synced ? JSON.stringify(v.synced) : null,
  pool: v.pool,
});

const COLUMNS = Object.keys(toParams({ workspace: null } as VmRecord));

export class VmRepo {
  constructor(
    private readonly db: Db,
    private readonly now: () => Date = () => new Date(),
  ) {}

  list(): VmRecord[] {
    return (this.db.prepare('SELECT * FROM vms ORDER BY created_at, name').all() as Row[]).map(fromRow);
  }

  byName(name: string): VmRecord | undefined {
    const r = this.db.prepare('SELECT * FROM vms WHERE name = ?').get(name) as Row | undefined;
    return r && fromRow(r);
  }

  byId(id: string): VmRecord | undefined {
    const r = this.db.prepare('SELECT * FROM vms WHERE id = ?').get(id) as Row | undefined;
    return r && fromRow(r);
  }

  /** The user's VMs on the image (a warm pool's parked VMs are not among them: see poolsUsingImage). */
  namesUsingImage(imageId: string): string[] {
    return (
      this.db.prepare('SELECT name FROM vms WHERE image_id = ? AND pool IS NULL ORDER BY name').all(imageId) as { name: string }[]
    ).map((r) => r.name);
  }

  /** The warm pools (by image name) whose VMs are on the image. */
  poolsUsingImage(imageId: string): string[] {
    return (
      this.db.prepare('SELECT DISTINCT pool FROM vms WHERE image_id = ? AND pool IS NOT NULL ORDER BY pool').all(imageId) as { pool: string }[]
    ).map((r) => r.pool);
  }

  /** Host ports already assigned to VMs (a stopped VM keeps its port). */
  usedSshPorts(): Set<number> {
    return new Set((this.db.prepare('SELECT ssh_port FROM vms').all() as { ssh_port: number }[]).map((r) => r.ssh_port));
  }

  insert(vm: VmRecord): void {
    this.db
      .prepare(`INSERT INTO vms (${COLUMNS.join(', ')}) VALUES (${COLUMNS.map((c) => '@' + c).join(', ')})`)
      .run(toParams(vm));
  }

  update(id: string, patch: Partial<Omit<VmRecord, 'id' | 'createdAt'>>): VmRecord {
    const cur = this.byId(id);
    if (!cur) throw new Error(`vm ${id} vanished from the store`);
    const next: VmRecord = { ...cur, ...patch, updatedAt: this.now().toISOString() };
    this.db
      .prepare(`UPDATE vms SET ${COLUMNS.filter((c) => c !== 'id').map((c) => `${c}=@${c}`).join(', ')} WHERE id=@id`)
      .run(toParams(next));
    return next;
  }

  delete(id: string): void {
    this.db.prepare('DELETE FROM vms WHERE id = ?').run(id);
  }
}
