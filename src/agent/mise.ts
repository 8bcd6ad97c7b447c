import { existsSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { onPath } from './which.js';
import { GUEST_MISE_ENV, MISE_DOT_CONFIG_PREFIX, MISE_NAME_PREFIXES, MISE_VAR_PREFIXES } from '../protocol/mise.js';

/**
 * `argv` as an exec with `mise: true` runs it in `cwd` with `env`: under `mise exec --` when mise is on PATH and
 * its config may apply there (the rule in protocol/mise.ts, which the workspace's shell line follows too), else
 * as is. Decided here, it spares the command a shell and its tests: most of what a short command costs in an
 * emulated guest is process starts. The file system calls are synchronous: a dozen stats and reads of small
 * directories (the workspace's top and those above it) take about a millisecond, where each trip through
 * Node's thread pool alone costs about that under TCG.
 */
export function underMise(argv: string[], cwd: string, env: NodeJS.ProcessEnv): string[] {
  const mise = onPath('mise', env.PATH ?? '');
  return mise === null || !miseApplies(cwd, env) ? argv : [mise, 'exec', '--', ...argv];
}

/** Whether mise's config may apply to a command run in `cwd` with `env` (protocol/mise.ts). */
function miseApplies(cwd: string, env: NodeJS.ProcessEnv): boolean {
  for (const [k, v] of Object.entries(env)) {
    if (v !== undefined && MISE_VAR_PREFIXES.some((p) => k.startsWith(p)) && !(k in GUEST_MISE_ENV)) return true;
  }
  const home = env.HOME || '/root';
  if (existsSync('/etc/mise') || existsSync(join(env.XDG_CONFIG_HOME || join(home, '.config'), 'mise'))) return true;
  for (let d = cwd; ; d = dirname(d)) {
    if (holdsMiseName(d)) return true;
    if (dirname(d) === d) break;
  }
  return holdsMiseName(home);
}

function holdsMiseName(dir: string): boolean {
  const names = list(dir);
  if (names.some((n) => MISE_NAME_PREFIXES.some((p) => n.startsWith(p)))) return true;
  return names.includes('.config') && list(join(dir, '.config')).some((n) => n.startsWith(MISE_DOT_CONFIG_PREFIX));
}

function list(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}
