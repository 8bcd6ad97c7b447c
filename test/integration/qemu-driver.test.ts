/**
 * The QEMU driver and the KVM probe against a real qemu-system-x86_64 (TCG here), booting Debian's cloud
 * kernel with a tiny busybox initrd. Skipped, with the reason printed, only when QEMU is not installed.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile, readlink, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { BangerError } from '../../src/errors/index.js';
import { runCommand } from '../../src/shared/command.js';
import { probeKvm, runBootProbe } from '../../src/daemon/vmm/accel.js';
import type { LaunchSpec, VmHandle } from '../../src/daemon/vmm/driver.js';
import { QemuDriver, type VmmLog } from '../../src/daemon/vmm/qemu/driver.js';
import { processStartTime } from '../../src/daemon/vmm/process.js';
import {
  ensureTestKernel,
  qemuMissingReason,
  tscCmdline,
  writeProbeInitrd,
  writeTinyInitrd,
  type TestKernel,
} from '../helpers/qemu-tiny-guest.js';
import { scratchDir } from '../helpers/scratch.js';

const exec = promisify(execFile);
const skip = qemuMissingReason();
if (skip) process.stderr.write(`skipping QEMU integration tests: ${skip}\n`);

const quietLog: VmmLog = { debug() {}, info() {}, warn() {} };

/** pids of processes whose command line contains `needle` (other than pgrep itself). */
async function pgrep(needle: string): Promise<number[]> {
  try {
    const { stdout } = await exec('pgrep', ['-f', '--', needle]);
    return stdout.trim().split('\n').filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

async function waitForText(path: string, text: string, timeoutMs: number): Promise<string> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const content = await readFile(path, 'utf8').catch(() => '');
    if (content.includes(text)) return content;
    if (Date.now() > until)
      throw new Error(`'${text}' did not appear in ${path} within ${timeoutMs} ms; it holds:\n${content}`);
    await sleep(100);
  }
}

