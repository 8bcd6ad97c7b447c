import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { CommandRunner } from './command.js';

/**
 * Host git's environment and HEAD of a host checkout: the part of workspace-files.ts that `vm exec`'s fast path
 * (cli/fast-exec.ts) needs, kept apart so that path loads nothing else of it.
 */

/**
 * Environment for host git: drops variables that would point git at another repository or index,
 * and asks git not to take optional locks so inspecting never races the user's own git commands.
 */
export function gitEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, GIT_OPTIONAL_LOCKS: '0', LC_ALL: 'C' };
  for (const k of [
    'GIT_DIR',
    'GIT_WORK_TREE',
    'GIT_INDEX_FILE',
    'GIT_OBJECT_DIRECTORY',
    'GIT_COMMON_DIR',
    'GIT_PREFIX',
  ]) {
    delete env[k];
  }
  return env;
}

/**
 * HEAD's commit of the checkout at `path`, or null (no commits, or not a git checkout any more). Read from the
 * repository's files where that is plain (headFromFiles), else asked of git: every `vm exec` in a workspace
 * checks it, and a git process is most of what that check costs.
 */
export async function headCommitOf(path: string, run: CommandRunner, signal?: AbortSignal): Promise<string | null> {
  const read = await headFromFiles(path);
  if (read !== undefined) return read;
  const r = await run('git', ['rev-parse', '-q', '--verify', 'HEAD^{commit}'], {
    cwd: path,
    env: gitEnv(),
    allowFailure: true,
    signal,
  }).catch(() => null);
  return r && r.code === 0 ? r.stdout.trim() : null;
}

const OID = /^(?:[0-9a-f]{40}|[0-9a-f]{64})$/;

/**
 * HEAD's commit id read from `root/.git`, when that is a directory whose HEAD is a commit id (detached) or
 * names a branch kept in its own file or in `packed-refs` (git reads a ref's own file first); undefined for
 * anything else (a `.git` file of a worktree or submodule, reftable, a symbolic ref, an unborn branch): then
 * git must say.
 */
export async function headFromFiles(root: string): Promise<string | undefined> {
  const git = join(root, '.git');
  const text = (name: string) => readFile(join(git, name), 'utf8').catch(() => undefined);
  const head = (await text('HEAD'))?.trim();
  if (head === undefined) return undefined;
  if (OID.test(head)) return head;
  const ref = /^ref: (refs\/heads\/[^\0\s]+)$/.exec(head)?.[1];
  if (ref === undefined || ref.split('/').some((c) => c === '' || c === '.' || c === '..' || c.startsWith('.'))) return undefined;
  const own = await text(ref);
  if (own !== undefined) return OID.test(own.trim()) ? own.trim() : undefined;
  const packed = await text('packed-refs');
  if (packed === undefined) return undefined;
  for (const line of packed.split('\n')) {
    const space = line.indexOf(' ');
    if (space > 0 && line.slice(space + 1) === ref && OID.test(line.slice(0, space))) return line.slice(0, space);
  }
  return undefined;
}
