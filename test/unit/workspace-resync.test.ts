/**
 * Re-sync of a workspace (a second `prepare` of the same checkout into the same guest path): the
 * manifest diff, and the whole service against a "guest" that is a local directory (LocalShellSession):
 * what a re-sync sends, that it leaves the same workspace a full import does, and that guest changes
 * are refused (named) unless --force.
 */
import assert from 'node:assert/strict';
import { tmpdir } from 'node:os';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, rmSync, symlinkSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { runCommand } from '../../src/shared/command.js';
import { BangerError } from '../../src/errors/index.js';
import type { ProgressEvent } from '../../src/protocol/common.js';
import type { WorkspacePrepareParams } from '../../src/protocol/workspace.js';
import {
  diffManifests,
  hostManifest,
  manifestPath,
  parseLsFilesStage,
} from '../../src/daemon/services/workspace/manifest.js';
import { mayBeMiseConfig } from '../../src/daemon/services/workspace/resync-script.js';
import { localWorkspaceService } from '../helpers/local-session.js';
import { git, isolateGitConfig, makeFixtureRepo, sh, tmp, workspaceState as state, worktreeTree, write } from '../helpers/workspace-repo.js';

before(isolateGitConfig);

void describe('manifest diff', () => {
  void it('names new, changed (content, mode, type) and deleted paths, not unchanged ones', () => {
    const from = new Map([
      ['same', '100644 aa'],
      ['edited', '100644 bb'],
      ['chmod', '100644 cc'],
      ['to-link', '100644 dd'],
      ['gone', '100644 ee'],
    ]);
    const to = new Map([
      ['same', '100644 aa'],
      ['edited', '100644 b2'],
      ['chmod', '100755 cc'],
      ['to-link', '120000 dd'],
      ['new/file', '100644 ff'],
    ]);
    assert.deepEqual(diffManifests(from, to), { write: ['chmod', 'edited', 'new/file', 'to-link'], delete: ['gone'] });
    assert.deepEqual(diffManifests(to, to), { write: [], delete: [] });
  });

  void it('runs mise trust again only for paths that may be mise config files', () => {
    for (const p of ['mise.toml', '.mise.toml', 'sub/mise.local.toml', '.mise/config.toml', '.config/mise/config.toml', '.tool-versions'])
      assert.equal(mayBeMiseConfig(p), true, p);
    for (const p of ['README.md', 'src/promise.ts', 'tool-versions']) assert.equal(mayBeMiseConfig(p), false, p);
  });

  void it('parses git ls-files -s -z, names with tabs, newlines and spaces included', () => {
    const m = parseLsFilesStage(`100644 ${'a'.repeat(40)} 0\tx y\x00120000 ${'b'.repeat(40)} 0\tt\tab\nnl\0`);
    assert.deepEqual([...m], [
      ['x y', `100644 ${'a'.repeat(40)}`],
      ['t\tab\nnl', `120000 ${'b'.repeat(40)}`],
    ]);
  });

  void it("computes the host's state without touching the checkout's index or object store", async () => {
    const repo = makeFixtureRepo();
    const status = git(repo, 'status', '--porcelain');
    const objects = execFileSync('sh', ['-c', 'find .git/objects -type f | sort'], { cwd: repo, encoding: 'utf8' });
    const m = await hostManifest(repo, true, runCommand, tmpdir());
    const tracked = await hostManifest(repo, false, runCommand, tmpdir());
    assert.equal(git(repo, 'status', '--porcelain'), status);
    assert.equal(execFileSync('sh', ['-c', 'find .git/objects -type f | sort'], { cwd: repo, encoding: 'utf8' }), objects);
    assert.ok(m);
    assert.equal(m.tree, worktreeTree(repo), 'the tree of tracked + untracked, not ignored files');
    assert.ok(m.entries.get('README.md')?.startsWith('100644 '));
    assert.equal(m.entries.has('a/b/c/d.txt'), false, 'a deleted file is not listed');
    assert.ok(m.entries.has('.env'));
    assert.equal(m.entries.has('debug.log'), false);
    assert.equal(tracked?.entries.has('.env'), false, 'untracked files only with includeUntracked');
  });
});

