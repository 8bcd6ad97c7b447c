/**
 * The image's banger-spawner (src/agent/spawner-source.ts): compiled here with the host's gcc (a static
 * binary, so it needs nothing from the guest) and installed beside the agent. The agent starts commands
 * through it so its own large Node process never forks (~40 ms a fork under TCG). A host without gcc or a
 * static libc (Debian: gcc, libc6-dev) builds the image without it; the agent then spawns with Node.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SPAWNER_SOURCE } from '../../../agent/spawner-source.js';
import type { CommandRunner } from '../../../shared/command.js';

/** Compiles the spawner to `out`; the compiler's complaint when it could not. */
export async function compileSpawner(out: string, run: CommandRunner): Promise<{ ok: true } | { ok: false; reason: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'banger-spawner-'));
  try {
    const src = join(dir, 'banger-spawner.c');
    await writeFile(src, SPAWNER_SOURCE);
    const r = await run('gcc', ['-static', '-Os', '-s', '-Wall', '-o', out, src], { allowFailure: true }).catch(
      (e: Error) => ({ code: 127, stdout: '', stderr: e.message }),
    );
    if (r.code !== 0) return { ok: false, reason: (r.stderr || r.stdout).trim().slice(0, 500) || `gcc exited ${r.code}` };
    return { ok: true };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
