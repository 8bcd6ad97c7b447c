import assert from 'node:assert/strict';
import { tmpdir } from 'node:os';
import { createHash, randomBytes } from 'node:crypto';
import {
  chmodSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  readlinkSync,
  renameSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { before, describe, it } from 'node:test';
import { execFileSync } from 'node:child_process';
import { runCommand } from '../../src/shared/command.js';
import {
  IMPORT_BASE_REF,
  MISE_NOTICE_PREFIX,
  WorkspaceScriptExit,
  buildImportScript,
} from '../../src/daemon/services/workspace/guest-scripts.js';
import { execInWorkspace } from '../../src/daemon/services/workspace/workspace-command.js';
import { buildExportScript, parseNameStatus } from '../../src/daemon/services/workspace/export-script.js';
import { inspectRepo, listImportFiles } from '../../src/daemon/services/workspace/host-repo.js';
import { type ImportTarProgress } from '../../src/daemon/services/workspace/pack.js';
import { createFullImportStream } from '../../src/daemon/services/workspace/import-stream.js';
import { parsePatchFiles } from '../../src/daemon/services/workspace/patch.js';
import { hostManifest } from '../../src/daemon/services/workspace/manifest.js';
import { splitByHead } from '../../src/daemon/services/workspace/checkout-split.js';
import { LocalShellSession } from '../helpers/local-session.js';
import {
  NASTY_NAME,
  UNICODE_NAME,
  copyTree,
  git,
  isolateGitConfig,
  link,
  makeFixtureRepo,
  sha256File,
  tmp,
  worktreeTree,
  write,
} from '../helpers/workspace-repo.js';

before(isolateGitConfig);

const session = new LocalShellSession();

interface Imported {
  guest: string;
  stdout: string;
  stderr: string;
  code: number;
  progress: ImportTarProgress | undefined;
  entries: number;
  /** Files the guest wrote from the history pack (equal to HEAD) rather than received. */
  checkedOut: number;
  skippedUntracked: number;
}

async function importRepo(
  root: string,
  guest: string,
  opts: {
    includeUntracked?: boolean;
    historyDepth?: number;
    historyPartBytes?: number;
    firstPartBytes?: number;
    storeBlobs?: boolean;
    session?: LocalShellSession;
    force?: boolean;
  } = {},
): Promise<Imported> {
  const repo = await inspectRepo(root, runCommand);
  const list = await listImportFiles(root, { includeUntracked: opts.includeUntracked ?? false }, runCommand);
  let progress: ImportTarProgress | undefined;
  // As the workspace service does: files equal to HEAD's come from the history pack, the rest as files.
  const manifest = await hostManifest(repo.root, opts.includeUntracked ?? false, runCommand, tmpdir());
  const split = await splitByHead(repo.root, repo.headCommit, list.entries, manifest, runCommand);
  const stdin = createFullImportStream(
    {
      root: repo.root,
      headCommit: repo.headCommit,
      split,
      tmpDir: tmpdir(),
      historyDepth: opts.historyDepth,
      partBytes: opts.historyPartBytes,
      firstPartBytes: opts.firstPartBytes,
      storeBlobs: opts.storeBlobs,
    },
    { onProgress: (p) => (progress = p) },
  );
  const script = buildImportScript({
    guestPath: guest,
    headCommit: repo.headCommit,
    branch: repo.branch,
    identity: repo.identity,
    force: opts.force,
  });
  const r = await (opts.session ?? session).exec(script, { stdin });
  return {
    guest,
    code: r.code,
    stdout: r.stdout.toString(),
    stderr: r.stderr.toString(),
    progress,
    entries: split.send.length + split.checkout.length,
    checkedOut: split.checkout.length,
    skippedUntracked: list.skippedUntracked,
  };
}

async function exportPatch(guest: string, opts: { baseCommit?: string; nameOnly?: boolean } = {}, s = session) {
  return s.exec(buildExportScript({ guestPath: guest, ...opts }));
}

/** path -> what a user sees there: kind, exec bit, content hash or link target. Ignored files and .git excluded. */
function snapshot(dir: string, exclude: readonly string[] = []): Record<string, string> {
  const out = execFileSync('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], {
    cwd: dir,
    encoding: 'utf8',
  });
  const snap: Record<string, string> = {};
  for (const p of new Set(out.split('\0').filter((x) => x !== ''))) {
    if (exclude.includes(p)) continue;
    const abs = join(dir, p);
    let st;
    try {
      st = lstatSync(abs);
    } catch {
      continue;
    }
    if (st.isSymbolicLink()) snap[p] = `link:${readlinkSync(abs)}`;
    else if (st.isFile())
      snap[p] = `file:${st.mode & 0o111 ? 'x' : '-'}:${createHash('sha256').update(readFileSync(abs)).digest('hex')}`;
    else snap[p] = 'dir';
  }
  return snap;
}

