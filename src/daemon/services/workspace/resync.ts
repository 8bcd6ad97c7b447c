import type { Readable } from 'node:stream';
import { BangerError, ErrorCode } from '../../../errors/index.js';
import type { CommandRunner } from '../../../shared/command.js';
import type { ProgressEvent } from '../../../protocol/common.js';
import type { WorkspaceInfo, WorkspacePrepareResult } from '../../../protocol/workspace.js';
import type { VmRecord } from '../../store/repos/vms.js';
import type { HostRepo, ImportEntry, ImportFileList } from './host-repo.js';
import { diffManifests, hostManifest, readManifest, type Manifest, type ManifestDiff } from './manifest.js';
import { createImportTar } from './pack.js';
import { baseObjects, hashOf } from './base-objects.js';
import { buildResyncScript, mayBeMiseConfig, newResyncStage } from './resync-script.js';
import { WorkspaceScriptExit } from './guest-scripts.js';
import type { GuestOutput } from './guest-output.js';
import { byteProgress, lastScriptLine, listNotices, miseNotices, scriptError } from './outcome.js';

/**
 * Host side of a re-sync (`vm workspace prepare` of the same checkout into the same guest path
 * again): decides whether one is possible (planResync) and sends it (runResync). The guest side is
 * resync-script.ts; the transfer itself and the record of the result are the workspace service's.
 */

export interface ResyncPlan {
  /** The host's state now; recorded as the new manifest when the guest ends up with the same tree. */
  manifest: Manifest;
  diff: ManifestDiff;
  /** Entries (from listImportFiles) of the paths to write. */
  entries: ImportEntry[];
  /** The list the entries came from (for notices and totals). */
  list: ImportFileList;
  /** The HEAD of the last import (the guest has it); null without commits. */
  oldHead: string | null;
  /** The tree of the last import's base (its manifest's). */
  baseTree: string;
  /** Whether the host's git identity differs from the one the last import set (then it is set again). */
  identityChanged: boolean;
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

/** A re-sync plan, or why there is none (then the import is a full one). */
export async function planResync(i: ResyncInput): Promise<ResyncPlan | { reason: string }> {
  const ws = i.workspace;
  if (!ws) return { reason: 'no earlier import' };
  if (ws.guestPath !== i.guestPath) return { reason: `the last import went to ${ws.guestPath}` };
  if (ws.sourcePath !== i.repo.root) return { reason: `the last import came from ${ws.sourcePath}` };
  if (ws.includeUntracked !== i.includeUntracked) return { reason: 'the untracked-files choice changed' };
  // The host's state is computed, and the checkout listed, while the record is read and checked (their git
  // processes are most of the plan's time); they go unused when there is no re-sync. The listing describes only
  // the changed paths, known once the state is: until then git lists the checkout.
  const hostState = hostManifest(i.repo.root, i.includeUntracked, i.run, i.tmpDir, i.signal);
  hostState.catch(() => undefined);
  let describe!: (paths: ReadonlySet<string>) => void;
  const listing = i.listFiles(new Promise<ReadonlySet<string>>((resolve) => (describe = resolve)));
  listing.catch(() => undefined);
  try {
    return await plan(i, ws, hostState, listing, describe);
  } finally {
    describe(new Set()); // no re-sync: the listing ends without reading a file
  }
}

async function plan(
  i: ResyncInput,
  ws: WorkspaceInfo,
  hostState: Promise<Manifest | null>,
  listing: Promise<ImportFileList>,
  describe: (paths: ReadonlySet<string>) => void,
): Promise<ResyncPlan | { reason: string }> {
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
  const manifest = await hostState;
  if (!manifest) return { reason: "git could not list the checkout's state" };
  const diff = diffManifests(rec.entries, manifest.entries);
  describe(new Set(diff.write));
  const list = await listing;
  const byPath = new Map(list.entries.map((e) => [e.path, e]));
  const entries: ImportEntry[] = [];
  for (const p of diff.write) {
    const e = byPath.get(p);
    // A path git lists but the import would not carry (a nested repository): only a full import is exact.
    if (!e) return { reason: `${p} cannot be re-synced` };
    entries.push(e);
  }
  const last = rec.header.identity;
  const identityChanged = last?.name !== i.repo.identity.name || last?.email !== i.repo.identity.email;
  return { manifest, diff, entries, list, oldHead, baseTree: rec.header.tree, identityChanged };
}

/** What a re-sync is run on: the VM, the checkout, where it goes and the plan planResync made. */
export interface ResyncRun {
  vm: VmRecord;
  repo: HostRepo;
  guestPath: string;
  plan: ResyncPlan;
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
    notices: string[],
    counts: Pick<WorkspacePrepareResult, 'files' | 'bytes' | 'skippedUntracked' | 'mode' | 'deleted'>,
  ): Promise<WorkspacePrepareResult>;
}

/** Runs a re-sync planned by planResync; not ok when the guest is not in the recorded state (Stale). */
export async function runResync(
  { vm, repo, guestPath, plan, progress, signal, tmpDir }: ResyncRun,
  steps: ResyncSteps,
): Promise<{ ok: true; result: WorkspacePrepareResult } | { ok: false; reason: string }> {
  const ws = vm.workspace as WorkspaceInfo;
  const bytes = plan.entries.reduce((n, e) => n + e.size, 0);
  const stage = newResyncStage();
  const tar = createImportTar(
    {
      root: repo.root,
      entries: plan.entries,
      headCommit: repo.headCommit,
      historySince: plan.oldHead ?? undefined,
      tmpDir,
      deleted: plan.diff.delete,
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
    { run: steps.run, signal, onProgress: byteProgress(progress, { count: plan.entries.length, totalBytes: bytes }) },
  );
  const script = buildResyncScript({
    guestPath,
    baseCommit: ws.baseCommit,
    baseTree: plan.baseTree,
    oldHead: plan.oldHead,
    newHead: repo.headCommit,
    branch: repo.branch,
    // Each `git config` is a process in the guest: only when the identity changed since the last import.
    identity: plan.identityChanged ? repo.identity : { name: null, email: null },
    trustMise: plan.diff.write.some(mayBeMiseConfig),
    stage,
  });
  // The archive's size, about (tar headers, the files and their blobs for the host's base, the path lists), when
  // no history goes with it (its size is not known before it is packed).
  const history = repo.headCommit !== null && plan.oldHead !== repo.headCommit;
  const tarBytes = history ? undefined : 2 * bytes + 2048 * (plan.entries.length + plan.diff.delete.length + 16);
  const r = await steps.send(script, tar, tarBytes);
  if (r.code === WorkspaceScriptExit.Stale) return { ok: false, reason: lastScriptLine(r.stderr) };
  if (r.code === WorkspaceScriptExit.Conflict) throw conflictError(vm.name, guestPath, r.stdout, r.stderr);
  if (r.code !== 0) throw (await steps.interrupted()) ?? scriptError('import', r.code, r.stderr, guestPath);
  const notices = [...listNotices(plan.list, plan.list.skippedSpecial), ...miseNotices(r.stderr)];
  const result = await steps.record(r, notices, {
    files: plan.entries.filter((e) => e.kind !== 'dir').length,
    bytes,
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
