import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdirSync, rmSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { before, describe, it } from 'node:test';
import type { GuestExecOptions, GuestExecResult, GuestSession } from '../../src/daemon/guest/session.js';
import { parseNameStatus } from '../../src/daemon/services/workspace/export-script.js';
import { runGuestScript, type GuestOutputLimits } from '../../src/daemon/services/workspace/guest-output.js';
import { parsePatchFiles } from '../../src/daemon/services/workspace/patch.js';
import { BangerError, ErrorCode } from '../../src/errors/index.js';
import { git, isolateGitConfig, tmp, write } from '../helpers/workspace-repo.js';

before(isolateGitConfig);

const NAMES = [
  'plain.txt',
  'with space/and more.txt',
  'tab\there.txt',
  'new\nline.txt',
  'quote"and\\backslash.txt',
  'ctrl\x01\x1b[31mred.txt',
  'ünïcödé/файл 名前.txt',
  ' leading and trailing ',
];

function gitBuf(cwd: string, ...args: string[]): Buffer {
  return execFileSync('git', args, { cwd, maxBuffer: 1 << 30 });
}

/** A repo whose last commit changes every kind of thing a patch can carry, for names hard to quote. */
function changedRepo(): { root: string; from: string } {
  const root = join(tmp('banger-patch-'), 'r');
  mkdirSync(root);
  git(root, 'init', '-q', '-b', 'main');
  for (const n of NAMES) write(root, `old/${n}`, `content of ${n}\n`);
  write(root, 'bin.dat', Buffer.from([0, 1, 2, 3, 255, 0, 9]));
  write(root, 'mode.sh', 'echo\n');
  write(root, 'to-link.txt', 'will be a link\n');
  write(root, 'gone with space.txt', 'bye\n');
  write(root, 'empty-old', '');
  git(root, 'add', '-A');
  git(root, 'commit', '-q', '-m', 'a');
  const from = git(root, 'rev-parse', 'HEAD').trim();
  for (const n of NAMES) {
    write(root, `old/${n}`, `changed ${n}\n`);
    write(root, `new/${n}`, `new ${n}\n`);
  }
  write(root, 'bin.dat', Buffer.from([9, 0, 0, 7, 255]));
  write(root, 'new-bin.dat', Buffer.from([0, 0, 0, 1]));
  chmodSync(join(root, 'mode.sh'), 0o755);
  rmSync(join(root, 'to-link.txt'));
  symlinkSync('mode.sh', join(root, 'to-link.txt'));
  rmSync(join(root, 'gone with space.txt'));
  rmSync(join(root, 'empty-old'));
  write(root, 'empty-new', '');
  git(root, 'add', '-A');
  git(root, 'commit', '-q', '-m', 'b');
  return { root, from };
}

const byPath = (rows: { status: string; path: string }[]) =>
  [...rows].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));

