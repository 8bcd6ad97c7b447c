/**
 * A re-sync through the workspace service against a "guest" that is a local directory (LocalShellSession): its
 * script starts (and runs its check) while the host still plans what to send, so the plan's late answers are
 * checked here: no re-sync after all, an archive too large for the script's stdin, and a mise config written.
 */
import assert from 'node:assert/strict';
import { chmodSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { randomBytes } from 'node:crypto';
import type { GuestExecOptions } from '../../src/daemon/guest/session.js';
import { RESYNC_STAGE_PREFIX } from '../../src/daemon/services/workspace/resync-script.js';
import { runCommand, type CommandRunner } from '../../src/shared/command.js';
import { localWorkspaceService } from '../helpers/local-session.js';
import { git, isolateGitConfig, makeFixtureRepo, tmp, write } from '../helpers/workspace-repo.js';

before(isolateGitConfig);

/** Each script the service ran in the "guest": a re-sync's or a full import's, and the size it said its stdin had. */
type Sent = { script: 'resync' | 'full'; stdinBytes: number | undefined };

function harness(includeUntracked = false) {
  const dir = tmp('banger-vmdir-');
  const sent: Sent[] = [];
  // While set, the host's `git add` into the throwaway index (the checkout's state) fails as git would.
  const broken = { state: false };
  const run: CommandRunner = (cmd, args, opts) =>
    runCommand(cmd, broken.state && cmd === 'git' && args[0] === 'add' ? ['add', '--no-such-option'] : args, opts);
  const { svc } = localWorkspaceService(
    dir,
    (command: string, opts: GuestExecOptions) =>
      sent.push({ script: command.includes(RESYNC_STAGE_PREFIX) ? 'resync' : 'full', stdinBytes: opts.stdinBytes }),
    run,
  );
  const guest = join(tmp('banger-guest-'), 'ws');
  return {
    guest,
    sent,
    broken,
    prepare: async (sourcePath: string) => {
      sent.length = 0;
      return svc.prepare({ name: 'vm', sourcePath, guestPath: guest, includeUntracked }, () => undefined);
    },
  };
}

const stages = (guest: string) => readdirSync(join(guest, '.git')).filter((f) => f.startsWith(RESYNC_STAGE_PREFIX));

void describe('a re-sync whose script starts while the host plans', () => {
  void it('imports in full when the plan rules the re-sync out after the script started, and nothing of it is left', async () => {
    const repo = makeFixtureRepo();
    const h = harness(true);
    assert.equal((await h.prepare(repo)).mode, 'full');
    write(repo, 'README.md', 'edited\n');
    // git cannot compute the checkout's state this time: the plan finds no re-sync once the script runs.
    h.broken.state = true;
    const r = await h.prepare(repo);
    h.broken.state = false;
    assert.equal(r.mode, 'full');
    assert.deepEqual(r.notices, [], 'no notice that a re-sync was tried');
    assert.deepEqual(
      h.sent.map((s) => s.script),
      ['resync', 'full'],
      'the re-sync script ran (and was refused its archive) before the full import',
    );
    assert.deepEqual(stages(h.guest), [], 'no staging directory is left');
    assert.equal(readFileSync(join(h.guest, 'README.md'), 'utf8'), 'edited\n');
    assert.ok(git(h.guest, 'status', '--porcelain').split('\n').includes(' M README.md'), 'the edit arrived');
  });

  void it('sends an archive too large for the script stdin again the large way, and the re-sync lands', async () => {
    const repo = makeFixtureRepo();
    const h = harness();
    assert.equal((await h.prepare(repo)).mode, 'full');
    const big = randomBytes(5 << 20);
    writeFileSync(join(repo, 'big.bin'), big);
    git(repo, 'add', 'big.bin');

    const r = await h.prepare(repo);
    assert.equal(r.mode, 'resync');
    assert.equal(r.files, 1);
    assert.deepEqual(h.sent, [
      { script: 'resync', stdinBytes: 0 },
      { script: 'resync', stdinBytes: undefined },
    ]);
    assert.ok(readFileSync(join(h.guest, 'big.bin')).equals(big));
    assert.match(git(h.guest, 'status', '--porcelain'), /^ M big\.bin$/m, 'as a full import shows it');

    // A small change goes the small way, once.
    write(repo, 'README.md', 'small\n');
    assert.equal((await h.prepare(repo)).mode, 'resync');
    assert.deepEqual(h.sent, [{ script: 'resync', stdinBytes: 0 }]);
  });

  void describe('mise', () => {
    // A fake mise found first on the "guest's" PATH, which logs its arguments.
    const bin = tmp('banger-fakebin-');
    const log = join(bin, 'calls');
    const path = process.env.PATH;
    before(() => {
      writeFileSync(join(bin, 'mise'), `#!/bin/sh\necho "$*" >> ${log}\n`);
      chmodSync(join(bin, 'mise'), 0o755);
      process.env.PATH = `${bin}:${path ?? ''}`;
    });
    after(() => {
      process.env.PATH = path;
    });
    const calls = () => {
      try {
        return readFileSync(log, 'utf8');
      } catch {
        return '';
      }
    };

    void it('runs `mise trust` again only when the re-sync writes a mise config', async () => {
      const repo = makeFixtureRepo();
      const h = harness();
      await h.prepare(repo);
      const before = calls();
      write(repo, 'README.md', 'no mise here\n');
      assert.equal((await h.prepare(repo)).mode, 'resync');
      assert.equal(calls(), before, 'no mise config written: no trust');

      write(repo, 'mise.toml', '[tools]\n');
      git(repo, 'add', 'mise.toml');
      assert.equal((await h.prepare(repo)).mode, 'resync');
      assert.equal(calls(), `${before}trust --quiet --all\n`);
    });
  });
});
