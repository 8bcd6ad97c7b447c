import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { BangerError, ErrorCode } from '../../src/errors/index.js';
import { guestKernelArgs, hostTscKhz } from '../../src/daemon/guest/init/cmdline.js';
import {
  PROBE_MARKER,
  READY_MARKER,
  SEED_DISK_SERIAL,
  SEED_FILES,
  WORK_DISK_SERIAL,
} from '../../src/daemon/guest/init/contract.js';
import {
  GUEST_PATHS,
  INITTAB,
  POWEROFF,
  PROFILE,
  RUN_AGENT,
  SHUTDOWN,
  SSHD_CONFIG,
  guestFiles,
  withGuestEnvironment,
} from '../../src/daemon/guest/init/scripts.js';
import { SYSINIT } from '../../src/daemon/guest/init/sysinit.js';
import { initrdInit } from '../../src/daemon/guest/init/initrd.js';
import {
  BASE_PACKAGES,
  cpioArgs,
  defaultRootfsSizeMib,
  kernelVersions,
  mkfsArgs,
  mmdebstrapArgs,
  DEVELOPER_PACKAGES,
  mountsUnder,
  validateBuildParams,
} from '../../src/daemon/services/image/build.js';
import { DEFAULT_DEBIAN_MIRROR, hostMirror } from '../../src/daemon/services/image/mirror.js';
import { resolveModules } from '../../src/daemon/services/image/modules.js';
import { buildSeedTar } from '../../src/daemon/services/vm/seed.js';
import { scratchDir } from '../helpers/scratch.js';

void describe('mmdebstrapArgs', () => {
  void it('builds a trimmed minbase bootstrap with the base and extra packages', () => {
    const args = mmdebstrapArgs({
      suite: 'bookworm',
      mirror: 'http://deb.debian.org/debian',
      packages: ['build-essential', 'git'],
      targetDir: '/x/rootfs.d',
      minimal: true,
    });
    assert.equal(args[0], '--variant=minbase');
    assert.equal(args[1], `--include=${[...BASE_PACKAGES, 'build-essential'].join(',')}`);
    assert.ok(args.includes('--dpkgopt=path-exclude=/usr/share/doc/*'));
    // The include of copyright files must come after the doc exclude to win.
    assert.ok(
      args.indexOf('--dpkgopt=path-include=/usr/share/doc/*/copyright') >
        args.indexOf('--dpkgopt=path-exclude=/usr/share/doc/*'),
    );
    assert.deepEqual(args.slice(-3), ['bookworm', '/x/rootfs.d', 'http://deb.debian.org/debian']);
    for (const p of ['linux-image-cloud-amd64', 'openssh-server', 'busybox-static', 'kmod', 'iproute2'])
      assert.ok(BASE_PACKAGES.includes(p as (typeof BASE_PACKAGES)[number]), p);
  });
});

void describe('mmdebstrapArgs: the developer set and the package cache', () => {
  const base = { suite: 'bookworm', mirror: 'http://deb.debian.org/debian', packages: ['sl'], targetDir: '/x/r' };
  void it('adds Docker, the toolchain and everyday tools unless minimal, each once', () => {
    const include = mmdebstrapArgs(base)[1]!.replace('--include=', '').split(',');
    for (const p of ['docker.io', 'build-essential', 'curl', 'jq', 'ripgrep', 'tmux', 'sl', 'openssh-server'])
      assert.ok(include.includes(p), p);
    assert.equal(new Set(include).size, include.length);
    assert.deepEqual(include, [...new Set([...BASE_PACKAGES, ...DEVELOPER_PACKAGES, 'sl'])]);
  });
  void it('fills the archive from the cache before apt runs, keeps essential debs and copies it back', () => {
    const args = mmdebstrapArgs({ ...base, aptCacheDir: '/h/cache/apt-archives' });
    for (const a of [
      '--skip=download/empty',
      '--skip=essential/unlink',
      '--setup-hook=sync-in /h/cache/apt-archives /var/cache/apt/archives/',
      '--customize-hook=sync-out /var/cache/apt/archives /h/cache/apt-archives',
    ])
      assert.ok(args.includes(a), a);
    assert.ok(
      args.indexOf('--setup-hook=mkdir -p "$1"/var/cache/apt/archives/') <
        args.indexOf('--setup-hook=sync-in /h/cache/apt-archives /var/cache/apt/archives/'),
    );
    assert.ok(!mmdebstrapArgs(base).some((a) => a.includes('sync-')));
  });
});