void describe('export: the file list is read from the patch', () => {
  void it('agrees with git --name-status for quoted, spaced, control-character, non-ASCII and binary changes', () => {
    const { root, from } = changedRepo();
    const expected = parseNameStatus(gitBuf(root, 'diff-tree', '-r', '-z', '--name-status', '--no-renames', from, 'HEAD'));
    for (const quotePath of ['true', 'false']) {
      const patch = gitBuf(
        root,
        ...['-c', `core.quotePath=${quotePath}`, 'diff-tree', '-r', '-p', '--binary', '--full-index', '--no-renames'],
        ...['--src-prefix=a/', '--dst-prefix=b/', from, 'HEAD'],
      );
      const got = parsePatchFiles(patch);
      assert.deepEqual(byPath(got.map(({ status, path }) => ({ status, path }))), byPath(expected), `core.quotePath=${quotePath}`);
      // Line counts agree with git's own --numstat ("-" for binary files), summed per path.
      const numstat = new Map<string, { added: number; removed: number; binary: boolean }>();
      const fields = gitBuf(root, 'diff-tree', '-r', '-z', '--numstat', '--no-renames', from, 'HEAD').toString('utf8').split('\0');
      for (const rec of fields.filter((f) => f !== '')) {
        const [a, r, ...rest] = rec.split('\t');
        const path = rest.join('\t');
        const prev = numstat.get(path) ?? { added: 0, removed: 0, binary: false };
        numstat.set(path, {
          added: prev.added + (a === '-' ? 0 : Number(a)),
          removed: prev.removed + (r === '-' ? 0 : Number(r)),
          binary: prev.binary || a === '-',
        });
      }
      for (const f of got) assert.deepEqual({ added: f.linesAdded, removed: f.linesRemoved, binary: f.binary }, numstat.get(f.path), f.path);
    }
    const statuses = new Map(expected.map((r) => [r.path, r.status]));
    // The fixture covers what the parser must tell apart.
    assert.equal(statuses.get('to-link.txt'), 'T');
    assert.equal(statuses.get('mode.sh'), 'M');
    assert.equal(statuses.get('gone with space.txt'), 'D');
    assert.equal(statuses.get('new-bin.dat'), 'A');
    assert.equal(statuses.get('new/new\nline.txt'), 'A');
    assert.equal(statuses.get('empty-new'), 'A');
  });

  void it('reads renames and copies as the new name', () => {
    const root = join(tmp('banger-patch-'), 'r');
    mkdirSync(root);
    git(root, 'init', '-q', '-b', 'main');
    write(root, 'a dir/long file.txt', 'same content, long enough to be found as a rename\n'.repeat(5));
    git(root, 'add', '-A');
    git(root, 'commit', '-q', '-m', 'a');
    git(root, 'mv', 'a dir/long file.txt', 'b\tdir.txt');
    git(root, 'commit', '-q', '-m', 'b');
    const patch = gitBuf(root, 'diff-tree', '-r', '-p', '-M', '--binary', 'HEAD~1', 'HEAD');
    assert.deepEqual(parsePatchFiles(patch), [{ status: 'R', path: 'b\tdir.txt', linesAdded: 0, linesRemoved: 0, binary: false }]);
  });

  void it('is empty for an empty patch', () => {
    assert.deepEqual(parsePatchFiles(Buffer.alloc(0)), []);
  });

  void it('refuses a patch with a section git apply would act on that the list would not show', () => {
    const good = 'diff --git a/x b/x\nindex 1..2 100644\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n';
    assert.deepEqual(parsePatchFiles(Buffer.from(good)), [{ status: 'M', path: 'x', linesAdded: 1, linesRemoved: 1, binary: false }]);
    const bad = [
      // A traditional (non-git) diff after a git one.
      `${good}--- a/y\n+++ b/y\n@@ -1 +1 @@\n-a\n+b\n`,
      // A hunk whose header under-counts, smuggling a traditional diff into "content".
      'diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n--- a/y\n+++ b/y\n@@ -1 +1 @@\n-a\n+b\n',
      // Names that leave the repo or name two different files without a rename.
      'diff --git a/../etc/passwd b/../etc/passwd\nnew file mode 100644\n',
      'diff --git a/x b/y\n--- a/x\n+++ b/y\n@@ -1 +1 @@\n-a\n+b\n',
      'diff --git a/.git/config b/.git/config\ndeleted file mode 100644\n',
      // Garbage and cut-off input.
      'hello\n',
      'diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1,3 +1,3 @@\n a\n',
      'diff --git "a/x\\q" "b/x\\q"\nnew file mode 100644\n',
    ];
    for (const p of bad) {
      assert.throws(
        () => parsePatchFiles(Buffer.from(p)),
        (e: unknown) => e instanceof BangerError && /banger cannot read/.test(e.message),
        JSON.stringify(p),
      );
    }
  });
});

