/**
 * Untracked git repositories inside a checkout (`--include-untracked`): the import leaves them out, and so does
 * the state it records, so such a checkout re-syncs like any other and ends up as a full import leaves it.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { before, describe, it } from 'node:test';
import type { ProgressEvent } from '../../src/protocol/common.js';
import { manifestPath } from '../../src/daemon/services/workspace/manifest.js';
import { localWorkspaceService } from '../helpers/local-session.js';
import { git, isolateGitConfig, makeFixtureRepo, tmp, workspaceState, write } from '../helpers/workspace-repo.js';

before(isolateGitConfig);

function harness() {
  const dir = tmp('banger-vmdir-');
  const { svc } = localWorkspaceService(dir);
  const notices: string[] = [];
  const prepare = (sourcePath: string, guestPath: string) =>
    svc.prepare({ name: 'vm', sourcePath, guestPath, includeUntracked: true }, (ev: ProgressEvent) => {
      if (ev.kind === 'notice') notices.push(ev.message);
    });
  return { prepare, notices, manifest: manifestPath(dir) };
}

/** A git repository at `rel` in `repo`, with one commit unless `empty`. */
function nestedRepo(repo: string, rel: string, empty = false): void {
  write(repo, `${rel}/n.txt`, 'nested\n');
  const dir = join(repo, rel);
  git(dir, 'init', '-q');
  if (empty) return;
  git(dir, 'add', '-A');
  git(dir, 'commit', '-q', '-m', 'nested');
}

const NOTICE = 'git repositories inside the checkout are not imported, nor their files';

void describe('untracked nested repositories and re-sync', () => {
  void it('re-syncs a checkout that holds them, and leaves what a full import leaves', async () => {
    const repo = makeFixtureRepo();
    nestedRepo(repo, 'vendor/lib');
    nestedRepo(repo, 'tools/new repo', true); // no commit: `git add -A` alone fails on it
    const guests = tmp('banger-guest-');
    const a = join(guests, 'a');
    const h = harness();

    const first = await h.prepare(repo, a);
    assert.equal(first.mode, 'full');
    assert.ok(existsSync(h.manifest), 'the import recorded what it wrote');
    assert.deepEqual(first.notices, [`${NOTICE}: tools/new repo, vendor/lib`]);

    write(repo, 'README.md', 'edited on the host\n');
    write(repo, 'vendor/lib/n.txt', 'edited inside the nested repository\n');
    const again = await h.prepare(repo, a);
    assert.equal(again.mode, 'resync', 'not a full import each time');
    assert.equal(again.files, 1, 'README.md only');
    assert.deepEqual(again.notices, [`${NOTICE}: tools/new repo, vendor/lib`]);
    assert.equal(h.notices.at(-1), 're-sync: 1 file changed');

    // A repository that appears after the import: still a re-sync, and it is named.
    nestedRepo(repo, 'later');
    write(repo, 'new.txt', 'new\n');
    const later = await h.prepare(repo, a);
    assert.equal(later.mode, 'resync');
    assert.equal(later.files, 1, 'new.txt only');
    assert.deepEqual(later.notices, [`${NOTICE}: later, tools/new repo, vendor/lib`]);

    const b = join(guests, 'b');
    assert.equal((await harness().prepare(repo, b)).mode, 'full');
    assert.deepEqual(workspaceState(a), workspaceState(b), 're-synced workspace == fresh full import');
    for (const p of ['vendor/lib', 'tools/new repo', 'later']) assert.equal(existsSync(join(a, p)), false, p);
    const status = git(a, 'status', '--porcelain').split('\n');
    assert.ok(status.includes(' M README.md') && status.includes('?? new.txt'), status.join('\n'));
    assert.equal(status.filter((l) => /vendor|tools|later/.test(l)).length, 0, status.join('\n'));
  });
});
