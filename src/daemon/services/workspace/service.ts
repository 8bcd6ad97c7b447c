import type {
  WorkspaceChange,
  WorkspaceExportParams,
  WorkspaceExportResult,
  WorkspacePrepareParams,
  WorkspacePrepareResult,
} from '../../../protocol/methods.js';
import type { ProgressEvent, WorkspaceInfo } from '../../../protocol/types.js';
import { BangerError, ErrorCode, failedPrecondition, toBangerError } from '../../../errors/index.js';
import type { Logger } from '../../../shared/logger.js';
import type { CommandRunner } from '../../exec.js';
import type { VmRepo } from '../../store/repos/vms.js';
import type { VmService } from '../vm/service.js';
import { KeyedMutex } from '../locks.js';
import { inspectRepo, listImportFiles, submoduleNotice, untrackedNotice } from './host-repo.js';
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

export interface WorkspaceServiceDeps {
  vms: VmService;
  repo: VmRepo;
  run: CommandRunner;
  log: Logger;
  now?: () => Date;
}

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

  constructor(private readonly d: WorkspaceServiceDeps) {
    this.now = d.now ?? (() => new Date());
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
        const tar = createImportTar(
          { root: repo.root, entries: list.entries, headCommit: repo.headCommit },
          {
            run: this.d.run,
            signal,
            onProgress: (t) =>
              progress({ kind: 'bytes', step: 'import', done: t.bytes, total: list.totalBytes, files: t.files }),
          },
        );
        tar.on('error', (e) => (tarError ??= e));
        const script = buildImportScript({
          guestPath,
          headCommit: repo.headCommit,
          branch: repo.branch,
          identity: repo.identity,
        });
        const r = await session.exec(script, { stdin: tar, signal });
        if (tarError !== undefined) throw toBangerError(tarError);
        const stderr = r.stderr.toString('utf8');
        if (r.code !== 0) throw scriptError('import', r.code, stderr, guestPath);
        const baseCommit = r.stdout.toString('utf8').trim().split('\n').pop() ?? '';

        const notices: string[] = [];
        const u = untrackedNotice(list.skippedUntracked);
        if (u) notices.push(u);
        const s = submoduleNotice(list.skippedSubmodules);
        if (s) notices.push(s);
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
        this.d.log.info({ vm: vm.name, guestPath, source: repo.root, files, bytes: list.totalBytes }, 'workspace prepared');
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
        const names = await session.exec(
          buildExportScript({ guestPath, baseCommit: p.baseCommit, nameOnly: true }),
          { signal },
        );
        if (names.code !== 0) throw scriptError('export', names.code, names.stderr.toString('utf8'), guestPath);
        const files: WorkspaceChange[] = parseNameStatus(names.stdout);
        let patch = '';
        if (!p.nameOnly && files.length > 0) {
          const r = await session.exec(buildExportScript({ guestPath, baseCommit: p.baseCommit }), { signal });
          if (r.code !== 0) throw scriptError('export', r.code, r.stderr.toString('utf8'), guestPath);
          patch = r.stdout.toString('base64');
        }
        return { guestPath, patch, files };
      },
      signal,
    );
  }
}

/** Maps a failed guest script to an error the user can act on. */
function scriptError(what: 'import' | 'export', code: number, stderr: string, guestPath: string): BangerError {
  const own = stderr
    .split('\n')
    .filter((l) => l.startsWith(SCRIPT_STDERR_PREFIX) && !l.startsWith(MISE_NOTICE_PREFIX))
    .map((l) => l.slice(SCRIPT_STDERR_PREFIX.length));
  const detail = own.at(-1) ?? stderr.trim().split('\n').slice(-3).join(' ');
  switch (code) {
    case WorkspaceScriptExit.PathInUse:
      return new BangerError(ErrorCode.FailedPrecondition, detail, { hint: 'pass --guest-path with another directory' });
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
