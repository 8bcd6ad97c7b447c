import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { before, describe, it } from 'node:test';
import { runCommand } from '../../src/shared/command.js';
import {
  formatDryRun,
  inspectRepo,
  listImportFiles,
  nestedRepositoryNotice,
  untrackedNotice,
  type ImportEntry,
} from '../../src/daemon/services/workspace/host-repo.js';
import { BangerError } from '../../src/errors/index.js';
import {
  NASTY_NAME,
  UNICODE_NAME,
  git,
  isolateGitConfig,
  makeFixtureRepo,
  tmp,
  write,
} from '../helpers/workspace-repo.js';

before(isolateGitConfig);

function byPath(entries: ImportEntry[]): Map<string, ImportEntry> {
  return new Map(entries.map((e) => [e.path, e]));
}

void describe('inspectRepo', () => {
  void it('describes a checkout from any directory inside it', async () => {
    const root = makeFixtureRepo();
    const r = await inspectRepo(join(root, 'a/b'), runCommand);
    assert.equal(r.root, root);
    assert.equal(r.name, `host repo it's`);
    assert.equal(r.headCommit, git(root, 'rev-parse', 'HEAD').trim());
    assert.equal(r.branch, 'main');
    assert.equal(r.detached, false);
    assert.deepEqual(r.identity, { name: "Ada O'Lovelace", email: 'ada@example.com' });
    assert.deepEqual(r.submodules, []);
  });

  void it('reports a detached HEAD', async () => {
    const root = makeFixtureRepo();
    git(root, 'checkout', '-q', '--detach');
    const r = await inspectRepo(root, runCommand);
    assert.equal(r.detached, true);
    assert.equal(r.branch, null);
    assert.equal(r.headCommit, git(root, 'rev-parse', 'HEAD').trim());
  });

  void it('handles a repository without commits', async () => {
    const root = join(tmp('banger-empty-'), 'ñew repo');
    mkdirSync(root);
    git(root, 'init', '-q', '-b', 'trunk');
    const r = await inspectRepo(root, runCommand);
    assert.equal(r.headCommit, null);
    assert.equal(r.branch, 'trunk');
    assert.deepEqual(r.identity, { name: null, email: null });
  });

  void it('rejects what is not a checkout, saying what to do', async () => {
    const plain = tmp('banger-plain-');
    await assert.rejects(inspectRepo(plain, runCommand), (e: unknown) => {
      assert.ok(e instanceof BangerError);
      assert.equal(e.code, 'InvalidArgument');
      assert.match(e.message, /is not a git repository: run `git init` there, or pass a git checkout/);
      return true;
    });
    writeFileSync(join(plain, 'file'), 'x');
    await assert.rejects(inspectRepo(join(plain, 'file'), runCommand), /is not a directory/);
    await assert.rejects(inspectRepo(join(plain, 'missing'), runCommand), /does not exist/);
    const bare = join(tmp('banger-bare-'), 'b.git');
    git(tmp('banger-x-'), 'init', '-q', '--bare', bare);
    await assert.rejects(inspectRepo(bare, runCommand), /bare repository|\.git directory/);
    const root = makeFixtureRepo();
    await assert.rejects(inspectRepo(join(root, '.git'), runCommand), /bare repository|\.git directory/);
  });

  void it('lists submodules', async () => {
    const sub = join(tmp('banger-sub-'), 'lib');
    mkdirSync(sub);
    git(sub, 'init', '-q');
    write(sub, 'lib.c', 'int x;\n');
    git(sub, 'add', '-A');
    git(sub, 'commit', '-q', '-m', 'lib');
    const root = makeFixtureRepo();
    git(root, 'submodule', 'add', '-q', sub, 'vendor/lib');
    const r = await inspectRepo(root, runCommand);
    assert.deepEqual(r.submodules, ['vendor/lib']);
    const list = await listImportFiles(root, { includeUntracked: false }, runCommand);
    assert.deepEqual(list.skippedSubmodules, ['vendor/lib']);
    const e = byPath(list.entries).get('vendor/lib');
    assert.equal(e?.kind, 'dir');
    assert.ok(!list.entries.some((x) => x.path.startsWith('vendor/lib/')));
  });

  void it('leaves out an untracked git repository inside the checkout, named only when untracked files are imported', async () => {
    const root = makeFixtureRepo();
    write(root, 'tools/nested repo/n.txt', 'n\n');
    git(join(root, 'tools/nested repo'), 'init', '-q');
    write(root, 'tools/loose.txt', 'l\n');
    const withUntracked = await listImportFiles(root, { includeUntracked: true }, runCommand);
    assert.deepEqual(withUntracked.skippedRepositories, ['tools/nested repo']);
    assert.ok(!withUntracked.entries.some((x) => x.path.startsWith('tools/nested repo')));
    assert.ok(withUntracked.entries.some((x) => x.path === 'tools/loose.txt'), 'other untracked files still come');
    assert.equal(
      nestedRepositoryNotice(withUntracked.skippedRepositories),
      'git repositories inside the checkout are not imported, nor their files: tools/nested repo',
    );
    const without = await listImportFiles(root, { includeUntracked: false }, runCommand);
    assert.deepEqual(without.skippedRepositories, []);
  });
});