void describe('validateBuildParams', () => {
  const ok = {
    name: 'default',
    packages: ['python3', 'libc6=2.36-9'],
    suite: 'bookworm',
    mirror: 'http://deb.debian.org/debian',
  };
  void it('accepts ordinary parameters', () => validateBuildParams(ok));
  void it('rejects package names that could become options or lists', () => {
    for (const bad of ['--foo', 'a,b', 'Foo', 'x y', ''])
      assert.throws(() => validateBuildParams({ ...ok, packages: [bad] }), { code: 'InvalidArgument' });
  });
  void it('rejects bad suites, mirrors and sizes', () => {
    assert.throws(() => validateBuildParams({ ...ok, suite: 'bookworm main' }), { code: 'InvalidArgument' });
    assert.throws(() => validateBuildParams({ ...ok, mirror: 'deb.debian.org' }), { code: 'InvalidArgument' });
    assert.throws(() => validateBuildParams({ ...ok, sizeMib: 1.5 }), { code: 'InvalidArgument' });
  });
});

void describe('mkfsArgs / cpioArgs', () => {
  void it('pins mkfs.ext4', () => {
    assert.deepEqual(mkfsArgs('/b/rootfs.d', '/b/rootfs.ext4', 2048), [
      '-q',
      '-F',
      '-L',
      'rootfs',
      '-d',
      '/b/rootfs.d',
      '-E',
      'root_owner=0:0',
      '/b/rootfs.ext4',
      '2048M',
    ]);
  });
  void it('passes paths as positional arguments, never inside the script', () => {
    const args = cpioArgs('/d i r', '/o u t');
    assert.equal(args[0], '-c');
    assert.match(args[1] ?? '', /cpio --null -o -H newc -R 0:0/);
    assert.match(args[1] ?? '', /pipefail/);
    assert.deepEqual(args.slice(3), ['/d i r', '/o u t']);
  });
  void it('builds a newc cpio a busybox-style reader can list', (t) => {
    const dir = scratchDir('banger-cpio-');
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    execFileSync('mkdir', ['-p', join(dir, 'tree/bin')]);
    writeFileSync(join(dir, 'tree/init'), '#!/bin/sh\n');
    const [, script, name, src, out] = cpioArgs(join(dir, 'tree'), join(dir, 'out.cpio.gz'));
    execFileSync('bash', ['-c', script ?? '', name ?? '', src ?? '', out ?? '']);
    const listing = execFileSync('bash', ['-c', `zcat "$1" | cpio -t --quiet`, 'x', out ?? ''], { encoding: 'utf8' });
    assert.deepEqual(listing.trim().split('\n'), ['.', 'bin', 'init']);
  });
});

void describe('defaultRootfsSizeMib', () => {
  void it('leaves about 1 GiB free and rounds to 64 MiB', () => {
    const size = defaultRootfsSizeMib(500 * 2 ** 20);
    assert.equal(size % 64, 0);
    assert.ok(size >= 500 * 1.1 + 1024 + 64);
    assert.ok(size < 500 * 1.1 + 1024 + 64 + 64);
  });
});

