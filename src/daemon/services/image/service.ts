import { randomBytes } from 'node:crypto';
import { mkdir, readdir, rename, rm } from 'node:fs/promises';
import { basename } from 'node:path';
import { BangerError, ErrorCode, failedPrecondition, invalidArgument, notFound } from '../../../errors/index.js';
import type { ProgressEvent } from '../../../protocol/common.js';
import type { ImageFileInfo, ImageInfo } from '../../../protocol/image.js';
import type { Paths } from '../../../shared/paths.js';
import type { Logger } from '../../../shared/logger.js';
import type { ImageRecord, ImageRepo } from '../../store/repos/images.js';
import type { VmRepo } from '../../store/repos/vms.js';
import { KeyedMutex } from '../locks.js';
import { GUEST_CONTRACT_VERSION } from '../../guest/init/contract.js';
import { runCommand } from '../../../shared/command.js';
import { procHost, removeBuildLeftovers, type LeftoverHost } from './leftovers.js';

/** An image whose files exist and can boot. */
export interface ReadyImage {
  id: string;
  name: string;
  kernelPath: string;
  initrdPath: string;
  rootfsPath: string;
  kernelVersion: string | null;
  kernelSha256: string;
}

export interface BuiltImage {
  kernelVersion: string;
  files: ImageFileInfo[];
  params: ImageRecord['params'];
}

/** Builds an image's files into `outDir` (which exists and is empty), reporting progress. */
export type ImageBuilder = (
  req: { name: string; packages: string[]; minimal: boolean; noCache?: boolean },
  outDir: string,
  progress: (ev: ProgressEvent) => void,
  signal?: AbortSignal,
) => Promise<BuiltImage>;

export interface ImageServiceDeps {
  paths: Paths;
  images: ImageRepo;
  vms: VmRepo;
  build: ImageBuilder;
  log: Logger;
  now?: () => Date;
  /** Processes, mounts and removal for build leftovers; default the real host (/proc, umount). */
  leftovers?: LeftoverHost;
  /** Longest time reconcile spends on one leftover build directory; default 30 s. */
  leftoverTimeoutMs?: number;
}

const BUILD_DIR_PREFIX = '.build-';

const IMAGE_NAME_RE = /^[a-z0-9][a-z0-9._-]{0,62}$/;

/** The name of the image built on first use. */
export const DEFAULT_IMAGE = 'default';

/**
 * Images: built once from Debian packages, shared read-only by every VM layered on them.
 * Locking: one build per image name at a time (`builds`); a second caller waits and then uses the result.
 */
export class ImageService {
  private readonly builds = new KeyedMutex();
  private readonly now: () => Date;
  private readonly leftovers: LeftoverHost;

  constructor(private readonly d: ImageServiceDeps) {
    this.now = d.now ?? (() => new Date());
    this.leftovers = d.leftovers ?? procHost(runCommand);
  }

  /**
   * At daemon start, before any build can run: every build directory (`images/.build-*`) is left over
   * from a build that died with the previous daemon. Its processes are killed, its mounts unmounted
   * and it is removed; its record, if still `building`, is marked failed. Never throws and never takes
   * longer than the timeout per directory: a leftover that cannot be removed is logged and named in
   * the record's error, and the daemon starts anyway.
   */
  async reconcile(): Promise<void> {
    const problems = new Map<string, string>();
    let names: string[] = [];
    try {
      names = (await readdir(this.d.paths.imagesDir)).filter((n) => n.startsWith(BUILD_DIR_PREFIX));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT')
        this.d.log.warn({ err: (e as Error).message }, 'cannot list image build directories');
    }
    for (const name of names) {
      const id = name.slice(BUILD_DIR_PREFIX.length);
      const dir = this.d.paths.imageBuildDir(id);
      try {
        await this.removeLeftovers(dir);
        this.d.log.info({ dir }, 'removed an interrupted image build');
      } catch (e) {
        const msg = (e as Error).message.split('\n')[0] ?? String(e);
        problems.set(id, msg);
        this.d.log.warn({ dir, err: msg }, 'could not remove an interrupted image build; bangerd starts anyway');
      }
    }
    for (const img of this.d.images.list()) {
      if (img.status !== 'building') continue;
      const problem = problems.get(img.id);
      try {
        this.d.images.update(img.id, {
          status: 'failed',
          error:
            'the build was interrupted (bangerd stopped)' +
            (problem ? `; its scratch directory ${basename(this.d.paths.imageBuildDir(img.id))} is still there: ${problem}` : ''),
        });
      } catch (e) {
        this.d.log.warn({ image: img.name, err: (e as Error).message }, 'could not mark an interrupted build failed');
      }
    }
  }

