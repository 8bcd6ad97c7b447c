import { lstatSync, readlinkSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { basename, join } from 'node:path';
import { BangerError, ErrorCode } from '../errors/index.js';
import type { CommandRunner, RunResult } from './command.js';
import { NUL, runRecords, text, type RecordHandler } from './records.js';
import { parentsAreDirs, worktreeKind } from './worktree.js';
import { assertNoPathThroughSymlink, validateEntryPath } from './workspace-paths.js';
import { gitEnv } from './git-head.js';

export { gitEnv, headCommitOf } from './git-head.js';

export * from './workspace-format.js';
export * from './workspace-paths.js';

/**
 * Reading a host git checkout for a workspace import: which files an import carries and how the
 * `--dry-run` listing shows them. Shared by the daemon (the import itself) and the CLI (`--dry-run`
 * without a daemon, the dirty check of `vm exec`), so both list files the same way.
 */

/** The committer identity of the host checkout, copied into the guest repo's local config. */
export interface GitIdentity {
  name: string | null;
  email: string | null;
}

/** What banger needs to know about a host git checkout before importing it. */
export interface HostRepo {
  /** Absolute path of the checkout's top-level directory (`git rev-parse --show-toplevel`). */
  root: string;
  /** basename(root): the default workspace name. */
  name: string;
  /** Full hex id of HEAD's commit; null in a repository without commits. */
  headCommit: string | null;
  /** The branch HEAD points at (also for an unborn branch); null when HEAD is detached. */
  branch: string | null;
  detached: boolean;
  identity: GitIdentity;
  /** Repo-relative paths of submodules (gitlinks in the index). Their contents are not imported. */
  submodules: string[];
}

export type ImportEntryKind = 'file' | 'symlink' | 'dir';

/** One path of the import, as it is in the host working tree. */
export interface ImportEntry {
  /** Repo-relative, '/'-separated, exactly as git names it. */
  path: string;
  kind: ImportEntryKind;
  /** Permission bits: 0o644 or 0o755 for files (git's two modes), 0o777 for symlinks, 0o755 for dirs. */
  mode: number;
  /** Bytes of file content; 0 for symlinks and dirs. */
  size: number;
  /** Symlink target, verbatim. */
  linkTarget?: string;
  /** True for an untracked (not ignored) file imported with includeUntracked. */
  untracked?: boolean;
}

export interface ImportFileList {
  entries: ImportEntry[];
  /** Untracked, not ignored files left out because includeUntracked was off. */
  skippedUntracked: number;
  /** Submodule paths whose contents were not imported (see listImportFiles). */
  skippedSubmodules: string[];
  /** With includeUntracked: untracked git repositories inside the checkout, not imported (see listImportFiles). */
  skippedRepositories: string[];
  /** Paths that are a FIFO, socket or device in the working tree: never read, not imported. */
  skippedSpecial: string[];
  /** Sum of entry sizes. */
  totalBytes: number;
}


/**
 * Output kept from a listing command. A listing is parsed whole, so it is refused rather than cut
 * when it is larger (about two million paths); it must also stay a valid JS string.
 */
const LISTING_MAX_BYTES = 256 << 20;

function git(run: CommandRunner, cwd: string, args: string[], signal?: AbortSignal): Promise<RunResult> {
  return run('git', args, { cwd, env: gitEnv(), allowFailure: true, signal, maxOutputBytes: LISTING_MAX_BYTES });
}

/** Throws when a listing failed or was longer than LISTING_MAX_BYTES. */
function listed(r: RunResult, cwd: string, args: string[]): void {
  if (r.code !== 0) {
    throw new BangerError(
      ErrorCode.Internal,
      `git ${args.join(' ')} failed in ${cwd} (exit ${r.code}): ${r.stderr.trim().split('\n').slice(-3).join(' ')}`,
    );
  }
  if (r.truncated?.stdout) {
    throw new BangerError(ErrorCode.FailedPrecondition, `git ${args[0] ?? ''} listed more than banger can read in ${cwd}`, {
      hint: 'import a smaller checkout (a sparse checkout or a subdirectory repository)',
    });
  }
}

/** A `-z` listing, each record handed to `onRecord` as git prints it (records.ts). */
async function gitRecords(
  run: CommandRunner,
  cwd: string,
  args: string[],
  onRecord: RecordHandler,
  signal?: AbortSignal,
): Promise<void> {
  const opts = { cwd, env: gitEnv(), allowFailure: true, signal, maxBytes: LISTING_MAX_BYTES };
  listed(await runRecords(run, 'git', args, NUL, onRecord, opts), cwd, args);
}

/** git's listing of the untracked, not ignored paths: it prints an untracked nested repository as "DIR/". */
const UNTRACKED_LISTING = ['ls-files', '-z', '--others', '--exclude-standard', '--full-name'];

/** The repository a record of UNTRACKED_LISTING names, or null for a file. */
function repositoryOf(buf: Buffer, start: number, end: number): string | null {
  return buf[end - 1] === 0x2f ? text(buf, start, end - 1) : null;
}

/** The untracked nested repositories of a checkout (as listImportFiles's skippedRepositories, sorted). */
export async function untrackedRepositories(root: string, run: CommandRunner, signal?: AbortSignal): Promise<string[]> {
  const repositories: string[] = [];
  await gitRecords(
    run,
    root,
    UNTRACKED_LISTING,
    (buf, start, end) => {
      const repository = repositoryOf(buf, start, end);
      if (repository !== null) repositories.push(repository);
    },
    signal,
  );
  return repositories.sort();
}

/** Inspects a host checkout. `path` may be any directory inside the work tree. */
export async function inspectRepo(path: string, run: CommandRunner, signal?: AbortSignal): Promise<HostRepo> {
  let st;
  try {
    st = await stat(path);
  } catch {
    throw new BangerError(ErrorCode.InvalidArgument, `${path} does not exist: pass the path of a git checkout`);
  }
  if (!st.isDirectory()) {
    throw new BangerError(ErrorCode.InvalidArgument, `${path} is not a directory: pass the path of a git checkout`);
  }
  const inside = await git(run, path, ['rev-parse', '--is-inside-work-tree', '--show-toplevel'], signal);
  if (inside.code !== 0) {
    if (/dubious ownership/.test(inside.stderr)) {
      throw new BangerError(ErrorCode.FailedPrecondition, `git refuses to read ${path}: it is owned by another user`, {
        hint: `if you trust it: git config --global --add safe.directory '${path}'`,
      });
    }
    if (/must be run in a work tree/.test(inside.stderr)) {
      throw new BangerError(
        ErrorCode.InvalidArgument,
        `${path} is a bare repository or a .git directory: pass the checkout's working tree instead`,
      );
    }
    throw new BangerError(
      ErrorCode.InvalidArgument,
      `${path} is not a git repository: run \`git init\` there, or pass a git checkout`,
    );
  }
  const [isWorkTree, root] = inside.stdout.replace(/\n$/, '').split('\n');
  if (isWorkTree !== 'true' || !root) {
    throw new BangerError(
      ErrorCode.InvalidArgument,
      `${path} is inside a .git directory: pass the checkout's working tree instead`,
    );
  }

  // Independent questions, asked at once (each is a process; a re-sync waits for all of them).
  const cfg = async (key: string) => {
    const r = await git(run, root, ['config', '--get', key], signal);
    const v = r.stdout.replace(/\n$/, '');
    return r.code === 0 && v !== '' ? v : null;
  };
  const submodules: string[] = [];
  const [head, sym, name, email] = await Promise.all([
    git(run, root, ['rev-parse', '-q', '--verify', 'HEAD^{commit}'], signal),
    git(run, root, ['symbolic-ref', '-q', '--short', 'HEAD'], signal),
    cfg('user.name'),
    cfg('user.email'),
    readIndex(
      run,
      root,
      (path, gitlink) => {
        if (gitlink) submodules.push(path);
      },
      signal,
    ),
  ]);
  const headCommit = head.code === 0 ? head.stdout.trim() : null;
  const branch = sym.code === 0 ? sym.stdout.trim() : null;
  const identity = { name, email };

  return { root, name: basename(root), headCommit, branch, detached: branch === null, identity, submodules };
}

/**
 * `git ls-files -z --stage`, one call per path in index order (conflict stages, which git lists next to
 * each other, collapsed); `gitlink`: a submodule's entry.
 */
async function readIndex(
  run: CommandRunner,
  root: string,
  onEntry: (path: string, gitlink: boolean) => void,
  signal?: AbortSignal,
): Promise<void> {
  let last: string | null = null;
  await gitRecords(
    run,
    root,
    ['ls-files', '-z', '--stage', '--full-name'],
    (buf, start, end) => {
      const tab = buf.indexOf(TAB, start);
      const path = text(buf, tab === -1 || tab >= end ? start : tab + 1, end);
      if (path === last) return;
      last = path;
      const space = buf.indexOf(SPACE, start);
      onEntry(path, space !== -1 && space < end && buf.toString('latin1', start, space) === '160000');
    },
    signal,
  );
}

const TAB = 0x09;
const SPACE = 0x20;

/**
 * Paths described synchronously in a row, between which the event loop runs (the daemon serves others
 * meanwhile). A synchronous lstat costs a few microseconds; through fs.promises, with the thread pool's round
 * trip, describing 4,000 paths took 90-230 ms against 17-46 ms.
 */
const DESCRIBE_BATCH = 256;

type Described = ImportEntry | { special: string } | null;

/** Describes one working-tree path: an entry, a special file to skip with a notice, or null when git sees it as deleted. */
function describe(root: string, path: string, untracked: boolean, dirs: Map<string, boolean>): Described {
  if (!parentsAreDirs(root, path, dirs)) return null;
  const abs = join(root, path);
  let st;
  try {
    st = lstatSync(abs);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    // Tracked but deleted in the working tree (or a parent was replaced by a file): not imported,
    // so the guest sees it as a deletion, like `git status` on the host does.
    if (code === 'ENOENT' || code === 'ENOTDIR') return null;
    throw new BangerError(ErrorCode.FailedPrecondition, `cannot read ${abs}: ${(e as Error).message}`);
  }
  // Object literals of one shape each (a spread would give every entry a larger, slower layout).
  switch (worktreeKind(st)) {
    case 'symlink': {
      const linkTarget = readlinkSync(abs);
      return untracked
        ? { path, kind: 'symlink', mode: 0o777, size: 0, linkTarget, untracked }
        : { path, kind: 'symlink', mode: 0o777, size: 0, linkTarget };
    }
    case 'file': {
      const mode = st.mode & 0o111 ? 0o755 : 0o644;
      return untracked ? { path, kind: 'file', mode, size: st.size, untracked } : { path, kind: 'file', mode, size: st.size };
    }
    case 'special':
      return { special: path };
    case 'gone':
      return null;
  }
}

/**
 * Lists what an import carries, read from the working tree (uncommitted edits included):
 *  - tracked files and symlinks as they are now; tracked paths deleted in the working tree, or below a
 *    directory that became a symlink, are skipped (git sees both as deleted);
 *  - FIFOs, sockets and devices never (reported in skippedSpecial);
 *  - untracked, not ignored files only with includeUntracked (counted in skippedUntracked otherwise);
 *  - ignored files never.
 *
 * Submodules: a gitlink is imported as an empty directory, the way a clone without
 * `git submodule update` looks, and its contents are not imported (reported in skippedSubmodules).
 * Importing the submodule's files into the superproject's tree would make the guest see them as
 * untracked files of the superproject, and an export would then turn them into regular files in the
 * host repo. The empty directory keeps `git status` clean in the guest for the gitlink.
 * Untracked nested repositories (`git ls-files --others` prints them as "dir/") are not imported at all (with
 * includeUntracked, reported in skippedRepositories): git's state of the checkout names them as gitlinks of no
 * history the guest has.
 */
export async function listImportFiles(
  root: string,
  opts: {
    includeUntracked: boolean;
    /**
     * Describe only these paths (a re-sync's changed ones): the others are still listed by git and
     * counted in the figures git gives (untracked, submodules), but not read from the working tree. It may
     * come later than the call: git lists the checkout meanwhile.
     */
    only?: ReadonlySet<string> | Promise<ReadonlySet<string>>;
  },
  run: CommandRunner,
  signal?: AbortSignal,
): Promise<ImportFileList> {
  // Tracked paths, then untracked ones; `gitlinks` are submodules (listed by the index only).
  const paths: string[] = [];
  const gitlinks = new Set<string>();
  const onIndex = (path: string, gitlink: boolean) => {
    paths.push(path);
    if (gitlink) gitlinks.add(path);
  };
  let untrackedFiles = 0;
  const untracked: string[] = [];
  const repositories: string[] = [];
  // Both listings at once: the untracked one walks the working tree's directories.
  await Promise.all([
    readIndex(run, root, onIndex, signal),
    gitRecords(
      run,
      root,
      UNTRACKED_LISTING,
      (buf, start, end) => {
        // An untracked nested repository is never imported nor counted as an untracked file.
        const repository = repositoryOf(buf, start, end);
        if (repository !== null) {
          if (opts.includeUntracked) repositories.push(repository);
          return;
        }
        untrackedFiles++;
        if (opts.includeUntracked) untracked.push(text(buf, start, end));
      },
      signal,
    ),
  ]);
  const tracked = paths.length;
  for (const p of untracked) paths.push(p);
  const skippedSubmodules = [...gitlinks];
  for (const p of paths) validateEntryPath(p);

  const dirs = new Map<string, boolean>();
  const only = await opts.only;
  const entries: ImportEntry[] = [];
  const skippedSpecial: string[] = [];
  for (const [i, path] of paths.entries()) {
    if (i > 0 && i % DESCRIBE_BATCH === 0) await nextTurn();
    if (only && !only.has(path)) continue;
    const d: Described =
      i < tracked && gitlinks.has(path) ? { path, kind: 'dir', mode: 0o755, size: 0 } : describe(root, path, i >= tracked, dirs);
    if (d === null) continue;
    if ('special' in d) skippedSpecial.push(d.special);
    else entries.push(d);
  }
  entries.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  assertNoPathThroughSymlink(entries);
  const totalBytes = entries.reduce((n, e) => n + e.size, 0);
  return {
    entries,
    skippedUntracked: opts.includeUntracked ? 0 : untrackedFiles,
    skippedSubmodules,
    skippedRepositories: repositories.sort(),
    skippedSpecial,
    totalBytes,
  };
}
