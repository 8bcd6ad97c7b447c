import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  chownSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { BangerError, ErrorCode } from '../../src/errors/index.js';
import {
  BLOCK_BEGIN,
  BLOCK_END,
  DnsHostIntegration,
  findBlock,
} from '../../src/daemon/services/dns/host-integration.js';
import { backupPathOf, durableWrite, recoverInterrupted } from '../../src/daemon/services/dns/durable-file.js';
import type { CommandRunner, RunResult } from '../../src/shared/command.js';
import { silentLogger } from '../../src/shared/logger.js';
import { scratchDir } from '../helpers/scratch.js';

const isRoot = process.getuid?.() === 0;
const hasUnshare = spawnSync('sh', ['-c', 'command -v unshare'], { stdio: 'ignore' }).status === 0;

function tempDir() {
  const dir = scratchDir('banger-hosts-');
  return {
    dir,
    hosts: join(dir, 'hosts'),
    state: join(dir, 'dns.json'),
    done: () => rmSync(dir, { recursive: true, force: true }),
  };
}

function hostsIntegration(t: { hosts: string; state: string }, extra: { run?: CommandRunner; dnsPort?: number } = {}) {
  return new DnsHostIntegration({
    stateFile: t.state,
    hostsFile: t.hosts,
    dnsAddress: '127.77.0.1',
    dnsPort: extra.dnsPort,
    run: extra.run ?? (async (c, a) => Promise.reject(new Error(`unexpected ${c} ${a.join(' ')}`))),
    log: silentLogger(),
    forceMechanism: extra.run ? undefined : 'hosts',
    resolvedRuntimeDir: extra.run ? tmpdir() : undefined,
  });
}

const damaged: [string, string, RegExp][] = [
  [
    'a begin marker without an end marker',
    `127.0.0.1 localhost\n${BLOCK_BEGIN}\n10.0.0.1 a.vm\n`,
    /line 2 has no end marker/,
  ],
  ['an end marker before the begin marker', `${BLOCK_END}\n127.0.0.1 x\n${BLOCK_BEGIN}\n`, /line 1 is an end marker/],
  [
    'two begin markers',
    `${BLOCK_BEGIN}\n${BLOCK_BEGIN}\n${BLOCK_END}\n`,
    /line 2 begins a block while the one begun on line 1/,
  ],
  [
    'two blocks',
    `${BLOCK_BEGIN}\n${BLOCK_END}\nx\n${BLOCK_BEGIN}\n${BLOCK_END}\n`,
    /line 4 begins a second block \(the first is on lines 1-2\)/,
  ],
];

for (const [what, text, line] of damaged)
  test(`hosts file with ${what}: refused with the file and line, never rewritten`, async () => {
    assert.throws(
      () => findBlock(text, '/etc/hosts'),
      (e: unknown) =>
        e instanceof BangerError &&
        e.code === ErrorCode.FailedPrecondition &&
        e.message.startsWith('/etc/hosts: ') &&
        line.test(e.message) &&
        /by hand/.test(e.hint ?? ''),
    );
    const t = tempDir();
    try {
      writeFileSync(t.hosts, text);
      const dns = hostsIntegration(t);
      await assert.rejects(dns.install([{ name: 'a', address: '10.0.0.9' }]), (e: unknown) => {
        assert.ok(e instanceof BangerError && e.code === ErrorCode.FailedPrecondition);
        assert.ok(e.message.includes(t.hosts), e.message);
        return true;
      });
      assert.equal(readFileSync(t.hosts, 'utf8'), text, 'the file is left as it was');
      assert.equal(dns.installed(), false, 'nothing recorded');
    } finally {
      t.done();
    }
  });

test('a block damaged after install: sync and uninstall refuse, status says what is wrong', async () => {
  const t = tempDir();
  try {
    writeFileSync(t.hosts, '127.0.0.1 localhost\n');
    const dns = hostsIntegration(t);
    await dns.install([{ name: 'a', address: '10.0.0.9' }]);
    // The user deleted the end marker while editing.
    const broken = readFileSync(t.hosts, 'utf8').replace(`${BLOCK_END}\n`, '10.0.0.1 mine\n');
    writeFileSync(t.hosts, broken);
    assert.throws(() => dns.sync([{ name: 'b', address: '10.0.0.8' }]), /no end marker/);
    await assert.rejects(dns.uninstall(), /no end marker/);
    assert.equal(readFileSync(t.hosts, 'utf8'), broken);
    const s = await dns.status([]);
    assert.match(s.detail, /damaged.*line 2.*by hand/);
  } finally {
    t.done();
  }
});

test('durableWrite replaces by rename: same mode and owner, no temp file left, symlink followed', () => {
  const t = tempDir();
  try {
    writeFileSync(t.hosts, 'old\n', { mode: 0o640 });
    if (isRoot) chownSync(t.hosts, 1234, 4321);
    const inode = statSync(t.hosts).ino;
    durableWrite(t.hosts, 'new\n');
    const st = statSync(t.hosts);
    assert.equal(readFileSync(t.hosts, 'utf8'), 'new\n');
    assert.notEqual(st.ino, inode, 'a new file was renamed over, not the old one rewritten');
    assert.equal(st.mode & 0o7777, 0o640);
    if (isRoot) assert.deepEqual([st.uid, st.gid], [1234, 4321]);
    assert.deepEqual(readdirSync(t.dir), ['hosts']);
    // A file that does not exist yet gets the requested mode whatever the umask.
    const fresh = join(t.dir, 'state.json');
    const old = process.umask(0o077);
    try {
      durableWrite(fresh, '{}', { mode: 0o644 });
    } finally {
      process.umask(old);
    }
    assert.equal(statSync(fresh).mode & 0o777, 0o644);
    // A symlinked hosts file is written where it points; the link stays a link.
    const link = join(t.dir, 'link');
    symlinkSync(t.hosts, link);
    durableWrite(link, 'via link\n');
    assert.ok(lstatSync(link).isSymbolicLink());
    assert.equal(readFileSync(t.hosts, 'utf8'), 'via link\n');
  } finally {
    t.done();
  }
});

