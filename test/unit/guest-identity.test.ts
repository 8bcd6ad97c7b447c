/**
 * The guest program that gives a resumed guest its identity (guest/identity.ts), run by `applyIdentity`
 * through a stand-in guest session that starts it with this host's perl, on files under a temporary root
 * (`root=DIR`: the clock goes to DIR/clock instead of being set; no RNG seed is given, so this host's RNG is
 * left alone). The real-VM proof is e2e/snapshot.test.ts (distinct host keys, machine-ids and urandom bytes,
 * the clock) and e2e/pool.test.ts (the new name, the clock).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { test } from 'node:test';
import type { GuestExecOptions } from '../../src/daemon/guest/session.js';
import { applyIdentity, applyIdentityHeld, identityCommand, prestartIdentity, PRESPAWNED_IDENTITY, tapBatch, type GuestIdentity } from '../../src/daemon/guest/identity.js';
import { BangerError, ErrorCode } from '../../src/errors/index.js';
import { scratchDir } from '../helpers/scratch.js';

function guestRoot(): string {
  const root = scratchDir('banger-identity-');
  for (const d of ['proc/sys/kernel', 'etc/ssh', 'run']) mkdirSync(join(root, d), { recursive: true });
  writeFileSync(join(root, 'etc/hosts'), "127.0.0.1 localhost\n127.0.1.1 pool-default-aaaaaa # banger\n::1 ip6-localhost\n10.0.0.9 it's\\n # kept");
  writeFileSync(join(root, 'etc/machine-id'), 'f'.repeat(32) + '\n');
  return root;
}

/** A guest session's execArgv that runs the command here under `root` (as argv, or as its shell line). */
function localGuest(root: string, via: 'argv' | 'shell line' = 'argv', delayMs = 0) {
  return {
    execArgv(argv: string[], _cwd: string, shellLine: string, opts: GuestExecOptions = {}) {
      return new Promise<{ code: number; stdout: Buffer; stderr: Buffer }>((resolve) => {
        const rooted = via === 'argv' ? [...argv, `root=${root}`] : ['sh', '-c', `${shellLine} root=${root}`];
        // `sleep` first stands for a slow process start in a resumed guest.
        const p = spawn('sh', ['-c', `sleep ${delayMs / 1000}; exec "$@"`, 'sh', ...rooted], { stdio: 'pipe' });
        const err: Buffer[] = [];
        if (opts.stdin) opts.stdin.pipe(p.stdin);
        else p.stdin.end();
        if (opts.stdout) p.stdout.pipe(opts.stdout);
        p.stderr.on('data', (b: Buffer) => err.push(b));
        p.on('close', (code) => resolve({ code: code ?? 1, stdout: Buffer.alloc(0), stderr: Buffer.concat(err) }));
      });
    },
  };
}

const mode = (p: string) => statSync(p).mode & 0o777;
const key = { private: Buffer.from('-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n-----END OPENSSH PRIVATE KEY-----\n'), public: Buffer.from('ssh-ed25519 AAAAC3Nz fix-42.vm\n') };

/** A stand-in sshd (SIGHUP ends it: the default action), and what ended it, if anything did within `ms`. */
function standInSshd(root: string): { signalWithin(ms: number): Promise<NodeJS.Signals | 'still running'> } {
  const sshd = spawn('sleep', ['60']);
  writeFileSync(join(root, 'run/sshd.pid'), `${sshd.pid}\n`);
  const ended = new Promise<NodeJS.Signals | null>((r) => sshd.on('exit', (_c, sig) => r(sig)));
  return {
    async signalWithin(ms) {
      const sig = await Promise.race([ended, new Promise<'still running'>((r) => setTimeout(() => r('still running'), ms))]);
      sshd.kill('SIGKILL');
      return sig ?? 'still running';
    },
  };
}

