import { homedir } from 'node:os';
import { join } from 'node:path';

/**
 * Every on-disk path banger uses is built here, from one root: BANGER_HOME, or /var/lib/banger for root,
 * or $XDG_DATA_HOME/banger (default ~/.local/share/banger) for anyone else.
 */
export function resolveBangerHome(env: NodeJS.ProcessEnv = process.env, uid = process.getuid?.() ?? 0): string {
  if (env.BANGER_HOME) return env.BANGER_HOME;
  if (uid === 0) return '/var/lib/banger';
  const data = env.XDG_DATA_HOME || join(env.HOME || homedir(), '.local', 'share');
  return join(data, 'banger');
}

export class Paths {
  constructor(readonly root: string) {}

  static fromEnv(env: NodeJS.ProcessEnv = process.env): Paths {
    return new Paths(resolveBangerHome(env));
  }

  get socket(): string {
    return join(this.root, 'bangerd.sock');
  }
  /** Held by the running daemon (an SQLite exclusive lock): one daemon per state directory. */
  get daemonLock(): string {
    return join(this.root, 'bangerd.lock');
  }
  get daemonPidFile(): string {
    return join(this.root, 'bangerd.pid');
  }
  /** "PID BUILD" of the running daemon (the CLI checks the build without a round trip). */
  get daemonBuildFile(): string {
    return join(this.root, 'bangerd.build');
  }
  get daemonLog(): string {
    return join(this.root, 'logs', 'bangerd.log');
  }
  get logsDir(): string {
    return join(this.root, 'logs');
  }
  get database(): string {
    return join(this.root, 'state.db');
  }
  get config(): string {
    return join(this.root, 'config.json');
  }
  /** Cached answers of host probes (KVM usability, ...). */
  get probeCache(): string {
    return join(this.root, 'probes.json');
  }
  /** What `banger dns install` changed on the host, so uninstall can undo exactly that. */
  get dnsState(): string {
    return join(this.root, 'dns.json');
  }
  /** What tap networking created on the host (bridge, taps, rules), so it can all be removed again. */
  get tapState(): string {
    return join(this.root, 'network', 'tap.json');
  }
  get sshDir(): string {
    return join(this.root, 'ssh');
  }
  /** banger's own client key pair, used for every VM. */
  get sshPrivateKey(): string {
    return join(this.sshDir, 'id_ed25519');
  }
  get sshPublicKey(): string {
    return join(this.sshDir, 'id_ed25519.pub');
  }
  /** The ssh_config file a user's ~/.ssh/config Includes (`banger ssh-config install`): `Host *.vm` settings. */
  get sshInclude(): string {
    return join(this.sshDir, 'config');
  }
  /** Every VM's pinned host key as `NAME.vm ssh-ed25519 ...`; the UserKnownHostsFile of sshInclude. */
  get sshKnownHosts(): string {
    return join(this.sshDir, 'known_hosts');
  }
  get imagesDir(): string {
    return join(this.root, 'images');
  }
  imageDir(imageId: string): string {
    return join(this.imagesDir, imageId);
  }
  /** Scratch space of a build in progress; renamed into imageDir when the build succeeds. */
  imageBuildDir(imageId: string): string {
    return join(this.imagesDir, `.build-${imageId}`);
  }
  get cacheDir(): string {
    return join(this.root, 'cache');
  }
  /**
   * The running daemon's scratch files (a workspace import's packs, throwaway git indexes), each in a
   * directory of its own that it removes; emptied whenever a daemon starts, so a killed one leaves nothing.
   */
  get tmpDir(): string {
    return join(this.root, 'tmp');
  }
  /** Warm pools (`banger pool set`): image name -> how many VMs to keep parked. */
  get poolsFile(): string {
    return join(this.root, 'pools.json');
  }
  /** Saved running VMs (`banger vm snapshot`): one directory each, named by id. */
  get snapshotsDir(): string {
    return join(this.root, 'snapshots');
  }
  snapshotDir(snapshotId: string): string {
    return join(this.snapshotsDir, snapshotId);
  }
  get vmsDir(): string {
    return join(this.root, 'vms');
  }
  vmDir(vmId: string): string {
    return join(this.vmsDir, vmId);
  }
  vm(vmId: string): VmPaths {
    return new VmPaths(this.vmDir(vmId));
  }
}

/** The files of one VM. Kept short: unix socket paths are limited to 107 bytes. */
export class VmPaths {
  constructor(readonly dir: string) {}
  get rootDisk(): string {
    return join(this.dir, 'root.qcow2');
  }
  /** Firecracker cannot read qcow2: its root disk is a sparse copy of the image. */
  get rootDiskRaw(): string {
    return join(this.dir, 'root.ext4');
  }
  get workDisk(): string {
    return join(this.dir, 'work.ext4');
  }
  /** A tar archive exposed as a block device: per-boot configuration for the guest's init. */
  get seedDisk(): string {
    return join(this.dir, 'seed.tar');
  }
  get handles(): string {
    return join(this.dir, 'handles.json');
  }
  get consoleLog(): string {
    return join(this.dir, 'console.log');
  }
  get vmmLog(): string {
    return join(this.dir, 'vmm.log');
  }
  get qmpSocket(): string {
    return join(this.dir, 'qmp.sock');
  }
  get apiSocket(): string {
    return join(this.dir, 'fc.sock');
  }
  /** Firecracker's vsock device (`uds_path`): the host side of the guest agent's channel. */
  get vsockSocket(): string {
    return join(this.dir, 'vsock.sock');
  }
  /** QEMU's virtio-serial port `banger.0` (a unix socket QEMU serves): the host side of the guest agent's channel. */
  get agentSocket(): string {
    return join(this.dir, 'agent.sock');
  }
  /** QEMU's virtio-serial port `banger.bulk`: bulk stdin into the guest (daemon/guest/bulk.ts). */
  get bulkSocket(): string {
    return join(this.dir, 'bulk.sock');
  }
  get hostKeyPrivate(): string {
    return join(this.dir, 'ssh_host_ed25519_key');
  }
  get hostKeyPublic(): string {
    return join(this.dir, 'ssh_host_ed25519_key.pub');
  }
  get knownHosts(): string {
    return join(this.dir, 'known_hosts');
  }
  get pidFile(): string {
    return join(this.dir, 'vmm.pid');
  }
}
