/**
 * The import base a re-sync makes on the host (base-objects.ts): trees, commit and index entries that must be
 * exactly what git in the guest would make, checked against real git; and the tar's choice to send them only
 * when what it sent is what the manifest says (pack.ts).
 */
import assert from 'node:assert/strict';
import { tmpdir } from 'node:os';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { before, describe, it } from 'node:test';
import tar from 'tar-stream';
import { baseObjects, buildTrees, hashOf } from '../../src/daemon/services/workspace/base-objects.js';
import { hostManifest } from '../../src/daemon/services/workspace/manifest.js';
import { TAR_BASE, TAR_INDEX_INFO, TAR_OBJECTS_DIR, createImportTar } from '../../src/daemon/services/workspace/pack.js';
import { runCommand } from '../../src/shared/command.js';
import { listImportFiles } from '../../src/shared/workspace-files.js';
import { git, isolateGitConfig, link, tmp, write } from '../helpers/workspace-repo.js';

before(isolateGitConfig);

/** A repository whose names sort differently as files and as directories, with every mode a tree holds. */
function trickyRepo(format: 'sha1' | 'sha256'): string {
  const root = join(tmp('banger-trees-'), 'repo');
  mkdirSync(root, { recursive: true });
  git(root, 'init', '-q', `--object-format=${format}`, '-b', 'main');
  for (const p of ['a', 'a-b', 'a.b', 'a0', 'b/a-b', 'b/a.b/c', 'b/a/c', 'b/a0', 'sp ace/x y', 'ünï/файл', 'deep/1/2/3/4/f'])
    write(root, p === 'a' ? 'a-file' : p, `${p}\n`);
  write(root, 'a/inner', 'a is a directory\n');
  write(root, 'bin/run', '#!/bin/sh\n', 0o755);
  link(root, 'link', 'bin/run');
  git(root, 'add', '-A');
  git(root, '-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-q', '-m', 'one');
  // A submodule's commit in the tree (a gitlink), without the submodule itself.
  const zero = format === 'sha256' ? 'c'.repeat(64) : 'c'.repeat(40);
  git(root, 'update-index', '--add', '--cacheinfo', `160000,${zero},sub`);
  git(root, '-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-q', '-m', 'two');
  return root;
}

async function tarEntries(stream: Readable): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>();
  const ex = tar.extract();
  const done = new Promise<void>((resolve, reject) => {
    ex.on('entry', (h, s, next) => {
      const parts: Buffer[] = [];
      s.on('data', (d: unknown) => parts.push(d as Buffer));
      s.on('end', () => {
        out.set(h.name, Buffer.concat(parts));
        next();
      });
    });
    ex.on('finish', resolve);
    ex.on('error', reject);
  });
  stream.pipe(ex);
  await done;
  return out;
}