void describe('kernelVersions', () => {
  void it('finds vmlinuz versions, newest last', () => {
    assert.deepEqual(
      kernelVersions([
        'config-6.1.0-9-cloud-amd64',
        'vmlinuz-6.1.0-10-cloud-amd64',
        'vmlinuz-6.1.0-9-cloud-amd64',
        'initrd.img-6.1.0-9-cloud-amd64',
      ]),
      ['6.1.0-9-cloud-amd64', '6.1.0-10-cloud-amd64'],
    );
  });
});

void describe('mountsUnder', () => {
  void it('lists mounts inside a directory, deepest first, decoding escapes', () => {
    const info = [
      '22 1 254:0 / / rw,relatime - ext4 /dev/vda rw',
      '90 22 0:5 / /b/rootfs.d/dev rw - devtmpfs udev rw',
      '91 90 0:6 / /b/rootfs.d/dev/pts rw - devpts devpts rw',
      '92 22 0:7 / /b/rootfs.d2 rw - tmpfs t rw',
      '93 22 0:8 / /b/rootfs.d/with\\040space rw - tmpfs t rw',
    ].join('\n');
    assert.deepEqual(mountsUnder(info, '/b/rootfs.d'), [
      '/b/rootfs.d/with space',
      '/b/rootfs.d/dev/pts',
      '/b/rootfs.d/dev',
    ]);
  });
});

void describe('hostMirror', () => {
  void it('reads the one-line format, skipping deb-src, security and options', () => {
    const list = [
      '# comment',
      'deb-src http://src.example/debian bookworm main',
      'deb http://security.debian.org/debian-security bookworm-security main',
      'deb [arch=amd64 signed-by=/k.gpg] http://ftp.fr.debian.org/debian/ bookworm main contrib',
    ].join('\n');
    assert.equal(hostMirror(list), 'http://ftp.fr.debian.org/debian');
  });
  void it('reads deb822 .sources, ignoring comment lines and disabled entries', () => {
    const sources = [
      'Types: deb',
      '# http://snapshot.debian.org/archive/debian/20250520T000000Z',
      'URIs: http://mirror.example/debian',
      'Suites: bookworm',
      'Enabled: no',
      '',
      'Types: deb deb-src',
      '# http://snapshot.debian.org/archive/debian/20250520T000000Z',
      'URIs: http://deb.debian.org/debian',
      'Suites: bookworm bookworm-updates',
      'Components: main',
      'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg',
      '',
      'Types: deb',
      'URIs: http://deb.debian.org/debian-security',
      'Suites: bookworm-security',
    ].join('\n');
    assert.equal(hostMirror(sources), 'http://deb.debian.org/debian');
  });
  void it('ignores third-party repositories and falls back to the default mirror', () => {
    assert.equal(hostMirror('deb https://deb.nodesource.com/node_20.x nodistro main\n'), DEFAULT_DEBIAN_MIRROR);
    assert.equal(hostMirror(), DEFAULT_DEBIAN_MIRROR);
  });
  void it('prefers a Debian archive over a third-party one listed first', () => {
    assert.equal(
      hostMirror(
        'deb https://deb.nodesource.com/node_20.x nodistro main\n',
        'deb http://mirror.local/debian bookworm main\n',
      ),
      'http://mirror.local/debian',
    );
  });
});

void describe('hostTscKhz / guestKernelArgs', () => {
  void it('reads the first cpu MHz line', () => {
    assert.equal(hostTscKhz('processor\t: 0\ncpu MHz\t\t: 2599.998\ncache size\t: 1 KB\ncpu MHz\t\t: 1.0\n'), 2599998);
    assert.equal(hostTscKhz('processor\t: 0\n'), undefined);
  });
  void it('gives the base command line, plus TSC hints when the clock is known', () => {
    assert.deepEqual(guestKernelArgs(), [
      'console=ttyS0',
      'root=/dev/vda',
      'rw',
      'rootfstype=ext4',
      'net.ifnames=0',
      'panic=-1',
      'quiet',
    ]);
    const withTsc = guestKernelArgs({ tscKhz: 2599998 });
    // CONFIG_HZ=250 in Debian's cloud kernel: lpj = kHz * 1000 / 250.
    assert.deepEqual(withTsc.slice(-3), ['tsc_early_khz=2599998', 'lpj=10399992', 'tsc=reliable']);
    assert.equal(guestKernelArgs({ probe: true }).at(-1), 'banger.probe=1');
    assert.equal(guestKernelArgs({ aslr: false }).at(-1), 'norandmaps');
    assert.ok(!guestKernelArgs({ aslr: true }).includes('norandmaps'));
  });
});

