import type {
  WorkspaceChange,
  WorkspaceCompareParams,
  WorkspaceCompareResult,
  WorkspaceExportParams,
  WorkspaceExportResult,
  WorkspacePrepareParams,
  WorkspacePrepareResult,
  WorkspaceInfo,
} from '../../../protocol/workspace.js';
import type { ProgressEvent } from '../../../protocol/common.js';
import { BangerError, ErrorCode, failedPrecondition, toBangerError } from '../../../errors/index.js';
import type { Logger } from '../../../shared/logger.js';
import type { CommandRunner } from '../../../shared/command.js';
import type { VmRepo } from '../../store/repos/vms.js';
import type { VmService } from '../vm/service.js';
import { KeyedMutex } from '../locks.js';
import type { Readable } from 'node:stream';
import { rm } from 'node:fs/promises';
import type { VmRecord } from '../../store/repos/vms.js';
import type { GuestSession } from '../../guest/session.js';

/** The VM's guest session, as VmService's guest access hands it out. */
type Session = GuestSession & { isClosed: boolean };
import {
  formatBytes,
  inspectRepo,
  listImportFiles,
  listNotices,
  type HostRepo,
} from './host-repo.js';
import { planFullImport } from './full-import.js';
import { createFullImportStream, deferredStream } from './import-stream.js';
import { manifestPath, removeManifest, writeManifest, type PendingManifest } from './manifest.js';
import { conflictError, planResync, runResync } from './resync.js';
import { TREE_LINE_PREFIX, WorkspaceScriptExit, buildImportScript, validateGuestPath } from './guest-scripts.js';
import { buildExportScript, parseNameStatus } from './export-script.js';
import { byteProgress, miseNotices, scriptError } from './outcome.js';
import { runGuestScript, type GuestOutput, type GuestOutputLimits } from './guest-output.js';
import { parsePatchFiles } from './patch.js';
import { compareWorkspaces } from './compare.js';

export interface WorkspaceServiceDeps {
  vms: VmService;
  repo: VmRepo;
  run: CommandRunner;
  log: Logger;
  /** Scratch files of imports (`Paths.tmpDir`, emptied at each daemon start). */
  tmpDir: string;
  now?: () => Date;
  /** Overrides of WORKSPACE_LIMITS (tests). */
  limits?: Partial<WorkspaceLimits>;
}

export interface WorkspaceLimits {
  /** Largest export (patch, or --name-only list) read from the guest. */
  maxExportBytes: number;
  /** A transfer fails when the guest sends nothing (not even the scripts' heartbeat) for this long. */
  idleTimeoutMs: number;
}

/**
 * The patch travels base64 inside one JSON-RPC message, and a JS string holds at most 2^29-24
 * characters: 256 MiB of patch is 342 M characters of base64, which leaves room for the message.
 */
export const WORKSPACE_LIMITS: WorkspaceLimits = { maxExportBytes: 256 << 20, idleTimeoutMs: 60_000 };

/** What a workspace script may write to stderr that is kept (its tail; error messages are last). */
const MAX_SCRIPT_STDERR = 1 << 20;
/** The import prints one commit id on stdout. */
const MAX_IMPORT_STDOUT = 64 << 10;

type Progress = (ev: ProgressEvent) => void;

/**
 * Imports host git checkouts into VMs and exports the guest's changes as a patch.
 *
 * Locking: `transfer` (one per VM id) serialises imports and exports on one VM, so two prepares never
 * unpack into the same workspace at once and an export never reads a half-replaced tree. The VM's
 * lifecycle lock is taken only for the "is it running" check (VmService.runningUnderLock), never
 * across the transfer. Order: transfer, then lifecycle (briefly).
 */
export class WorkspaceService {
  private readonly transfer = new KeyedMutex();
  private readonly now: () => Date;
  private readonly limits: WorkspaceLimits;

  constructor(private readonly d: WorkspaceServiceDeps) {
    this.now = d.now ?? (() => new Date());
    this.limits = { ...WORKSPACE_LIMITS, ...d.limits };
  }