/** Everything export must leave as it is. */
function guestState(g: string) {
  const index = sha256File(join(g, '.git/index'));
  const env = { ...process.env, GIT_OPTIONAL_LOCKS: '0' };
  const run = (...a: string[]) => execFileSync('git', a, { cwd: g, env, encoding: 'utf8' });
  return {
    index,
    head: run('rev-parse', 'HEAD'),
    symbolic: run('symbolic-ref', '-q', 'HEAD'),
    refs: run('for-each-ref'),
    status: run('status', '--porcelain=v1', '-z', '--untracked-files=all', '--ignored'),
    files: snapshot(g),
  };
}

function statusLines(dir: string): string[] {
  return git(dir, 'status', '--porcelain=v1', '--untracked-files=all')
    .split('\n')
    .filter((l) => l !== '')
    .sort();
}

/** Changes of every kind, made in the guest. */
function changeGuest(g: string): void {
  write(g, 'README.md', 'hello\nsecond\nuncommitted edit\ncommitted in the guest\n');
  git(g, 'add', 'README.md');
  git(g, 'commit', '-q', '-m', 'guest commit');
  write(g, 'README.md', 'hello\nsecond\nuncommitted edit\ncommitted in the guest\nand edited after\n');
  write(g, 'src/new.ts', 'export const x = 1;\n');
  git(g, 'add', 'src/new.ts');
  write(g, "new dir/it's new ü.txt", 'brand new\n');
  write(g, '.env.example', 'A=1\n');
  rmSync(join(g, 'bin/run.sh'));
  chmodSync(join(g, 'a/b/keep.txt'), 0o644);
  write(g, 'data/blob.bin', Buffer.from([0, 0, 0, 1, 2, 3, 254, 255, 0]));
  chmodSync(join(g, 'data/blob.bin'), 0o755);
  link(g, 'new-link', 'a/b/keep.txt');
  rmSync(join(g, 'link-to-readme'));
  link(g, 'link-to-readme', 'staged.txt');
  rmSync(join(g, 'abs-link'));
  write(g, 'abs-link', 'was a symlink\n');
  renameSync(join(g, UNICODE_NAME), join(g, 'ünïcödé/renamed.txt'));
  write(g, NASTY_NAME, 'nasty, edited\n');
  write(g, 'build.log', 'ignored\n');
  write(g, 'node_modules/dep/index.js', 'ignored\n');
}

