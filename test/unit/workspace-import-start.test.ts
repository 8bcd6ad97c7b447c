/**
 * A full import through the workspace service against a "guest" that is a local directory (LocalShellSession):
 * the guest script starts while the host still plans what to send, so what can go wrong on either side while
 * the other is under way is checked here, and what the import's index files promise git afterwards.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { before, describe, it } from 'node:test';
import { BangerError, ErrorCode } from '../../src/errors/index.js';
import { manifestPath } from '../../src/daemon/services/workspace/manifest.js';
import { localWorkspaceService } from '../helpers/local-session.js';
import { git, isolateGitConfig, makeFixtureRepo, tmp, write } from '../helpers/workspace-repo.js';

before(isolateGitConfig);

function harness() {
  const dir = tmp('banger-vmdir-');
  const { svc } = localWorkspaceService(dir);
  return {
    dir,
    prepare: (sourcePath: string, guestPath: string, force = false) =>
      svc.prepare({ name: 'vm', sourcePath, guestPath, force }, () => undefined),
  };
}

const sh = (cwd: string, script: string) => execFileSync('sh', ['-c', script], { cwd, encoding: 'utf8' });

/** Rejects with a BangerError; returns it. */
async function failure(p: Promise<unknown>): Promise<BangerError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof BangerError, `a BangerError, not ${String(e)}`);
    return e;
  }
  assert.fail('it succeeded');
}

void describe('a full import whose guest script starts while the host plans', () => {
  void it('reports a plan that fails as itself, leaves nothing behind, and imports once the checkout is fixed', async () => {
    const repo = makeFixtureRepo();
    // A tracked name that is not UTF-8: the host's listing refuses it while the guest script is starting.
    const badName = Buffer.concat([Buffer.from(join(repo, 'caf')), Buffer.from([0xe9]), Buffer.from('.txt')]);
    writeFileSync(badName, 'latin-1\n');
    sh(repo, 'git add -- caf?.txt');
    const guest = join(tmp('banger-guest-'), 'ws');
    const h = harness();

    const e = await failure(h.prepare(repo, guest));
    assert.equal(e.code, ErrorCode.InvalidArgument);
    assert.match(e.message, /is not valid UTF-8/);
    assert.deepEqual(readdirSync(h.dir), [], 'no manifest, pending or not, is left in the VM directory');
    assert.deepEqual(readdirSync(guest), [], 'the guest script removed its staging directory');

    sh(repo, 'git rm -q --cached -- caf?.txt && rm -- caf?.txt');
    const r = await h.prepare(repo, guest);
    assert.equal(r.mode, 'full');
    assert.match(sh(guest, 'git status --porcelain'), /^ M README\.md$/m, 'the host\'s edit came with it');
    assert.ok(existsSync(manifestPath(h.dir)));
  });

  void it('refuses guest changes found by its script while the host plans, keeps them, and leaves no plan file', async () => {
    const repo = makeFixtureRepo();
    const guest = join(tmp('banger-guest-'), 'ws');
    const h = harness();
    await h.prepare(repo, guest);
    write(guest, 'made-in-guest.txt', 'keep me\n');
    // Without the manifest there is no re-sync to try: the full import's own check finds the change.
    rmSync(manifestPath(h.dir));

    const e = await failure(h.prepare(repo, guest));
    assert.equal(e.code, ErrorCode.Conflict);
    assert.match(e.message, /has changes made in the guest that this prepare would overwrite:\n {2}made-in-guest\.txt$/);
    assert.equal(readFileSync(join(guest, 'made-in-guest.txt'), 'utf8'), 'keep me\n');
    assert.deepEqual(
      readdirSync(h.dir).filter((f) => f.endsWith('.pending')),
      [],
      'the plan the refusal cut short left no file',
    );
  });

  void it('reports only once its index files are not dated in the future, and an edit right away shows', async () => {
    const repo = makeFixtureRepo();
    git(repo, 'stash', '-q', '-u');
    const guest = join(tmp('banger-guest-'), 'ws');
    const h = harness();
    for (let round = 0; round < 4; round++) {
      await h.prepare(repo, guest, true);
      const returned = Date.now() / 1000;
      for (const f of ['index', 'banger-base-index']) {
        // The import dates them a second ahead (so git does not read that second's files again), and reports once
        // the clock is there, or dates them now when that would take long.
        const dated = statSync(join(guest, '.git', f)).mtimeMs / 1000;
        assert.ok(Math.floor(dated) <= returned, `round ${round}: ${f} dated ${dated}, the import reported at ${returned}`);
      }
      // An edit right away, same size: git must see it (its mtime cannot be the one the index holds).
      const before = readFileSync(join(guest, 'README.md'), 'latin1');
      writeFileSync(join(guest, 'README.md'), (before.startsWith('x') ? 'y' : 'x') + before.slice(1), 'latin1');
      write(guest, 'new-in-guest.txt', 'x\n');
      const status = sh(guest, 'git status --porcelain');
      assert.match(status, /^ M README\.md$/m, `round ${round}`);
      assert.match(status, /^\?\? new-in-guest\.txt$/m, `round ${round}`);
    }
  });
});