/** A WorkspaceService whose one VM's "guest" is this host's shell; the VM record lives in memory. */
function harness() {
  const dir = tmp('banger-vmdir-');
  const { vm, svc } = localWorkspaceService(dir);
  const notices: string[] = [];
  const prepare = (p: Omit<WorkspacePrepareParams, 'name'>) =>
    svc.prepare({ name: 'vm', ...p }, (ev: ProgressEvent) => {
      if (ev.kind === 'notice') notices.push(ev.message);
    });
  return { vm, prepare, notices, manifest: manifestPath(dir) };
}

void describe('re-sync through the workspace service', () => {
  void it('sends only what changed and leaves what a full import leaves; guest changes are refused unless --force', async () => {
    const repo = makeFixtureRepo();
    const guestRoot = tmp('banger-guest-');
    const a = join(guestRoot, 'a');
    const b = join(guestRoot, 'b');
    const h = harness();

    const first = await h.prepare({ sourcePath: repo, guestPath: a, includeUntracked: true });
    assert.equal(first.mode, 'full');
    assert.ok(existsSync(h.manifest), 'the manifest of the import is recorded');

    const again = await h.prepare({ sourcePath: repo, guestPath: a, includeUntracked: true });
    assert.equal(again.mode, 'resync');
    assert.equal(again.files, 0);
    assert.equal(again.deleted, 0);
    assert.equal(h.notices.at(-1), 're-sync: 0 files changed');

    // Edit, add, delete, chmod, a file that becomes a directory and one that becomes a symlink, a new commit.
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
    // Ignored build output in the guest stays (a full import would remove it).
    mkdirSync(join(a, 'node_modules'));
    write(a, 'node_modules/x.js', 'built in the guest\n');
    // An ignored file in the directory that becomes a file: the file replaces the directory and all in it.
    write(a, 'notes/scratch.log', 'ignored, in a directory that becomes a file\n');

    const resync = await h.prepare({ sourcePath: repo, guestPath: a, includeUntracked: true });
    assert.equal(resync.mode, 'resync');
    assert.equal(resync.deleted, 2, 'data/blob.bin, notes/todo.txt');
    assert.equal(resync.files, 6, 'README.md, new file, run.sh (mode), link (target), notes, committed.txt');
    assert.equal(h.notices.at(-1), 're-sync: 8 files changed');
    assert.equal(resync.workspace.headCommit, git(repo, 'rev-parse', 'HEAD').trim());
    assert.equal(readFileSync(join(a, 'node_modules/x.js'), 'utf8'), 'built in the guest\n');
    rmSync(join(a, 'node_modules'), { recursive: true });

    const full = harness();
    await full.prepare({ sourcePath: repo, guestPath: b, includeUntracked: true });
    const sa = state(a);
    const sb = state(b);
    assert.deepEqual(sa, sb, 're-synced workspace == fresh full import');
    assert.equal(sa.tree, worktreeTree(repo));
    assert.equal(
      sh(a, `git rev-parse refs/banger/import-base^{tree}`),
      sh(b, `git rev-parse refs/banger/import-base^{tree}`),
      'the same import base',
    );

    // A guest edit, a guest-staged file and a guest commit are refused, named; nothing changes.
    write(repo, 'README.md', 'edited again\n');
    write(a, 'new dir/new file.txt', 'edited in the guest\n');
    write(a, 'guest-only.txt', 'guest\n');
    sh(a, 'git add guest-only.txt');
    const before = state(a);
    await assert.rejects(
      h.prepare({ sourcePath: repo, guestPath: a, includeUntracked: true }),
      (e: unknown) =>
        e instanceof BangerError &&
        e.code === 'Conflict' &&
        e.message.includes('new dir/new file.txt') &&
        e.message.includes('guest-only.txt') &&
        /--force/.test(e.hint ?? '') &&
        /export/.test(e.hint ?? ''),
    );
    assert.deepEqual(state(a), before, 'a refused re-sync changes nothing');
    sh(a, 'git reset -q; rm guest-only.txt; git checkout -q -- . 2>/dev/null || true');
    write(a, 'new dir/new file.txt', 'new\n');
    sh(a, "git -c user.name=g -c user.email=g@g commit -q --allow-empty -m 'made in the guest'");
    await assert.rejects(h.prepare({ sourcePath: repo, guestPath: a, includeUntracked: true }), /commits or a checkout made in the guest/);

    // --force replaces the workspace with a full import.
    const forced = await h.prepare({ sourcePath: repo, guestPath: a, includeUntracked: true, force: true });
    assert.equal(forced.mode, 'full');
    await full.prepare({ sourcePath: repo, guestPath: b, includeUntracked: true });
    assert.deepEqual(state(a), state(b));
    // And the next prepare re-syncs again.
    write(repo, 'README.md', 'once more\n');
    const next = await h.prepare({ sourcePath: repo, guestPath: a, includeUntracked: true });
    assert.equal(next.mode, 'resync');
    assert.equal(next.files, 1);
  });

  void it('with HEAD where it was, a re-sync leaves what a full import leaves; a changed git identity is set again', async () => {
    const repo = makeFixtureRepo();
    const guestRoot = tmp('banger-guest-');
    const a = join(guestRoot, 'a');
    const b = join(guestRoot, 'b');
    const h = harness();
    await h.prepare({ sourcePath: repo, guestPath: a });
    const head = git(repo, 'rev-parse', 'HEAD').trim();

    // Uncommitted only: an edit, a deletion, a file that becomes a directory and a directory that becomes a file.
    write(repo, 'README.md', 'edited, not committed\n');
    rmSync(join(repo, 'data/blob.bin'));
    rmSync(join(repo, 'notes'), { recursive: true });
    write(repo, 'notes', 'notes is a file now\n');
    unlinkSync(join(repo, 'bin/run.sh'));
    write(repo, 'bin/run.sh/inside.txt', 'run.sh is a directory now\n');
    git(repo, 'add', '-A', 'bin');
    const r = await h.prepare({ sourcePath: repo, guestPath: a });
    assert.equal(r.mode, 'resync');
    assert.equal(git(repo, 'rev-parse', 'HEAD').trim(), head);
    assert.equal(sh(a, 'git config user.name').trim(), "Ada O'Lovelace");
    await harness().prepare({ sourcePath: repo, guestPath: b });
    assert.deepEqual(state(a), state(b), 're-synced workspace == fresh full import');
    assert.match(state(a).status, / M README.md\n/);

    // Another identity on the host reaches the guest with the next re-sync, edits or none.
    git(repo, 'config', 'user.name', 'Grace Hopper');
    const again = await h.prepare({ sourcePath: repo, guestPath: a });
    assert.equal(again.mode, 'resync');
    assert.equal(sh(a, 'git config user.name').trim(), 'Grace Hopper');
    assert.deepEqual(state(a), state(b));

    // Files too large for the host to send their blobs along: the guest makes the import base, to the same end.
    write(repo, 'big.bin', randomBytes(2 << 20));
    write(repo, 'README.md', 'edited beside a large file\n');
    assert.equal((await h.prepare({ sourcePath: repo, guestPath: a })).mode, 'resync');
    await harness().prepare({ sourcePath: repo, guestPath: b });
    assert.deepEqual(state(a), state(b), 're-synced workspace == fresh full import');
    assert.equal(
      sh(a, 'git rev-parse refs/banger/import-base^{tree}'),
      sh(b, 'git rev-parse refs/banger/import-base^{tree}'),
      'the same import base',
    );
  });

  void it("imports a checkout that is HEAD's tree exactly as HEAD's, and still names guest changes", async () => {
    // Nothing to hash in the guest (the stream's flags say so): the workspace must still be what a dirty
    // import leaves, its base HEAD's tree, its manifest kept for the next re-sync.
    const repo = makeFixtureRepo();
    git(repo, 'add', '-A');
    git(repo, 'commit', '-q', '-m', 'everything');
    const a = join(tmp('banger-guest-'), 'a');
    const h = harness();
    assert.equal((await h.prepare({ sourcePath: repo, guestPath: a })).mode, 'full');
    assert.equal(sh(a, 'git status --porcelain'), '', 'a clean checkout is clean in the guest');
    assert.equal(sh(a, 'git rev-parse refs/banger/import-base^{tree}'), sh(a, 'git rev-parse HEAD^{tree}'));
    assert.equal(worktreeTree(a), worktreeTree(repo));
    assert.ok(existsSync(h.manifest), "the guest reported the host's tree: the manifest is kept");

    write(a, 'README.md', 'edited in the guest\n');
    write(repo, 'README.md', 'edited on the host\n');
    await assert.rejects(
      h.prepare({ sourcePath: repo, guestPath: a }),
      (e: unknown) => e instanceof BangerError && e.code === 'Conflict' && e.message.includes('  README.md'),
    );
    sh(a, 'git checkout -q -- README.md');
    const again = await h.prepare({ sourcePath: repo, guestPath: a });
    assert.equal(again.mode, 'resync');
    assert.equal(again.files, 1);
    assert.equal(readFileSync(join(a, 'README.md'), 'utf8'), 'edited on the host\n');
    assert.equal(sh(a, 'git status --porcelain'), ' M README.md\n');
  });

  void it("keeps the import base's index beside the import base; guest changes are named with it and without it", async () => {
    const repo = makeFixtureRepo();
    const a = join(tmp('banger-guest-'), 'a');
    const h = harness();
    const baseTree = () => sh(a, 'git rev-parse refs/banger/import-base^{tree}').trim();
    const treeFile = join(a, '.git', 'banger-base-index.tree');
    const indexTree = () => (existsSync(treeFile) ? readFileSync(treeFile, 'utf8').trim() : '');
    // A re-sync keeps the index after it answered: wait for that (the next workspace script does too).
    const keptIndex = async () => {
      for (let i = 0; i < 50 && indexTree() !== baseTree(); i++) await sleep(100);
      return indexTree();
    };
    await h.prepare({ sourcePath: repo, guestPath: a });
    assert.equal(await keptIndex(), baseTree(), 'a full import leaves the index of its base');
    write(repo, 'README.md', 'edited for a re-sync\n');
    assert.equal((await h.prepare({ sourcePath: repo, guestPath: a })).mode, 'resync');
    assert.equal(await keptIndex(), baseTree(), 'a re-sync replaces it with its new base');
    assert.equal(
      sh(a, 'GIT_INDEX_FILE=.git/banger-base-index git write-tree').trim(),
      baseTree(),
      "the kept index holds the base's tree",
    );

    // Each kind of guest change is refused and named, then undone; the same with the index gone (an older
    // banger's workspace) and with an index of another tree (a re-sync killed while keeping it).
    const changes: [string, string, string][] = [
      ['an edit', 'printf edited > README.md', 'README.md'],
      ['a deletion', 'rm a/b/keep.txt', 'a/b/keep.txt'],
      ['a mode change', 'chmod 644 bin/run.sh', 'bin/run.sh'],
      ['a symlink retargeted', 'ln -sfn bin/run.sh link-to-readme', 'link-to-readme'],
      ['an untracked directory', 'mkdir -p "new dir" && echo n > "new dir/f"', 'new dir/'],
      ['a staged file', 'echo s > s.txt && git add s.txt', 's.txt'],
      // Only the index differs: the staged edit's file is back as imported.
      [
        'an edit staged, its file put back',
        'cp README.md ../r.tmp && echo staged >> README.md && git add README.md && cp ../r.tmp README.md',
        'README.md',
      ],
    ];
    const saved = join(tmp('banger-saved-'), 'idx');
    for (const mode of ['kept index', 'no index', 'index of another tree']) {
      if (mode === 'no index') sh(a, `mv .git/banger-base-index ${JSON.stringify(saved)}`);
      if (mode === 'index of another tree') sh(a, `cp ${JSON.stringify(saved)} .git/banger-base-index && echo ${'0'.repeat(40)} > .git/banger-base-index.tree`);
      for (const [what, change, path] of changes) {
        const before = state(a);
        sh(a, `rm -rf ../backup && cp -a . ../backup`);
        sh(a, change);
        write(repo, 'README.md', `host edit ${what} ${mode}\n`);
        await assert.rejects(
          h.prepare({ sourcePath: repo, guestPath: a }),
          (e: unknown) => e instanceof BangerError && e.code === 'Conflict' && e.message.includes(`  ${path}`),
          `${what} (${mode})`,
        );
        sh(a, `cd .. && rm -rf a && mv backup a`);
        assert.deepEqual(state(a), before, `undone: ${what} (${mode})`);
      }
    }
    // A re-sync without the index makes it again, and removes an older build's per-tree index; a killed
    // re-sync's staging directory (in .git) goes.
    mkdirSync(join(a, '.git', 'banger-resync.killed', 'tree'), { recursive: true });
    write(a, `.git/banger-base-index-${'1'.repeat(40)}`, 'an older build kept its index here\n');
    write(repo, 'README.md', 'edited once more\n');
    assert.equal((await h.prepare({ sourcePath: repo, guestPath: a })).mode, 'resync');
    assert.equal(await keptIndex(), baseTree());
    assert.deepEqual(sh(a, 'ls -a .git').split('\n').filter((f) => f.startsWith('banger-base-index-')), []);
    const staging = () => sh(a, 'ls -a .git').split('\n').filter((f) => f.startsWith('banger-resync.'));
    for (let i = 0; i < 50 && staging().length > 0; i++) await sleep(100); // removed after the script answered
    assert.deepEqual(staging(), [], 'no staging directory is left');
  });

  void it('a file the guest changes right after a re-sync wrote it is a guest change for the next one', async () => {
    const repo = makeFixtureRepo();
    const a = join(tmp('banger-guest-'), 'a');
    const h = harness();
    await h.prepare({ sourcePath: repo, guestPath: a });
    for (const [n, guestEdit] of [['1', 'v1-guest\n'], ['2', 'v2-host\n']] as const) {
      write(repo, 'README.md', `v${n}-host\n`);
      assert.equal((await h.prepare({ sourcePath: repo, guestPath: a })).mode, 'resync');
      // At once (the import base's index may still be being kept), the same size, or even the same content
      // the host sends next.
      write(a, 'README.md', guestEdit);
      write(repo, 'a/b/keep.txt', `another host edit ${n}\n`);
      if (guestEdit === `v${n}-host\n`) continue;
      await assert.rejects(
        h.prepare({ sourcePath: repo, guestPath: a }),
        (e: unknown) => e instanceof BangerError && e.code === 'Conflict' && e.message.includes('  README.md'),
      );
      write(a, 'README.md', `v${n}-host\n`);
    }
  });

  void it('imports in full when the guest is not what the last import left, or with --full', async () => {
    const repo = makeFixtureRepo();
    const a = join(tmp('banger-guest-'), 'a');
    const h = harness();
    await h.prepare({ sourcePath: repo, guestPath: a });
    assert.equal((await h.prepare({ sourcePath: repo, guestPath: a, full: true })).mode, 'full');
    // Another import base of the same state (imported again by other means): a full import, with a notice.
    sh(a, 'git update-ref refs/banger/import-base $(git commit-tree -p HEAD -m again "refs/banger/import-base^{tree}")');
    const r = await h.prepare({ sourcePath: repo, guestPath: a });
    assert.equal(r.mode, 'full');
    assert.match(r.notices.join('\n'), /re-sync not possible \(.*imported again since.*\): imported in full/);
    // A guest that is not in any imported state: the full import refuses to overwrite it, unless forced.
    sh(a, 'git update-ref refs/banger/import-base HEAD');
    await assert.rejects(h.prepare({ sourcePath: repo, guestPath: a }), (e: Error) =>
      /changes made in the guest that this prepare would overwrite:\n {2}\(HEAD: commits/.test(e.message),
    );
    assert.equal((await h.prepare({ sourcePath: repo, guestPath: a, force: true })).mode, 'full');
    // Another untracked choice or another guest path: a full import.
    assert.equal((await h.prepare({ sourcePath: repo, guestPath: a, includeUntracked: true })).mode, 'full');
    assert.equal((await h.prepare({ sourcePath: repo, guestPath: `${a}2`, includeUntracked: true })).mode, 'full');
    // HEAD moved back: the guest's shallow history may not have it.
    git(repo, 'stash', '-q', '-u');
    git(repo, 'reset', '-q', '--hard', 'HEAD~1');
    const back = await h.prepare({ sourcePath: repo, guestPath: `${a}2`, includeUntracked: true });
    assert.equal(back.mode, 'full');
    assert.equal(sh(`${a}2`, 'git rev-parse HEAD').trim(), git(repo, 'rev-parse', 'HEAD').trim());
  });
});