/** A guest that writes `perChunk` bytes to stdout every tick until it is stopped (or `total` is reached). */
class FloodingGuest implements GuestSession {
  sent = 0;
  constructor(
    private readonly o: { perChunk: number; total: number; stderrOnly?: boolean; silent?: boolean } = {
      perChunk: 1 << 16,
      total: Infinity,
    },
  ) {}

  exec(_command: string, opts: GuestExecOptions = {}): Promise<GuestExecResult> {
    return new Promise((resolve, reject) => {
      const chunk = Buffer.alloc(this.o.perChunk, 0x61);
      const timer = setInterval(() => {
        if (this.o.silent) return;
        if (this.sent >= this.o.total) {
          clearInterval(timer);
          resolve({ code: 0, stdout: Buffer.alloc(0), stderr: Buffer.alloc(0) });
          return;
        }
        this.sent += chunk.length;
        (this.o.stderrOnly ? opts.stderr : opts.stdout)?.write(chunk);
      }, 1);
      opts.signal?.addEventListener('abort', () => {
        clearInterval(timer);
        reject(new BangerError(ErrorCode.Cancelled, 'cancelled'));
      });
    });
  }
}

const limits = (o: Partial<GuestOutputLimits> = {}): GuestOutputLimits => ({
  what: 'the workspace export',
  maxStdoutBytes: 1 << 20,
  maxStderrBytes: 1 << 10,
  idleTimeoutMs: 2000,
  tooLarge: () => new BangerError(ErrorCode.ResourceExhausted, 'the patch is too large: use --name-only'),
  ...o,
});

void describe('export: guest output is capped and timed out', () => {
  void it('stops a guest that sends more than the cap, with the too-large error, keeping at most the cap', async () => {
    const guest = new FloodingGuest();
    await assert.rejects(
      runGuestScript(guest, 'export', limits()),
      (e: unknown) => e instanceof BangerError && e.code === 'ResourceExhausted' && /--name-only/.test(e.message),
    );
    assert.ok(guest.sent > 1 << 20 && guest.sent < 2 << 20, `stopped soon after the cap (${guest.sent} bytes sent)`);
  });

  void it('keeps only the tail of a flood on stderr and finishes normally', async () => {
    const guest = new FloodingGuest({ perChunk: 4096, total: 64 << 10, stderrOnly: true });
    const r = await runGuestScript(guest, 'export', limits());
    assert.equal(r.stderr.length, 1 << 10);
  });

  void it('stops a guest that goes silent, with a timeout that says what to do', async () => {
    const guest = new FloodingGuest({ perChunk: 1, total: Infinity, silent: true });
    await assert.rejects(
      runGuestScript(guest, 'export', limits({ idleTimeoutMs: 200 })),
      (e: unknown) =>
        e instanceof BangerError && e.code === 'DeadlineExceeded' && /sent nothing for/.test(e.message) && /banger vm show/.test(e.hint ?? ''),
    );
  });

  void it('passes a cancel from the caller through as it is', async () => {
    const ac = new AbortController();
    const p = runGuestScript(new FloodingGuest({ perChunk: 1, total: Infinity, silent: true }), 'x', limits(), {
      signal: ac.signal,
    });
    setTimeout(() => ac.abort(), 20);
    await assert.rejects(p, (e: unknown) => e instanceof BangerError && e.code === 'Cancelled');
  });

  void it('returns what a well-behaved guest sent', async () => {
    const guest: GuestSession = {
      exec: (_c, o = {}) => {
        o.stdout?.write(Buffer.from('patch'));
        o.stderr?.write(Buffer.from('note\n'));
        return Promise.resolve({ code: 0, stdout: Buffer.alloc(0), stderr: Buffer.alloc(0) });
      },
    };
    const stdin = new PassThrough();
    const r = await runGuestScript(guest, 'x', limits(), { stdin });
    assert.deepEqual([r.code, r.stdout.toString(), r.stderr], [0, 'patch', 'note\n']);
  });
});