test('an interrupted in-place rewrite is recovered from its backup before the next read', async () => {
  const t = tempDir();
  try {
    writeFileSync(t.hosts, '127.0.0.1 localhost\n');
    const dns = hostsIntegration(t);
    await dns.install([{ name: 'a', address: '10.0.0.9' }]);
    const good = readFileSync(t.hosts);
    // What a kill in the middle of the in-place rewrite leaves: the durable backup and a torn file.
    writeFileSync(backupPathOf(t.hosts), good);
    writeFileSync(t.hosts, good.subarray(0, 25));
    dns.sync([{ name: 'b', address: '10.0.0.8' }]);
    const text = readFileSync(t.hosts, 'utf8');
    assert.ok(text.startsWith('127.0.0.1 localhost\n'), text);
    assert.match(text, /^10\.0\.0\.8 b\.vm$/m);
    assert.doesNotMatch(text, /a\.vm/);
    assert.equal(existsSync(backupPathOf(t.hosts)), false, 'the backup is gone once the file is whole');
    assert.equal(recoverInterrupted(t.hosts), false);
  } finally {
    t.done();
  }
});

test(
  'a bind-mounted hosts file (EBUSY on rename) is rewritten in place after a backup, and the mount sees it',
  { skip: !isRoot || !hasUnshare ? 'needs root and unshare -m for a private bind mount' : false },
  () => {
    const t = tempDir();
    try {
      const src = join(t.dir, 'source-hosts');
      mkdirSync(join(t.dir, 'etc'));
      const mounted = join(t.dir, 'etc', 'hosts');
      writeFileSync(src, '127.0.0.1 localhost\n', { mode: 0o644 });
      writeFileSync(mounted, '');
      const script = `
        import { durableWrite, backupPathOf } from ${JSON.stringify(resolve('src/daemon/services/dns/durable-file.ts'))};
        import { existsSync } from 'node:fs';
        const notes = [];
        durableWrite(process.argv[1], 'new contents\\n', { inPlaceFallback: true, onInPlace: (r) => notes.push(r) });
        let refused = '';
        try { durableWrite(process.argv[1], 'x\\n'); } catch (e) { refused = e.code + ': ' + e.message; }
        console.log(JSON.stringify({ notes, backupLeft: existsSync(backupPathOf(process.argv[1])), refused }));`;
      const r = spawnSync(
        'unshare',
        [
          '-m',
          '--propagation',
          'private',
          'sh',
          '-c',
          'mount --bind "$1" "$2" && exec "$3" --import tsx --input-type=module -e "$4" "$2"',
          'sh',
          src,
          mounted,
          process.execPath,
          script,
        ],
        { encoding: 'utf8' },
      );
      assert.equal(r.status, 0, r.stderr);
      const out = JSON.parse(r.stdout) as { notes: string[]; backupLeft: boolean; refused: string };
      assert.match(out.notes[0] ?? '', /cannot be renamed over \(EBUSY\)/);
      assert.equal(out.backupLeft, false);
      assert.match(out.refused, /^FailedPrecondition: .*mount point/);
      assert.equal(readFileSync(src, 'utf8'), 'new contents\n', 'written through the bind mount, in place');
      assert.equal(statSync(src).mode & 0o777, 0o644);
    } finally {
      t.done();
    }
  },
);

test('systemd-resolved with dns.port 5353 is given ADDR:PORT; a resolved that refuses it gets a hint', async () => {
  const t = tempDir();
  try {
    const calls: string[] = [];
    let refuse = false;
    const ok = (stdout = ''): RunResult => ({ code: 0, stdout, stderr: '' });
    const run: CommandRunner = async (cmd, args) => {
      const c = `${cmd} ${args.join(' ')}`;
      calls.push(c);
      if (c.startsWith('resolvectl dns ') && refuse)
        return { code: 1, stdout: '', stderr: 'Invalid DNS server address' };
      return ok();
    };
    const dns = hostsIntegration(t, { run, dnsPort: 5353 });
    const s = await dns.install([]);
    assert.equal(s.mechanism, 'resolved');
    assert.ok(calls.includes('resolvectl dns banger-dns 127.77.0.1:5353'), calls.join('\n'));
    assert.match(s.detail, /127\.77\.0\.1:5353/);
    refuse = true;
    await assert.rejects(dns.reapply([]), (e: unknown) => {
      assert.ok(e instanceof BangerError && e.code === ErrorCode.FailedPrecondition, String(e));
      assert.match(e.hint ?? '', /246.*dns\.port/);
      return true;
    });

    // Port 53: the plain address, which every resolved accepts.
    calls.length = 0;
    refuse = false;
    await hostsIntegration({ hosts: t.hosts, state: join(t.dir, 'other.json') }, { run }).install([]);
    assert.ok(calls.includes('resolvectl dns banger-dns 127.77.0.1'), calls.join('\n'));
  } finally {
    t.done();
  }
});