  /**
   * Imports a host checkout. When the same checkout went to the same guest path last time (and its
   * manifest is recorded), only what changed since is sent (a re-sync, resync.ts); guest changes it
   * would overwrite are refused unless `force` (which imports in full). Anything else is a full import.
   */
  async prepare(p: WorkspacePrepareParams, progress: Progress, signal?: AbortSignal): Promise<WorkspacePrepareResult> {
    const vm0 = this.d.vms.get(p.name);
    const repo = await inspectRepo(p.sourcePath, this.d.run, signal);
    const guestPath = p.guestPath ?? `/root/${repo.name}`;
    validateGuestPath(guestPath);
    const includeUntracked = p.includeUntracked ?? false;

    return this.transfer.run(
      vm0.id,
      async () => {
        const vm = await this.d.vms.runningUnderLock(p.name, signal);
        const session = await this.d.vms.guest.transferSession(vm, signal);
        const manifestFile = manifestPath(vm.dir);
        const listFiles = (only?: ReadonlySet<string> | Promise<ReadonlySet<string>>) =>
          listImportFiles(repo.root, { includeUntracked, only }, this.d.run, signal);
        const notices: string[] = [];
        if (!p.full && !p.force) {
          const planning = planResync({
            workspace: vm.workspace,
            manifestFile,
            repo,
            guestPath,
            includeUntracked,
            run: this.d.run,
            listFiles,
            signal,
            tmpDir: this.d.tmpDir,
          });
          const start = await planning.start;
          const done =
            'reason' in start
              ? { ok: false as const, notice: false, reason: start.reason }
              : await runResync({ vm, repo, guestPath, start, plan: planning.plan, progress, signal, tmpDir: this.d.tmpDir }, {
                  run: this.d.run,
                  send: (script, tar, tarBytes) => this.send(vm.name, session, script, tar, signal, tarBytes),
                  interrupted: () => this.interrupted(vm.name, session, 'import', signal),
                  record: (r, manifest, notices, counts) =>
                    this.record(vm, repo, guestPath, includeUntracked, r, manifest, manifestFile, notices, counts),
                });
          if (done.ok) return done.result;
          if (done.notice) notices.push(`re-sync not possible (${done.reason}): imported in full`);
          else if (vm.workspace) this.d.log.info({ vm: vm.name, why: done.reason }, 'workspace: full import, no re-sync');
        }
        await removeManifest(manifestFile);
        // The manifest's entries wait in this file while the import runs (full-import.ts).
        const pending = `${manifestFile}.pending`;
        // The guest script starts (its checks, `git init`) while the host plans; the stream waits for the plan.
        const planning = new AbortController();
        const planSignal = signal ? AbortSignal.any([signal, planning.signal]) : planning.signal;
        const planned = planFullImport(repo, includeUntracked, pending, this.d.run, planSignal, this.d.tmpDir);
        planned.catch(() => undefined);
        const special = new Set<string>();
        try {
          const tar = deferredStream(async () => {
            const { split, stateIsHead, list } = await planned;
            for (const path of list.skippedSpecial) special.add(path);
            return createFullImportStream(
              {
                root: repo.root,
                headCommit: repo.headCommit,
                split,
                storeBlobs: vm.accel !== 'kvm',
                tmpDir: this.d.tmpDir,
                stateIsHead,
                trustMise: list.trustMise,
              },
              {
                run: this.d.run,
                signal,
                onSkipped: (path) => special.add(path),
                onProgress: byteProgress(progress, list),
              },
            );
          });
          const script = buildImportScript({
            guestPath,
            headCommit: repo.headCommit,
            branch: repo.branch,
            identity: repo.identity,
            force: p.force ?? false,
          });
          const r = await this.send(vm.name, session, script, tar, signal);
          if (r.code === WorkspaceScriptExit.Conflict) throw conflictError(vm.name, guestPath, r.stdout, r.stderr);
          if (r.code !== 0)
            throw (
              (await this.interrupted(vm.name, session, 'import', signal)) ??
              scriptError('import', r.code, r.stderr, guestPath)
            );
          // The script read the whole stream, so the plan is made.
          const { manifest, list } = await planned;
          notices.push(...listNotices(list, [...special].sort()), ...miseNotices(r.stderr));
          return await this.record(vm, repo, guestPath, includeUntracked, r, manifest, manifestFile, notices, {
            files: list.files,
            bytes: list.totalBytes,
            skippedUntracked: list.skippedUntracked,
            mode: 'full',
          });
        } finally {
          // A script that failed before it read the stream leaves the plan unfinished: stop it before its file goes.
          planning.abort();
          await planned.catch(() => undefined);
          await rm(pending, { force: true });
        }
      },
      signal,
    );
  }

