import { pack } from 'tar-stream';
import { shq } from '../../guest/shell.js';
import { SEED_ALIGN, SEED_FILES, type SeedEnv } from '../../guest/init/contract.js';

export interface SeedConfig {
  hostname: string;
  ipCidr: string;
  gateway: string;
  dns: string;
  hostPrivateKey: string;
  hostPublicKey: string;
  authorizedKeys: string;
  /** The guest agent bundle to run instead of the image's (SEED_FILES.agent); none: the image's. */
  agent?: Buffer;
}

/** The `env` file the guest's init sources: shell assignments, values quoted. */
export function seedEnv(c: SeedConfig): string {
  const vars: Required<Pick<SeedEnv, 'BANGER_HOSTNAME' | 'BANGER_IP' | 'BANGER_GW' | 'BANGER_DNS'>> = {
    BANGER_HOSTNAME: c.hostname,
    BANGER_IP: c.ipCidr,
    BANGER_GW: c.gateway,
    BANGER_DNS: c.dns,
  };
  return Object.entries(vars)
    .map(([k, v]) => `${k}=${shq(v)}\n`)
    .join('');
}

/**
 * The seed disk: a tar archive the guest reads straight from its block device at every boot
 * (`tar -xf /dev/vdc`), padded to whole SEED_ALIGN blocks so it is a valid disk image.
 */
export async function buildSeedTar(c: SeedConfig): Promise<Buffer> {
  const p = pack();
  const chunks: Buffer[] = [];
  p.on('data', (d: unknown) => {
    chunks.push(d as Buffer);
  });
  const done = new Promise<void>((resolve, reject) => {
    p.on('end', resolve);
    p.on('error', reject);
  });
  const add = (name: string, content: string | Buffer, mode: number) => p.entry({ name, mode, uid: 0, gid: 0 }, content);
  add(SEED_FILES.env, seedEnv(c), 0o644);
  add(SEED_FILES.hostKey, ensureNewline(c.hostPrivateKey), 0o600);
  add(SEED_FILES.hostKeyPub, ensureNewline(c.hostPublicKey), 0o644);
  add(SEED_FILES.authorizedKeys, ensureNewline(c.authorizedKeys), 0o600);
  if (c.agent) add(SEED_FILES.agent, c.agent, 0o644);
  p.finalize();
  await done;
  const tar = Buffer.concat(chunks);
  const padded = Math.ceil(tar.length / SEED_ALIGN) * SEED_ALIGN;
  return Buffer.concat([tar, Buffer.alloc(padded - tar.length)]);
}

const ensureNewline = (s: string) => (s.endsWith('\n') ? s : s + '\n');
