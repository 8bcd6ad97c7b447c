/**
 * What an image build installs besides Debian packages (the guest agent bundle, the mise binary) and what it
 * reports of the result for `image show` (versions of notable packages, mise's).
 */
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BangerError, ErrorCode } from '../../../errors/index.js';
import type { CommandRunner } from '../../../shared/command.js';

export interface ImageContents {
  /** Versions of the notable packages it has (docker.io, nodejs, git, gcc...), by package name. */
  versions: Record<string, string>;
  /** The version of the mise banger installs (its npm package's), null for a mise given by path. */
  mise: string | null;
}

/** Packages whose versions `image show` lists, when the image has them. */
const NOTABLE_PACKAGES = ['docker.io', 'containerd', 'runc', 'nodejs', 'git', 'gcc', 'python3', 'openssh-server'];

/**
 * The guest agent bundle (`npm run build` makes it): beside the running bundle (dist/bangerd.js), or in the
 * checkout's dist/ when banger runs from source.
 */
export function resolveAgentBundle(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  const tried: string[] = [];
  for (;;) {
    for (const c of [join(dir, 'banger-agent.js'), join(dir, 'dist', 'banger-agent.js')]) {
      tried.push(c);
      if (existsSync(c)) return c;
    }
    const up = dirname(dir);
    if (up === dir) break;
    dir = up;
  }
  throw new BangerError(ErrorCode.FailedPrecondition, 'the guest agent bundle (banger-agent.js) is missing', {
    hint: 'run `npm run build` in the banger checkout, then build the image again',
  });
}

/** The mise binary shipped in the `@jdxcode/mise-linux-x64` npm package. */
export function resolveMiseBinary(): string {
  const pkg = createRequire(import.meta.url).resolve('@jdxcode/mise-linux-x64/package.json');
  return join(dirname(pkg), 'bin', 'mise');
}

/** The versions `image show` lists: notable packages from the tree's dpkg database, and mise's own. */
export async function imageContents(rootDir: string, mise: string, run: CommandRunner): Promise<ImageContents> {
  const q = await run(
    'dpkg-query',
    [`--admindir=${join(rootDir, 'var/lib/dpkg')}`, '-W', '-f', '${db:Status-Abbrev}\t${Package}\t${Version}\n', ...NOTABLE_PACKAGES],
    { allowFailure: true },
  );
  const versions: Record<string, string> = {};
  for (const line of q.stdout.split('\n')) {
    const [status, pkg, version] = line.split('\t');
    if (status?.startsWith('ii') && pkg && version) versions[pkg] = version;
  }
  return { versions, mise: mise === resolveMiseBinary() ? miseVersion() : null };
}

/** The version of the mise npm package banger ships (read, not run: running it may look for updates). */
function miseVersion(): string | null {
  try {
    const pkg = createRequire(import.meta.url).resolve('@jdxcode/mise-linux-x64/package.json');
    return (JSON.parse(readFileSync(pkg, 'utf8')) as { version?: string }).version ?? null;
  } catch {
    return null;
  }
}

