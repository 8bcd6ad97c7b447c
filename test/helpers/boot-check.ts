/**
 * Manual check of a built image: boots it under QEMU (TCG, user networking with restrict=on, SSH
 * forwarded on 127.0.0.1), waits for SSH, runs a few commands, powers off over SSH and boots again to
 * check /root persisted. Usage:
 *   node --import tsx test/helpers/boot-check.ts <image dir with vmlinuz, initrd.img, rootfs.ext4> [work dir]
 *   node --import tsx test/helpers/boot-check.ts --probe <image dir>
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { runCommand } from '../../src/shared/command.js';
import { guestKernelArgs, hostTscKhz } from '../../src/daemon/guest/init/cmdline.js';
import {
  PROBE_MARKER,
  READY_MARKER,
  SEED_DISK_SERIAL,
  WORK_DISK_SERIAL,
} from '../../src/daemon/guest/init/contract.js';
import { buildSeedTar } from '../../src/daemon/services/vm/seed.js';

const log = (m: string) => process.stderr.write(`${m}\n`);

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => (typeof a === 'object' && a ? resolve(a.port) : reject(new Error('no port'))));
    });
  });
}

interface Vm {
  proc: ChildProcess;
  exited: Promise<number | null>;
  consolePath: string;
}

function qemuArgs(o: { img: string; dir: string; port: number; append: string; withDisks: boolean }): string[] {
  const args = [
    '-M',
    'microvm,x-option-roms=off,rtc=on',
    '-accel',
    'tcg',
    '-cpu',
    'max',
    '-smp',
    '1',
    '-m',
    '512',
    '-nographic',
    '-no-reboot',
    '-nodefaults',
    '-no-user-config',
    '-serial',
    `file:${join(o.dir, 'console.log')}`,
    '-kernel',
    join(o.img, 'vmlinuz'),
    '-initrd',
    join(o.img, 'initrd.img'),
    '-append',
    o.append,
    '-drive',
    `id=root,file=${join(o.dir, 'root.qcow2')},format=qcow2,if=none`,
    '-device',
    'virtio-blk-device,drive=root',
  ];
  if (o.withDisks)
    args.push(
      '-drive',
      `id=work,file=${join(o.dir, 'work.ext4')},format=raw,if=none`,
      '-device',
      `virtio-blk-device,drive=work,serial=${WORK_DISK_SERIAL}`,
      '-drive',
      `id=seed,file=${join(o.dir, 'seed.tar')},format=raw,if=none,readonly=on`,
      '-device',
      `virtio-blk-device,drive=seed,serial=${SEED_DISK_SERIAL}`,
      '-netdev',
      `user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:${o.port}-:22`,
      '-device',
      'virtio-net-device,netdev=n0',
    );
  return args;
}

function startVm(args: string[], dir: string): Vm {
  const proc = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'ignore', 'inherit'] });
  const exited = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)));
  return { proc, exited, consolePath: join(dir, 'console.log') };
}

async function waitForConsole(vm: Vm, marker: string, timeoutMs: number): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    const text = await readFile(vm.consolePath, 'utf8').catch(() => '');
    if (text.includes(marker)) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return false;
}

async function ssh(dir: string, port: number, cmd: string, allowFailure = false) {
  return runCommand(
    'ssh',
    [
      '-i',
      join(dir, 'client'),
      '-p',
      String(port),
      '-o',
      `UserKnownHostsFile=${join(dir, 'known_hosts')}`,
      '-o',
      'StrictHostKeyChecking=yes',
      '-o',
      'BatchMode=yes',
      '-o',
      'ConnectTimeout=5',
      '-o',
      'HostKeyAlias=banger-check',
      'root@127.0.0.1',
      cmd,
    ],
    { allowFailure },
  );
}

async function main(): Promise<void> {
  const probe = process.argv[2] === '--probe';
  const img = process.argv[probe ? 3 : 2];
  if (!img) throw new Error('usage: boot-check.ts [--probe] <image dir> [work dir]');
  const dir = process.argv[probe ? 4 : 3] ?? '/tmp/imgwork/run';
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  const tscKhz = hostTscKhz(await readFile('/proc/cpuinfo', 'utf8'));
  await runCommand('qemu-img', [
    'create',
    '-q',
    '-f',
    'qcow2',
    '-b',
    join(img, 'rootfs.ext4'),
    '-F',
    'raw',
    join(dir, 'root.qcow2'),
  ]);

  if (probe) {
    const t0 = Date.now();
    const vm = startVm(
      qemuArgs({ img, dir, port: 0, append: guestKernelArgs({ tscKhz, probe: true }).join(' '), withDisks: false }),
      dir,
    );
    const ok = await waitForConsole(vm, PROBE_MARKER, 60_000);
    log(`probe marker: ${ok} after ${Date.now() - t0} ms`);
    const code = await Promise.race([vm.exited, new Promise((r) => setTimeout(() => r('timeout'), 10_000))]);
    log(`qemu exit: ${String(code)} after ${Date.now() - t0} ms`);
    if (code === 'timeout') vm.proc.kill('SIGKILL');
    return;
  }

  await runCommand('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'host', '-f', join(dir, 'host')]);
  await runCommand('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'client', '-f', join(dir, 'client')]);
  const hostPub = await readFile(join(dir, 'host.pub'), 'utf8');
  await writeFile(join(dir, 'known_hosts'), `banger-check ${hostPub.split(' ').slice(0, 2).join(' ')}\n`);
  await writeFile(
    join(dir, 'seed.tar'),
    await buildSeedTar({
      hostname: 'checkvm',
      ipCidr: '10.0.2.15/24',
      gateway: '10.0.2.2',
      dns: '10.0.2.3',
      hostPrivateKey: await readFile(join(dir, 'host'), 'utf8'),
      hostPublicKey: hostPub,
      authorizedKeys: await readFile(join(dir, 'client.pub'), 'utf8'),
    }),
  );
  await runCommand('truncate', ['-s', '1G', join(dir, 'work.ext4')]);
  await runCommand('mkfs.ext4', ['-q', '-F', '-L', 'work', join(dir, 'work.ext4')]);

  for (const boot of [1, 2]) {
    const port = await freePort();
    await rm(join(dir, 'console.log'), { force: true });
    const t0 = Date.now();
    const vm = startVm(
      qemuArgs({ img, dir, port, append: guestKernelArgs({ tscKhz }).join(' '), withDisks: true }),
      dir,
    );
    const ready = await waitForConsole(vm, READY_MARKER, 120_000);
    log(`boot ${boot}: ready marker ${ready} after ${Date.now() - t0} ms`);
    let up = false;
    while (!up && Date.now() - t0 < 120_000) {
      up = (await ssh(dir, port, 'true', true)).code === 0;
      if (!up) await new Promise((r) => setTimeout(r, 200));
    }
    log(`boot ${boot}: ssh true ok=${up} after ${Date.now() - t0} ms`);
    const cmd =
      boot === 1
        ? 'echo hi; mise --version; echo MISE_OFFLINE=$MISE_OFFLINE; hostname; ip addr show eth0; ip route; cat /etc/resolv.conf; ' +
          'ls -la /root; echo persisted > /root/marker; sh -c "sleep 0 & exec sleep 1"; ps -eo pid,ppid,stat,comm; ' +
          'cat /sys/block/vd*/serial; echo; mount | grep -E " / | /root "'
        : 'cat /root/marker; ls -la /root; ps -eo stat,comm | grep -c Z';
    const r = await ssh(dir, port, cmd, true);
    log(`boot ${boot}: exec exit ${r.code}\n${r.stdout}${r.stderr}`);
    const tOff = Date.now();
    const off = await ssh(dir, port, '/usr/local/sbin/banger-poweroff; echo poweroff-returned', true);
    log(`boot ${boot}: banger-poweroff returned ${off.code} in ${Date.now() - tOff} ms: ${off.stdout.trim()}`);
    const code = await Promise.race([vm.exited, new Promise((r) => setTimeout(() => r('timeout'), 20_000))]);
    log(`boot ${boot}: qemu exit ${String(code)} ${Date.now() - tOff} ms after poweroff`);
    if (code === 'timeout') vm.proc.kill('SIGKILL');
    log(`--- console tail ---\n${(await readFile(vm.consolePath, 'utf8')).split('\n').slice(-15).join('\n')}`);
  }
}

await main();
