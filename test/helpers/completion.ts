/**
 * Runs a generated bash completion script the way bash's programmable completion does: sources it, sets
 * COMP_WORDS/COMP_CWORD for a command line whose last word is being completed, calls `_banger`, and returns
 * COMPREPLY. `banger` on the PATH is a wrapper around the built CLI (dist/banger.js), so the script's
 * `banger __complete` runs the real thing.
 */
import { execFile } from 'node:child_process';
import { chmodSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { CLI } from './cli.js';
import { scratchDir } from './scratch.js';

const run = promisify(execFile);

/** A directory holding a `banger` that runs the built CLI with this Node, for PATH. */
export function bangerOnPath(): string {
  const dir = scratchDir('banger-path-');
  const bin = join(dir, 'banger');
  writeFileSync(bin, `#!/bin/sh\nexec '${process.execPath}' '${CLI}' "$@"\n`);
  chmodSync(bin, 0o755);
  return dir;
}

/**
 * COMPREPLY for `words` (the last one is the word being completed, '' for a fresh one) after sourcing
 * `scriptPath` in bash, with `env` (BANGER_HOME, PATH) set.
 */
export async function bashComplete(scriptPath: string, words: string[], env: NodeJS.ProcessEnv): Promise<string[]> {
  const { stdout } = await run(
    'bash',
    [
      '--norc',
      '-c',
      'source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMPREPLY=(); _banger; printf "%s\\n" "${COMPREPLY[@]}"',
      'bash',
      scriptPath,
      ...words,
    ],
    { env: { ...process.env, ...env }, timeout: 30_000 },
  );
  return stdout.split('\n').filter(Boolean);
}