void describe('listImportFiles', () => {
  void it('lists the working tree: edits included, deleted and ignored files left out, untracked only on request', async () => {
    const root = makeFixtureRepo();
    const without = await listImportFiles(root, { includeUntracked: false }, runCommand);
    const m = byPath(without.entries);
    assert.equal(without.skippedUntracked, 4);
    assert.match(
      untrackedNotice(without.skippedUntracked) ?? '',
      /4 untracked files were not imported: pass --include-untracked/,
    );
    assert.equal(untrackedNotice(0), null);
    for (const p of [
      '.env',
      '.envrc.private',
      '.env.local',
      'notes/todo.txt',
      'debug.log',
      'node_modules/pkg/index.js',
    ]) {
      assert.ok(!m.has(p), `${p} must not be imported`);
    }
    assert.ok(!m.has('a/b/c/d.txt'), 'deleted in the working tree');
    assert.equal(m.get('README.md')?.size, 'hello\nsecond\nuncommitted edit\n'.length);
    assert.equal(m.get('a/b/keep.txt')?.mode, 0o755, 'uncommitted chmod');
    assert.equal(m.get('bin/run.sh')?.mode, 0o755);
    assert.equal(m.get('README.md')?.mode, 0o644);
    assert.equal(m.get('staged.txt')?.kind, 'file');
    assert.deepEqual(
      [m.get('link-to-readme'), m.get('abs-link')].map((e) => [e?.kind, e?.linkTarget]),
      [
        ['symlink', 'README.md'],
        ['symlink', '/etc/hostname'],
      ],
    );
    assert.ok(m.has(NASTY_NAME));
    assert.ok(m.has(UNICODE_NAME));
    assert.equal(
      without.totalBytes,
      without.entries.reduce((n, e) => n + e.size, 0),
    );

    const withU = await listImportFiles(root, { includeUntracked: true }, runCommand);
    const mu = byPath(withU.entries);
    assert.equal(withU.skippedUntracked, 0);
    for (const p of ['.env', '.envrc.private', '.env.local', 'notes/todo.txt'])
      assert.equal(mu.get(p)?.untracked, true);
    assert.ok(!mu.has('debug.log') && !mu.has('node_modules/pkg/index.js'));
  });

  void it('formats the dry run as the exact file list with modes and total size', async () => {
    const root = makeFixtureRepo();
    const list = await listImportFiles(root, { includeUntracked: true }, runCommand);
    const text = formatDryRun(list.entries);
    const lines = text.split('\n');
    assert.equal(lines.length, list.entries.length + 1);
    assert.ok(lines.some((l) => /^100755 +\d+ bin\/run\.sh$/.test(l)));
    assert.ok(lines.some((l) => /^120000 +0 abs-link -> \/etc\/hostname$/.test(l)));
    assert.ok(lines.some((l) => /^100644 +\d+ \.env \(untracked\)$/.test(l)));
    assert.ok(
      lines.some((l) => l.endsWith(` ${JSON.stringify(NASTY_NAME)}`)),
      'names with quotes are shown quoted',
    );
    assert.match(
      lines.at(-1) ?? '',
      new RegExp(`^${list.entries.length} entries, [\\d.]+ MiB \\(${list.totalBytes} bytes\\)$`),
    );
  });
});
