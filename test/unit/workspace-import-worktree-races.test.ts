import assert from 'node:assert/strict';
import { tmpdir } from 'node:os';
import { execFileSync } from 'node:child_process';
import { closeSync, constants, mkdirSync, openSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { before, describe, it } from 'node:test';
import tar from 'tar-stream';
import { runCommand } from '../../src/shared/command.js';
import { formatDryRun, inspectRepo, listImportFiles } from '../../src/daemon/services/workspace/host-repo.js';
import { createImportTar } from '../../src/daemon/services/workspace/pack.js';
import { git, isolateGitConfig, tmp, write } from '../helpers/workspace-repo.js';

before(isolateGitConfig);

const SECRET = 'TOP-SECRET-outside-the-repo';

/** A checkout with tracked `d/passwd` and `f.txt`, and a directory outside it holding a secret. */
function setup(): { root: string; outside: string } {
  const outside = tmp('banger-outside-');
  writeFileSync(join(outside, 'passwd'), `${SECRET}\n`);
  const root = join(tmp('banger-host-'), 'repo');
  mkdirSync(root);
  git(root, 'init', '-q', '-b', 'main');
  write(root, 'd/passwd', 'repo passwd\n');
  write(root, 'f.txt', 'plain\n');
  write(root, 'keep.txt', 'keep\n');
  git(root, 'add', '-A');
  git(root, 'commit', '-q', '-m', 'c');
  return { root, outside };
}

interface Member {
  name: string;
  type: string;
  linkname?: string | null;
  body: Buffer;
}

/** The whole import stream as raw bytes and as its tar members. */
async function drain(s: Readable, withinMs = 5000): Promise<{ raw: Buffer; members: Member[] }> {
  const chunks: Buffer[] = [];
  const read = (async () => {
    for await (const c of s) chunks.push(c as Buffer);
  })();
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, rej) => {
    timer = setTimeout(() => rej(new Error(`the import stream did not finish within ${withinMs} ms`)), withinMs);
  });
  try {
    await Promise.race([read, timeout]);
  } finally {
    clearTimeout(timer);
  }
  const raw = Buffer.concat(chunks);
  const members: Member[] = [];
  const ex = tar.extract();
  const done = new Promise<void>((res, rej) => {
    ex.on('entry', (h, stream, next) => {
      const body: Buffer[] = [];
      stream.on('data', (d: unknown) => {
        body.push(d as Buffer);
      });
      stream.on('end', () => {
        members.push({ name: h.name, type: h.type ?? 'file', linkname: h.linkname, body: Buffer.concat(body) });
        next();
      });
    });
    ex.on('finish', res);
    ex.on('error', rej);
  });
  ex.end(raw);
  await done;
  return { raw, members };
}

async function pack(root: string, entries: Awaited<ReturnType<typeof listImportFiles>>['entries'], skipped: string[] = []) {
  const repo = await inspectRepo(root, runCommand);
  return drain(
    createImportTar({ root, entries, headCommit: repo.headCommit, tmpDir: tmpdir() }, { onSkipped: (p) => skipped.push(p) }),
  );
}

void describe('import reads only the checkout, as git sees it now', () => {
  void it('a directory replaced by a symlink to outside: its files count as deleted, nothing outside is sent', async () => {
    const { root, outside } = setup();
    rmSync(join(root, 'd'), { recursive: true });
    symlinkSync(outside, join(root, 'd'));
    const list = await listImportFiles(root, { includeUntracked: false }, runCommand);
    assert.deepEqual(
      list.entries.map((e) => e.path),
      ['f.txt', 'keep.txt'],
      'the dry run shows d/passwd as git does: gone (beyond a symbolic link)',
    );
    assert.ok(!formatDryRun(list.entries).includes('passwd'));
    const { raw, members } = await pack(root, list.entries);
    assert.ok(!raw.includes(SECRET), 'no byte of the outside file is in the import stream');
    assert.ok(!members.some((m) => m.name.includes('passwd')));
  });

  void it('the same swap between listing and packing: the stream still carries nothing from outside', async () => {
    const { root, outside } = setup();
    const list = await listImportFiles(root, { includeUntracked: false }, runCommand);
    assert.ok(list.entries.some((e) => e.path === 'd/passwd'));
    rmSync(join(root, 'd'), { recursive: true });
    symlinkSync(outside, join(root, 'd'));
    const { raw, members } = await pack(root, list.entries);
    assert.ok(!raw.includes(SECRET), 'no byte of the outside file is in the import stream');
    assert.deepEqual(
      members.filter((m) => m.name.startsWith('tree/') && m.type === 'file').map((m) => m.name),
      ['tree/f.txt', 'tree/keep.txt'],
    );
  });

  void it('a file replaced by a symlink to an outside file after listing is sent as that symlink, not its contents', async () => {
    const { root, outside } = setup();
    const list = await listImportFiles(root, { includeUntracked: false }, runCommand);
    rmSync(join(root, 'f.txt'));
    symlinkSync(join(outside, 'passwd'), join(root, 'f.txt'));
    const { raw, members } = await pack(root, list.entries);
    assert.ok(!raw.includes(SECRET), 'no byte of the outside file is in the import stream');
    const f = members.find((m) => m.name === 'tree/f.txt');
    assert.equal(f?.type, 'symlink');
    assert.equal(f?.linkname, join(outside, 'passwd'));
  });

  void it('a file replaced by a FIFO after listing is skipped without blocking the import', async () => {
    const { root } = setup();
    const list = await listImportFiles(root, { includeUntracked: false }, runCommand);
    const fifo = join(root, 'f.txt');
    rmSync(fifo);
    execFileSync('mkfifo', [fifo]);
    const skipped: string[] = [];
    try {
      const { members } = await pack(root, list.entries, skipped);
      assert.deepEqual(skipped, ['f.txt'], 'reported, so the user is told');
      assert.ok(!members.some((m) => m.name === 'tree/f.txt'));
      assert.equal(members.find((m) => m.name === 'tree/keep.txt')?.body.toString(), 'keep\n');
    } finally {
      // Should a reader be stuck opening the FIFO, release it so the test process can end.
      try {
        closeSync(openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK));
      } catch {
        // no reader: nothing to release
      }
    }
  });

  void it('a FIFO already there when listing is left out of the dry run, with a notice', async () => {
    const { root } = setup();
    rmSync(join(root, 'f.txt'));
    execFileSync('mkfifo', [join(root, 'f.txt')]);
    const list = await listImportFiles(root, { includeUntracked: false }, runCommand);
    assert.deepEqual(list.skippedSpecial, ['f.txt']);
    assert.ok(!list.entries.some((e) => e.path === 'f.txt'));
  });

  void it('sizes come from the file as it is read, not from the listing', async () => {
    const { root } = setup();
    const list = await listImportFiles(root, { includeUntracked: false }, runCommand);
    writeFileSync(join(root, 'keep.txt'), 'keep, and now longer\n');
    const { members } = await pack(root, list.entries);
    assert.equal(members.find((m) => m.name === 'tree/keep.txt')?.body.toString(), 'keep, and now longer\n');
  });
});