  /** Kills, unmounts and removes a build directory, giving up after the timeout. */
  private async removeLeftovers(dir: string): Promise<void> {
    const ms = this.d.leftoverTimeoutMs ?? 30_000;
    const ac = new AbortController();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        ac.abort();
        reject(new BangerError(ErrorCode.DeadlineExceeded, `cleaning ${dir} took longer than ${ms / 1000} s`));
      }, ms);
    });
    try {
      await Promise.race([removeBuildLeftovers(dir, this.leftovers, this.d.log, ac.signal), timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  list(): ImageInfo[] {
    return this.d.images.list().map((i) => this.info(i));
  }

  show(name: string): ImageInfo {
    return this.info(this.byName(name));
  }

  byId(id: string): ImageRecord | undefined {
    return this.d.images.byId(id);
  }

  byIdReady(id: string): ReadyImage {
    const img = this.d.images.byId(id);
    if (!img) throw notFound(`the VM's image (${id}) no longer exists`);
    return this.ready(img);
  }

  private byName(name: string): ImageRecord {
    const img = this.d.images.byName(name);
    if (!img) throw notFound(`no image '${name}'`, `build it with \`banger image build ${name}\``);
    return img;
  }

  info(i: ImageRecord): ImageInfo {
    return { ...i, usedBy: this.d.vms.namesUsingImage(i.id) };
  }

  private ready(img: ImageRecord): ReadyImage {
    if (img.status !== 'ready')
      throw failedPrecondition(
        `image '${img.name}' is ${img.status}${img.error ? `: ${img.error}` : ''}`,
        `rebuild it with \`banger image build --force ${img.name}\``,
      );
    const file = (role: ImageFileInfo['role']) => {
      const f = img.files.find((x) => x.role === role);
      if (!f) throw failedPrecondition(`image '${img.name}' has no ${role}`, `rebuild it with \`banger image build --force ${img.name}\``);
      return f;
    };
    return {
      id: img.id,
      name: img.name,
      kernelPath: file('kernel').path,
      initrdPath: file('initrd').path,
      rootfsPath: file('rootfs').path,
      kernelVersion: img.kernelVersion,
      kernelSha256: file('kernel').sha256,
    };
  }

  /** The named image, ready to boot; the default image is built on first use (with progress). */
  async ensureReady(name: string, progress: (ev: ProgressEvent) => void, signal?: AbortSignal): Promise<ReadyImage> {
    const img = this.d.images.byName(name);
    if (img?.status === 'ready' && name === DEFAULT_IMAGE && img.params.guestContract !== GUEST_CONTRACT_VERSION) {
      // banger owns `default`: one built for another guest contract is rebuilt while no VM is layered on it.
      const users = this.d.vms.namesUsingImage(img.id);
      if (users.length > 0) {
        progress({
          kind: 'notice',
          message: `the '${DEFAULT_IMAGE}' image was built by another banger (guest contract ${img.params.guestContract ?? 1}, this one is ${GUEST_CONTRACT_VERSION}); once ${users.join(', ')} ${users.length === 1 ? 'is' : 'are'} deleted, the next VM rebuilds it`,
        });
        return this.ready(img);
      }
      progress({ kind: 'notice', message: `rebuilding the '${DEFAULT_IMAGE}' image: it was built by another banger (guest contract ${img.params.guestContract ?? 1}, this one is ${GUEST_CONTRACT_VERSION})` });
      const built = await this.build(
        { name, packages: img.params.packages, minimal: img.params.minimal, force: true },
        progress,
        signal,
      );
      return this.ready(this.d.images.byId(built.id)!);
    }
    if (img?.status === 'ready') return this.ready(img);
    if (name !== DEFAULT_IMAGE) {
      if (!img) throw notFound(`no image '${name}'`, `build it with \`banger image build ${name}\``);
      return this.ready(img);
    }
    progress({ kind: 'notice', message: `building the '${DEFAULT_IMAGE}' image (first use; takes a few minutes)` });
    const built = await this.build({ name, packages: [], force: img !== undefined }, progress, signal);
    return this.ready(this.d.images.byId(built.id)!);
  }

  async build(
    req: { name: string; packages?: string[]; minimal?: boolean; force?: boolean; noCache?: boolean },
    progress: (ev: ProgressEvent) => void,
    signal?: AbortSignal,
  ): Promise<ImageInfo> {
    if (!IMAGE_NAME_RE.test(req.name))
      throw invalidArgument(
        `invalid image name ${JSON.stringify(req.name)}: use lowercase letters, digits, '.', '_' and '-'`,
      );
    const packages = req.packages ?? [];
    for (const p of packages)
      if (!/^[a-z0-9][a-z0-9+.-]+$/.test(p)) throw invalidArgument(`invalid Debian package name ${JSON.stringify(p)}`);

    return this.builds.run(req.name, async () => {
      const existing = this.d.images.byName(req.name);
      if (existing?.status === 'ready' && !req.force) return this.info(existing);
      if (existing) {
        const users = this.d.vms.namesUsingImage(existing.id);
        if (users.length > 0)
          throw failedPrecondition(
            `image '${req.name}' is used by ${users.join(', ')}`,
            `delete those VMs first, or build under another name`,
          );
        this.refuseWhilePooled(existing.id, req.name);
        await this.removeFiles(existing.id);
        this.d.images.delete(existing.id);
      }
      const id = randomBytes(6).toString('hex');
      const rec: ImageRecord = {
        id,
        name: req.name,
        status: 'building',
        kernelVersion: null,
        files: [],
        params: { suite: 'bookworm', mirror: '', packages, minimal: !!req.minimal },
        buildSeconds: null,
        error: null,
        createdAt: this.now().toISOString(),
      };
      this.d.images.insert(rec);
      const buildDir = this.d.paths.imageBuildDir(id);
      const finalDir = this.d.paths.imageDir(id);
      const started = Date.now();
      try {
        await this.removeLeftovers(buildDir);
        await mkdir(buildDir, { recursive: true, mode: 0o700 });
        // A cancel that came while the scratch directory was being cleared must not start the build.
        if (signal?.aborted) throw new BangerError(ErrorCode.Cancelled, 'image build cancelled');
        const built = await this.d.build(
          { name: req.name, packages, minimal: !!req.minimal, ...(req.noCache ? { noCache: true } : {}) },
          buildDir, progress, signal);
        await rename(buildDir, finalDir);
        const files = built.files.map((f) => ({ ...f, path: f.path.replace(buildDir, finalDir) }));
        this.d.images.update(id, {
          status: 'ready',
          kernelVersion: built.kernelVersion,
          files,
          params: built.params,
          buildSeconds: (Date.now() - started) / 1000,
        });
        this.d.log.info({ image: req.name, seconds: (Date.now() - started) / 1000 }, 'image built');
        return this.info(this.d.images.byId(id)!);
      } catch (e) {
        await this.removeLeftovers(buildDir).catch((c: unknown) =>
          this.d.log.warn({ dir: buildDir, err: (c as Error).message }, 'could not remove a failed build; the next daemon start retries'),
        );
        const cancelled = signal?.aborted || (e instanceof BangerError && e.code === ErrorCode.Cancelled);
        if (cancelled) this.d.images.delete(id);
        else this.d.images.update(id, { status: 'failed', error: (e as Error).message.split('\n')[0] ?? 'failed' });
        throw e;
      }
    }, signal);
  }

  /** A warm pool's parked VMs hold the image: the pool goes first (its size says what to set again). */
  private refuseWhilePooled(imageId: string, name: string): void {
    const pools = this.d.vms.poolsUsingImage(imageId);
    if (pools.length > 0)
      throw failedPrecondition(
        `image '${name}' is used by the parked VMs of its warm pool`,
        `\`banger pool set ${pools[0]} --size 0\` first, then set the pool again once the image is built`,
      );
  }

  async delete(name: string): Promise<{ deleted: string }> {
    return this.builds.run(name, async () => {
      const img = this.byName(name);
      const users = this.d.vms.namesUsingImage(img.id);
      if (users.length > 0)
        throw failedPrecondition(
          `image '${name}' is used by ${users.length === 1 ? 'VM' : 'VMs'} ${users.join(', ')}`,
          `delete ${users.length === 1 ? 'it' : 'them'} first with \`banger vm delete ${users.join(' ')}\``,
        );
      this.refuseWhilePooled(img.id, name);
      await this.removeFiles(img.id);
      this.d.images.delete(img.id);
      return { deleted: name };
    });
  }

  private async removeFiles(id: string): Promise<void> {
    await rm(this.d.paths.imageDir(id), { recursive: true, force: true });
    await this.removeLeftovers(this.d.paths.imageBuildDir(id));
  }
}
