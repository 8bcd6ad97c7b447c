/**
 * Workspace re-sync on a real QEMU VM: a second prepare of the same checkout into the same guest path
 * sends only what changed and leaves the guest as a fresh full import would; guest changes are
 * refused (named) unless --force; `vm exec --auto-prepare` re-syncs; a git repository the checkout does not track
 * stays out of both. One VM; the steps run in order.
 */
import { after, before, describe } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, rmSync, symlinkSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { banger, bangerOk, e2eSteps } from '../helpers/cli.js';
import { git, isolateGitConfig, makeFixtureRepo, write } from '../helpers/workspace-repo.js';

const VM = 'e2e-ws-resync';
const { step, printConsolesIfFailed } = e2eSteps();
let repo = '';

async function guest(dir: string, script: string, want = 0): Promise<string> {
  return (await bangerOk(['vm', 'exec', VM, '-w', dir, '--', 'sh', '-c', script], want)).stdout;
}

async function prepare(dir: string, ...extra: string[]) {
  return bangerOk(['vm', 'workspace', 'prepare', VM, repo, '--guest-path', dir, '--include-untracked', ...extra]);
}

/**
 * What a user would compare between two workspaces: the index (`git ls-files -s`), the tree of the
 * working tree (tracked + untracked, not ignored), `git status`, HEAD, the branch, the history, and
 * every file's type, mode, link target and bytes.
 */
const STATE = [
  'echo "== index"; git ls-files -s',
  'echo "== tree"; i=$(mktemp); cp .git/index "$i"; GIT_INDEX_FILE="$i" git add -A; GIT_INDEX_FILE="$i" git write-tree; rm -f "$i"',
  'echo "== status"; git status --porcelain',
  'echo "== head"; git rev-parse HEAD; git symbolic-ref HEAD; git log --format=%H:%P',
  'echo "== base tree"; git rev-parse refs/banger/import-base^{tree}',
  "echo \"== files\"; find . -path ./.git -prune -o -printf '%p %y %m %l\\n' | LC_ALL=C sort",
  'find . -path ./.git -prune -o -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum',
].join('; ');