void describe('resolveModules', () => {
  const dep = [
    'kernel/drivers/virtio/virtio.ko:',
    'kernel/drivers/virtio/virtio_ring.ko:',
    'kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko',
    'kernel/drivers/block/virtio_blk.ko.xz: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko',
    'kernel/net/core/failover.ko:',
    'kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko',
    'kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko',
    'kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko',
  ].join('\n');
  void it('orders dependencies first and names modules canonically', () => {
    const mods = resolveModules(dep, 'kernel/fs/ext4/ext4.ko\n', [
      'virtio_mmio',
      'virtio_blk',
      'virtio_net',
      'virtio-rng',
      'ext4',
    ]);
    const names = mods.map((m) => m.name);
    assert.deepEqual(names, [
      'virtio',
      'virtio_ring',
      'virtio_mmio',
      'virtio_blk',
      'failover',
      'net_failover',
      'virtio_net',
      'virtio_rng',
    ]);
    assert.equal(mods.find((m) => m.name === 'virtio_blk')?.path, 'kernel/drivers/block/virtio_blk.ko.xz');
  });
  void it('throws for a module that is neither loadable nor built in', () => {
    assert.throws(() => resolveModules(dep, '', ['virtio_console']), /virtio_console/);
  });
  void it('a missing module is a FailedPrecondition naming the module, kernel and image, with the rebuild command', () => {
    assert.throws(
      () =>
        resolveModules(dep, '', ['virtio_net', 'virtio_console'], {
          image: 'dev',
          kernelVersion: '6.1.0-9-cloud-amd64',
        }),
      (e: unknown) =>
        e instanceof BangerError &&
        e.code === ErrorCode.FailedPrecondition &&
        /virtio_console/.test(e.message) &&
        /kernel 6\.1\.0-9-cloud-amd64 of image 'dev'/.test(e.message) &&
        (e.hint ?? '').includes('banger image build --force dev'),
    );
  });
});

