import { Readable } from 'node:stream';
import { BangerError, ErrorCode } from '../../../errors/index.js';
import type { CommandRunner } from '../../../shared/command.js';
import type { ProgressEvent } from '../../../protocol/common.js';
import type { WorkspaceInfo, WorkspacePrepareResult } from '../../../protocol/workspace.js';
import type { VmRecord } from '../../store/repos/vms.js';
import { listNotices, type HostRepo, type ImportEntry, type ImportFileList } from './host-repo.js';
import { diffManifests, hostManifest, readManifest, type Manifest, type ManifestDiff } from './manifest.js';
import { createImportTar } from './pack.js';
import { baseObjects, hashOf } from './base-objects.js';
import { buildResyncScript, mayBeMiseConfig, newResyncStage } from './resync-script.js';
import { WorkspaceScriptExit } from './guest-scripts.js';
import { deferredStream } from './import-stream.js';
import { BULK_MIN_BYTES } from '../../guest/bulk.js';
import type { GuestOutput } from './guest-output.js';
import { byteProgress, lastScriptLine, miseNotices, scriptError } from './outcome.js';

/**
 * Host side of a re-sync (`vm workspace prepare` of the same checkout into the same guest path
 * again): decides whether one is possible (planResync) and sends it (runResync). The guest side is
 * resync-script.ts; the transfer itself and the record of the result are the workspace service's.
 */

/** What the re-sync script needs, known from the last import's record before the host's state is. */
export interface ResyncStart {
  /** The HEAD of the last import (the guest has it); null without commits. */
  oldHead: string | null;
  /** The tree of the last import's base (its manifest's). */
  baseTree: string;
  /** Whether the host's git identity differs from the one the last import set (then it is set again). */
  identityChanged: boolean;
}

export interface ResyncPlan extends ResyncStart {
  /** The host's state now; recorded as the new manifest when the guest ends up with the same tree. */
  manifest: Manifest;
  diff: ManifestDiff;
  /** Entries (from listImportFiles) of the paths to write. */
  entries: ImportEntry[];
  /** The list the entries came from (for notices and totals). */
  list: ImportFileList;
}

/** No re-sync: why (then the import is a full one). */
export interface NoResync {
  reason: string;
}

/**
 * A re-sync being planned: `start` settles once the last import's record is read and checked (the re-sync
 * script can start then), `plan` once the host's state is diffed against it. Both settle with the same
 * NoResync when the record rules a re-sync out; `plan` alone when the host's state does.
 */
export interface ResyncPlanning {
  start: Promise<ResyncStart | NoResync>;
  plan: Promise<ResyncPlan | NoResync>;
}

export interface ResyncInput {
  workspace: WorkspaceInfo | null;
  manifestFile: string;
  repo: HostRepo;
  guestPath: string;
  includeUntracked: boolean;
  run: CommandRunner;
  /** listImportFiles of the checkout; `only`: the paths to describe (the others are only counted). */
  listFiles: (only?: ReadonlySet<string> | Promise<ReadonlySet<string>>) => Promise<ImportFileList>;
  signal?: AbortSignal;
  /** The daemon's scratch directory (`Paths.tmpDir`). */
  tmpDir: string;
}

/** Plans a re-sync (see ResyncPlanning); neither promise rejects but for an abort or a failure to read. */
export function planResync(i: ResyncInput): ResyncPlanning {
  const ws = i.workspace;
  if (!ws) return noResync('no earlier import');
  const why = ruledOut(ws, i);
  if (why !== null) return noResync(why);
  // The host's state is computed, and the checkout listed, while the record is read and checked (their git
  // processes are most of the plan's time); they go unused when there is no re-sync. The listing describes only
  // the changed paths, known once the state is: until then git lists the checkout.
  const hostState = hostManifest(i.repo.root, i.includeUntracked, i.run, i.tmpDir, i.signal);
  hostState.catch(() => undefined);
  let describe!: (paths: ReadonlySet<string>) => void;
  const listing = i.listFiles(new Promise<ReadonlySet<string>>((resolve) => (describe = resolve)));
  listing.catch(() => undefined);
  const start = startOf(i, ws);
  const plan = (async () => {
    try {
      const s = await start;
      return 'reason' in s ? s : await finish(s, hostState, listing, describe);
    } finally {
      describe(new Set()); // no re-sync: the listing ends without reading a file
    }
  })();
  plan.catch(() => undefined);
  return { start, plan };
}