void describe('workspace re-sync on a real VM', { timeout: 900_000 }, () => {
  before(async () => {
    isolateGitConfig();
    repo = makeFixtureRepo();
    await banger(['vm', 'delete', '--force', VM]);
    await bangerOk(['vm', 'run', '--name', VM, '--', 'true']);
  });

  after(async () => {
    printConsolesIfFailed();
    await banger(['vm', 'delete', '--force', VM]);
  });

  step('a second prepare of an unchanged checkout sends nothing', async () => {
    const first = await prepare('/root/rs-a');
    assert.match(first.stderr, /^imported .* into e2e-ws-resync:\/root\/rs-a/m);
    const again = await prepare('/root/rs-a');
    assert.match(again.stderr, /^note: re-sync: 0 files changed$/m);
    assert.match(again.stderr, /^re-synced .* \(0 files written, 0 B, 0 deleted/m);
  });

  step('edits, additions, deletions, chmod, a symlink and a new commit re-sync to what a full import gives', async () => {
    write(repo, 'README.md', 'edited on the host\n');
    write(repo, 'new dir/new file.txt', 'new\n');
    rmSync(join(repo, 'data/blob.bin'));
    chmodSync(join(repo, 'bin/run.sh'), 0o644);
    unlinkSync(join(repo, 'link-to-readme'));
    symlinkSync('bin/run.sh', join(repo, 'link-to-readme'));
    rmSync(join(repo, 'notes'), { recursive: true });
    write(repo, 'notes', 'notes is a file now\n');
    write(repo, 'committed.txt', 'committed\n');
    git(repo, 'add', 'committed.txt');
    git(repo, 'commit', '-q', '-m', 'third');
    const r = await prepare('/root/rs-a');
    assert.match(r.stderr, /^note: re-sync: 8 files changed$/m);
    assert.match(r.stderr, /^re-synced .* \(6 files written, \d+ B, 2 deleted, at [0-9a-f]{12}\)$/m);
    const resynced = await guest('/root/rs-a', STATE);
    const full = await prepare('/root/rs-b');
    assert.match(full.stderr, /^imported /m, 'another guest path is a full import');
    assert.equal(resynced, await guest('/root/rs-b', STATE), 're-synced workspace == fresh full import');
    assert.match(resynced, /^\.\/committed\.txt f 644 $/m);
    assert.match(resynced, /^\.\/link-to-readme l 777 bin\/run\.sh$/m);
  });

  step('guest changes are refused, named, unless --force', async () => {
    await guest('/root/rs-b', "printf 'guest work\\n' > 'new dir/new file.txt' && echo made-in-guest > guest.txt");
    write(repo, 'README.md', 'edited again on the host\n');
    const refused = await banger(['vm', 'workspace', 'prepare', VM, repo, '--guest-path', '/root/rs-b', '--include-untracked']);
    assert.equal(refused.code, 68, refused.stderr);
    assert.match(refused.stderr, /changes made in the guest that this prepare would overwrite/);
    assert.match(refused.stderr, /^ {2}guest\.txt$/m);
    assert.match(refused.stderr, /^ {2}new dir\/new file\.txt$/m);
    assert.match(refused.stderr, /banger vm workspace export/);
    assert.match(refused.stderr, /--force/);
    assert.equal(await guest('/root/rs-b', "cat 'new dir/new file.txt' guest.txt README.md"), 'guest work\nmade-in-guest\nedited on the host\n');
    // A full import (here --full; also any prepare that cannot re-sync) refuses the same way.
    const full = await banger(['vm', 'workspace', 'prepare', VM, repo, '--guest-path', '/root/rs-b', '--include-untracked', '--full']);
    assert.equal(full.code, 68, full.stderr);
    assert.match(full.stderr, /^ {2}guest\.txt$/m);
    assert.equal(await guest('/root/rs-b', 'cat guest.txt'), 'made-in-guest\n', 'nothing was overwritten');
    const forced = await prepare('/root/rs-b', '--force');
    assert.match(forced.stderr, /^imported /m);
    assert.equal(await guest('/root/rs-b', "cat 'new dir/new file.txt' README.md; test -e guest.txt || echo gone"), 'new\nedited again on the host\ngone\n');
  });

  step('vm exec --auto-prepare re-syncs when the host HEAD moved', async () => {
    write(repo, 'auto.txt', 'auto\n');
    git(repo, 'add', 'auto.txt');
    git(repo, 'commit', '-q', '-m', 'auto');
    const r = await bangerOk(['vm', 'exec', VM, '--auto-prepare', '--', 'sh', '-c', 'cat auto.txt; git rev-parse HEAD']);
    assert.match(r.stderr, /^note: re-sync: 1 file changed$/m);
    assert.equal(r.stdout, `auto\n${git(repo, 'rev-parse', 'HEAD')}`);
  });

  step('uncommitted edits with HEAD where it was (an edit, a deletion, a file that becomes a directory) of the last import re-sync to what a full import gives', async () => {
    write(repo, 'README.md', 'edited twice on the host\n');
    rmSync(join(repo, 'committed.txt'));
    rmSync(join(repo, 'notes'));
    write(repo, 'notes/back.txt', 'notes is a directory again\n');
    const r = await prepare('/root/rs-b');
    assert.match(r.stderr, /^note: re-sync: 4 files changed$/m);
    const resynced = await guest('/root/rs-b', STATE);
    await prepare('/root/rs-c');
    assert.equal(resynced, await guest('/root/rs-c', STATE), 're-synced workspace == fresh full import');
    assert.match(resynced, /^ M README\.md$/m);
    assert.match(resynced, /^ D committed\.txt$/m);
  });

  step('a checkout holding a git repository it does not track re-syncs, leaving that repository out as a full import does', async () => {
    write(repo, 'vendor/lib/lib.txt', 'another project\n');
    git(join(repo, 'vendor/lib'), 'init', '-q');
    git(join(repo, 'vendor/lib'), 'add', '-A');
    git(join(repo, 'vendor/lib'), 'commit', '-q', '-m', 'lib');
    await prepare('/root/rs-b');
    write(repo, 'README.md', 'edited beside a nested repository\n');
    const r = await prepare('/root/rs-b');
    assert.match(r.stderr, /^git repositories inside the checkout are not imported, nor their files: vendor\/lib$/m);
    assert.match(r.stderr, /^note: re-sync: 1 file changed$/m);
    const resynced = await guest('/root/rs-b', STATE);
    await prepare('/root/rs-d');
    assert.equal(resynced, await guest('/root/rs-d', STATE), 're-synced workspace == fresh full import');
    assert.doesNotMatch(resynced, /vendor/);
  });
});
