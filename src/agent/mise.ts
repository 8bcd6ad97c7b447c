import { access, constants, readdir, stat } from 'node:fs/promises';
import { delimiter, dirname, join } from 'node:path';
import { GUEST_MISE_ENV, MISE_DOT_CONFIG_PREFIX, MISE_NAME_PREFIXES, MISE_VAR_PREFIXES } from '../protocol/mise.js';

/**
 * `argv` as an exec with `mise: true` runs it in `cwd` with `env`: under `mise exec --` when mise is on PATH and
 * its config may apply there (the rule in protocol/mise.ts, which the workspace's shell line follows too), else
 * as is. Decided here, it spares the command a shell and its tests: most of what a short command costs in an
 * emulated guest is process starts.
 */
export async function underMise(argv: string[], cwd: string, env: NodeJS.ProcessEnv): Promise<string[]> {
  // Side by side: each file system call is a trip through Node's thread pool, about a millisecond under TCG.
  const [mise, applies] = await Promise.all([onPath('mise', env.PATH ?? ''), miseApplies(cwd, env)]);
  return mise === null || !applies ? argv : [mise, 'exec', '--', ...argv];
}

/** Whether mise's config may apply to a command run in `cwd` with `env` (protocol/mise.ts). */
export async function miseApplies(cwd: string, env: NodeJS.ProcessEnv): Promise<boolean> {
  for (const [k, v] of Object.entries(env)) {
    if (v !== undefined && MISE_VAR_PREFIXES.some((p) => k.startsWith(p)) && !(k in GUEST_MISE_ENV)) return true;
  }
  const home = env.HOME || '/root';
  const dirs = [home];
  for (let d = cwd; ; d = dirname(d)) {
    dirs.push(d);
    if (dirname(d) === d) break;
  }
  const found = await Promise.all([
    exists('/etc/mise'),
    exists(join(env.XDG_CONFIG_HOME || join(home, '.config'), 'mise')),
    ...[...new Set(dirs)].map(holdsMiseName),
  ]);
  return found.some(Boolean);
}

async function holdsMiseName(dir: string): Promise<boolean> {
  const names = await readdir(dir).catch(() => [] as string[]);
  if (names.some((n) => MISE_NAME_PREFIXES.some((p) => n.startsWith(p)))) return true;
  if (!names.includes('.config')) return false;
  const config = await readdir(join(dir, '.config')).catch(() => [] as string[]);
  return config.some((n) => n.startsWith(MISE_DOT_CONFIG_PREFIX));
}

/** The shell's `command -v NAME` for a plain name: the first executable file of that name on PATH. */
async function onPath(name: string, path: string): Promise<string | null> {
  const files = path
    .split(delimiter)
    .filter((dir) => dir.startsWith('/'))
    .map((dir) => join(dir, name));
  const ok = await Promise.all(
    files.map((file) =>
      access(file, constants.X_OK).then(
        () => stat(file).then((st) => st.isFile()),
        () => false,
      ),
    ),
  );
  return files[ok.indexOf(true)] ?? null;
}

const exists = (p: string) => access(p).then(() => true, () => false);
