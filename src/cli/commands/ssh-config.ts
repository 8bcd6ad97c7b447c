import { randomBytes } from 'node:crypto';
import { lstat, mkdir, open, readFile, realpath, rename, rmdir, stat, unlink } from 'node:fs/promises';
import { homedir } from 'node:os';
import { basename, dirname, join, resolve, sep } from 'node:path';
import type { Command } from 'commander';
import { BangerError, ErrorCode } from '../../errors/index.js';
import { createdByBanger, hasBlock, includedPath, installBlock, uninstallBlock } from '../../shared/ssh-config.js';
import type { CliContext } from '../context.js';
import { out } from '../output.js';

/**
 * `banger ssh-config install|uninstall|show`: a banger-managed `Include` at the top of the user's
 * ~/.ssh/config, so plain `ssh NAME.vm` (and scp, rsync, VS Code Remote-SSH...) reach VMs. The CLI edits
 * the file itself; no daemon is needed. The user's bytes are kept exactly: the file is read and written
 * as latin1, which maps every byte to one character and back, so even a file that is not valid UTF-8
 * round-trips.
 */

/** What install/uninstall did, as `--json` prints it. */
export interface SshConfigChange {
  config: string;
  includeFile: string;
  action: 'created' | 'added' | 'updated' | 'unchanged' | 'removed' | 'deleted' | 'not-installed';
}

export function register(program: Command, ctx: CliContext): void {
  const cmd = program
    .command('ssh-config')
    .description('let plain `ssh NAME.vm` reach your VMs: an Include in ~/.ssh/config that banger manages');

  cmd
    .command('install')
    .description(`add banger's Include block to the top of your ssh config (idempotent)`)
    .option('--config <file>', 'the ssh config to edit (default: ~/.ssh/config)')
    .option('--json', 'print what was done as JSON')
    .action(async (o: { config?: string; json?: boolean }) => {
      const r = await install(o.config ?? defaultSshConfig(), ctx.paths.sshInclude);
      if (o.json) return out.json(r);
      const c = tilde(r.config);
      if (r.action === 'created') out.info(`created ${c} with an Include of ${r.includeFile}`);
      else if (r.action === 'added') out.info(`added an Include of ${r.includeFile} to ${c}`);
      else if (r.action === 'updated') out.info(`updated banger's block in ${c} to Include ${r.includeFile}`);
      else out.info(`already installed: ${c} Includes ${r.includeFile}`);
      if (!(await exists(r.includeFile)))
        out.info(`note: bangerd writes ${r.includeFile} when it manages VMs; until then ssh skips the Include`);
    });

  cmd
    .command('uninstall')
    .description(`remove banger's block, leaving your ssh config exactly as it was before install`)
    .option('--config <file>', 'the ssh config to edit (default: ~/.ssh/config)')
    .option('--json', 'print what was done as JSON')
    .action(async (o: { config?: string; json?: boolean }) => {
      const r = await uninstall(o.config ?? defaultSshConfig(), ctx.paths.sshInclude);
      if (o.json) return out.json(r);
      const c = tilde(r.config);
      if (r.action === 'deleted') out.info(`removed ${c} (banger had created it and nothing else was in it)`);
      else if (r.action === 'removed') out.info(`removed banger's block from ${c}`);
      else out.info(`not installed: ${c} has no banger block`);
    });

  cmd
    .command('show')
    .description('print the file the Include points at, and whether your ssh config has the block')
    .option('--config <file>', 'the ssh config to look at (default: ~/.ssh/config)')
    .option('--json', 'print as JSON')
    .action(async (o: { config?: string; json?: boolean }) => {
      const config = resolve(o.config ?? defaultSshConfig());
      const content = await readConfig(config);
      const installed = hasBlock(content);
      const included = content !== null && installed ? includedPath(content) : undefined;
      const includeFile = ctx.paths.sshInclude;
      const includeContent = await readFile(includeFile, 'utf8').catch((e: NodeJS.ErrnoException) => {
        if (e.code === 'ENOENT') return null;
        throw e;
      });
      const r = {
        config,
        installed,
        /** What the block Includes; differs from includeFile when BANGER_HOME changed since install. */
        includedPath: included === undefined ? null : fromLatin1(included),
        includeFile,
        knownHostsFile: ctx.paths.sshKnownHosts,
        includeContent,
      };
      if (o.json) return out.json(r);
      if (!installed) out.line(`${tilde(config)}: not installed (run \`banger ssh-config install\`)`);
      else out.line(`${tilde(config)}: installed, Includes ${r.includedPath ?? '?'}`);
      if (installed && r.includedPath !== includeFile)
        out.line(`  (banger now uses ${includeFile}: run \`banger ssh-config install\` to update the block)`);
      out.line(`${includeFile}:${includeContent === null ? ' not written yet (bangerd writes it)' : ''}`);
      if (includeContent !== null) out.raw(includeContent.replace(/^/gm, '  ').replace(/ +$/gm, ''));
    });
}

