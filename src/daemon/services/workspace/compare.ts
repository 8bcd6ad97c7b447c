import { Writable } from 'node:stream';
import { toBangerError } from '../../../errors/index.js';
import type {
  WorkspaceCheck,
  WorkspaceCompareEntry,
  WorkspaceCompareParams,
  WorkspaceCompareResult,
  WorkspaceExportParams,
  WorkspaceExportResult,
} from '../../../protocol/workspace.js';
import type { GuestSession } from '../../guest/session.js';
import type { VmRecord } from '../../store/repos/vms.js';
import { execInWorkspace } from './workspace-command.js';

export interface CompareDeps {
  export: (p: WorkspaceExportParams, signal?: AbortSignal) => Promise<WorkspaceExportResult>;
  /** The record of a running VM (checked under its lifecycle lock). */
  running: (name: string, signal?: AbortSignal) => Promise<VmRecord>;
  session: (vm: VmRecord, signal?: AbortSignal) => Promise<GuestSession>;
  now?: () => number;
}

/** Bytes of a check's output kept (its end). */
export const CHECK_TAIL_BYTES = 4096;
const DEFAULT_CHECK_TIMEOUT_S = 600;

/**
 * The workspaces of several VMs side by side, for picking one of N agents' attempts: each one's changed
 * files with lines added and removed (counted on the host from its export patch), and, with `check`, the
 * exit code of a command run in each workspace at the same time. A VM that cannot be compared gets an
 * `error` and the rest go on.
 */
export async function compareWorkspaces(
  d: CompareDeps,
  p: WorkspaceCompareParams,
  signal?: AbortSignal,
): Promise<WorkspaceCompareResult> {
  const names = [...new Set(p.names)];
  const vms = await Promise.all(names.map((name) => compareOne(d, name, p, signal)));
  const bases = new Set(vms.map((v) => v.baseCommit));
  return { vms, sameBase: bases.size === 1 && !bases.has(undefined) };
}

async function compareOne(
  d: CompareDeps,
  name: string,
  p: WorkspaceCompareParams,
  signal?: AbortSignal,
): Promise<WorkspaceCompareEntry> {
  try {
    const vm = await d.running(name, signal);
    const ex = await d.export({ name }, signal);
    const entry: WorkspaceCompareEntry = {
      vm: vm.name,
      guestPath: ex.guestPath,
      baseCommit: vm.workspace?.baseCommit,
      files: ex.files,
      linesAdded: ex.files.reduce((n, f) => n + (f.linesAdded ?? 0), 0),
      linesRemoved: ex.files.reduce((n, f) => n + (f.linesRemoved ?? 0), 0),
      patchBytes: Buffer.byteLength(ex.patch, 'base64'),
    };
    if (p.check !== undefined) {
      const session = await d.session(vm, signal);
      const command = execInWorkspace(ex.guestPath, ['sh', '-c', p.check]);
      entry.check = await runCheck(session, command, (p.checkTimeoutSeconds ?? DEFAULT_CHECK_TIMEOUT_S) * 1000, d.now, signal);
    }
    return entry;
  } catch (e) {
    if (signal?.aborted) throw e;
    return { vm: name, error: toBangerError(e).message, files: [], linesAdded: 0, linesRemoved: 0, patchBytes: 0 };
  }
}

/** Keeps the last `max` bytes written to it. */
class TailBuffer extends Writable {
  private chunks: Buffer[] = [];
  private size = 0;
  constructor(private readonly max: number) {
    super();
  }
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: () => void): void {
    this.chunks.push(chunk);
    this.size += chunk.length;
    while (this.chunks.length > 1 && this.size - this.chunks[0]!.length >= this.max) this.size -= this.chunks.shift()!.length;
    cb();
  }
  text(): string {
    const all = Buffer.concat(this.chunks);
    return all.subarray(Math.max(0, all.length - this.max)).toString('utf8');
  }
}

/** Runs a check to its end or its deadline; its output is kept only as a tail, whatever the guest writes. */
async function runCheck(
  session: GuestSession,
  command: string,
  timeoutMs: number,
  now: () => number = Date.now,
  signal?: AbortSignal,
): Promise<WorkspaceCheck> {
  const started = now();
  const deadline = AbortSignal.timeout(timeoutMs);
  const both = signal ? AbortSignal.any([signal, deadline]) : deadline;
  const tail = new TailBuffer(CHECK_TAIL_BYTES);
  const seconds = () => Math.round((now() - started) / 100) / 10;
  try {
    const r = await session.exec(command, { stdout: tail, stderr: tail, signal: both });
    return { code: r.code, timedOut: false, seconds: seconds(), outputTail: tail.text() };
  } catch (e) {
    if (signal?.aborted) throw e;
    if (deadline.aborted) return { code: null, timedOut: true, seconds: seconds(), outputTail: tail.text() };
    throw e;
  }
}