for (const via of ['argv', 'shell line'] as const) {
  test(`identity (${via}): hostname, /etc/hostname, only banger's /etc/hosts line, machine-id, host key with its modes, sshd told to reload`, async () => {
    const root = guestRoot();
    // No /usr/lib/openssh (not Debian's layout): sshd is told to reload.
    const sshd = standInSshd(root);
    await applyIdentity(localGuest(root, via), { name: 'fix-42', clock: true, machineId: 'ab'.repeat(16), hostKey: key });
    assert.equal(readFileSync(join(root, 'proc/sys/kernel/hostname'), 'utf8'), 'fix-42\n');
    assert.equal(readFileSync(join(root, 'etc/hostname'), 'utf8'), 'fix-42\n');
    assert.equal(readFileSync(join(root, 'etc/hosts'), 'utf8'), "127.0.0.1 localhost\n::1 ip6-localhost\n10.0.0.9 it's\\n # kept\n127.0.1.1 fix-42 # banger\n");
    assert.equal(readFileSync(join(root, 'etc/machine-id'), 'utf8'), 'ab'.repeat(16) + '\n');
    assert.equal(mode(join(root, 'etc/machine-id')), 0o444);
    assert.deepEqual(readFileSync(join(root, 'etc/ssh/ssh_host_ed25519_key')), key.private);
    assert.equal(mode(join(root, 'etc/ssh/ssh_host_ed25519_key')), 0o600);
    assert.equal(readFileSync(join(root, 'etc/ssh/ssh_host_ed25519_key.pub'), 'utf8'), key.public.toString());
    assert.equal(mode(join(root, 'etc/ssh/ssh_host_ed25519_key.pub')), 0o644);
    assert.equal(await sshd.signalWithin(5000), 'SIGHUP');
  });
}

test("identity: Debian's OpenSSH before 9.8 (no sshd-session) is not told to reload; with sshd-session it is", async () => {
  // Before 9.8 the sshd executed for each connection reads the host key files itself (the e2e snapshot test
  // connects to restored VMs with their new pinned key); from 9.8 the listener hands sshd-session its keys.
  const old = guestRoot();
  mkdirSync(join(old, 'usr/lib/openssh'), { recursive: true });
  const oldSshd = standInSshd(old);
  await applyIdentity(localGuest(old), { name: 'web', hostKey: key });
  assert.deepEqual(readFileSync(join(old, 'etc/ssh/ssh_host_ed25519_key')), key.private);
  assert.equal(await oldSshd.signalWithin(300), 'still running');

  const split = guestRoot();
  mkdirSync(join(split, 'usr/lib/openssh'), { recursive: true });
  writeFileSync(join(split, 'usr/lib/openssh/sshd-session'), '');
  const splitSshd = standInSshd(split);
  await applyIdentity(localGuest(split), { name: 'web', hostKey: key });
  assert.equal(await splitSshd.signalWithin(5000), 'SIGHUP');
});

test('identity: the clock is the host\'s time when the guest program runs, however slowly it started', async () => {
  const root = guestRoot();
  const asked = Date.now();
  await applyIdentity(localGuest(root, 'argv', 700), { name: 'web', clock: true });
  const at = Number(readFileSync(join(root, 'clock'), 'utf8'));
  assert.ok(at >= asked + 700 && at <= Date.now(), `the clock is taken after the start, not when asked (${at - asked} ms)`);
});

test("identity: a slow first answer (a channel still cold) does not set the clock back: the fastest of the exchanges counts", async () => {
  const root = guestRoot();
  // The host's first time reaches the program 600 ms late; the next ones at once.
  const slowFirst = {
    execArgv: (argv: string[], cwd: string, line: string, o: GuestExecOptions = {}) => {
      const delayed = new PassThrough();
      let first = true;
      o.stdin?.on('data', (b: Buffer) => {
        if (first) setTimeout(() => delayed.write(b), 600);
        else delayed.write(b);
        first = false;
      });
      o.stdin?.on('end', () => setTimeout(() => delayed.end(), 650));
      return localGuest(root).execArgv(argv, cwd, line, { ...o, stdin: delayed });
    },
  };
  await applyIdentity(slowFirst, { clock: true, clockExchanges: 3 });
  const lag = Date.now() - Number(readFileSync(join(root, 'clock'), 'utf8'));
  assert.ok(lag < 300, `the clock is within the fast exchanges' delay of the host's, not 600 ms behind (${lag} ms)`);
});