void describe('workspace round trip (pack -> import -> change -> export -> git apply)', () => {
  for (const shell of ['/bin/sh', '/bin/bash'])
    void it(`imports the working tree with untracked files, and the patch makes the host equal the guest (${shell})`, async () => {
      const sh = new LocalShellSession({ shell });
      const root = makeFixtureRepo();
      const atImport = join(tmp('banger-copy-'), 'copy');
      copyTree(root, atImport);
      const guest = join(tmp('banger-guest-'), `work/it's a "ws" ü`);

      const imp = await importRepo(root, guest, { includeUntracked: true, session: sh });
      assert.equal(imp.code, 0, imp.stderr);
      assert.equal(imp.progress?.files, imp.entries);
      assert.ok(imp.checkedOut > 0 && imp.checkedOut < imp.entries, 'clean files come from the pack, edits as files');

      // The guest repo is the host's checkout: same HEAD, branch, identity, history; index = HEAD.
      assert.equal(git(guest, 'rev-parse', 'HEAD'), git(root, 'rev-parse', 'HEAD'));
      assert.equal(git(guest, 'symbolic-ref', 'HEAD').trim(), 'refs/heads/main');
      assert.equal(git(guest, 'config', 'user.name').trim(), "Ada O'Lovelace");
      assert.equal(git(guest, 'config', 'user.email').trim(), 'ada@example.com');
      assert.equal(git(guest, 'rev-list', '--count', 'HEAD').trim(), '2');
      assert.ok(!existsSync(join(guest, '.git/shallow')), 'both commits are within the default depth');
      assert.equal(git(guest, 'diff', '--cached', '--name-only'), '', 'index equals HEAD');
      execFileSync('git', ['fsck', '--no-progress'], { cwd: guest, stdio: 'ignore' });
      // Uncommitted host edits show as modifications, host untracked (and staged-new) files as untracked.
      const hostStatus = statusLines(root)
        .map((l) => (l === 'A  staged.txt' ? '?? staged.txt' : l))
        .sort();
      assert.deepEqual(statusLines(guest), hostStatus);
      // The files are the host's, byte for byte, with modes and symlinks; ignored files stayed home.
      assert.deepEqual(snapshot(guest), snapshot(root));
      assert.ok(!existsSync(join(guest, 'debug.log')) && !existsSync(join(guest, 'node_modules')));
      assert.equal(readlinkSync(join(guest, 'abs-link')), '/etc/hostname');
      // The base is the imported state, and import prints it.
      const base = git(guest, 'rev-parse', IMPORT_BASE_REF).trim();
      assert.equal(imp.stdout.trim(), base);
      assert.equal(git(guest, 'rev-parse', `${base}^{tree}`).trim(), worktreeTree(root));
      assert.equal(git(guest, 'rev-parse', `${base}^`).trim(), git(root, 'rev-parse', 'HEAD').trim());
      assert.ok(imp.stderr.includes(`${MISE_NOTICE_PREFIX}not installed`), imp.stderr);

      changeGuest(guest);
      const before = guestState(guest);
      const patch = await exportPatch(guest, {}, sh);
      assert.equal(patch.code, 0, patch.stderr.toString());
      assert.deepEqual(guestState(guest), before, 'export changes nothing in the guest');
      assert.ok(
        !patch.stdout.includes('build.log') && !patch.stdout.includes('node_modules'),
        'ignored files are not exported',
      );

      const patchFile = join(tmp('banger-patch-'), 'p.diff');
      writeFileSync(patchFile, patch.stdout);
      git(atImport, 'apply', patchFile);
      assert.deepEqual(snapshot(atImport), snapshot(guest));
      assert.equal(lstatSync(join(atImport, 'new-link')).isSymbolicLink(), true);
      assert.equal(lstatSync(join(atImport, 'data/blob.bin')).mode & 0o111, 0o111);
      assert.equal(lstatSync(join(atImport, 'a/b/keep.txt')).mode & 0o111, 0);
      assert.equal(existsSync(join(atImport, 'bin/run.sh')), false);
      assert.equal(readFileSync(join(atImport, "new dir/it's new ü.txt"), 'utf8'), 'brand new\n');

      // Name-only variant.
      const names = await exportPatch(guest, { nameOnly: true });
      assert.equal(names.code, 0);
      const m = new Map(parseNameStatus(names.stdout).map((r) => [r.path, r.status]));
      // The list the host reads from the patch is the same as git's own.
      assert.deepEqual(new Map(parsePatchFiles(patch.stdout).map((r) => [r.path, r.status])), m);
      assert.equal(m.get('README.md'), 'M');
      assert.equal(m.get('bin/run.sh'), 'D');
      assert.equal(m.get('new-link'), 'A');
      assert.equal(m.get("new dir/it's new ü.txt"), 'A');
      assert.equal(m.get('abs-link'), 'T');
      assert.equal(m.get(UNICODE_NAME), 'D');
      assert.equal(m.get('ünïcödé/renamed.txt'), 'A');
      assert.equal(m.get(NASTY_NAME), 'M');
      assert.equal(m.has('build.log'), false);
      assert.equal(m.has('.env'), false, 'imported and unchanged');
      assert.deepEqual(guestState(guest), before);

      // --base-commit: against the host HEAD the uncommitted host edits are part of the diff too.
      const head = git(root, 'rev-parse', 'HEAD').trim();
      const fromHead = await exportPatch(guest, { baseCommit: head, nameOnly: true });
      const mh = new Map(parseNameStatus(fromHead.stdout).map((r) => [r.path, r.status]));
      assert.equal(mh.get('.env'), 'A');
      assert.equal(mh.get('a/b/c/d.txt'), 'D');
      const bad = await exportPatch(guest, { baseCommit: "no-such-ref'" });
      assert.equal(bad.code, WorkspaceScriptExit.BadBase);
      assert.match(bad.stderr.toString(), /^banger-workspace: no-such-ref' does not name a commit/);
    });

  void it('leaves untracked files home by default, and the patch leaves them alone', async () => {
    const root = makeFixtureRepo();
    const atImport = join(tmp('banger-copy-'), 'copy');
    copyTree(root, atImport);
    const guest = join(tmp('banger-guest-'), 'ws');
    const imp = await importRepo(root, guest);
    assert.equal(imp.code, 0, imp.stderr);
    assert.equal(imp.skippedUntracked, 4);
    for (const p of ['.env', '.envrc.private', '.env.local', 'notes/todo.txt'])
      assert.ok(!existsSync(join(guest, p)), p);
    changeGuest(guest);
    const patch = await exportPatch(guest);
    assert.equal(patch.code, 0);
    // The import base read from a packed ref (the script reads the ref's own file when there is one).
    git(guest, 'pack-refs', '--all');
    assert.equal(existsSync(join(guest, '.git', IMPORT_BASE_REF)), false, 'the import base is packed');
    const fromPacked = await exportPatch(guest);
    assert.equal(fromPacked.code, 0, fromPacked.stderr.toString());
    assert.deepEqual(fromPacked.stdout, patch.stdout);
    const patchFile = join(tmp('banger-patch-'), 'p.diff');
    writeFileSync(patchFile, patch.stdout);
    git(atImport, 'apply', patchFile);
    const untracked = ['.env', '.envrc.private', '.env.local', 'notes/todo.txt'];
    assert.deepEqual(snapshot(atImport, untracked), snapshot(guest));
    assert.equal(readFileSync(join(atImport, '.env'), 'utf8'), 'SECRET=1\n');
  });

  void it('sends a file as it is on disk when its bytes differ from its blob (ident, CRLF), and the guest sees what the host sees', async () => {
    const root = tmp('banger-attr-');
    git(root, 'init', '-q', '-b', 'main');
    write(root, '.gitattributes', 'id.txt ident\ncrlf.txt text eol=crlf\n');
    write(root, 'id.txt', 'version $Id$\n');
    write(root, 'crlf.txt', 'one\ntwo\n');
    write(root, 'plain.txt', 'plain\n');
    git(root, 'add', '-A');
    git(root, 'commit', '-q', '-m', 'attrs');
    // Check out again so the working tree holds the smudged bytes ($Id: ...$, CRLF endings).
    rmSync(join(root, 'id.txt'));
    rmSync(join(root, 'crlf.txt'));
    git(root, 'checkout', '--', 'id.txt', 'crlf.txt');
    assert.match(readFileSync(join(root, 'id.txt'), 'utf8'), /\$Id: [0-9a-f]{40} \$/);
    assert.equal(statusLines(root).length, 0);
    const guest = join(tmp('banger-guest-'), 'ws');
    const imp = await importRepo(root, guest);
    assert.equal(imp.code, 0, imp.stderr);
    assert.equal(imp.checkedOut, 2, '.gitattributes and plain.txt come from the pack; id.txt and crlf.txt as files');
    assert.deepEqual(snapshot(guest), snapshot(root));
    assert.deepEqual(statusLines(guest), []);
  });

  void it('sends HEAD\'s blobs as several uncompressed packs when they are larger than a part, and the guest repository is whole', async () => {
    const root = tmp('banger-parts-');
    git(root, 'init', '-q', '-b', 'main');
    for (let i = 0; i < 4; i++) write(root, `bin/${i}.bin`, randomBytes(1 << 20));
    git(root, 'add', '-A');
    git(root, 'commit', '-q', '-m', 'binaries');
    write(root, 'bin/0.bin', randomBytes(1000)); // an edit: sent as a file
    const guest = join(tmp('banger-guest-'), 'ws');
    const imp = await importRepo(root, guest, { historyPartBytes: 1 << 20, storeBlobs: true });
    assert.equal(imp.code, 0, imp.stderr);
    assert.equal(imp.checkedOut, 3);
    const packs = readdirSync(join(guest, '.git/objects/pack')).filter((n) => n.endsWith('.pack'));
    assert.ok(packs.length >= 3, `several packs: ${packs.join(' ')}`);
    execFileSync('git', ['fsck', '--no-progress', '--full'], { cwd: guest, stdio: 'ignore' });
    assert.deepEqual(snapshot(guest), snapshot(root));
    assert.deepEqual(statusLines(guest), [' M bin/0.bin']);
  });

  void it("sends HEAD's index and a small first part of the smallest blobs before the history", async () => {
    const root = tmp('banger-first-');
    git(root, 'init', '-q', '-b', 'main');
    for (let i = 0; i < 40; i++) write(root, `src/f${i}.txt`, `${'x'.repeat(1000 + i)}\n`);
    for (let i = 0; i < 3; i++) write(root, `bin/${i}.bin`, randomBytes(200_000));
    git(root, 'add', '-A');
    git(root, 'commit', '-q', '-m', 'files');
    const repo = await inspectRepo(root, runCommand);
    const list = await listImportFiles(root, { includeUntracked: false }, runCommand);
    const manifest = await hostManifest(repo.root, false, runCommand, tmpdir());
    const split = await splitByHead(repo.root, repo.headCommit, list.entries, manifest, runCommand);
    const opts = { partBytes: 1 << 20, firstPartBytes: 10_000, storeBlobs: true };
    const stream: Buffer[] = [];
    for await (const c of createFullImportStream({ root: repo.root, headCommit: repo.headCommit, split, tmpDir: tmpdir(), ...opts }))
      stream.push(c as Buffer);
    const all = Buffer.concat(stream);
    // The records up to the tar: kind, and the paths a part checks out.
    const records: { kind: string; paths: string[] }[] = [];
    let at = all.indexOf(0x0a) + 1;
    for (;;) {
      const nl = all.indexOf(0x0a, at);
      const [kind = '', ...f] = all.toString('utf8', at, nl).split(' ');
      at = nl + 1;
      if (kind === 'tar') break;
      if (kind === 'options') {
        records.push({ kind: `options ${f.join(' ')}`, paths: [] });
        continue;
      }
      const n = f.slice(kind === 'index' || kind === 'shallow' ? 0 : 1).map(Number);
      const listBytes = kind === 'part' ? (n[2] ?? 0) : 0;
      at += n.reduce((a, b) => a + b, 0) - listBytes;
      records.push({ kind, paths: all.toString('utf8', at, at + listBytes).split('\0').filter((p) => p !== '') });
      at += listBytes;
    }
    const kinds = records.map((r) => r.kind);
    // Not HEAD's state as far as the stream knows (the default), mise trusted (the default).
    assert.deepEqual(kinds.slice(0, 5), ['options 0 1', 'index', 'part', 'shallow', 'pack'], kinds.join(' '));
    assert.ok(kinds.slice(5).every((k) => k === 'part') && kinds.length >= 6, kinds.join(' '));
    // The first part: the smallest blobs, up to about 10,000 bytes (the first nine text files).
    assert.deepEqual(records[2]?.paths.sort(), Array.from({ length: 9 }, (_, i) => `src/f${i}.txt`));
    assert.equal(records.flatMap((r) => r.paths).length, 43, 'every file is in a part');
    // And a guest built from such a stream is whole.
    const guest = join(tmp('banger-guest-'), 'ws');
    const imp = await importRepo(root, guest, { historyPartBytes: opts.partBytes, firstPartBytes: opts.firstPartBytes, storeBlobs: true });
    assert.equal(imp.code, 0, imp.stderr);
    execFileSync('git', ['fsck', '--no-progress', '--full'], { cwd: guest, stdio: 'ignore' });
    assert.deepEqual(snapshot(guest), snapshot(root));
    assert.deepEqual(statusLines(guest), []);
  });

  void it('keeps a detached HEAD detached', async () => {
    const root = makeFixtureRepo();
    git(root, 'checkout', '-q', '--detach');
    const guest = join(tmp('banger-guest-'), 'ws');
    const imp = await importRepo(root, guest);
    assert.equal(imp.code, 0, imp.stderr);
    assert.equal(git(guest, 'rev-parse', 'HEAD'), git(root, 'rev-parse', 'HEAD'));
    assert.throws(() => git(guest, 'symbolic-ref', '-q', 'HEAD'));
  });

  void it('sends only the last N commits with historyDepth, as a shallow repo', async () => {
    const root = makeFixtureRepo();
    const guest = join(tmp('banger-guest-'), 'ws');
    const imp = await importRepo(root, guest, { historyDepth: 1 });
    assert.equal(imp.code, 0, imp.stderr);
    assert.equal(git(guest, 'rev-list', '--count', 'HEAD').trim(), '1');
    assert.equal(readFileSync(join(guest, '.git/shallow'), 'utf8').trim(), git(root, 'rev-parse', 'HEAD').trim());
    assert.equal(git(guest, 'rev-parse', '--is-shallow-repository').trim(), 'true');
    execFileSync('git', ['fsck', '--no-progress'], { cwd: guest, stdio: 'ignore' });
    write(guest, 'x.txt', 'x\n');
    const patch = await exportPatch(guest, { nameOnly: true });
    assert.deepEqual(parseNameStatus(patch.stdout), [{ status: 'A', path: 'x.txt' }]);
  });

  void it('exports exactly what git add -A into a copy of the index gives, with and without untracked files', async () => {
    const root = makeFixtureRepo();
    const guest = join(tmp('banger-guest-'), 'ws');
    const imp = await importRepo(root, guest, { includeUntracked: true });
    assert.equal(imp.code, 0, imp.stderr);
    const base = git(guest, 'rev-parse', IMPORT_BASE_REF).trim();
    // The reference: the working tree staged into a copy of the index, diffed against the import base.
    const reference = () => {
      const index = join(tmp('banger-ref-index-'), 'index');
      copyTree(join(guest, '.git/index'), index);
      const env = { ...process.env, GIT_INDEX_FILE: index };
      execFileSync('git', ['add', '-A'], { cwd: guest, env, stdio: 'ignore' });
      const args = ['diff-index', '--cached', '-r', '-p', '--binary', '--full-index', '--no-renames'];
      return execFileSync('git', [...args, '--src-prefix=a/', '--dst-prefix=b/', base], { cwd: guest, env });
    };
    const same = async (what: string) => {
      const before = guestState(guest);
      const r = await exportPatch(guest);
      assert.equal(r.code, 0, r.stderr.toString());
      assert.equal(r.stdout.toString('utf8'), reference().toString('utf8'), what);
      assert.deepEqual(guestState(guest), before, `${what}: export changes nothing in the guest`);
      return r.stdout.toString('utf8');
    };

    // The host's untracked and staged-new files are untracked in the guest (and in the base): not exported as
    // deleted. (With untracked files the diff is taken through a copy of the index that has them.)
    assert.equal(await same('nothing changed, with untracked files'), '');
    // With everything the import brought staged in the guest, there is nothing untracked, and the diff goes
    // through the real index.
    git(guest, 'add', '-A');
    assert.equal(await same('nothing changed, nothing untracked'), '');
    // Files that only look changed (a new mtime, the same bytes) are not in the patch.
    const later = new Date(Date.now() + 5000);
    execFileSync('touch', ['-d', later.toISOString(), join(guest, 'README.md'), join(guest, 'data/blob.bin')]);
    assert.equal(await same('touched only'), '');
    // Tracked changes only: an edit, a deletion, a mode change.
    write(guest, 'README.md', 'edited in the guest\n');
    rmSync(join(guest, 'bin/run.sh'));
    chmodSync(join(guest, 'a/b/keep.txt'), 0o755);
    const tracked = await same('tracked changes');
    assert.match(tracked, /^diff --git a\/README\.md b\/README\.md$/m);
    assert.match(tracked, /^deleted file mode 100755$/m);
    // Untracked files too: in a new directory, a name with quotes, a file where a tracked one was (and the
    // other way round), and a nested repository, which git add -A makes a gitlink.
    write(guest, "new dir/it's new.txt", 'brand new\n');
    rmSync(join(guest, 'data/blob.bin'));
    write(guest, 'data/blob.bin/inside.txt', 'a directory now\n');
    rmSync(join(guest, 'a/b'), { recursive: true });
    write(guest, 'a/b', 'a file now\n');
    const nested = join(guest, 'vendor/nested');
    mkdirSync(nested, { recursive: true });
    git(nested, 'init', '-q');
    write(nested, 'n.txt', 'n\n');
    git(nested, 'add', '-A');
    git(nested, 'commit', '-q', '-m', 'nested');
    const all = await same('tracked and untracked changes');
    assert.match(all, /^diff --git a\/data\/blob\.bin\/inside\.txt b\/data\/blob\.bin\/inside\.txt$/m);
    assert.match(all, /^\+Subproject commit [0-9a-f]{40}$/m);
    // Each export expects what the one before it found: untracked files again, then none again.
    assert.equal(await same('tracked and untracked changes, again'), all);
    rmSync(join(guest, "new dir"), { recursive: true });
    rmSync(join(guest, 'data/blob.bin'), { recursive: true });
    rmSync(join(guest, 'a/b'));
    rmSync(nested, { recursive: true });
    assert.doesNotMatch(await same('the untracked files gone'), /inside\.txt|Subproject/);
  });

  void it('imports and exports a repository without commits', async () => {
    const root = join(tmp('banger-empty-'), 'fresh');
    mkdirSync(root);
    git(root, 'init', '-q', '-b', 'trunk');
    write(root, 'a.txt', 'a\n');
    write(root, 'exe', '#!/bin/sh\n', 0o755);
    git(root, 'add', 'a.txt');
    const atImport = join(tmp('banger-copy-'), 'copy');
    copyTree(root, atImport);
    const guest = join(tmp('banger-guest-'), 'ws');
    const imp = await importRepo(root, guest, { includeUntracked: true });
    assert.equal(imp.code, 0, imp.stderr);
    assert.equal(git(guest, 'symbolic-ref', 'HEAD').trim(), 'refs/heads/trunk');
    assert.deepEqual(snapshot(guest), snapshot(root));
    write(guest, 'b.txt', 'b\n');
    rmSync(join(guest, 'a.txt'));
    const patch = await exportPatch(guest);
    const patchFile = join(tmp('banger-patch-'), 'p.diff');
    writeFileSync(patchFile, patch.stdout);
    git(atImport, 'apply', patchFile);
    assert.deepEqual(snapshot(atImport), snapshot(guest));
  });

  void it('imports a submodule as an empty directory and never exports it', async () => {
    const sub = join(tmp('banger-sub-'), 'lib');
    mkdirSync(sub);
    git(sub, 'init', '-q');
    write(sub, 'lib.c', 'int x;\n');
    git(sub, 'add', '-A');
    git(sub, 'commit', '-q', '-m', 'lib');
    const root = makeFixtureRepo();
    git(root, 'submodule', 'add', '-q', sub, 'vendor/lib');
    git(root, 'commit', '-q', '-m', 'add submodule', '--', '.gitmodules', 'vendor/lib');
    const guest = join(tmp('banger-guest-'), 'ws');
    const imp = await importRepo(root, guest);
    assert.equal(imp.code, 0, imp.stderr);
    assert.ok(lstatSync(join(guest, 'vendor/lib')).isDirectory());
    assert.ok(!statusLines(guest).some((l) => l.includes('vendor/lib')), statusLines(guest).join('\n'));
    write(guest, 'x.txt', 'x\n');
    const names = await exportPatch(guest, { nameOnly: true });
    assert.deepEqual(parseNameStatus(names.stdout), [{ status: 'A', path: 'x.txt' }]);
  });

  void it('re-import replaces a workspace only with force when the guest changed it, and refuses a directory that is not one', async () => {
    const root = makeFixtureRepo();
    const guest = join(tmp('banger-guest-'), 'ws');
    assert.equal((await importRepo(root, guest)).code, 0);
    const unchanged = await importRepo(root, guest);
    assert.equal(unchanged.code, 0, `a workspace without guest changes is replaced: ${unchanged.stderr}`);
    const firstBase = git(guest, 'rev-parse', IMPORT_BASE_REF);
    changeGuest(guest);
    const guestHead = git(guest, 'rev-parse', 'HEAD');
    write(root, 'README.md', 'host moved on\n');
    const conflict = await importRepo(root, guest);
    assert.equal(conflict.code, WorkspaceScriptExit.Conflict, conflict.stderr);
    assert.match(conflict.stderr, /^banger-workspace: \d+ changes made in the guest would be overwritten$/m);
    const named = conflict.stdout.split('\0').filter(Boolean);
    for (const p of ['(HEAD: commits or a checkout made in the guest)', 'README.md', 'src/new.ts', 'bin/run.sh', 'new-link'])
      assert.ok(named.includes(p), `${p} is named: ${JSON.stringify(named)}`);
    assert.ok(!named.includes('build.log'), 'ignored files are not guest changes');
    assert.equal(git(guest, 'rev-parse', 'HEAD'), guestHead, 'the refused import changed nothing');
    assert.equal(readFileSync(join(guest, 'src/new.ts'), 'utf8'), 'export const x = 1;\n');
    const again = await importRepo(root, guest, { force: true });
    assert.equal(again.code, 0, again.stderr);
    assert.equal(git(guest, 'rev-parse', 'HEAD'), git(root, 'rev-parse', 'HEAD'), 'the guest commit is gone');
    assert.notEqual(git(guest, 'rev-parse', IMPORT_BASE_REF), firstBase);
    assert.equal(readFileSync(join(guest, 'README.md'), 'utf8'), 'host moved on\n');
    assert.ok(!existsSync(join(guest, 'build.log')) && !existsSync(join(guest, 'new-link')));
    assert.deepEqual(snapshot(guest), snapshot(root, ['.env', '.envrc.private', '.env.local', 'notes/todo.txt']));
    assert.deepEqual(
      execFileSync('ls', ['-A', guest], { encoding: 'utf8' })
        .split('\n')
        .filter((n) => n.startsWith('.banger-import')),
      [],
      'no staging directory left behind',
    );

    const occupied = tmp('banger-occupied-');
    writeFileSync(join(occupied, 'precious'), 'keep me');
    const refused = await importRepo(root, occupied);
    assert.equal(refused.code, WorkspaceScriptExit.PathInUse);
    assert.match(refused.stderr, /^banger-workspace: .* is not empty and is not a banger workspace/m);
    assert.deepEqual(execFileSync('ls', ['-A', occupied], { encoding: 'utf8' }).trim(), 'precious');

    const empty = tmp('banger-empty-dest-');
    assert.equal((await importRepo(root, empty)).code, 0);
  });

  void it('an import killed at any point of replacing a workspace leaves a path the next import takes', { timeout: 300_000 }, async () => {
    // `mv` and `rm` shims that, on their Nth call, do part of the job (one source of a multi-source mv) or all
    // of it, then kill -9 the import script and its children, the way a crashed guest or daemon would.
    const bin = tmp('banger-killbin-');
    const counter = join(bin, 'count');
    const shim = (tool: string) => `#!/bin/sh
n=$(($(cat '${counter}' 2>/dev/null || echo 0) + 1)); echo $n > '${counter}'
if [ "$n" -ne "$KILL_AT" ]; then exec /bin/${tool} "$@"; fi
if [ ${tool} = mv ] && [ "$1" = -t ]; then /bin/mv -t "$2" -- "$4"; else /bin/${tool} "$@"; fi
ppid() { awk '/^PPid:/ { print $2 }' "/proc/$1/status"; }
top=$$
while pp=$(ppid $top) && [ -n "$pp" ] && [ "$pp" -gt 1 ] && [ "$(cat /proc/$pp/comm)" != node ]; do top=$pp; done
killtree() { for c in $(pgrep -P "$1"); do killtree "$c"; done; [ "$1" = $$ ] || kill -9 "$1" 2>/dev/null; }
killtree "$top"
exit 137
`;
    write(bin, 'mv', shim('mv'), 0o755);
    write(bin, 'rm', shim('rm'), 0o755);
    const root = makeFixtureRepo();
    let killedAt = 0;
    for (let k = 1; k < 20; k++) {
      const guest = join(tmp('banger-guest-'), 'ws');
      assert.equal((await importRepo(root, guest)).code, 0);
      write(root, 'README.md', `host edit ${k}\n`);
      writeFileSync(counter, '0');
      const killer = new LocalShellSession({ env: { PATH: `${bin}:${process.env.PATH ?? ''}`, KILL_AT: String(k) } });
      const killed = await importRepo(root, guest, { session: killer });
      if (killed.code === 0) break; // the Nth call never came: every step was covered
      killedAt = k;
      const again = await importRepo(root, guest);
      assert.equal(again.code, 0, `after a kill at call ${k}: ${again.stderr}`);
      assert.deepEqual(
        snapshot(guest),
        snapshot(root, ['.env', '.envrc.private', '.env.local', 'notes/todo.txt']),
        `after a kill at call ${k}`,
      );
      assert.deepEqual(
        execFileSync('ls', ['-A', guest], { encoding: 'utf8' })
          .split('\n')
          .filter((n) => n.startsWith('.banger-import')),
        [],
        'no staging directory left behind',
      );
    }
    assert.ok(killedAt >= 3, `kills at ${killedAt} points`);
  });

  void it('export says what to do when there is no workspace', async () => {
    const r = await exportPatch(join(tmp('banger-none-'), 'nothing here'));
    assert.equal(r.code, WorkspaceScriptExit.NoWorkspace);
    assert.match(r.stderr.toString(), /no workspace at .*nothing here: import one first/);
  });

  void it('runs mise trust best effort and reports it on stderr', async () => {
    const root = makeFixtureRepo();
    const bin = tmp('banger-fakebin-');
    const record = join(bin, 'record');
    write(bin, 'mise', `#!/bin/sh\nprintf '%s|%s\\n' "$PWD" "$*" >> '${record}'\n`, 0o755);
    const withMise = new LocalShellSession({ env: { PATH: `${bin}:${process.env.PATH ?? ''}` } });
    const guest = join(tmp('banger-guest-'), "it's ws");
    const ok = await importRepo(root, guest, { session: withMise });
    assert.equal(ok.code, 0, ok.stderr);
    assert.ok(!ok.stderr.includes(MISE_NOTICE_PREFIX), ok.stderr);
    assert.equal(readFileSync(record, 'utf8'), `${guest}|trust --quiet --all\n`);

    write(bin, 'mise', '#!/bin/sh\nexit 3\n', 0o755);
    const failed = await importRepo(root, guest, { session: withMise });
    assert.equal(failed.code, 0, 'a mise failure does not fail the import');
    assert.match(failed.stderr, /^banger-workspace: mise: `mise trust --all` failed \(exit 3\)/m);
  });

  void it('runs commands in the workspace with their own exit status', async () => {
    const guest = join(tmp('banger-guest-'), "it's ws");
    mkdirSync(guest);
    for (const hasMise of [false, undefined]) {
      const r = await session.exec(
        execInWorkspace(guest, ['sh', '-c', 'pwd; echo "$1"; exit 7', 'sh', "it's an arg"], hasMise),
      );
      assert.equal(r.code, 7);
      assert.equal(r.stdout.toString(), `${guest}\nit's an arg\n`);
    }
    // Whether `mise exec` wraps the command: workspace-mise.test.ts.
  });
});

void describe('SHA-256 repositories', () => {
  void it('imports with the same object format', async () => {
    const root = join(tmp('banger-sha256-'), 'r');
    mkdirSync(root);
    git(root, 'init', '-q', '--object-format=sha256', '-b', 'main');
    write(root, 'a.txt', 'a\n');
    git(root, 'add', '-A');
    git(root, 'commit', '-q', '-m', 'a');
    const guest = join(tmp('banger-guest-'), 'ws');
    const imp = await importRepo(root, guest);
    assert.equal(imp.code, 0, imp.stderr);
    assert.equal(git(guest, 'rev-parse', 'HEAD'), git(root, 'rev-parse', 'HEAD'));
    assert.equal(git(guest, 'rev-parse', '--show-object-format').trim(), 'sha256');
  });
});
