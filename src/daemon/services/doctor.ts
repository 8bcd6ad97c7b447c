import { statfs, stat } from 'node:fs/promises';
import type { DoctorCheck, DoctorReport } from '../../protocol/daemon.js';
import type { Paths } from '../../shared/paths.js';
import type { CommandRunner } from '../../shared/command.js';
import type { DriverRegistry } from '../vmm/driver.js';

export interface DoctorDeps {
  paths: Paths;
  drivers: DriverRegistry;
  run: CommandRunner;
  /** The cached or probed KVM verdict; undefined when no image exists to probe with yet. */
  kvm: (signal?: AbortSignal) => Promise<{ usable: boolean; reason: string } | undefined>;
  /** Whether tap networking can work here. */
  tapSupported: (signal?: AbortSignal) => Promise<{ ok: boolean; reason?: string }>;
  /** What a normal user's image builds need (image/rootless-checks.ts); undefined for a root daemon. */
  rootless?: ((signal?: AbortSignal) => Promise<DoctorCheck[]>) | undefined;
  /** Where this daemon's loopback VMs and DNS server live (user-network.ts), for the loopback check. */
  loopback?: { range: string; dns: string };
}

/** Checks the host for what banger needs; each failing check says how to fix it. */
export class DoctorService {
  constructor(private readonly d: DoctorDeps) {}

  async run(signal?: AbortSignal): Promise<DoctorReport> {
    const checks: DoctorCheck[] = [];
    const tool = async (name: string, bin: string, args: string[], pkg: string, required: boolean) => {
      const r = await this.d.run(bin, args, { allowFailure: true, signal }).catch(() => undefined);
      if (r && r.code === 0) checks.push({ name, status: 'ok', detail: (r.stdout || r.stderr).split('\n')[0]!.trim() });
      else
        checks.push({
          name,
          status: required ? 'fail' : 'warn',
          detail: `${bin} not found`,
          fix: `apt-get install ${pkg}`,
        });
    };
    await tool('qemu', 'qemu-system-x86_64', ['-version'], 'qemu-system-x86', true);
    await tool('qemu-img', 'qemu-img', ['--version'], 'qemu-utils', true);
    await tool('mmdebstrap', 'mmdebstrap', ['--version'], 'mmdebstrap', true);
    await tool('mkfs.ext4', 'mkfs.ext4', ['-V'], 'e2fsprogs', true);
    await tool('openssh client', 'ssh', ['-V'], 'openssh-client', false);

    if (this.d.rootless) checks.push(...(await this.d.rootless(signal)));

    const kvm = await this.d.kvm(signal);
    if (kvm === undefined)
      checks.push({
        name: 'kvm',
        status: 'warn',
        detail: 'not probed yet: the probe boots the image kernel, and no image is built',
        fix: 'run `banger image build` (or any `banger vm run`), then `banger doctor` again',
      });
    else if (kvm.usable) checks.push({ name: 'kvm', status: 'ok', detail: kvm.reason });
    else
      checks.push({
        name: 'kvm',
        status: 'warn',
        detail: `not usable: ${kvm.reason}; VMs use software emulation (TCG), which is slower`,
        fix: 'enable hardware virtualisation (nested virtualisation on a cloud VM) and give this user access to /dev/kvm',
      });

    const fc = this.d.drivers.get('firecracker');
    if (fc) {
      const a = await fc.availability(signal);
      checks.push(
        a.ok
          ? { name: 'firecracker', status: 'ok', detail: a.binary ?? 'present' }
          : {
              name: 'firecracker',
              status: 'warn',
              detail: `not available: ${a.reason ?? 'unknown'}; QEMU is used instead`,
              fix: 'install the firecracker binary on PATH (needs usable KVM)',
            },
      );
    }

    checks.push({
      name: 'network: loopback',
      status: 'ok',
      detail: this.d.loopback
        ? `an address per VM from ${this.d.loopback.range}, DNS on ${this.d.loopback.dns}, QEMU user networking (restrict=on unless --egress)`
        : 'a 127.77.x.y address per VM, QEMU user networking (restrict=on unless --egress)',
    });
    const tap = await this.d.tapSupported(signal);
    checks.push(
      tap.ok
        ? { name: 'network: tap', status: 'ok', detail: 'bridge, taps and nftables isolation can be set up' }
        : {
            name: 'network: tap',
            status: 'warn',
            detail: `not available: ${tap.reason ?? 'unknown'}`,
            fix: 'run bangerd as root on a host with /dev/net/tun, iproute2 and nftables (apt-get install nftables)',
          },
    );

    try {
      const fs = await statfs(this.d.paths.root);
      const freeGiB = (fs.bavail * fs.bsize) / 2 ** 30;
      checks.push(
        freeGiB >= 5
          ? { name: 'disk space', status: 'ok', detail: `${freeGiB.toFixed(1)} GiB free under ${this.d.paths.root}` }
          : {
              name: 'disk space',
              status: freeGiB >= 2 ? 'warn' : 'fail',
              detail: `${freeGiB.toFixed(1)} GiB free under ${this.d.paths.root}; an image needs ~2 GiB, each VM more`,
              fix: 'free space, or point BANGER_HOME at a larger filesystem',
            },
      );
    } catch (e) {
      checks.push({ name: 'disk space', status: 'fail', detail: String(e), fix: `create ${this.d.paths.root}` });
    }

    const perm = async (name: string, path: string, wantMode: number) => {
      try {
        const st = await stat(path);
        const mode = st.mode & 0o777;
        const tooOpen = (mode & 0o077) !== 0;
        checks.push(
          tooOpen
            ? {
                name,
                status: 'fail',
                detail: `${path} is mode ${mode.toString(8)}: others can reach it`,
                fix: `chmod ${wantMode.toString(8)} ${path}`,
              }
            : { name, status: 'ok', detail: `${path} mode ${mode.toString(8)}, owner uid ${st.uid}` },
        );
      } catch {
        checks.push({ name, status: 'fail', detail: `${path} is missing`, fix: 'restart bangerd: `banger daemon stop`' });
      }
    };
    await perm('state directory', this.d.paths.root, 0o700);
    await perm('daemon socket', this.d.paths.socket, 0o600);
    await perm('ssh key', this.d.paths.sshPrivateKey, 0o600);

    return { ok: checks.every((c) => c.status !== 'fail'), checks };
  }
}