  /** Streams an import tar into a guest script; errors of the tar or the transfer are thrown. */
  private async send(
    vmName: string,
    session: Session,
    script: string,
    tar: Readable,
    signal?: AbortSignal,
    tarBytes?: number,
  ) {
    let tarError: unknown;
    tar.on('error', (e) => (tarError ??= e));
    let r;
    try {
      r = await runGuestScript(
        session,
        script,
        this.scriptLimits('the workspace import', MAX_IMPORT_STDOUT, () =>
          new BangerError(ErrorCode.Internal, `the workspace import in VM '${vmName}' printed more than expected`),
        ),
        { stdin: tar, stdinBytes: tarBytes, signal },
      );
    } catch (e) {
      // The stream's own failure (the plan's, git's, a file's) says more than the transfer it broke.
      if (tarError !== undefined && !signal?.aborted) throw toBangerError(tarError);
      throw (await this.interrupted(vmName, session, 'import', signal)) ?? e;
    } finally {
      // The channel is gone: stop reading files and packing history, and remove the temporary pack.
      if (!tar.readableEnded) tar.destroy();
    }
    if (tarError !== undefined) throw toBangerError(tarError);
    return r;
  }

  /**
   * Records a finished import or re-sync: the workspace on the VM, and the manifest when the guest's
   * imported tree is the one the host listed (else the next prepare imports in full).
   */
  private async record(
    vm: VmRecord,
    repo: HostRepo,
    guestPath: string,
    includeUntracked: boolean,
    r: GuestOutput,
    manifest: PendingManifest | null,
    manifestFile: string,
    notices: string[],
    counts: Pick<WorkspacePrepareResult, 'files' | 'bytes' | 'skippedUntracked' | 'mode' | 'deleted'>,
  ): Promise<WorkspacePrepareResult> {
    const baseCommit = r.stdout.toString('utf8').trim().split('\n').pop() ?? '';
    const guestTree = r.stderr
      .split('\n')
      .find((l) => l.startsWith(TREE_LINE_PREFIX))
      ?.slice(TREE_LINE_PREFIX.length)
      .trim();
    const workspace: WorkspaceInfo = {
      guestPath,
      sourcePath: repo.root,
      headCommit: repo.headCommit,
      baseCommit,
      includeUntracked,
      preparedAt: this.now().toISOString(),
    };
    this.d.repo.update(vm.id, { workspace });
    if (manifest && guestTree === manifest.tree) {
      const { headCommit } = repo;
      await writeManifest(manifestFile, { guestPath, sourcePath: repo.root, includeUntracked, headCommit, baseCommit, tree: guestTree, identity: repo.identity }, manifest.entries);
    } else {
      await removeManifest(manifestFile);
      this.d.log.info({ vm: vm.name, guestTree, hostTree: manifest?.tree }, 'workspace: no manifest kept');
    }
    this.d.log.info(
      { vm: vm.name, guestPath, source: repo.root, mode: counts.mode, files: counts.files, bytes: counts.bytes },
      'workspace prepared',
    );
    return { vm: vm.name, workspace, ...counts, notices };
  }

