/**
 * Two real guests on TapNetwork taps, all inside a network namespace this test creates and deletes:
 * the guests boot banger's image under QEMU (TCG) launched with `ip netns exec`, with the QEMU argv from
 * qemuArgv (tap mode) and the seed from buildSeedTar carrying the addresses attach() handed out. Shows
 * what the isolation promises: a guest reaches banger's DNS port on the bridge address, but not another
 * host port there and not the other guest, while the host side reaches both guests.
 *
 * Needs root, QEMU, ssh and a built image. The image is looked up in $BANGER_TAP_TEST_IMAGE_DIR (a dir
 * with vmlinuz, initrd.img, rootfs.ext4) or under /var/cache/banger-test/e2e-home/images/. Skipped,
 * with the reason printed, when any of that is missing. No traffic leaves the namespace: egress is off
 * and nothing is sent to an address outside the bridge subnet.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { runCommand, type CommandRunner } from '../../src/shared/command.js';
import { guestKernelArgs, hostTscKhz } from '../../src/daemon/guest/init/cmdline.js';
import { READY_MARKER } from '../../src/daemon/guest/init/contract.js';
import { generateEd25519 } from '../../src/daemon/guest/keys.js';
import { TapNetwork, type TapAttachment } from '../../src/daemon/services/network/tap.js';
import { buildSeedTar } from '../../src/daemon/services/vm/seed.js';
import { qemuArgv } from '../../src/daemon/vmm/qemu/argv.js';
import { silentLogger } from '../../src/shared/logger.js';
import { scratchDir } from '../helpers/scratch.js';

const IMAGE_FILES = ['vmlinuz', 'initrd.img', 'rootfs.ext4'];

function findImageDir(): string | undefined {
  const explicit = process.env.BANGER_TAP_TEST_IMAGE_DIR;
  if (explicit) return explicit;
  const root = '/var/cache/banger-test/e2e-home/images';
  if (!existsSync(root)) return undefined;
  return readdirSync(root)
    .map((d) => join(root, d))
    .find((d) => IMAGE_FILES.every((f) => existsSync(join(d, f))));
}

function skipReason(): string | false {
  if (process.getuid?.() !== 0) return 'needs root (creates a network namespace)';
  for (const [cmd, arg] of [
    ['ip', '-V'],
    ['nft', '--version'],
    ['qemu-system-x86_64', '--version'],
    ['qemu-img', '--version'],
    ['ssh', '-V'],
  ]) {
    try {
      execFileSync(cmd!, [arg!], { stdio: 'ignore' });
    } catch {
      return `${cmd} is not installed`;
    }
  }
  const dir = findImageDir();
  if (!dir || !IMAGE_FILES.every((f) => existsSync(join(dir, f))))
    return 'no built image: set BANGER_TAP_TEST_IMAGE_DIR or build the e2e image';
  return false;
}

const skip = skipReason();
if (skip) process.stderr.write(`skipping tap VM tests: ${skip}\n`);

interface Guest {
  name: string;
  net: TapAttachment;
  ip: string;
  qemu?: ChildProcess;
  console: string;
}

void describe('two guests on banger taps inside a test network namespace', { skip, timeout: 600_000 }, () => {
  const ns = `banger-t-${randomBytes(4).toString('hex')}`;
  const inNs: CommandRunner = (cmd, args, opts) => runCommand('ip', ['netns', 'exec', ns, cmd, ...args], opts);
  let dir: string;
  let net: TapNetwork;
  let listener: ChildProcess | undefined;
  const guests: Guest[] = [];
  let clientKey: string;
  let failed = false;

  /** Runs `script` in a guest over SSH from the namespace; resolves with the exit code. */
  const inGuest = async (g: Guest, script: string): Promise<number> => {
    const r = await inNs(
      'ssh',
      [
        '-i',
        clientKey,
        '-o',
        `UserKnownHostsFile=${join(dir, 'known_hosts')}`,
        '-o',
        'StrictHostKeyChecking=yes',
        '-o',
        'BatchMode=yes',
        '-o',
        'ConnectTimeout=5',
        `root@${g.ip}`,
        script,
      ],
      { allowFailure: true },
    );
    return r.code;
  };
  /** The bridge's IPv6 link-local address, as a guest on the bridge would dial it. */
  const bridgeLinkLocal = async () => {
    const out = (await inNs('ip', ['-6', '-o', 'addr', 'show', 'dev', 'banger0', 'scope', 'link'])).stdout;
    const m = /inet6 (fe80::[0-9a-f:]+)\//.exec(out);
    assert.ok(m, `the bridge has no IPv6 link-local address: ${out}`);
    return m[1]!;
  };
  const tcpFromNs = async (addr: string, port: number) =>
    (await inNs('timeout', ['3', 'bash', '-c', `echo > /dev/tcp/${addr}/${port}`], { allowFailure: true })).code;

  before(async () => {
    const imageDir = findImageDir()!;
    dir = scratchDir('banger-tap-vms-');
    await runCommand('ip', ['netns', 'add', ns]);
    await inNs('ip', ['link', 'set', 'lo', 'up']);
    net = new TapNetwork({
      run: inNs,
      statePath: join(dir, 'tap.json'),
      config: { bridge: 'banger0', subnet: '172.30.0.0/24' },
      log: silentLogger(),
    });
    await net.up();

    // Something listening on the bridge address: port 53 (allowed to guests) and 8080 (not allowed), and
    // on every address (including the bridge's IPv6 link-local one) port 8081 (not allowed).
    listener = spawn(
      'ip',
      [
        'netns',
        'exec',
        ns,
        process.execPath,
        '-e',
        // Accepts and closes; a peer that resets first must not end the listener.
        "const n=require('net');const h=s=>{s.on('error',()=>{});s.destroy();};for(const p of [53,8080])n.createServer(h).listen(p,'172.30.0.1');n.createServer(h).listen(8081,'::');",
      ],
      { stdio: 'ignore' },
    );

    const client = generateEd25519('banger-test');
    clientKey = join(dir, 'id');
    await writeFile(clientKey, client.privateKey, { mode: 0o600 });
    const tscKhz = hostTscKhz(await readFile('/proc/cpuinfo', 'utf8'));
    let knownHosts = '';
    for (const name of ['a', 'b']) {
      const vmId = `tapvm${name}${randomBytes(3).toString('hex')}`;
      const attachment = await net.attach(vmId, { egress: false });
      const ip = attachment.guestCidr.split('/')[0]!;
      const vdir = join(dir, name);
      await runCommand('mkdir', ['-p', vdir]);
      await runCommand('qemu-img', [
        'create',
        '-q',
        '-f',
        'qcow2',
        '-b',
        join(imageDir, 'rootfs.ext4'),
        '-F',
        'raw',
        join(vdir, 'root.qcow2'),
      ]);
      await runCommand('truncate', ['-s', '512M', join(vdir, 'work.ext4')]);
      await runCommand('mkfs.ext4', ['-q', '-F', '-L', 'work', join(vdir, 'work.ext4')]);
      const hostKey = generateEd25519(`${name}.vm`);
      knownHosts += `${ip} ${hostKey.publicKey}\n`;
      await writeFile(
        join(vdir, 'seed.tar'),
        await buildSeedTar({
          hostname: `tap-${name}`,
          ipCidr: attachment.guestCidr,
          gateway: attachment.gateway,
          dns: attachment.dns,
          hostPrivateKey: hostKey.privateKey,
          hostPublicKey: hostKey.publicKey,
          authorizedKeys: client.publicKey,
        }),
      );
      const g: Guest = { name, net: attachment, ip, console: join(vdir, 'console.log') };
      const argv = qemuArgv({
        vmId,
        name,
        vcpus: 1,
        memoryMib: 512,
        accel: 'tcg',
        kernelPath: join(imageDir, 'vmlinuz'),
        initrdPath: join(imageDir, 'initrd.img'),
        kernelCmdline: guestKernelArgs({ tscKhz }).join(' '),
        disks: [
          { id: 'root', path: join(vdir, 'root.qcow2'), format: 'qcow2', readOnly: false },
          { id: 'work', path: join(vdir, 'work.ext4'), format: 'raw', readOnly: false },
          { id: 'seed', path: join(vdir, 'seed.tar'), format: 'raw', readOnly: true },
        ],
        network: { mode: 'tap', tapName: attachment.tapName, mac: attachment.mac },
        consoleLogPath: g.console,
        vmmLogPath: join(vdir, 'vmm.log'),
        controlSocketPath: join(vdir, 'qmp.sock'),
      });
      // `ip netns exec` execs QEMU, so the child's pid is QEMU's.
      g.qemu = spawn('ip', ['netns', 'exec', ns, 'qemu-system-x86_64', ...argv], { stdio: 'ignore' });
      guests.push(g);
    }
    await writeFile(join(dir, 'known_hosts'), knownHosts);
    for (const g of guests) {
      const until = Date.now() + 300_000;
      for (;;) {
        const text = await readFile(g.console, 'utf8').catch(() => '');
        if (text.includes(READY_MARKER)) break;
        if (g.qemu?.exitCode !== null) throw new Error(`guest ${g.name} exited during boot:\n${text}`);
        if (Date.now() > until) throw new Error(`guest ${g.name} not ready in 300 s:\n${text}`);
        await sleep(250);
      }
    }
  });

  after(async () => {
    if (failed)
      for (const g of guests)
        process.stderr.write(`--- console of guest ${g.name}:\n${await readFile(g.console, 'utf8').catch(() => '')}\n`);
    for (const g of guests) {
      if (g.qemu && g.qemu.exitCode === null) {
        const exited = new Promise((r) => g.qemu!.once('exit', r));
        g.qemu.kill('SIGKILL');
        await exited;
      }
    }
    if (listener && listener.exitCode === null) listener.kill('SIGKILL');
    await net?.down().catch(() => undefined);
    await runCommand('ip', ['netns', 'del', ns], { allowFailure: true });
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  /** A test that flags failure, so after() prints the guests' consoles. */
  const check = (name: string, fn: () => Promise<void>): void => {
    void test(name, async () => {
      try {
        await fn();
      } catch (e) {
        failed = true;
        throw e;
      }
    });
  };

  check('the host side reaches both guests (SSH port)', async () => {
    const [a, b] = guests;
    assert.equal(await tcpFromNs(a!.ip, 22), 0);
    assert.equal(await tcpFromNs(b!.ip, 22), 0);
    assert.equal(await inGuest(a!, 'true'), 0, 'ssh into guest a');
  });

  check('a guest has the address, route and resolver from its seed', async () => {
    const [a] = guests;
    assert.equal(await inGuest(a!, `ip -4 -o addr show dev eth0 | grep -q ' ${a!.net.guestCidr} '`), 0);
    assert.equal(await inGuest(a!, `ip route | grep -q '^default via ${a!.net.gateway} '`), 0);
    assert.equal(await inGuest(a!, `grep -qx 'nameserver ${a!.net.dns}' /etc/resolv.conf`), 0);
  });

  check('a guest reaches banger DNS port on the bridge address, and no other port there', async () => {
    const [a] = guests;
    assert.equal(await inGuest(a!, `timeout 3 bash -c 'echo > /dev/tcp/${a!.net.gateway}/53'`), 0, 'port 53');
    assert.notEqual(await inGuest(a!, `timeout 3 bash -c 'echo > /dev/tcp/${a!.net.gateway}/8080'`), 0, 'port 8080');
    // The listener on 8080 is really there: the namespace itself reaches it.
    assert.equal(await tcpFromNs(a!.net.gateway, 8080), 0);
    // No way around it over IPv6 link-local either.
    const ll = await bridgeLinkLocal();
    assert.notEqual(await inGuest(a!, `timeout 3 bash -c 'echo > /dev/tcp/${ll}%eth0/8081'`), 0, 'IPv6 8081');
    assert.equal(await tcpFromNs(`${ll}%banger0`, 8081), 0);
  });

  check('a guest cannot reach the other guest', async () => {
    const [a, b] = guests;
    assert.notEqual(await inGuest(a!, `timeout 3 bash -c 'echo > /dev/tcp/${b!.ip}/22'`), 0, 'a -> b:22');
    assert.notEqual(await inGuest(b!, `timeout 3 bash -c 'echo > /dev/tcp/${a!.ip}/22'`), 0, 'b -> a:22');
  });

  check('a guest sending from an address it was not given is cut off', async () => {
    const [, b] = guests;
    const gw = b!.net.gateway;
    // New connections to the gateway leave with a made-up source address (the SSH session keeps its
    // own); they must fail, and work again once the guest uses its own address. Posing as another
    // address is what would let a guest borrow another VM's NAT.
    const script = [
      'ip addr add 172.30.0.77/32 dev eth0',
      `ip route add ${gw}/32 dev eth0 src 172.30.0.77`,
      `timeout 3 bash -c 'echo > /dev/tcp/${gw}/53'; spoofed=$?`,
      `ip route del ${gw}/32 dev eth0`,
      'ip addr del 172.30.0.77/32 dev eth0',
      `timeout 3 bash -c 'echo > /dev/tcp/${gw}/53'; own=$?`,
      'echo "spoofed=$spoofed own=$own"',
      '[ "$spoofed" != 0 ] && [ "$own" = 0 ]',
    ].join('; ');
    assert.equal(await inGuest(b!, script), 0);
  });

  check('control: without banger isolation the same probes succeed (so the checks above test it)', async () => {
    const [a, b] = guests;
    await inNs('nft', ['delete', 'table', 'inet', 'banger']);
    assert.equal(await inGuest(a!, `timeout 3 bash -c 'echo > /dev/tcp/${a!.net.gateway}/8080'`), 0, 'port 8080');
    // Each layer holds on its own: the bridge-family drop without port isolation...
    await inNs('ip', ['link', 'set', 'dev', b!.net.tapName, 'type', 'bridge_slave', 'isolated', 'off']);
    assert.notEqual(await inGuest(a!, `timeout 3 bash -c 'echo > /dev/tcp/${b!.ip}/22'`), 0, 'a -> b:22, nft only');
    // ...and port isolation without the nft table.
    await inNs('ip', ['link', 'set', 'dev', b!.net.tapName, 'type', 'bridge_slave', 'isolated', 'on']);
    await inNs('nft', ['delete', 'table', 'bridge', 'banger']);
    assert.notEqual(
      await inGuest(a!, `timeout 3 bash -c 'echo > /dev/tcp/${b!.ip}/22'`),
      0,
      'a -> b:22, isolation only',
    );
    await inNs('ip', ['link', 'set', 'dev', b!.net.tapName, 'type', 'bridge_slave', 'isolated', 'off']);
    assert.equal(await inGuest(a!, `timeout 3 bash -c 'echo > /dev/tcp/${b!.ip}/22'`), 0, 'a -> b:22');
    const ll = await bridgeLinkLocal();
    assert.equal(await inGuest(a!, `timeout 3 bash -c 'echo > /dev/tcp/${ll}%eth0/8081'`), 0, 'IPv6 8081');
  });
});
