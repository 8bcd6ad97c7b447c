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

/** HEAD's commit of the checkout at `path`, or null (no commits, or not a git checkout any more). */
export async function headCommitOf(path: string, run: CommandRunner, signal?: AbortSignal): Promise<string | null> {
  const r = await run('git', ['rev-parse', '-q', '--verify', 'HEAD^{commit}'], {
    cwd: path,
    env: gitEnv(),
    allowFailure: true,
    signal,
  }).catch(() => null);
  return r && r.code === 0 ? r.stdout.trim() : null;
}