/** ~/.ssh/config of the invoking user ($HOME). */
export function defaultSshConfig(): string {
  return join(process.env.HOME || homedir(), '.ssh', 'config');
}

/** Adds (or refreshes) banger's block in `configPath`, creating the file (0600) and its directory (0700). */
export async function install(configPath: string, includeFile: string): Promise<SshConfigChange> {
  const config = await resolveTarget(configPath);
  const content = await readConfig(config);
  const base = { config, includeFile };
  if (content !== null) {
    const next = installBlock(content, toLatin1(includeFile));
    if (next === content) return { ...base, action: 'unchanged' };
    const st = await stat(config);
    await writeAtomic(config, next, st.mode & 0o7777, st);
    return { ...base, action: hasBlock(content) ? 'updated' : 'added' };
  }
  const dir = dirname(config);
  const createdDir = !(await exists(dir));
  const next = installBlock(null, toLatin1(includeFile), { createdDir });
  if (createdDir) await mkdir(dir, { recursive: true, mode: 0o700 });
  await writeAtomic(config, next, 0o600);
  return { ...base, action: 'created' };
}

/** Removes banger's block; deletes the file (and the directory, if banger created them and they are empty). */
export async function uninstall(configPath: string, includeFile: string): Promise<SshConfigChange> {
  const config = await resolveTarget(configPath);
  const content = await readConfig(config);
  const base = { config, includeFile };
  if (content === null || !hasBlock(content)) return { ...base, action: 'not-installed' };
  const created = createdByBanger(content);
  const next = uninstallBlock(content);
  if (next === null) {
    await unlink(config);
    if (created === 'file-and-dir')
      await rmdir(dirname(config)).catch((e: NodeJS.ErrnoException) => {
        // Something else lives there now (known_hosts, keys): it is the user's directory.
        if (e.code !== 'ENOTEMPTY' && e.code !== 'EEXIST') throw e;
      });
    return { ...base, action: 'deleted' };
  }
  const st = await stat(config);
  await writeAtomic(config, next, st.mode & 0o7777, st);
  return { ...base, action: 'removed' };
}

/**
 * The file to edit: a symlinked config (dotfile managers) is edited where it points, so the link stays a
 * link. A dangling link is refused rather than replaced by a file.
 */
async function resolveTarget(configPath: string): Promise<string> {
  const p = resolve(configPath);
  try {
    return await realpath(p);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  const l = await lstat(p).catch(() => undefined);
  if (l?.isSymbolicLink())
    throw new BangerError(ErrorCode.FailedPrecondition, `${p} is a symlink to a file that does not exist`, {
      hint: 'create the file it points to (or remove the link), then run the command again',
    });
  // The file is missing; resolve the links of the directory part if it exists.
  const dir = await realpath(dirname(p)).catch(() => dirname(p));
  return join(dir, basename(p));
}

async function readConfig(file: string): Promise<string | null> {
  try {
    return await readFile(file, 'latin1');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return null;
    if (code === 'EISDIR')
      throw new BangerError(ErrorCode.InvalidArgument, `${file} is a directory, not an ssh config file`);
    throw e;
  }
}

/**
 * Replaces `file` with `content` atomically: a temp file in the same directory, with the original's mode
 * (and owner, which OpenSSH checks), fsynced, then renamed over it.
 */
async function writeAtomic(
  file: string,
  content: string,
  mode: number,
  owner?: { uid: number; gid: number },
): Promise<void> {
  const tmp = join(dirname(file), `.${basename(file)}.banger-${process.pid}-${randomBytes(4).toString('hex')}`);
  const fh = await open(tmp, 'wx', 0o600);
  try {
    try {
      await fh.writeFile(Buffer.from(content, 'latin1'));
      await fh.chmod(mode);
      if (owner) {
        const st = await fh.stat();
        if (st.uid !== owner.uid || st.gid !== owner.gid)
          await fh.chown(owner.uid, owner.gid).catch((e: unknown) => {
            throw new BangerError(
              ErrorCode.FailedPrecondition,
              `cannot keep ${file} owned by uid ${owner.uid} gid ${owner.gid}`,
              {
                hint: "run the command as the file's owner (ssh refuses a config owned by someone else)",
                cause: e,
              },
            );
          });
      }
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, file);
  } catch (e) {
    await unlink(tmp).catch(() => undefined);
    throw e;
  }
}

async function exists(p: string): Promise<boolean> {
  return stat(p).then(
    () => true,
    () => false,
  );
}

/** A path as latin1 characters of its UTF-8 bytes, to splice into content read as latin1. */
function toLatin1(s: string): string {
  return Buffer.from(s, 'utf8').toString('latin1');
}

function fromLatin1(s: string): string {
  return Buffer.from(s, 'latin1').toString('utf8');
}

function tilde(p: string): string {
  const home = process.env.HOME || homedir();
  return home && home !== sep && p.startsWith(home + sep) ? '~' + p.slice(home.length) : p;
}
