import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { chmod, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';
import { BangerError } from '../../src/errors/index.js';
import {
  KvmProbeCache,
  PROBE_MARKER,
  guestKernelId,
  probeKvm,
  resolveAccel,
  runBootProbe,
  type BootProbeOptions,
  type KvmProbeKey,
} from '../../src/daemon/vmm/accel.js';
import { scratchDir } from '../helpers/scratch.js';

const exec = promisify(execFile);
let dir: string;
before(async () => {
  dir = scratchDir('banger-accel-');
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

const errno = (code: string) => Object.assign(new Error(code), { code });
const base = { binary: '/usr/bin/qemu-system-x86_64', kernelPath: '/k', initrdPath: '/i' };

void test('probeKvm: a missing /dev/kvm is not usable, and no boot is tried', async () => {
  let booted = false;
  const r = await probeKvm({
    ...base,
    openDevice: () => Promise.reject(errno('ENOENT')),
    bootProbe: () => {
      booted = true;
      return Promise.resolve({ ok: true, detail: '', elapsedMs: 0 });
    },
  });
  assert.equal(r.usable, false);
  assert.match(r.reason, /does not exist/);
  assert.equal(booted, false);
});

void test('probeKvm: a /dev/kvm this user cannot open names the kvm group', async () => {
  const r = await probeKvm({ ...base, openDevice: () => Promise.reject(errno('EACCES')) });
  assert.equal(r.usable, false);
  assert.match(r.reason, /kvm' group/);
});

void test('probeKvm: an openable device still needs a guest that boots under kvm', async () => {
  const seen: BootProbeOptions[] = [];
  const fail = await probeKvm({
    ...base,
    extraCmdline: 'tsc=reliable',
    timeoutMs: 1234,
    openDevice: () => Promise.resolve(),
    bootProbe: (o) => {
      seen.push(o);
      return Promise.resolve({ ok: false, detail: 'no marker within 1234 ms (the guest hangs)', elapsedMs: 1234 });
    },
  });
  assert.equal(fail.usable, false);
  assert.match(fail.reason, /opens but a test guest does not boot under kvm: no marker/);
  assert.equal(seen[0]?.accel, 'kvm');
  assert.equal(seen[0]?.timeoutMs, 1234);
  assert.equal(seen[0]?.extraCmdline, 'tsc=reliable');

  const ok = await probeKvm({
    ...base,
    openDevice: () => Promise.resolve(),
    bootProbe: () => Promise.resolve({ ok: true, detail: `${PROBE_MARKER} seen after 900 ms`, elapsedMs: 900 }),
  });
  assert.deepEqual(ok.usable, true);
});

/** A stand-in for qemu: a shell script, so the probe's process handling is tested without a VM. */
async function fakeQemu(name: string, body: string): Promise<string> {
  const p = join(dir, name);
  await writeFile(p, `#!/bin/sh\n${body}\n`);
  await chmod(p, 0o755);
  return p;
}

async function running(needle: string): Promise<boolean> {
  const r = await exec('pgrep', ['-f', '--', needle]).catch(() => ({ stdout: '' }));
  return r.stdout.trim().length > 0;
}

void test('runBootProbe: the marker on the console ends the probe and the process', async () => {
  const bin = await fakeQemu('qemu-marker', `echo booting; echo ${PROBE_MARKER}; exec sleep 300`);
  const r = await runBootProbe({ ...base, binary: bin, accel: 'kvm', timeoutMs: 5000 });
  assert.equal(r.ok, true, r.detail);
  assert.equal(await running(bin), false);
});

void test('runBootProbe: a hanging guest times out and is killed', async () => {
  const bin = await fakeQemu('qemu-hang', 'echo "Probing EDD (edd=off to disable)... ok"; exec sleep 300');
  const t0 = Date.now();
  const r = await runBootProbe({ ...base, binary: bin, accel: 'kvm', timeoutMs: 300 });
  assert.equal(r.ok, false);
  assert.match(r.detail, /within 300 ms/);
  assert.ok(Date.now() - t0 < 3000);
  assert.equal(await running(bin), false);
});

void test('runBootProbe: an early exit reports QEMU stderr', async () => {
  const bin = await fakeQemu('qemu-abort', 'echo "error: failed to set MSR 0x10a" >&2; exit 1');
  const r = await runBootProbe({ ...base, binary: bin, accel: 'kvm' });
  assert.equal(r.ok, false);
  assert.match(r.detail, /exit code 1.*failed to set MSR/);
});

void test('runBootProbe: the command line carries banger.probe=1, console=ttyS0 and the extras', async () => {
  const out = join(dir, 'args.txt');
  const bin = await fakeQemu('qemu-args', `printf '%s\\n' "$@" > ${out}; echo ${PROBE_MARKER}`);
  await runBootProbe({ ...base, binary: bin, accel: 'tcg', extraCmdline: 'tsc=reliable' });
  const args = (await readFile(out, 'utf8')).split('\n');
  const append = args[args.indexOf('-append') + 1] ?? '';
  assert.match(append, /console=ttyS0/);
  assert.match(append, /banger\.probe=1/);
  assert.match(append, /tsc=reliable$/);
  assert.equal(args[args.indexOf('-accel') + 1], 'tcg');
  assert.equal(args[args.indexOf('-kernel') + 1], '/k');
});

void test('runBootProbe: cancelling kills the process and rejects', async () => {
  const bin = await fakeQemu('qemu-cancel', 'exec sleep 300');
  const ac = new AbortController();
  const p = runBootProbe({ ...base, binary: bin, accel: 'kvm', signal: ac.signal, timeoutMs: 10_000 });
  setTimeout(() => ac.abort(), 100);
  await assert.rejects(p, (e: unknown) => e instanceof BangerError && e.code === 'Cancelled');
  assert.equal(await running(bin), false);
});

void test('resolveAccel', async () => {
  const usable = () => Promise.resolve({ usable: true, reason: 'ok' });
  const broken = () => Promise.resolve({ usable: false, reason: 'the guest hangs' });
  const never = () => Promise.reject(new Error('must not probe'));

  assert.deepEqual(await resolveAccel('tcg', never), { accel: 'tcg' });
  assert.deepEqual(await resolveAccel('auto', usable), { accel: 'kvm' });
  assert.deepEqual(await resolveAccel('kvm', usable), { accel: 'kvm' });
  const auto = await resolveAccel('auto', broken);
  assert.equal(auto.accel, 'tcg');
  assert.match(
    auto.notice ?? '',
    /KVM is not usable here \(the guest hangs\); using software emulation \(TCG\), expect slower VMs/,
  );
  await assert.rejects(resolveAccel('kvm', broken), (e: unknown) => {
    assert.ok(e instanceof BangerError);
    assert.equal(e.code, 'FailedPrecondition');
    assert.match(e.message, /the guest hangs/);
    assert.match(e.hint ?? '', /--accel auto/);
    return true;
  });
});

void test('KvmProbeCache: keyed by host kernel, qemu version and guest kernel; keeps other entries', async () => {
  const path = join(dir, 'state', 'probes.json');
  await rm(path, { force: true });
  const cache = new KvmProbeCache(path);
  const key: KvmProbeKey = {
    hostKernel: '6.1.0',
    qemuVersion: 'QEMU emulator version 7.2.22',
    guestKernel: '/k@sha256:aa',
  };
  assert.equal(await cache.get(key), undefined);

  let probes = 0;
  const probe = () => {
    probes++;
    return Promise.resolve({ usable: false, reason: 'hangs' });
  };
  assert.deepEqual(await cache.getOrProbe(key, probe), { usable: false, reason: 'hangs' });
  assert.deepEqual(await new KvmProbeCache(path).getOrProbe(key, probe), { usable: false, reason: 'hangs' });
  assert.equal(probes, 1, 'the second call (even from a new instance) uses the file');

  for (const changed of [
    { hostKernel: '6.2' },
    { qemuVersion: 'QEMU emulator version 8.0' },
    { guestKernel: '/k@sha256:bb' },
  ])
    assert.equal(await cache.get({ ...key, ...changed }), undefined, JSON.stringify(changed));

  const file = JSON.parse(await readFile(path, 'utf8')) as Record<string, unknown>;
  await writeFile(path, JSON.stringify({ ...file, other: { kept: true } }));
  await cache.set({ ...key, hostKernel: '6.2' }, { usable: true, reason: 'boots' });
  const after = JSON.parse(await readFile(path, 'utf8')) as Record<string, unknown>;
  assert.deepEqual(after.other, { kept: true });
  assert.deepEqual(await cache.get({ ...key, hostKernel: '6.2' }), { usable: true, reason: 'boots' });

  await cache.clear();
  assert.equal(await cache.get(key), undefined);
  assert.deepEqual((JSON.parse(await readFile(path, 'utf8')) as Record<string, unknown>).other, { kept: true });

  await writeFile(path, '{not json');
  assert.equal(await cache.get(key), undefined, 'a corrupt cache reads as empty');
});

void test('guestKernelId is the path and the sha256 of the file', async () => {
  const k = join(dir, 'vmlinuz');
  await writeFile(k, 'kernel');
  assert.equal(await guestKernelId(k), `${k}@sha256:6923dd1bc0460082c5d55a831908c24a282860b7f1cd6c2b79cf1bc8857c639c`);
  await writeFile(k, 'kernel2');
  assert.notEqual(
    await guestKernelId(k),
    `${k}@sha256:6923dd1bc0460082c5d55a831908c24a282860b7f1cd6c2b79cf1bc8857c639c`,
  );
});
