/**
 * Another user's state directory, as a second user on the host meets it: the CLI pointed at root's
 * BANGER_HOME (0700, its daemon running) says whose it is and what to do, with exit 67, instead of
 * calling it a bug in banger. Runs the built CLI (dist/banger.js) as `nobody`; needs root to switch users.
 */
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { CLI } from '../helpers/cli.js';
import { scratchDir } from '../helpers/scratch.js';

const run = promisify(execFile);
const NOBODY = 65534;

/** Why the test cannot run here, or null: it needs root, and `nobody` must be able to run the built CLI. */
function cannotRun(): string | null {
  if (process.getuid?.() !== 0) return 'needs root, to run the CLI as another user';
  const r = spawnSync(process.execPath, ['-e', `require('fs').accessSync(${JSON.stringify(CLI)})`], {
    uid: NOBODY,
    gid: NOBODY,
  });
  return r.status === 0 ? null : `user nobody cannot read ${CLI} (a parent directory is private)`;
}

void describe("another user's state directory", () => {
  const skip = cannotRun();
  const home = scratchDir('banger-private-');
  writeFileSync(
    join(home, 'config.json'),
    JSON.stringify({ dns: { address: '127.0.0.1', port: 20000 + ((process.pid + 7) % 20000) } }),
  );
  const env = { ...process.env, BANGER_HOME: home, NO_COLOR: '1' };

  after(async () => {
    await run(process.execPath, [CLI, 'daemon', 'stop'], { env }).catch(() => undefined);
    rmSync(home, { recursive: true, force: true });
  });

  void it(
    'is refused with exit 67, naming the path, its owner and the fix, and root keeps its daemon',
    { skip: skip ?? false },
    async () => {
      await run(process.execPath, [CLI, 'ps'], { env }); // root's daemon is up, its socket 0600 in a 0700 directory
      const r = spawnSync(process.execPath, [CLI, 'ps'], {
        uid: NOBODY,
        gid: NOBODY,
        env: { ...env, HOME: '/tmp' },
        encoding: 'utf8',
      });
      assert.equal(r.status, 67, r.stderr);
      assert.match(
        r.stderr,
        new RegExp(
          `permission denied: ${home}/bangerd\\.sock \\(${home} belongs to root, uid 0; banger runs as uid ${NOBODY}\\)`,
        ),
      );
      assert.match(r.stderr, /unset BANGER_HOME/);
      assert.doesNotMatch(r.stderr, /bug in banger/);
      await run(process.execPath, [CLI, 'ps'], { env }); // root still gets answers (rejects on a non-zero exit)
    },
  );
});