function noResync(reason: string): ResyncPlanning {
  const no = Promise.resolve({ reason });
  return { start: no, plan: no };
}

/** Why the workspace record alone rules a re-sync out, or null. */
function ruledOut(ws: WorkspaceInfo, i: ResyncInput): string | null {
  if (ws.guestPath !== i.guestPath) return `the last import went to ${ws.guestPath}`;
  if (ws.sourcePath !== i.repo.root) return `the last import came from ${ws.sourcePath}`;
  if (ws.includeUntracked !== i.includeUntracked) return 'the untracked-files choice changed';
  return null;
}

/** ResyncStart, with the last import's manifest entries the host's state is diffed against. */
interface Started extends ResyncStart {
  last: Manifest['entries'];
}

async function startOf(i: ResyncInput, ws: WorkspaceInfo): Promise<Started | NoResync> {
  const rec = await readManifest(i.manifestFile);
  if (
    !rec ||
    rec.header.baseCommit !== ws.baseCommit ||
    rec.header.guestPath !== ws.guestPath ||
    rec.header.sourcePath !== ws.sourcePath ||
    rec.header.headCommit !== ws.headCommit
  )
    return { reason: 'no record of what the last import wrote' };
  const oldHead = ws.headCommit;
  const newHead = i.repo.headCommit;
  if ((oldHead === null) !== (newHead === null)) return { reason: 'the history changed' };
  if (oldHead !== null && newHead !== null && oldHead !== newHead) {
    const why = await historyReason(i.repo.root, oldHead, newHead, i.run, i.signal);
    if (why) return { reason: why };
  }
  const last = rec.header.identity;
  const identityChanged = last?.name !== i.repo.identity.name || last?.email !== i.repo.identity.email;
  return { oldHead, baseTree: rec.header.tree, identityChanged, last: rec.entries };
}

async function finish(
  s: Started,
  hostState: Promise<Manifest | null>,
  listing: Promise<ImportFileList>,
  describe: (paths: ReadonlySet<string>) => void,
): Promise<ResyncPlan | NoResync> {
  const manifest = await hostState;
  if (!manifest) return { reason: "git could not list the checkout's state" };
  const diff = diffManifests(s.last, manifest.entries);
  describe(new Set(diff.write));
  const list = await listing;
  const byPath = new Map(list.entries.map((e) => [e.path, e]));
  const entries: ImportEntry[] = [];
  for (const p of diff.write) {
    const e = byPath.get(p);
    // A path git's state names but the listing does not carry: only a full import is exact.
    if (!e) return { reason: `${p} cannot be re-synced` };
    entries.push(e);
  }
  const { oldHead, baseTree, identityChanged } = s;
  return { manifest, diff, entries, list, oldHead, baseTree, identityChanged };
}

/** What a re-sync is run on: the VM, the checkout, where it goes and the planning planResync started. */
export interface ResyncRun {
  vm: VmRecord;
  repo: HostRepo;
  guestPath: string;
  start: ResyncStart;
  plan: Promise<ResyncPlan | NoResync>;
  progress: (ev: ProgressEvent) => void;
  signal?: AbortSignal;
  /** Where the history pack is written while it is sent (`Paths.tmpDir`). */
  tmpDir: string;
}

/** What running a re-sync uses of the workspace service (the VM's session is bound in). */
export interface ResyncSteps {
  run: CommandRunner;
  /**
   * Streams the import tar into the guest script; errors of the tar or the transfer are thrown. `tarBytes`: about
   * how large the tar is, when known (a small one takes a cheaper way into the guest).
   */
  send(script: string, tar: Readable, tarBytes?: number): Promise<GuestOutput>;
  /** The error saying the VM stopped or its connection dropped during the import, or null. */
  interrupted(): Promise<BangerError | null>;
  /** Records the finished re-sync: the workspace on the VM and the plan's manifest. */
  record(
    r: GuestOutput,
    manifest: Manifest,
    notices: string[],
    counts: Pick<WorkspacePrepareResult, 'files' | 'bytes' | 'skippedUntracked' | 'mode' | 'deleted'>,
  ): Promise<WorkspacePrepareResult>;
}