void describe('guest scripts', () => {
  void it('initrd: probe marker before any module, insmod in order, switch_root into the guest init', () => {
    const s = initrdInit(['virtio.ko', 'virtio_blk.ko']);
    assert.ok(s.startsWith('#!/bin/busybox sh\n'));
    assert.ok(s.indexOf(PROBE_MARKER) < s.indexOf('insmod'));
    assert.match(s, /banger\.probe=1\) probe=1/);
    assert.match(s, /poweroff -f/);
    assert.match(s, /for m in virtio\.ko virtio_blk\.ko; do/);
    assert.match(s, /exec switch_root \/newroot "\$init"/);
    assert.match(s, new RegExp(`init=${GUEST_PATHS.init}`));
  });
  void it("initrd: the command line's virtio_mmio.device= entries (Firecracker's devices) become virtio_mmio's insmod parameters", () => {
    const s = initrdInit(['kernel/drivers/virtio/virtio.ko', 'kernel/drivers/virtio/virtio_mmio.ko', 'kernel/drivers/block/virtio_blk.ko']);
    // The command-line parsing and the module loop, run under sh with insmod recorded.
    const part = s.slice(s.indexOf('root='), s.indexOf('i=0\nwhile'));
    const cmdline = 'console=ttyS0 reboot=k virtio_mmio.device=4K@0xd0000000:5 root=/dev/vda virtio_mmio.device=4K@0xd0001000:6';
    const script = `insmod() { echo "insmod $*"; }\nsay() { echo "say $*"; }\n${part.replace('$(cat /proc/cmdline)', cmdline)}`;
    const out = execFileSync('sh', ['-c', script], { encoding: 'utf8' });
    assert.deepEqual(out.trim().split('\n'), [
      'insmod /lib/modules/kernel/drivers/virtio/virtio.ko',
      'insmod /lib/modules/kernel/drivers/virtio/virtio_mmio.ko device=4K@0xd0000000:5 device=4K@0xd0001000:6',
      'insmod /lib/modules/kernel/drivers/block/virtio_blk.ko',
    ]);
  });
  void it('inittab: sysinit, sshd respawned, ready marker, shutdown action', () => {
    assert.match(INITTAB, /^::sysinit:\/usr\/lib\/banger\/sysinit$/m);
    assert.match(INITTAB, /^::respawn:/m);
    assert.match(INITTAB, /^::shutdown:\/usr\/lib\/banger\/shutdown$/m);
    assert.match(INITTAB, /^::ctrlaltdel:\/usr\/local\/sbin\/banger-poweroff$/m);
  });
  void it('sysinit follows the disk, seed, ssh and network contract', () => {
    for (const needle of [
      'mount -t devpts',
      'mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs /run',
      'mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /tmp',
      '/sys/block/vd*/serial',
      `find_disk ${SEED_DISK_SERIAL} /dev/vdc`,
      `find_disk ${WORK_DISK_SERIAL} /dev/vdb`,
      'tar -xf "$seed_dev" -C "$seed"',
      `sh -n "$seed/${SEED_FILES.env}"`,
      'e2fsck -p "$work_dev"',
      '"$work_dev" /root',
      '/usr/share/banger/root-skel/. /root/',
      `install_changed "$seed/${SEED_FILES.hostKey}" /etc/ssh/ssh_host_ed25519_key 0600`,
      `install_changed "$seed/${SEED_FILES.authorizedKeys}" /root/.ssh/authorized_keys 0600`,
      'install_changed() {',
      'chmod 0700 /root/.ssh',
      'ip link set lo up',
      'ip addr add "$BANGER_IP" dev eth0',
      'ip route add default via "$BANGER_GW" dev eth0',
      'nameserver $ns',
      '/proc/sys/kernel/hostname',
    ])
      assert.ok(SYSINIT.includes(needle), needle);
  });
  void it('shutdown stops everything, unmounts /root, goes read-only, powers off; poweroff detaches', () => {
    const order = ['kill -TERM -1', 'kill -KILL -1', 'umount /root', 'mount -o remount,ro /', 'poweroff -f'].map((n) =>
      SHUTDOWN.indexOf(n),
    );
    assert.ok(order.every((i) => i >= 0));
    assert.deepEqual(
      order,
      [...order].sort((a, b) => a - b),
    );
    assert.match(POWEROFF, /setsid -f .*kill -USR2 1.*<\/dev\/null >\/dev\/null 2>&1/);
  });
  void it('sshd: keys only, root allowed, no DNS, MISE_OFFLINE for every session', () => {
    for (const l of [
      'PermitRootLogin prohibit-password',
      'PasswordAuthentication no',
      'UseDNS no',
      'SetEnv MISE_OFFLINE=1',
    ])
      assert.match(SSHD_CONFIG, new RegExp(`^${l}$`, 'm'));
    assert.match(PROFILE, /export MISE_OFFLINE=1/);
    assert.equal(withGuestEnvironment('FOO=1\nMISE_OFFLINE=0\n'), 'FOO=1\nMISE_OFFLINE=1\n');
  });
  void it('run-agent starts the agent once sshd listens, niced, taking the normal priority back', () => {
    const wait = RUN_AGENT.indexOf(':0016 [0-9A-F]*:0000 0A');
    const start = RUN_AGENT.indexOf('exec nice -n 19 node');
    assert.ok(wait > 0 && start > wait);
    assert.match(RUN_AGENT.slice(start), /--priority 0\n$/);
  });
  void it('every script parses as POSIX sh', (t) => {
    const dir = scratchDir('banger-sh-');
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const scripts = [
      { path: 'initrd-init', content: initrdInit(['a.ko']) },
      ...guestFiles().filter((f) => f.content.startsWith('#!')),
    ];
    for (const s of scripts) {
      const p = join(dir, s.path.replace(/\//g, '_'));
      writeFileSync(p, s.content);
      execFileSync('sh', ['-n', p]);
    }
  });
  void it('mentions the ready marker the host waits for', () => {
    assert.ok(guestFiles().some((f) => f.content.includes(READY_MARKER)));
  });
});

void describe('seed disk assumptions', () => {
  const seedConfig = {
    hostname: 'vm-1',
    ipCidr: '10.0.2.15/24',
    gateway: '10.0.2.2',
    dns: '10.0.2.3',
    hostPrivateKey: 'PRIVATE',
    hostPublicKey: 'ssh-ed25519 AAAA host',
    authorizedKeys: "ssh-ed25519 AAAA it's me",
  };
  void it('tar stops at the end-of-archive marker and ignores the padding; env sources cleanly', async (t) => {
    const dir = scratchDir('banger-seed-');
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const tar = await buildSeedTar({ ...seedConfig, hostname: "it's-a-vm" });
    assert.equal(tar.length % 4096, 0);
    // Extra zeros after the archive, as a bigger block device would have.
    writeFileSync(join(dir, 'seed.img'), Buffer.concat([tar, Buffer.alloc(8192)]));
    for (const tool of [['tar'], ['busybox', 'tar']]) {
      const out = join(dir, `out-${tool.length}`);
      execFileSync('mkdir', ['-p', out]);
      const cmd = tool[0] ?? 'tar';
      try {
        execFileSync(cmd, [...tool.slice(1), '-xf', join(dir, 'seed.img'), '-C', out], { stdio: 'pipe' });
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') continue; // busybox not on this host
        throw e;
      }
      assert.equal(readFileSync(join(out, SEED_FILES.hostKey), 'utf8'), 'PRIVATE\n');
      assert.equal(readFileSync(join(out, SEED_FILES.authorizedKeys), 'utf8'), "ssh-ed25519 AAAA it's me\n");
      const env = execFileSync(
        'sh',
        [
          '-c',
          'sh -n "$1/env" && . "$1/env" && printf "%s|%s|%s|%s" "$BANGER_HOSTNAME" "$BANGER_IP" "$BANGER_GW" "$BANGER_DNS"',
          'sh',
          out,
        ],
        { encoding: 'utf8' },
      );
      assert.equal(env, "it's-a-vm|10.0.2.15/24|10.0.2.2|10.0.2.3");
    }
  });
  void it('carries the daemon\'s guest agent byte for byte when given one, and none otherwise', async (t) => {
    const dir = scratchDir('banger-seed-');
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const agent = Buffer.concat([Buffer.from('#!/usr/bin/env node\n'), randomBytesForSeed(300_000)]);
    for (const [name, tar] of [
      ['with', await buildSeedTar({ ...seedConfig, agent })],
      ['without', await buildSeedTar(seedConfig)],
    ] as const) {
      const out = join(dir, name);
      execFileSync('mkdir', ['-p', out]);
      writeFileSync(join(dir, `${name}.img`), tar);
      execFileSync('tar', ['-xf', join(dir, `${name}.img`), '-C', out]);
      if (name === 'with') assert.ok(readFileSync(join(out, SEED_FILES.agent)).equals(agent));
      else assert.throws(() => readFileSync(join(out, SEED_FILES.agent)), /ENOENT/);
    }
  });
});

function randomBytesForSeed(n: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 2654435761) >>> 24;
  return b;
}