test('identity: the clock alone (a cold boot) sets it and leaves the name, hosts and machine-id as they were', async () => {
  const root = guestRoot();
  const hosts = readFileSync(join(root, 'etc/hosts'), 'utf8');
  const asked = Date.now();
  await applyIdentity(localGuest(root), { clock: true });
  const at = Number(readFileSync(join(root, 'clock'), 'utf8'));
  assert.ok(at >= asked && at <= Date.now(), `the host's time when the program ran (${at - asked} ms after asking)`);
  assert.equal(readFileSync(join(root, 'etc/hosts'), 'utf8'), hosts);
  assert.throws(() => statSync(join(root, 'etc/hostname')), /ENOENT/);
  assert.throws(() => statSync(join(root, 'proc/sys/kernel/hostname')), /ENOENT/);
  assert.equal(identityCommand({ clock: true }).argv.some((a) => a.startsWith('name=')), false);
});

test('identity: a name alone (a warm pool hand-over) leaves the machine-id and host key as they were; running it twice is the same', async () => {
  const root = guestRoot();
  for (let i = 0; i < 2; i++) await applyIdentity(localGuest(root), { name: 'web' });
  assert.equal(readFileSync(join(root, 'etc/hosts'), 'utf8'), "127.0.0.1 localhost\n::1 ip6-localhost\n10.0.0.9 it's\\n # kept\n127.0.1.1 web # banger\n");
  assert.equal(readFileSync(join(root, 'etc/machine-id'), 'utf8'), 'f'.repeat(32) + '\n');
});