/** How runResync ended when it made no re-sync: why, and whether the user is told (else only the log is). */
export interface NotResynced extends NoResync {
  ok: false;
  notice: boolean;
}

/**
 * Runs a re-sync: its script starts in the guest at once and runs its checks (a `git status` of the workspace,
 * a tenth of a second and more under emulation) while the host finishes the plan and makes the archive. A plan
 * that finds no re-sync possible sends an empty archive, which the script refuses with nothing changed; so
 * does one whose archive is too large for the way a small one goes into the guest (the script's stdin), and
 * the re-sync is then run again with its archive sent the way a large one goes (the bulk port). Not ok when
 * there is no re-sync, or the guest is not in the recorded state (Stale).
 */
export async function runResync(
  job: ResyncRun,
  steps: ResyncSteps,
): Promise<{ ok: true; result: WorkspacePrepareResult } | NotResynced> {
  // The plan, and whether its archive fits the script's stdin.
  const sized = job.plan.then((plan) => ({ plan, small: !('reason' in plan) && archiveFits(job.repo, plan) }));
  sized.catch(() => undefined);
  const stage = newResyncStage();
  const tar = deferredStream(async () => {
    const { plan, small } = await sized;
    if ('reason' in plan || !small) return Readable.from([]);
    announce(job, plan);
    return archive(job, plan, stage, steps.run);
  });
  // Sent with the script's stdin: the archive is empty or smaller than BULK_MIN_BYTES.
  const first = await steps.send(buildScript(job, stage), tar, 0);
  const { plan, small } = await sized;
  if ('reason' in plan) return { ok: false, notice: false, reason: plan.reason };
  if (small) return outcome(job, plan, first, steps);
  announce(job, plan);
  const again = newResyncStage();
  return outcome(job, plan, await steps.send(buildScript(job, again), archive(job, plan, again, steps.run)), steps);
}

/** The bytes of the files a plan writes. */
function fileBytes(plan: ResyncPlan): number {
  return plan.entries.reduce((n, e) => n + e.size, 0);
}

/**
 * Whether the archive is smaller than BULK_MIN_BYTES, about (tar headers, the files and their blobs for the
 * host's base, the path lists, the new commits' pack counted as large as the files).
 */
function archiveFits(repo: HostRepo, plan: ResyncPlan): boolean {
  const history = repo.headCommit !== null && plan.oldHead !== repo.headCommit;
  const bytes = (history ? 3 : 2) * fileBytes(plan) + 2048 * (plan.entries.length + plan.diff.delete.length + 16);
  return bytes < BULK_MIN_BYTES;
}

function announce(job: ResyncRun, plan: ResyncPlan): void {
  const changed = plan.diff.write.length + plan.diff.delete.length;
  job.progress({ kind: 'notice', message: `re-sync: ${changed} file${changed === 1 ? '' : 's'} changed` });
}

function buildScript({ vm, repo, guestPath, start }: ResyncRun, stage: string): string {
  return buildResyncScript({
    guestPath,
    baseCommit: (vm.workspace as WorkspaceInfo).baseCommit,
    baseTree: start.baseTree,
    oldHead: start.oldHead,
    newHead: repo.headCommit,
    branch: repo.branch,
    // Each `git config` is a process in the guest: only when the identity changed since the last import.
    identity: start.identityChanged ? repo.identity : { name: null, email: null },
    stage,
  });
}

