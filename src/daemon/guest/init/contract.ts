/**
 * The contract between the host (banger's VM service) and the guest's init, in one place.
 *
 * Disks, in the order the host attaches them:
 * - root: ext4, `/dev/vda` (kernel command line `root=/dev/vda rw rootfstype=ext4`).
 * - work: ext4 made by the host per VM, mounted at `/root`; found by the virtio-blk serial `banger-work`,
 *   else `/dev/vdb`.
 * - seed: a raw tar archive (see {@link SEED_FILES}) used as a block device, padded to a multiple of
 *   {@link SEED_ALIGN} bytes; found by the serial `banger-seed`, else `/dev/vdc`.
 * When any disk carries a `banger-*` serial, the guest trusts serials only and never falls back to names.
 *
 * Console lines the host can wait for: {@link READY_MARKER} once sshd listens, {@link PROBE_MARKER} in
 * probe mode (`banger.probe=1`: the initrd prints it and powers off at once).
 */

export const WORK_DISK_SERIAL = 'banger-work';
export const SEED_DISK_SERIAL = 'banger-seed';
export const ROOT_DEVICE = '/dev/vda';
export const WORK_DEVICE_FALLBACK = '/dev/vdb';
export const SEED_DEVICE_FALLBACK = '/dev/vdc';
/** The seed tar is padded with zeros to a multiple of this many bytes (block devices need whole sectors). */
export const SEED_ALIGN = 4096;

/**
 * Version of what an image carries for banger: init scripts, the guest agent and this contract. Bumped on any
 * change to them; banger rebuilds its `default` image when the recorded version differs (see ImageService).
 */
export const GUEST_CONTRACT_VERSION = 11;

/** Printed on the console (ttyS0) when sshd accepts connections (and the guest agent holds its channel). */
export const READY_MARKER = 'banger-guest: ready';
/** Follows the ready marker on its line when init is starting the guest agent: the host connects to it. */
export const READY_AGENT_SUFFIX = ' agent';
/** Printed by the initrd in probe mode, right before it powers off. */
export const PROBE_MARKER = 'BANGER-PROBE-OK';
/** Kernel command line switch that keeps the guest agent from starting (`vm create --no-agent`). */
export const NO_AGENT_ARG = 'banger.agent=0';
/** Kernel command line switch of probe mode. */
export const PROBE_ARG = 'banger.probe=1';

/** Run over SSH to shut the guest down cleanly; returns at once, the VMM process exits ~1-2 s later. */
export const POWEROFF_COMMAND = '/usr/local/sbin/banger-poweroff';

/** Where the guest extracts the seed (tmpfs, mode 0700). */
export const SEED_MOUNT_DIR = '/run/banger-seed';
/** The image's original /root dotfiles (plus /etc/skel), copied onto an empty work disk at first boot. */
export const ROOT_SKEL_DIR = '/usr/share/banger/root-skel';

/** Files of the seed tar (all at the archive's top level). Unknown files are ignored. */
export const SEED_FILES = {
  /** `KEY='value'` shell lines, see {@link SeedEnv}. */
  env: 'env',
  /** The VM's SSH host private key (mode 0600); installed as /etc/ssh/ssh_host_ed25519_key. */
  hostKey: 'ssh_host_ed25519_key',
  hostKeyPub: 'ssh_host_ed25519_key.pub',
  /** Installed as /root/.ssh/authorized_keys (replacing what the work disk held). */
  authorizedKeys: 'authorized_keys',
  /**
   * The guest agent of the daemon that started the VM; run in place of the image's copy, so a VM's agent
   * always speaks its daemon's protocol, however old the image (images of contract 7 on).
   */
  agent: 'agent.mjs',
} as const;

/**
 * Variables of the seed's `env` file (written by services/vm/seed.ts). The guest sources the file, after
 * checking its syntax with `sh -n`, and ignores keys it does not know.
 */
export interface SeedEnv {
  BANGER_HOSTNAME: string;
  /** Address with prefix length, e.g. `10.0.2.15/24`. Empty: eth0 is brought up without an address. */
  BANGER_IP?: string;
  /** Default gateway, e.g. `10.0.2.2`. */
  BANGER_GW?: string;
  /** Name servers, separated by spaces or commas, e.g. `10.0.2.3`. */
  BANGER_DNS?: string;
  [key: string]: string | undefined;
}
