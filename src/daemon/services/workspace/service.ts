import type {
  WorkspaceChange,
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
import {
  formatBytes,
  inspectRepo,
  listImportFiles,
  specialFileNotice,
  submoduleNotice,
  untrackedNotice,
} from './host-repo.js';
import { createImportTar } from './pack.js';
import {
  MISE_NOTICE_PREFIX,
  SCRIPT_STDERR_PREFIX,
  WorkspaceScriptExit,
  buildExportScript,
  buildImportScript,
  parseNameStatus,
  validateGuestPath,
} from './guest-scripts.js';
import { runGuestScript, type GuestOutputLimits } from './guest-output.js';
import { parsePatchFiles } from './patch.js';

export interface WorkspaceServiceDeps {
  vms: VmService;
  repo: VmRepo;
  run: CommandRunner;
  log: Logger;
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
        const list = await listImportFiles(repo.root, { includeUntracked }, this.d.run, signal);
        const session = await this.d.vms.session(vm, signal);
        let tarError: unknown;
        let lastProgress = 0;
        const special = new Set(list.skippedSpecial);
        const tar = createImportTar(
          { root: repo.root, entries: list.entries, headCommit: repo.headCommit },
          {
            run: this.d.run,
            signal,
            onSkipped: (path) => special.add(path),
            onProgress: (t) => {
              // One event per file would be one JSON-RPC notification per file: a few a second is plenty.
              const now = Date.now();
              if (now - lastProgress < PROGRESS_INTERVAL_MS && t.files !== list.entries.length) return;
              lastProgress = now;
              progress({ kind: 'bytes', step: 'import', done: t.bytes, total: list.totalBytes, files: t.files });
            },
          },
        );
        tar.on('error', (e) => (tarError ??= e));
        const script = buildImportScript({
          guestPath,
          headCommit: repo.headCommit,
          branch: repo.branch,
          identity: repo.identity,
        });
        let r;
        try {
          r = await runGuestScript(
            session,
            script,
            this.scriptLimits('the workspace import', MAX_IMPORT_STDOUT, () =>
              new BangerError(ErrorCode.Internal, `the workspace import in VM '${vm.name}' printed more than expected`),
            ),
            { stdin: tar, signal },
          );
        } catch (e) {
          throw (await this.interrupted(vm.name, session, 'import', signal)) ?? e;
        } finally {
          // The channel is gone: stop reading files and packing history, and remove the temporary pack.
          if (!tar.readableEnded) tar.destroy();
        }
        if (tarError !== undefined) throw toBangerError(tarError);
        const stderr = r.stderr;
        if (r.code !== 0)
          throw (
            (await this.interrupted(vm.name, session, 'import', signal)) ??
            scriptError('import', r.code, stderr, guestPath)
          );
        const baseCommit = r.stdout.toString('utf8').trim().split('\n').pop() ?? '';

        const notices: string[] = [];
        const u = untrackedNotice(list.skippedUntracked);
        if (u) notices.push(u);
        const s = submoduleNotice(list.skippedSubmodules);
        if (s) notices.push(s);
        const sp = specialFileNotice([...special].sort());
        if (sp) notices.push(sp);
        for (const line of stderr.split('\n')) {
          if (line.startsWith(MISE_NOTICE_PREFIX)) notices.push(line.slice(SCRIPT_STDERR_PREFIX.length));
        }

        const workspace: WorkspaceInfo = {
          guestPath,
          sourcePath: repo.root,
          headCommit: repo.headCommit,
          baseCommit,
          includeUntracked,
          preparedAt: this.now().toISOString(),
        };
        this.d.repo.update(vm.id, { workspace });
        const files = list.entries.filter((e) => e.kind !== 'dir').length;
        this.d.log.info(
          { vm: vm.name, guestPath, source: repo.root, files, bytes: list.totalBytes },
          'workspace prepared',
        );
        return {
          vm: vm.name,
          workspace,
          files,
          bytes: list.totalBytes,
          skippedUntracked: list.skippedUntracked,
          notices,
        };
      },
      signal,
    );
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
        const session = await this.d.vms.session(vm, signal);
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
}

const PROGRESS_INTERVAL_MS = 200;

/** Maps a failed guest script to an error the user can act on. */
function scriptError(what: 'import' | 'export', code: number, stderr: string, guestPath: string): BangerError {
  const own = stderr
    .split('\n')
    .filter((l) => l.startsWith(SCRIPT_STDERR_PREFIX) && !l.startsWith(MISE_NOTICE_PREFIX))
    .map((l) => l.slice(SCRIPT_STDERR_PREFIX.length));
  const detail =
    own.at(-1) ??
    stderr
      .split('\n')
      .filter((l) => l.trim() !== '')
      .slice(-3)
      .join(' ');
  // Whatever step met it, a full guest disk is the cause to name (tar's own line says so; the script's may not).
  if (/No space left on device/.test(stderr))
    return new BangerError(ErrorCode.ResourceExhausted, `the workspace ${what} into ${guestPath} failed: the guest's disk is full`, {
      hint: 'make room in the guest, or stop the VM and grow its work disk with `banger vm set NAME --disk-size SIZE`',
    });
  switch (code) {
    case WorkspaceScriptExit.PathInUse:
      return new BangerError(ErrorCode.FailedPrecondition, detail, {
        hint: 'pass --guest-path with another directory',
      });
    case WorkspaceScriptExit.NoWorkspace:
      return new BangerError(ErrorCode.FailedPrecondition, detail, {
        hint: 'import the repo again with `banger vm workspace prepare`',
      });
    case WorkspaceScriptExit.BadBase:
      return new BangerError(ErrorCode.InvalidArgument, detail);
    default:
      return new BangerError(
        ErrorCode.Internal,
        `the workspace ${what} into ${guestPath} failed in the guest (exit ${code}): ${detail || '(no output)'}`,
      );
  }
}