void describe('QemuDriver with a real QEMU (TCG)', { skip, timeout: 300_000 }, () => {
  let dir: string;
  let kernel: TestKernel;
  let initrd: string;
  let probeInitrd: string;
  let tsc: string;
  const driver = new QemuDriver({ run: runCommand, log: quietLog });
  const handles: VmHandle[] = [];

  before(async () => {
    dir = scratchDir('banger-qemu-it-');
    kernel = await ensureTestKernel();
    tsc = await tscCmdline();
    initrd = join(dir, 'guest.img');
    await writeTinyInitrd(
      initrd,
      [
        '$B mount -t proc proc /proc',
        '$B mount -t sysfs sys /sys',
        '$B mount -t devtmpfs dev /dev',
        'echo BANGER-TEST-BOOTED',
        'for m in virtio_ring virtio virtio_mmio virtio_blk virtio_console; do $B insmod /lib/$m.ko; done',
        'n=0; while [ ! -e /sys/block/vdc ] && [ $n -lt 50 ]; do $B sleep 0.1; n=$((n+1)); done',
        'for d in /sys/block/vd*; do echo "DISK $($B basename $d)=$($B cat $d/serial)"; done',
        'for p in /sys/class/virtio-ports/*; do echo "PORT $($B cat $p/name)"; done',
        'echo BANGER-TEST-READY',
        'exec $B sleep 1000',
      ].join('\n'),
      kernel,
    );
    probeInitrd = join(dir, 'probe.img');
    await writeProbeInitrd(probeInitrd);
    for (const d of ['root', 'work', 'seed']) await writeFile(join(dir, `${d}.img`), Buffer.alloc(1024 * 1024));
  });

  after(async () => {
    for (const h of handles) await driver.kill(h, 0).catch(() => {});
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  function spec(vmId: string, overrides: Partial<LaunchSpec> = {}): LaunchSpec {
    const vmDir = join(dir, vmId);
    return {
      vmId,
      name: `it-${vmId}`,
      vcpus: 1,
      memoryMib: 256,
      accel: 'tcg',
      kernelPath: kernel.kernel,
      initrdPath: initrd,
      kernelCmdline: `console=ttyS0 panic=-1 quiet ${tsc}`,
      disks: [
        { id: 'root', path: join(dir, 'root.img'), format: 'raw', readOnly: false },
        { id: 'work', path: join(dir, 'work.img'), format: 'raw', readOnly: false },
        { id: 'seed', path: join(dir, 'seed.img'), format: 'raw', readOnly: true },
      ],
      network: {
        mode: 'user',
        hostAddress: '127.0.0.1',
        sshHostPort: 20000 + Math.floor(Math.random() * 20000),
        egress: false,
        mac: '52:54:00:12:34:56',
      },
      consoleLogPath: join(vmDir, 'console.log'),
      vmmLogPath: join(vmDir, 'vmm.log'),
      controlSocketPath: join(vmDir, 'qmp.sock'),
      channelSocketPath: join(vmDir, 'ch.sock'),
      ...overrides,
    };
  }

  void test('availability finds qemu-system-x86_64', async () => {
    const a = await driver.availability();
    assert.equal(a.ok, true, a.reason);
    assert.match(a.binary ?? '', /qemu-system-x86_64$/);
    assert.match(driver.version ?? '', /^QEMU emulator version/);
  });

  void test('launch boots the guest; disks are vda, vdb, vdc in spec order; isAlive, kill, waitExit', async () => {
    const vmId = `vm${process.pid}a`;
    const s = spec(vmId);
    const t0 = Date.now();
    const h = await driver.launch(s);
    handles.push(h);
    const launchMs = Date.now() - t0;
    assert.equal(h.vmm, 'qemu');
    assert.equal(h.accel, 'tcg');
    assert.equal(h.startTime, await processStartTime(h.pid));
    // Detached: its own session, so a daemon killed with -9 (and its process group) does not take it along.
    const stat = await readFile(`/proc/${h.pid}/stat`, 'utf8');
    const session = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[3]);
    assert.equal(session, h.pid);
    assert.equal(await readlink(`/proc/${h.pid}/fd/1`), s.vmmLogPath);

    const con = await waitForText(s.consoleLogPath, 'BANGER-TEST-READY', 60_000);
    process.stderr.write(`launch resolved after ${launchMs} ms; guest ready after ${Date.now() - t0} ms\n`);
    assert.match(con, /BANGER-TEST-BOOTED/);
    assert.match(con, /DISK vda=banger-root\s+DISK vdb=banger-work\s+DISK vdc=banger-seed/);
    assert.match(con, /PORT banger\.0/);
    assert.ok(existsSync(s.channelSocketPath!));

    assert.equal(await driver.isAlive(h, vmId), true);
    assert.equal(await driver.isAlive(h, `${vmId}x`), false, 'a longer id must not match');
    assert.equal(await driver.isAlive(h, vmId.slice(0, -1)), false, 'a prefix id must not match');
    assert.equal(await driver.isAlive({ ...h, startTime: h.startTime + 1 }, vmId), false);

    // Delivered even though this guest's init ignores the power button.
    await driver.requestShutdown(h);
    assert.equal(await driver.isAlive(h, vmId), true);

    const exited = driver.waitExit(h);
    await driver.kill(h);
    await exited;
    assert.equal(await driver.isAlive(h, vmId), false);
    assert.deepEqual(await pgrep(`banger-${vmId}`), []);
    await driver.kill(h); // already gone: no error
  });

  void test('the TCG cache size reaches QEMU: its translated-code buffer is that size, not 1 GiB', async () => {
    const vmId = `vm${process.pid}t`;
    const s = spec(vmId);
    const h = await new QemuDriver({ run: runCommand, log: quietLog, tcgCacheMib: 48 }).launch(s);
    handles.push(h);
    await waitForText(s.consoleLogPath, 'BANGER-TEST-READY', 60_000);
    // Anonymous mappings (no path) and their sizes in MiB; the guest's RAM is a memfd, so it has a path.
    const anon = (await readFile(`/proc/${h.pid}/maps`, 'utf8'))
      .split('\n')
      .map((l) => /^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \d+\s*$/.exec(l))
      .filter((m) => m !== null)
      .map((m) => (parseInt(m[2]!, 16) - parseInt(m[1]!, 16)) / 2 ** 20);
    assert.ok(anon.some((mib) => Math.abs(mib - 48) <= 1), `no 48 MiB code buffer among ${anon.map((x) => x.toFixed(1)).join(', ')}`);
    assert.ok(!anon.some((mib) => mib >= 1023), 'QEMU still made its default 1 GiB code buffer');
    const exited = driver.waitExit(h);
    await driver.kill(h);
    await exited;
  });

  void test('the VM outlives a daemon killed with SIGKILL', async () => {
    const vmId = `vm${process.pid}f`;
    const script = join(dir, 'daemon.mts');
    const driverUrl = new URL('../../src/daemon/vmm/qemu/driver.ts', import.meta.url).href;
    const execUrl = new URL('../../src/shared/command.ts', import.meta.url).href;
    await writeFile(
      script,
      [
        `import { QemuDriver } from ${JSON.stringify(driverUrl)};`,
        `import { runCommand } from ${JSON.stringify(execUrl)};`,
        'const log = { debug() {}, info() {}, warn() {} };',
        `const h = await new QemuDriver({ run: runCommand, log }).launch(JSON.parse(process.env.SPEC));`,
        'process.stdout.write(JSON.stringify(h) + "\\n");',
        'setInterval(() => {}, 1000);',
      ].join('\n'),
    );
    const daemon = spawn(process.execPath, ['--import', 'tsx', script], {
      cwd: new URL('../..', import.meta.url).pathname,
      env: { ...process.env, SPEC: JSON.stringify(spec(vmId)) },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const line = await new Promise<string>((resolve, reject) => {
      let out = '';
      daemon.stdout.setEncoding('utf8').on('data', (d: string) => {
        out += d;
        if (out.includes('\n')) resolve(out.trim());
      });
      daemon.once('exit', (code) => reject(new Error(`the daemon stand-in exited (${code}) before launching`)));
    });
    const h = JSON.parse(line) as VmHandle;
    handles.push(h);
    const gone = new Promise((resolve) => daemon.once('exit', resolve));
    daemon.kill('SIGKILL');
    await gone;
    await sleep(300);
    assert.equal(await driver.isAlive(h, vmId), true);
    await driver.kill(h);
    assert.equal(await driver.isAlive(h, vmId), false);
  });

  void test('waitExit works for a process it did not spawn (adopted after a daemon restart)', async () => {
    const vmId = `vm${process.pid}b`;
    const h = await driver.launch(spec(vmId));
    handles.push(h);
    const other = new QemuDriver({ run: runCommand, log: quietLog });
    assert.equal(await other.isAlive(h, vmId), true);
    const exited = other.waitExit(h);
    process.kill(h.pid, 'SIGTERM');
    await exited;
    assert.equal(await other.isAlive(h, vmId), false);
  });

  void test('waitExit rejects when its signal aborts', async () => {
    const vmId = `vm${process.pid}c`;
    const h = await driver.launch(spec(vmId));
    handles.push(h);
    const ac = new AbortController();
    const p = driver.waitExit(h, ac.signal);
    ac.abort();
    await assert.rejects(p, (e: unknown) => e instanceof BangerError && e.code === 'Cancelled');
    await driver.kill(h, 500);
    assert.equal(await driver.isAlive(h, vmId), false);
  });

  void test('a launch QEMU refuses rejects with QEMU’s own error', async () => {
    const vmId = `vm${process.pid}d`;
    const err = await driver.launch(spec(vmId, { kernelPath: join(dir, 'no-such-kernel') })).then(
      () => assert.fail('launch should fail'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof BangerError);
    assert.match(err.message, /could not open kernel file/);
    assert.doesNotMatch(err.message, /-append/, "only QEMU's own output, not its command line");
    assert.match(err.message, /no-such-kernel/);
    assert.match(err.hint ?? '', /vmm\.log/);
    assert.deepEqual(await pgrep(`banger-${vmId}`), []);
  });

  void test('an aborted launch stops its QEMU process', async () => {
    const vmId = `vm${process.pid}e`;
    const ac = new AbortController();
    const p = driver.launch(spec(vmId), ac.signal);
    setTimeout(() => ac.abort(), 20);
    await assert.rejects(p, (e: unknown) => e instanceof BangerError && e.code === 'Cancelled');
    await sleep(100);
    assert.deepEqual(await pgrep(`banger-${vmId}`), []);
  });

  void test('the boot probe sees the marker under TCG', async () => {
    const binary = (await driver.availability()).binary!;
    const r = await runBootProbe({
      binary,
      accel: 'tcg',
      kernelPath: kernel.kernel,
      initrdPath: probeInitrd,
      extraCmdline: tsc,
      timeoutMs: 30_000,
    });
    process.stderr.write(`TCG boot probe: ${r.detail} (${r.elapsedMs} ms)\n`);
    assert.equal(r.ok, true, r.detail);
    const v = await probeKvm({
      binary,
      accel: 'tcg',
      kernelPath: kernel.kernel,
      initrdPath: probeInitrd,
      extraCmdline: tsc,
      timeoutMs: 30_000,
    });
    assert.equal(v.usable, true, v.reason);
    assert.deepEqual(await pgrep(probeInitrd), []);
  });

  void test('probeKvm gives a verdict within its timeout and leaves no QEMU behind', async () => {
    const binary = (await driver.availability()).binary!;
    const t0 = Date.now();
    const v = await probeKvm({
      binary,
      kernelPath: kernel.kernel,
      initrdPath: probeInitrd,
      extraCmdline: tsc,
      timeoutMs: 10_000,
    });
    const ms = Date.now() - t0;
    process.stderr.write(`KVM probe verdict after ${ms} ms: usable=${v.usable}: ${v.reason}\n`);
    assert.ok(ms < 12_000, `verdict took ${ms} ms`);
    assert.ok(v.reason.length > 0);
    // On this host family (PVM nested /dev/kvm) stock kernels do not boot under KVM.
    if (existsSync('/dev/kvm') && process.env.BANGER_EXPECT_KVM !== '1') assert.equal(v.usable, false, v.reason);
    assert.deepEqual(await pgrep(probeInitrd), []);
  });
});