  /**
   * After a failed transfer: an error saying the VM stopped (or its connection dropped) while the
   * transfer ran, or null when the VM is still up and the failure is the transfer's own. Waits for
   * a `vm stop` in progress to finish (lifecycle lock), so the answer is settled.
   */
  private async interrupted(
    name: string,
    session: { isClosed: boolean },
    what: 'import' | 'export',
    signal?: AbortSignal,
  ): Promise<BangerError | null> {
    if (signal?.aborted) return null;
    const again = `\`banger vm workspace ${what === 'import' ? 'prepare' : 'export'}\` again`;
    const hint = `start it with \`banger vm start ${name}\`, then run ${again}`;
    const nothing = what === 'import' ? '; the import was not recorded' : '';
    try {
      await this.d.vms.runningUnderLock(name, signal);
    } catch {
      return new BangerError(ErrorCode.Unavailable, `VM '${name}' stopped during the workspace ${what}${nothing}`, {
        hint,
      });
    }
    if (session.isClosed)
      return new BangerError(
        ErrorCode.Unavailable,
        `the connection to VM '${name}' was lost during the workspace ${what}${nothing}`,
        { hint: `check the VM with \`banger vm show ${name}\`, then run ${again}` },
      );
    return null;
  }

  private scriptLimits(what: string, maxStdoutBytes: number, tooLarge: () => BangerError): GuestOutputLimits {
    return {
      what,
      maxStdoutBytes,
      maxStderrBytes: MAX_SCRIPT_STDERR,
      idleTimeoutMs: this.limits.idleTimeoutMs,
      tooLarge,
    };
  }

  async export(p: WorkspaceExportParams, signal?: AbortSignal): Promise<WorkspaceExportResult> {
    const vm0 = this.d.vms.get(p.name);
    return this.transfer.run(
      vm0.id,
      async () => {
        const vm = await this.d.vms.runningUnderLock(p.name, signal);
        if (!vm.workspace)
          throw failedPrecondition(
            `VM '${vm.name}' has no workspace`,
            `import one with \`banger vm workspace prepare ${vm.name} REPO\``,
          );
        const guestPath = vm.workspace.guestPath;
        const session = await this.d.vms.guest.transferSession(vm, signal);
        const max = this.limits.maxExportBytes;
        const tooLarge = () =>
          new BangerError(
            ErrorCode.ResourceExhausted,
            `the workspace ${p.nameOnly ? 'change list' : 'patch'} of VM '${vm.name}' is larger than ${formatBytes(max)}, more than banger exports at once`,
            {
              hint: p.nameOnly
                ? 'commit in the guest and export in parts with --base-commit'
                : `see what changed with \`banger vm workspace export ${vm.name} --name-only\`, then commit in the guest and export in parts with --base-commit`,
            },
          );
        let r;
        try {
          r = await runGuestScript(
            session,
            buildExportScript({ guestPath, baseCommit: p.baseCommit, nameOnly: p.nameOnly }),
            this.scriptLimits('the workspace export', max, tooLarge),
            { signal },
          );
        } catch (e) {
          throw (await this.interrupted(vm.name, session, 'export', signal)) ?? e;
        }
        if (r.code !== 0)
          throw (
            (await this.interrupted(vm.name, session, 'export', signal)) ??
            scriptError('export', r.code, r.stderr, guestPath)
          );
        if (p.nameOnly) return { guestPath, patch: '', files: parseNameStatus(r.stdout) };
        // The list is read from the patch itself, so it names exactly what `git apply` will change.
        const files: WorkspaceChange[] = parsePatchFiles(r.stdout);
        return { guestPath, patch: r.stdout.toString('base64'), files };
      },
      signal,
    );
  }

  /** Several VMs' workspaces side by side, with a check run in each (compare.ts). */
  compare(p: WorkspaceCompareParams, signal?: AbortSignal): Promise<WorkspaceCompareResult> {
    return compareWorkspaces(
      {
        export: (e, sig) => this.export(e, sig),
        running: (name, sig) => this.d.vms.runningUnderLock(name, sig),
        session: (vm, sig) => this.d.vms.guest.transferSession(vm, sig),
      },
      p,
      signal,
    );
  }
}