void describe('a re-sync import base made on the host', () => {
  for (const format of ['sha1', 'sha256'] as const) {
    void it(`is the trees and the commit git makes of the same state (${format})`, async () => {
      const root = trickyRepo(format);
      const head = git(root, 'rev-parse', 'HEAD').trim();
      write(root, 'b/a/c', 'edited\n');
      write(root, 'new/dir/file', 'new\n');
      execFileSync('rm', ['-r', join(root, 'deep'), join(root, 'a-b')]);
      const m = await hostManifest(root, true, runCommand, tmpdir());
      assert.ok(m);
      assert.equal(hashOf(m.tree), format);
      // What the guest's git makes of the same files: a throwaway index, write-tree, commit-tree.
      const env = { ...process.env, GIT_INDEX_FILE: join(root, '.git', 'tmp-index') };
      execFileSync('git', ['add', '-A'], { cwd: root, env });
      const tree = execFileSync('git', ['write-tree'], { cwd: root, env, encoding: 'utf8' }).trim();
      const trees = buildTrees(m.entries, format);
      assert.equal(trees.get('')?.oid, tree, "the root is git's tree of the same state");
      assert.equal(trees.get('b/a')?.oid, git(root, 'rev-parse', `${tree}:b/a`).trim());
      assert.equal(trees.has('deep'), false, 'a directory whose files all went is in no tree');
      const time = 1_700_000_000;
      const who = { GIT_AUTHOR_NAME: 'banger', GIT_AUTHOR_EMAIL: 'banger@localhost', GIT_COMMITTER_NAME: 'banger', GIT_COMMITTER_EMAIL: 'banger@localhost' };
      const dates = { GIT_AUTHOR_DATE: `${time} +0000`, GIT_COMMITTER_DATE: `${time} +0000` };
      const commit = execFileSync('git', ['commit-tree', tree, '-p', head, '-m', 'banger import base'], {
        cwd: root,
        env: { ...process.env, ...who, ...dates },
        encoding: 'utf8',
      }).trim();
      const b = baseObjects({ manifest: m, write: ['b/a/c', 'new/dir/file'], delete: ['a-b', 'deep/1/2/3/4/f'], parent: head, time });
      assert.ok(b);
      assert.equal(b.tree, tree);
      assert.equal(b.commit, commit, 'the commit git makes with the same dates');
      // The changed directories' trees and the commit, as loose objects git reads.
      const od = tmp('banger-objects-');
      for (const o of b.objects) {
        mkdirSync(join(od, o.path.slice(0, 2)), { recursive: true });
        writeFileSync(join(od, o.path), o.data);
      }
      const ids = b.objects.map((o) => o.path.replace('/', ''));
      const types = execFileSync('git', ['cat-file', '--batch-check=%(objecttype) %(objectname)'], {
        cwd: root,
        env: { ...process.env, GIT_OBJECT_DIRECTORY: od },
        input: ids.join('\n') + '\n',
        encoding: 'utf8',
      });
      const want = ['', 'b', 'b/a', 'new', 'new/dir'].map((d) => `tree ${git(root, 'rev-parse', d === '' ? tree : `${tree}:${d}`).trim()}`);
      assert.deepEqual(types.trim().split('\n').sort(), [...want, `commit ${commit}`].sort());
      // Index entries: removals first, then the new entries, as `git ls-files -s` gives them.
      const staged = (p: string) => git(root, 'ls-files', '-s', '--', p).trim().replace(/ 0\t/, '\t');
      const zero = '0'.repeat(tree.length);
      assert.deepEqual(b.indexInfo.toString().split('\0').filter(Boolean), [
        `0 ${zero}\ta-b`,
        `0 ${zero}\tdeep/1/2/3/4/f`,
        ...['b/a/c', 'new/dir/file'].map((p) => execFileSync('git', ['ls-files', '-s', '--', p], { cwd: root, env, encoding: 'utf8' }).trim().replace(/ 0\t/, '\t')),
      ]);
      assert.ok(staged('bin/run').startsWith('100755 '));
    });
  }

  void it('is sent only when every file sent is what the manifest says, and only for small changes', async () => {
    const root = trickyRepo('sha1');
    const head = git(root, 'rev-parse', 'HEAD').trim();
    // `meanwhile` runs between the manifest and the sending: the files change under the import.
    const send = async (paths: string[], meanwhile?: () => void) => {
      const m = await hostManifest(root, true, runCommand, tmpdir());
      assert.ok(m);
      meanwhile?.();
      const list = await listImportFiles(root, { includeUntracked: true, only: new Set(paths) }, runCommand);
      const entries = list.entries.filter((e) => paths.includes(e.path));
      const tarStream = createImportTar({
        root,
        entries,
        headCommit: head,
        historySince: head,
        tmpDir: tmpdir(),
        deleted: [],
        base: {
          hash: 'sha1',
          expect: m.entries,
          make: () => baseObjects({ manifest: m, write: paths, delete: [], parent: head, time: 1 }),
        },
      });
      return tarEntries(tarStream);
    };
    write(root, 'a-file', 'edited\n');
    link(root, 'link2', 'a-file');
    const ok = await send(['a-file', 'link2']);
    const base = ok.get(TAR_BASE)?.toString();
    assert.match(base ?? '', /^[0-9a-f]{40} [0-9a-f]{40}\n$/);
    assert.ok(ok.has(TAR_INDEX_INFO));
    const blob = (p: string) => git(root, 'hash-object', '--no-filters', p).trim();
    const readlinkBlob = execFileSync('git', ['hash-object', '--stdin'], { cwd: root, input: 'a-file', encoding: 'utf8' }).trim();
    for (const id of [blob('a-file'), readlinkBlob])
      assert.ok(ok.has(`${TAR_OBJECTS_DIR}/${id.slice(0, 2)}/${id.slice(2)}`), `the blob ${id} goes along`);

    // A file that is no longer what the manifest says (changed since it was made): the guest makes the base.
    const changed = await send(['a-file'], () => write(root, 'a-file', 'edited again\n'));
    assert.equal(changed.has(TAR_BASE), false);
    assert.equal(changed.has(TAR_INDEX_INFO), false);
    assert.equal(changed.get('tree/a-file')?.toString(), 'edited again\n');
    // A mode the manifest does not have.
    const mode = await send(['a-file'], () => chmodSync(join(root, 'a-file'), 0o755));
    assert.equal(mode.has(TAR_BASE), false);
    chmodSync(join(root, 'a-file'), 0o644);
    // Too large to hold its blob.
    write(root, 'big', randomBytes(2 << 20));
    const big = await send(['a-file', 'big']);
    assert.equal(big.has(TAR_BASE), false);
    assert.ok(big.has('tree/big'), 'the files themselves are sent all the same');
  });
});
