/**
 * What the in-process daemon tests share: an image "build" that writes three tiny files at once, a daemon on
 * a temp state directory with its DNS on a free loopback port, and a helper that expects a BangerError.
 */
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startDaemon, type RunningDaemon } from '../../src/daemon/daemon.js';
import { GUEST_CONTRACT_VERSION } from '../../src/daemon/guest/init/contract.js';
import type { ImageBuilder } from '../../src/daemon/services/image/service.js';
import type { BangerError } from '../../src/errors/index.js';
import { silentLogger } from '../../src/shared/logger.js';
import type { Paths } from '../../src/shared/paths.js';

/** An image build that takes no time: kernel, initrd and rootfs are files holding their role's name. */
export const fakeImageBuild: ImageBuilder = async (req, outDir) => {
  const files = (['kernel', 'initrd', 'rootfs'] as const).map((role) => {
    const path = join(outDir, role);
    writeFileSync(path, role);
    return { role, path, sizeBytes: role.length, sha256: '0'.repeat(64) };
  });
  return {
    kernelVersion: 'test',
    files,
    params: { suite: 'bookworm', mirror: 'test', packages: req.packages, guestContract: GUEST_CONTRACT_VERSION },
  };
};

/** bangerd in this process on `paths`, with fake image builds. */
export function startTestDaemon(paths: Paths, build: ImageBuilder = fakeImageBuild): Promise<RunningDaemon> {
  return startDaemon({
    paths,
    log: silentLogger(),
    build,
    dns: { listen: [{ host: '127.0.0.1', port: 0 }], hostsFile: join(paths.root, 'hosts') },
    onStopRequest: () => undefined,
  });
}

/** The BangerError `p` rejects with; fails the test if it resolves. */
export async function failureOf(p: Promise<unknown>): Promise<BangerError> {
  try {
    await p;
  } catch (e) {
    return e as BangerError;
  }
  throw new Error('expected a failure');
}

/** An ext4 filesystem's size in bytes, as its superblock says. */
export function ext4Bytes(path: string): number {
  const o = execFileSync('dumpe2fs', ['-h', path], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  return Number(/^Block count:\s+(\d+)/m.exec(o)![1]) * Number(/^Block size:\s+(\d+)/m.exec(o)![1]);
}
