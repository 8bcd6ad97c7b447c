import assert from 'node:assert/strict';
import { tmpdir } from 'node:os';
import { existsSync, lstatSync, mkdirSync, readFileSync, readdirSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { before, describe, it } from 'node:test';
import tar from 'tar-stream';
import { runCommand } from '../../src/shared/command.js';
import { WorkspaceScriptExit, buildImportScript } from '../../src/daemon/services/workspace/guest-scripts.js';
import { inspectRepo, listImportFiles, type ImportEntry } from '../../src/daemon/services/workspace/host-repo.js';
import { createImportTar } from '../../src/daemon/services/workspace/pack.js';
import { IMPORT_STREAM_MAGIC, createFullImportStream } from '../../src/daemon/services/workspace/import-stream.js';
import { hostManifest } from '../../src/daemon/services/workspace/manifest.js';
import { splitByHead } from '../../src/daemon/services/workspace/checkout-split.js';
import { BangerError } from '../../src/errors/index.js';
import { LocalShellSession } from '../helpers/local-session.js';
import { isolateGitConfig, makeFixtureRepo, tmp } from '../helpers/workspace-repo.js';

before(isolateGitConfig);

const session = new LocalShellSession();

type Member = { name: string; type?: 'file' | 'symlink' | 'directory' | 'link'; body?: string; linkname?: string };

/** A hand-made archive, as a hostile or broken host could send. */
function craft(members: Member[]): Readable {
  const pack = tar.pack();
  for (const m of members) {
    if (m.type === 'symlink' || m.type === 'link')
      pack.entry({ name: m.name, type: m.type, linkname: m.linkname ?? '' }).end(null);
    else if (m.type === 'directory') pack.entry({ name: m.name, type: 'directory', mode: 0o755 }).end(null);
    else pack.entry({ name: m.name, mode: 0o644 }, m.body ?? 'pwned\n');
  }
  pack.finalize();
  // A full import's stream for a repository without commits: the header, then the tar (import-stream.ts).
  async function* framed(): AsyncGenerator<Buffer> {
    yield Buffer.from(`${IMPORT_STREAM_MAGIC}\ntar\n`);
    for await (const c of pack as AsyncIterable<Buffer>) yield c;
  }
  return Readable.from(framed(), { objectMode: false });
}

const importScript = (guestPath: string) =>
  buildImportScript({ guestPath, headCommit: null, branch: 'main', identity: { name: null, email: null } });

/** Every path under dir (symlinks not followed). */
function walk(dir: string, prefix = ''): string[] {
  const out: string[] = [];
  for (const d of readdirSync(dir, { withFileTypes: true })) {
    const rel = prefix + d.name;
    out.push(rel);
    if (d.isDirectory()) out.push(...walk(join(dir, d.name), `${rel}/`));
  }
  return out;
}

void describe('import extraction safety', () => {
  void it('cannot write outside the workspace with "..", absolute names, symlinks or hard links', async () => {
    const outside = tmp('banger-outside-');
    writeFileSync(join(outside, 'canary'), 'untouched\n');
    const rel = `../../../../../../../..${outside}`;
    const cases: Member[][] = [
      [{ name: 'tree/', type: 'directory' }, { name: 'tree/../../evil' }, { name: `tree/${rel}/pwned` }],
      [{ name: 'tree/', type: 'directory' }, { name: `${outside}/pwned` }, { name: `/${outside}/canary` }],
      [
        { name: 'tree/', type: 'directory' },
        { name: 'tree/esc', type: 'symlink', linkname: outside },
        { name: 'tree/esc/pwned' },
        { name: 'tree/esc/canary', body: 'overwritten\n' },
      ],
      [
        { name: 'tree/', type: 'directory' },
        { name: 'tree/rel', type: 'symlink', linkname: rel },
        { name: 'tree/rel/pwned' },
      ],
      [
        { name: 'tree/', type: 'directory' },
        { name: 'tree/hard', type: 'link', linkname: `${outside}/canary` },
        { name: 'tree/hard', body: 'overwritten\n' },
      ],
    ];
    for (const [i, members] of cases.entries()) {
      const guestRoot = tmp('banger-guest-');
      const guest = join(guestRoot, 'ws');
      const r = await session.exec(importScript(guest), { stdin: craft(members) });
      assert.deepEqual(readdirSync(outside).sort(), ['canary'], `case ${i}: nothing written outside`);
      assert.equal(readFileSync(join(outside, 'canary'), 'utf8'), 'untouched\n', `case ${i}`);
      assert.ok(!existsSync(join(guestRoot, 'evil')), `case ${i}`);
      if (r.code !== 0) assert.equal(r.code, WorkspaceScriptExit.BadArchive, `case ${i}: ${r.stderr.toString()}`);
      // Whatever landed, landed inside the workspace, and no staging directory is left.
      for (const p of walk(guestRoot)) assert.ok(p === 'ws' || p.startsWith('ws/'), `case ${i}: ${p}`);
      if (existsSync(guest)) assert.ok(!readdirSync(guest).some((n) => n.startsWith('.banger-import.')), `case ${i}`);
    }
  });

  void it('does not follow a symlink already in the workspace on re-import', async () => {
    const outside = tmp('banger-outside-');
    writeFileSync(join(outside, 'canary'), 'untouched\n');
    const root = makeFixtureRepo();
    const guest = join(tmp('banger-guest-'), 'ws');
    const imp = async () => {
      const repo = await inspectRepo(root, runCommand);
      const list = await listImportFiles(root, { includeUntracked: false }, runCommand);
      const script = buildImportScript({
        guestPath: guest,
        headCommit: repo.headCommit,
        branch: repo.branch,
        identity: repo.identity,
        // The planted links are guest changes: replace them (the case where they could do harm).
        force: true,
      });
      const manifest = await hostManifest(root, false, runCommand, tmpdir());
      const split = await splitByHead(root, repo.headCommit, list.entries, manifest, runCommand);
      return session.exec(script, { stdin: createFullImportStream({ root, headCommit: repo.headCommit, split, tmpDir: tmpdir() }) });
    };
    assert.equal((await imp()).code, 0);
    // The guest plants links pointing outside where the next import writes files and directories.
    symlinkSync(outside, join(guest, 'bin.tmp'));
    const { rmSync } = await import('node:fs');
    rmSync(join(guest, 'bin'), { recursive: true });
    symlinkSync(outside, join(guest, 'bin'));
    rmSync(join(guest, 'README.md'));
    symlinkSync(join(outside, 'canary'), join(guest, 'README.md'));
    const r = await imp();
    assert.equal(r.code, 0, r.stderr.toString());
    assert.deepEqual(readdirSync(outside), ['canary']);
    assert.equal(readFileSync(join(outside, 'canary'), 'utf8'), 'untouched\n');
    assert.ok(lstatSync(join(guest, 'bin')).isDirectory());
    assert.ok(lstatSync(join(guest, 'README.md')).isFile());
  });

  void it('refuses a broken or hostile import stream: bad names and lengths, a short stream, files before their index', async () => {
    const outside = tmp('banger-outside-');
    writeFileSync(join(outside, 'canary'), 'untouched\n');
    const head = 'a'.repeat(40);
    const cases: { stream: string; why: RegExp }[] = [
      { stream: 'not a banger import\n', why: /is not a banger import/ },
      { stream: `${IMPORT_STREAM_MAGIC}\npack ../../x 3 3\nabcdef`, why: /not named by a hex id/ },
      { stream: `${IMPORT_STREAM_MAGIC}\npack ${'b'.repeat(40)} 1e3 3\n`, why: /bad length/ },
      { stream: `${IMPORT_STREAM_MAGIC}\nshallow 100\nshort`, why: /ended early/ },
      { stream: `${IMPORT_STREAM_MAGIC}\npart ${'c'.repeat(40)} 1 1 1\nxyz`, why: /files before their index/ },
      { stream: `${IMPORT_STREAM_MAGIC}\nrm -rf /\n`, why: /unknown record/ },
      { stream: `${IMPORT_STREAM_MAGIC}\noptions 1 2\ntar\n`, why: /bad options/ },
      { stream: `${IMPORT_STREAM_MAGIC}\noptions 1 1 1\ntar\n`, why: /bad options/ },
      { stream: `${IMPORT_STREAM_MAGIC}\nshallow 0\noptions 1 1\ntar\n`, why: /options after other records/ },
      { stream: `${IMPORT_STREAM_MAGIC}\nshallow 0\n`, why: /ended early/ },
      { stream: `${IMPORT_STREAM_MAGIC}\nshallow 0\npack ${'d'.repeat(40)} 100 50\nonly this`, why: /ended early/ },
      { stream: `${IMPORT_STREAM_MAGIC}\nshallow 0\npack ${'d'.repeat(40)} 4 4\npackidx!`, why: /lacks commit/ },
      { stream: `${IMPORT_STREAM_MAGIC}\ntar\n`, why: /no git history/ },
      { stream: `${IMPORT_STREAM_MAGIC}\nindex 12x\n`, why: /bad length/ },
      { stream: `${IMPORT_STREAM_MAGIC}\nindex 100\nshort`, why: /ended early/ },
    ];
    for (const [i, c] of cases.entries()) {
      const guestRoot = tmp('banger-guest-');
      const guest = join(guestRoot, 'ws');
      const script = buildImportScript({ guestPath: guest, headCommit: head, branch: 'main', identity: { name: null, email: null } });
      const r = await session.exec(script, { stdin: Readable.from([Buffer.from(c.stream)]) });
      assert.equal(r.code, WorkspaceScriptExit.BadArchive, `case ${i}: ${r.stderr.toString()}`);
      assert.match(r.stderr.toString(), c.why, `case ${i}`);
      assert.deepEqual(readdirSync(outside), ['canary'], `case ${i}`);
      assert.deepEqual(readdirSync(guest), [], `case ${i}: nothing is left in the workspace`);
    }
  });

  void it('refuses unsafe names on the host before anything is sent', () => {
    const root = tmp('banger-host-');
    const bad: ImportEntry[][] = [
      [{ path: '../evil', kind: 'file', mode: 0o644, size: 0 }],
      [{ path: '/etc/passwd', kind: 'file', mode: 0o644, size: 0 }],
      [{ path: 'a/./b', kind: 'file', mode: 0o644, size: 0 }],
      [{ path: 'sub/.git/config', kind: 'file', mode: 0o644, size: 0 }],
      [
        { path: 'l', kind: 'symlink', mode: 0o777, size: 0, linkTarget: '/tmp' },
        { path: 'l/x', kind: 'file', mode: 0o644, size: 0 },
      ],
    ];
    for (const entries of bad) {
      assert.throws(
        () => createImportTar({ root, entries, headCommit: null, tmpDir: tmpdir() }),
        (e: unknown) => e instanceof BangerError && e.code === 'InvalidArgument',
        entries.map((e) => e.path).join(','),
      );
    }
  });

  void it('fails the stream, clearly, when a file shrinks while it is read, or when cancelled', async () => {
    const root = tmp('banger-host-');
    mkdirSync(join(root, 'd'));
    writeFileSync(join(root, 'd/f'), Buffer.alloc(8 << 20, 1));
    // The listed size does not matter: the size read from the open file goes in the header.
    const entries: ImportEntry[] = [{ path: 'd/f', kind: 'file', mode: 0o644, size: 5 }];
    const drain = async (s: Readable, onFirst?: () => void) => {
      for await (const _ of s) {
        onFirst?.();
        onFirst = undefined;
      }
    };
    await assert.rejects(
      drain(createImportTar({ root, entries, headCommit: null, tmpDir: tmpdir() }), () => truncateSync(join(root, 'd/f'), 100)),
      (e: unknown) => e instanceof BangerError && e.code === 'Conflict' && /changed while it was being imported/.test(e.message),
    );
    const ac = new AbortController();
    ac.abort();
    await assert.rejects(
      drain(createImportTar({ root, entries, headCommit: null, tmpDir: tmpdir() }, { signal: ac.signal })),
      (e: unknown) => e instanceof BangerError && e.code === 'Cancelled',
    );
  });
});

void describe('import packs and the host disk', () => {
  void it('an import whose packs would not fit in the host temporary directory fails first (71), naming it and the space needed', async () => {
    const root = makeFixtureRepo();
    const repo = await inspectRepo(root, runCommand);
    const list = await listImportFiles(root, { includeUntracked: false }, runCommand);
    const manifest = await hostManifest(root, false, runCommand, tmpdir());
    const split = await splitByHead(root, repo.headCommit, list.entries, manifest, runCommand);
    assert.ok(split.headBlobBytes > 0);
    const packDir = tmp('banger-packdir-');
    const stream = createFullImportStream({
      root,
      headCommit: repo.headCommit,
      split,
      storeBlobs: true,
      tmpDir: packDir,
      freeSpace: async () => 1 << 20,
    });
    const err = await (async () => {
      for await (const _ of stream) void _;
    })().then(
      () => null,
      (e: unknown) => e,
    );
    assert.ok(err instanceof BangerError, String(err));
    assert.equal(err.code, 'ResourceExhausted');
    assert.match(err.message, new RegExp(`not enough disk space in ${packDir} to write this import's packs: it needs \\d+ MiB free, has 1\\.0 MiB`));
    assert.deepEqual(readdirSync(packDir), [], 'nothing was written');
  });
});
