import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Every directory `scratchDir` made in this process (each test file runs in a process of its own). */
const made: string[] = [];
process.once('exit', () => {
  for (const dir of made) rmSync(dir, { recursive: true, force: true });
});

/**
 * A new, empty directory named `<prefix>XXXXXX` under `parent` (the system's temp dir by default), removed with
 * everything in it when the test process exits, passed or failed: a test run leaves nothing in /tmp.
 */
export function scratchDir(prefix: string, parent = tmpdir()): string {
  const dir = mkdtempSync(join(parent, prefix));
  made.push(dir);
  return dir;
}