function archive({ repo, progress, signal, tmpDir }: ResyncRun, plan: ResyncPlan, stage: string, run: CommandRunner): Readable {
  const bytes = fileBytes(plan);
  return createImportTar(
    {
      root: repo.root,
      entries: plan.entries,
      headCommit: repo.headCommit,
      historySince: plan.oldHead ?? undefined,
      tmpDir,
      deleted: plan.diff.delete,
      trustMise: plan.diff.write.some(mayBeMiseConfig),
      stageDir: stage,
      base: {
        hash: hashOf(plan.manifest.tree),
        expect: plan.manifest.entries,
        make: () =>
          baseObjects({
            manifest: plan.manifest,
            write: plan.diff.write,
            delete: plan.diff.delete,
            parent: repo.headCommit,
            time: Math.floor(Date.now() / 1000),
          }),
      },
    },
    { run, signal, onProgress: byteProgress(progress, { count: plan.entries.length, totalBytes: bytes }) },
  );
}

async function outcome(
  { vm, guestPath }: ResyncRun,
  plan: ResyncPlan,
  r: GuestOutput,
  steps: ResyncSteps,
): Promise<{ ok: true; result: WorkspacePrepareResult } | NotResynced> {
  if (r.code === WorkspaceScriptExit.Stale) return { ok: false, notice: true, reason: lastScriptLine(r.stderr) };
  if (r.code === WorkspaceScriptExit.Conflict) throw conflictError(vm.name, guestPath, r.stdout, r.stderr);
  if (r.code !== 0) throw (await steps.interrupted()) ?? scriptError('import', r.code, r.stderr, guestPath);
  const notices = [...listNotices(plan.list), ...miseNotices(r.stderr)];
  const result = await steps.record(r, plan.manifest, notices, {
    files: plan.entries.filter((e) => e.kind !== 'dir').length,
    bytes: fileBytes(plan),
    skippedUntracked: plan.list.skippedUntracked,
    mode: 'resync',
    deleted: plan.diff.delete.length,
  });
  return { ok: true, result };
}

/**
 * Why the new commits cannot be sent as a thin pack on top of what the guest has, or null when they
 * can: every parent of every new commit must be a new commit or the old HEAD (so the guest's shallow
 * history stays complete), and there must be new commits (a HEAD moved back may be beyond the guest's
 * shallow history).
 */
async function historyReason(
  root: string,
  oldHead: string,
  newHead: string,
  run: CommandRunner,
  signal?: AbortSignal,
): Promise<string | null> {
  const env: NodeJS.ProcessEnv = { ...process.env, GIT_OPTIONAL_LOCKS: '0' };
  delete env.GIT_DIR;
  delete env.GIT_WORK_TREE;
  const r = await run('git', ['rev-list', '--parents', newHead, `^${oldHead}`], {
    cwd: root,
    env,
    signal,
    allowFailure: true,
    maxOutputBytes: 16 << 20,
  });
  if (r.code !== 0 || r.truncated?.stdout) return 'the last imported commit is not in the host repository';
  const rows = r.stdout
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => l.split(' '));
  if (rows.length === 0) return 'HEAD moved back';
  const known = new Set([oldHead, ...rows.map((row) => row[0])]);
  if (rows.some((row) => row.slice(1).some((p) => !known.has(p))))
    return 'HEAD did not move forward from the last imported commit';
  return null;
}

/** The error of an import or re-sync refused because the guest has changes (exit Conflict, paths on stdout). */
export function conflictError(vmName: string, guestPath: string, stdout: Buffer, stderr: string): BangerError {
  const paths = stdout
    .toString('utf8')
    .split('\0')
    .filter((p) => p !== '');
  const count = /(\d+) changes made in the guest/.exec(stderr)?.[1];
  const n = count ? Number(count) : paths.length;
  const shown = paths.map((p) => `  ${JSON.stringify(p).slice(1, -1)}`).join('\n');
  const more = n > paths.length ? `\n  ... and ${n - paths.length} more` : '';
  return new BangerError(
    ErrorCode.Conflict,
    `the workspace ${vmName}:${guestPath} has changes made in the guest that this prepare would overwrite:\n${shown}${more}`,
    {
      hint:
        `keep them with \`banger vm workspace export ${vmName} -o FILE\` (then \`git apply FILE\` on the host), ` +
        `or replace the workspace anyway with \`banger vm workspace prepare --force\``,
    },
  );
}
