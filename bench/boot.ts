/**
 * `banger vm run --rm -- true` against the same work done by hand: qcow2 overlay + work disk + seed,
 * qemu with the same kernel/initrd/image, wait until `ssh true` succeeds, kill qemu. In the same run: the
 * default image against a `--minimal` one (the developer tools' cost at boot), and with the guest agent
 * against `--no-agent` (the agent's cost at boot).
 * Usage: npm run build && node --import tsx bench/boot.ts [runs]
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { banger, report, sh, timeIt } from './common.js';

const runs = Number(process.argv[2] ?? 3);

interface Image {
  files: { role: string; path: string }[];
}
const img = JSON.parse(banger(['image', 'show', 'default', '--json'])) as Image;
const file = (role: string) => img.files.find((f) => f.role === role)!.path;
const khz = Math.round(Number(/^cpu MHz\s*:\s*([\d.]+)/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))![1]) * 1000);

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => resolve(typeof a === 'object' && a ? a.port : 0));
    });
  });
}

/** The baseline: what a person would script with qemu-img, mkfs, tar, qemu and ssh. */
async function handRun(): Promise<number> {
  const dir = mkdtempSync(join(tmpdir(), 'bench-boot-'));
  const port = await freePort();
  const started = process.hrtime.bigint();
  sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', file('rootfs'), '-F', 'raw', join(dir, 'root.qcow2')]);
  sh('truncate', ['-s', '4096M', join(dir, 'work.ext4')]);
  sh('mkfs.ext4', ['-q', '-F', '-L', 'work', join(dir, 'work.ext4')]);
  const seed = join(dir, 'seed');
  mkdirSync(seed);
  sh('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(seed, 'ssh_host_ed25519_key')]);
  sh('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(dir, 'id')]);
  writeFileSync(join(seed, 'authorized_keys'), readFileSync(join(dir, 'id.pub')));
  writeFileSync(join(seed, 'env'), "BANGER_HOSTNAME=bench\nBANGER_IP=10.0.2.15/24\nBANGER_GW=10.0.2.2\nBANGER_DNS=10.0.2.3\n");
  sh('tar', ['-cf', join(dir, 'seed.tar'), '-C', seed, '.']);
  sh('truncate', ['-s', '%4096', join(dir, 'seed.tar')]);
  writeFileSync(join(dir, 'known_hosts'), `[127.0.0.1]:${port} ${readFileSync(join(seed, 'ssh_host_ed25519_key.pub'), 'utf8')}`);
  const qemu = spawn('qemu-system-x86_64', [
    '-M', 'microvm,x-option-roms=off,rtc=on', '-accel', 'tcg', '-cpu', 'max', '-smp', '2', '-m', '1024',
    '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot',
    '-serial', `file:${join(dir, 'console.log')}`,
    '-kernel', file('kernel'), '-initrd', file('initrd'),
    '-append', `console=ttyS0 root=/dev/vda rw rootfstype=ext4 net.ifnames=0 panic=-1 quiet tsc_early_khz=${khz} lpj=${khz * 4} tsc=reliable`,
    '-drive', `id=root,file=${join(dir, 'root.qcow2')},format=qcow2,if=none`, '-device', 'virtio-blk-device,drive=root,serial=banger-root',
    '-drive', `id=work,file=${join(dir, 'work.ext4')},format=raw,if=none`, '-device', 'virtio-blk-device,drive=work,serial=banger-work',
    '-drive', `id=seed,file=${join(dir, 'seed.tar')},format=raw,if=none,readonly=on`, '-device', 'virtio-blk-device,drive=seed,serial=banger-seed',
    '-netdev', `user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:${port}-:22`, '-device', 'virtio-net-device,netdev=n0',
  ], { stdio: 'ignore' });
  try {
    for (;;) {
      const r = spawnSync('ssh', [
        '-i', join(dir, 'id'), '-o', `UserKnownHostsFile=${join(dir, 'known_hosts')}`, '-o', 'StrictHostKeyChecking=yes',
        '-o', 'ConnectTimeout=2', '-o', 'BatchMode=yes', '-p', String(port), 'root@127.0.0.1', 'true',
      ]);
      if (r.status === 0) break;
      await new Promise((res) => setTimeout(res, 200));
    }
    return Number(process.hrtime.bigint() - started) / 1e6;
  } finally {
    qemu.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
}

const b: number[] = [];
const base: number[] = [];
const minimal: number[] = [];
const noAgent: number[] = [];
// The small image, for the golden image's cost at boot (built once; its packages come from the apt cache).
const MINIMAL = 'bench-minimal';
try {
  banger(['image', 'show', MINIMAL]);
} catch {
  banger(['image', 'build', MINIMAL, '--minimal']);
}
banger(['vm', 'run', '--rm', '--', 'true']); // warm: probe cached, daemon up
for (let i = 0; i < runs; i++) {
  b.push(timeIt(() => banger(['vm', 'run', '--rm', '--', 'true'])));
  base.push(await handRun());
  minimal.push(timeIt(() => banger(['vm', 'run', '--rm', '--image', MINIMAL, '--', 'true'])));
  noAgent.push(timeIt(() => banger(['vm', 'run', '--rm', '--no-agent', '--', 'true'])));
}
report('vm run --rm -- true (boot to first command, delete)', b, base, 'hand-run qemu + wait for ssh + ssh true');
report('boot: the default (developer) image against --minimal', b, minimal, `vm run --rm --image ${MINIMAL} -- true`);
report('boot: with the guest agent against --no-agent', b, noAgent, 'vm run --rm --no-agent -- true');