test('identity started ahead (a warm pool, before parking): it waits for its name, then takes the name and the time given then', async () => {
  const root = guestRoot();
  const pending = await prestartIdentity(localGuest(root), { clock: true });
  // Nothing is applied while it waits.
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(readFileSync(join(root, 'etc/hosts'), 'utf8').includes('web-1'), false);
  const asked = Date.now();
  await pending.finish('web-1');
  const at = Number(readFileSync(join(root, 'clock'), 'utf8'));
  assert.ok(at >= asked && at <= Date.now(), `the host's time at the take, not at the start (${at - asked} ms)`);
  assert.equal(readFileSync(join(root, 'proc/sys/kernel/hostname'), 'utf8'), 'web-1\n');
  assert.match(readFileSync(join(root, 'etc/hosts'), 'utf8'), /^127\.0\.1\.1 web-1 # banger$/m);
  const another = await prestartIdentity(localGuest(root), {});
  await assert.rejects(another.finish('a b'), /bad name/);
  await another.finish('web-2');
  assert.equal(readFileSync(join(root, 'etc/hostname'), 'utf8'), 'web-2\n');
});

test('identity started ahead: a program that ends before it asks is an error, not a wait', async () => {
  const gone = { execArgv: async () => ({ code: 1, stdout: Buffer.alloc(0), stderr: Buffer.from('perl: not found') }) };
  await assert.rejects(prestartIdentity(gone, { clock: true }), /identity failed \(exit 1\): perl: not found/);
});

test('identity: a failure in the guest is an error naming what failed', async () => {
  const root = guestRoot();
  await assert.rejects(applyIdentity(localGuest(join(root, 'missing')), { name: 'web' }), /identity failed \(exit \d+\): .*hostname: No such file or directory/);
  // The program refuses to go on without the host key it was told to expect (here its stdin is empty).
  const noInput = {
    execArgv: (argv: string[], cwd: string, line: string, o: GuestExecOptions = {}) =>
      localGuest(root).execArgv(argv, cwd, line, { ...o, stdin: Readable.from([]) }),
  };
  await assert.rejects(applyIdentity(noInput, { name: 'web', hostKey: key }), /no host key on stdin/);
});

test('identity: values that could break out of their argument are refused before anything runs', () => {
  const bad: [GuestIdentity, RegExp][] = [
    [{ name: 'a b' }, /bad name/],
    [{ name: 'ok', machineId: 'x'.repeat(32) }, /bad machine-id/],
    [{ name: 'ok', seedHex: 'abc' }, /bad seed/],
    [{ name: 'ok', hostKey: { private: key.private, public: Buffer.from('a\nb') } }, /not one line/],
    [{ clock: true, clockExchanges: 0 }, /bad clock exchanges/],
    [{ clock: true, clockExchanges: 1.5 }, /bad clock exchanges/],
  ];
  for (const [id, re] of bad) assert.throws(() => identityCommand(id), re);
});

test('identity: the RNG is reseeded from the given bytes, after the clock', () => {
  const c = identityCommand({ name: 'f-1', clock: true, seedHex: 'cd'.repeat(64) });
  assert.ok(c.argv.includes('clock=1'));
  assert.ok(c.argv.includes(`seed=${'cd'.repeat(64)}`));
  const prog = c.argv[2]!;
  assert.match(prog, /syscall\(227, 0/, 'clock_settime(CLOCK_REALTIME)');
  assert.match(prog, /0x5207/, 'RNDRESEEDCRNG');
  assert.ok(prog.indexOf('syscall(227') < prog.indexOf('$a{seed}') && prog.indexOf('$a{seed}') < prog.indexOf('$a{ip}'), 'the clock first: it is the value that ages');
});

test('identity: a tap guest takes its own MAC, address and route; a loopback guest keeps its NIC', () => {
  const tap = { mac: '52:54:00:aa:bb:cc', ipCidr: '172.30.0.7/24', gateway: '172.30.0.1' };
  const c = identityCommand({ name: 'f-1', tap });
  assert.ok(c.argv.includes(`ip=${tapBatch(tap)}`));
  assert.deepEqual(tapBatch(tap).split('\n'), [
    'link set dev eth0 address 52:54:00:aa:bb:cc',
    'addr flush dev eth0 scope global',
    'addr add 172.30.0.7/24 dev eth0',
    'route replace default via 172.30.0.1 dev eth0',
    'neigh flush dev eth0',
    '',
  ]);
  assert.equal(identityCommand({ name: 'f-1' }).argv.some((a) => a.startsWith('ip=')), false);
  assert.throws(() => tapBatch({ ...tap, ipCidr: '172.30.0.7/24\nlink del eth0' }), /bad tap identity/);
  assert.throws(() => tapBatch({ ...tap, mac: "52:54:00:aa:bb:cc'" }), /bad tap identity/);
});

test('identity held in a snapshot: the prespawned program takes every argument on stdin, and a guest without one gets a new program', async () => {
  for (const held of [true, false]) {
    const root = guestRoot();
    const guest = {
      ...localGuest(root),
      calls: [] as string[],
      execPrespawned(k: string, opts: GuestExecOptions = {}) {
        this.calls.push(k);
        if (!held) return Promise.reject(new BangerError(ErrorCode.NotFound, `no prespawned process '${k}' in the guest`));
        // The held program's argv is fixed (it was started before anything of this VM was known).
        return localGuest(root).execArgv([...PRESPAWNED_IDENTITY.argv], '/', '', opts);
      },
    };
    const how = await applyIdentityHeld(guest, { name: 'fork-2', clock: true, machineId: 'cd'.repeat(16), hostKey: key });
    assert.equal(how, held ? 'held' : 'started');
    assert.deepEqual(guest.calls, [PRESPAWNED_IDENTITY.key]);
    assert.equal(readFileSync(join(root, 'etc/hostname'), 'utf8'), 'fork-2\n');
    assert.equal(readFileSync(join(root, 'etc/machine-id'), 'utf8'), 'cd'.repeat(16) + '\n');
    assert.deepEqual(readFileSync(join(root, 'etc/ssh/ssh_host_ed25519_key')), key.private);
    assert.ok(Math.abs(Number(readFileSync(join(root, 'clock'), 'utf8')) - Date.now()) < 2000);
  }
  const args = PRESPAWNED_IDENTITY.argv.slice(PRESPAWNED_IDENTITY.argv.indexOf('--') + 1);
  assert.deepEqual(args, ['args=-'], 'nothing of a VM is in the held argv');
});
