/**
 * Makes `<name>.vm` resolve for every program on the host, by one of two mechanisms:
 *
 * - `resolved`: where systemd-resolved runs, a dummy link `banger-dns` carries banger's DNS server
 *   address and the routing-only domain `~vm` (`resolvectl dns banger-dns ADDR`, or `ADDR:PORT` when
 *   `dns.port` is not 53 (systemd 246 and later), `resolvectl domain banger-dns '~vm'`), so resolved
 *   sends `.vm` queries, and only those, to banger's DNS server. This is
 *   how LXD and libvirt integrate their bridges' DNS. resolved only uses a link's DNS servers when the
 *   link is up and has an address of global scope, hence the dummy link and `scope global`.
 *   Link and resolved settings are runtime state, lost at reboot: the daemon calls `reapply()` when it
 *   starts. With nss-resolve configured as `resolve [!UNAVAIL=return] files`, a hosts file entry
 *   would never be seen, which is why the hosts file is not used there.
 * - `hosts`: everywhere else, a block in the hosts file between `# >>> banger >>>` and
 *   `# <<< banger <<<` holds `ADDR NAME.vm` per VM; NSS `files` (in every nsswitch.conf) reads it, and
 *   the daemon rewrites the block whenever VMs or addresses change (`sync`). The rest of the file is
 *   kept byte for byte. A damaged block (a begin marker without its end, markers out of order, two
 *   blocks) is refused, never guessed at: the user fixes it by hand. Every write is durable and never
 *   leaves a truncated file (durable-file.ts).
 *
 * What install did is recorded in a state file, so uninstall undoes exactly that.
 */
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { isIPv4 } from 'node:net';
import { BangerError, ErrorCode } from '../../../errors/index.js';
import type { CommandRunner } from '../../../shared/command.js';
import type { Logger } from '../../../shared/logger.js';
import type { DnsMechanism, DnsStatus, DnsVmEntry } from '../../../protocol/dns.js';
import { durableWrite, recoverInterrupted } from './durable-file.js';
import { userDnsInstallRefused } from './user-install.js';
import { dnsName } from '../../../protocol/names.js';

export const BLOCK_BEGIN = '# >>> banger >>> managed by bangerd; remove with `banger dns uninstall`';
export const BLOCK_END = '# <<< banger <<<';
const BEGIN_PREFIX = '# >>> banger >>>';
/** The dummy link carrying the ~vm routing domain; not the tap bridge's name (banger0), which may exist too. */
export const DEFAULT_DNS_LINK = 'banger-dns';

// ---------- pure hosts-file editors (text is the file's bytes as latin1, so every byte round-trips) ----------

interface BlockSpan {
  /** Index of the first character of the begin marker line. */
  start: number;
  /** Index just past the end marker line, including its newline when it has one. */
  end: number;
}

/**
 * Finds banger's block: a line starting with the begin marker through the next end marker line.
 * Anything else with markers in it (a begin without an end, an end before any begin, a second begin
 * or a second block) throws FailedPrecondition naming `file` and the line: rewriting a guessed span
 * could delete the user's own lines.
 */
export function findBlock(text: string, file = 'the hosts file'): BlockSpan | undefined {
  const damaged = (what: string) =>
    new BangerError(ErrorCode.FailedPrecondition, `${file}: banger's block is damaged: ${what}`, {
      hint:
        `fix ${file} by hand: keep one block from a '${BEGIN_PREFIX}' line to a '${BLOCK_END}' line, or delete ` +
        'every banger line (the daemon writes the block again), then retry',
    });
  let pos = 0;
  let lineNo = 0;
  let open: { start: number; line: number } | undefined;
  let found: (BlockSpan & { first: number; last: number }) | undefined;
  while (pos < text.length) {
    lineNo++;
    const nl = text.indexOf('\n', pos);
    const lineEnd = nl === -1 ? text.length : nl;
    const line = text.slice(pos, lineEnd).replace(/\r$/, '');
    const next = nl === -1 ? text.length : nl + 1;
    if (line.startsWith(BEGIN_PREFIX)) {
      if (open)
        throw damaged(`line ${lineNo} begins a block while the one begun on line ${open.line} has no end marker`);
      if (found)
        throw damaged(`line ${lineNo} begins a second block (the first is on lines ${found.first}-${found.last})`);
      open = { start: pos, line: lineNo };
    } else if (line === BLOCK_END) {
      if (!open) throw damaged(`line ${lineNo} is an end marker '${BLOCK_END}' with no begin marker before it`);
      found = { start: open.start, end: next, first: open.line, last: lineNo };
      open = undefined;
    }
    pos = next;
  }
  if (open) throw damaged(`the begin marker on line ${open.line} has no end marker '${BLOCK_END}' after it`);
  return found && { start: found.start, end: found.end };
}

/** The lines of the block for these VMs: `ADDR NAME.vm`, sorted by name; VMs without a usable address are left out. */
export function blockLines(vms: readonly DnsVmEntry[]): string[] {
  return vms
    .filter((v) => v.address !== undefined && v.address !== null && isIPv4(v.address) && isDnsLabel(v.name))
    .map((v) => ({ name: v.name.toLowerCase(), address: v.address! }))
    .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
    .map((v) => `${v.address} ${dnsName(v.name)}`);
}

function renderBlock(lines: readonly string[]): string {
  return [BLOCK_BEGIN, ...lines, BLOCK_END].map((l) => l + '\n').join('');
}

/**
 * Adds the block at the end of the file (or replaces an existing one in place). When the file does not
 * end with a newline one is added first; `addedNewline` says so, and removeBlock takes it back.
 */
export function insertBlock(text: string, lines: readonly string[]): { text: string; addedNewline: boolean } {
  if (findBlock(text)) return { text: replaceBlock(text, lines), addedNewline: false };
  const addedNewline = text.length > 0 && !text.endsWith('\n');
  return { text: text + (addedNewline ? '\n' : '') + renderBlock(lines), addedNewline };
}

/** Rewrites only the block's lines; everything outside it stays as it is. No block: text unchanged. */
export function replaceBlock(text: string, lines: readonly string[]): string {
  const span = findBlock(text);
  if (!span) return text;
  const block = renderBlock(lines);
  // An end marker that was the file's last line without a newline keeps it that way.
  const keepNoNewline = span.end === text.length && !text.endsWith('\n');
  return text.slice(0, span.start) + (keepNoNewline ? block.slice(0, -1) : block) + text.slice(span.end);
}

/**
 * Removes the block. `addedNewline` (what insertBlock reported) drops the newline insertBlock added
 * before it, when the block is still the last thing in the file, so the file is restored exactly.
 */
export function removeBlock(text: string, addedNewline: boolean): string {
  const span = findBlock(text);
  if (!span) return text;
  let before = text.slice(0, span.start);
  const after = text.slice(span.end);
  if (addedNewline && after.length === 0 && before.endsWith('\n')) before = before.slice(0, -1);
  return before + after;
}

/** A VM name usable as one DNS label (what lands in the hosts file must be nothing else). */
export function isDnsLabel(s: string): boolean {
  return /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/i.test(s);
}

// ---------- systemd-resolved detection ----------

/** Whether systemd-resolved runs: its runtime directory exists and `resolvectl status` succeeds. */
export async function resolvedActive(
  run: CommandRunner,
  runtimeDir = '/run/systemd/resolve',
  signal?: AbortSignal,
): Promise<boolean> {
  if (!existsSync(runtimeDir)) return false;
  try {
    const r = await run('resolvectl', ['status'], { allowFailure: true, signal });
    return r.code === 0;
  } catch {
    return false; // resolvectl is not installed
  }
}

// ---------- the stateful part ----------

type InstallState =
  | { mechanism: 'hosts'; hostsFile: string; addedNewline: boolean }
  | { mechanism: 'resolved'; link: string; address: string; createdLink: boolean };

export interface DnsHostIntegrationDeps {
  /** Where install records what it did, under BANGER_HOME (e.g. `<home>/dns.json`). */
  stateFile: string;
  /** The hosts file; /etc/hosts in the daemon, a temp file in tests. */
  hostsFile: string;
  /** The address banger's DNS server listens on (resolved is pointed at it). */
  dnsAddress: string;
  /** The port it listens on (config `dns.port`); default 53. */
  dnsPort?: number;
  run: CommandRunner;
  log: Logger;
  /** systemd-resolved's runtime directory; default /run/systemd/resolve. */
  resolvedRuntimeDir?: string;
  /** Name of the dummy link that carries the `~vm` routing domain; default banger-dns. */
  link?: string;
  /** Forces a mechanism instead of detecting systemd-resolved (tests). */
  forceMechanism?: DnsMechanism;
  /** The daemon's uid; default 0. Not root: install refuses before changing anything (user-install.ts). */
  uid?: number;
}

export class DnsHostIntegration {
  private readonly link: string;

  constructor(private readonly deps: DnsHostIntegrationDeps) {
    this.link = deps.link ?? DEFAULT_DNS_LINK;
  }

  /** Whether install has been done (and not undone). */
  installed(): boolean {
    return this.readState() !== undefined;
  }

  /** Hooks `.vm` into the host's name resolution. Idempotent: a second install only refreshes. */
  async install(vms: readonly DnsVmEntry[], signal?: AbortSignal): Promise<DnsStatus> {
    const uid = this.deps.uid ?? 0;
    if (uid !== 0) throw userDnsInstallRefused({ address: this.deps.dnsAddress, port: this.deps.dnsPort ?? 53, uid });
    const existing = this.readState();
    if (existing) {
      await this.apply(existing, vms, signal);
      return this.status(vms, signal);
    }
    const mechanism =
      this.deps.forceMechanism ??
      ((await resolvedActive(this.deps.run, this.deps.resolvedRuntimeDir, signal)) ? 'resolved' : 'hosts');
    if (mechanism === 'hosts') {
      const text = this.readHosts();
      findBlock(text, this.deps.hostsFile); // a damaged block is refused before anything is recorded
      const r = insertBlock(text, blockLines(vms));
      // Record before writing: a crash in between leaves a state that uninstall can still undo.
      this.writeState({ mechanism: 'hosts', hostsFile: this.deps.hostsFile, addedNewline: r.addedNewline });
      this.writeHosts(text, r.text);
    } else {
      const createdLink = !(await this.linkExists(signal));
      const state: InstallState = {
        mechanism: 'resolved',
        link: this.link,
        address: this.deps.dnsAddress,
        createdLink,
      };
      this.writeState(state);
      await this.apply(state, vms, signal);
    }
    this.deps.log.info({ mechanism }, 'dns host integration installed');
    return this.status(vms, signal);
  }

  /** Undoes exactly what install did. Not installed: nothing to do. */
  async uninstall(signal?: AbortSignal): Promise<DnsStatus> {
    const state = this.readState();
    if (state?.mechanism === 'hosts') {
      const text = this.readHosts(state.hostsFile);
      findBlock(text, state.hostsFile); // a damaged block is the user's to fix, not banger's to guess at
      this.writeHosts(text, removeBlock(text, state.addedNewline), state.hostsFile);
    } else if (state?.mechanism === 'resolved') {
      await this.deps.run('resolvectl', ['revert', state.link], { allowFailure: true, signal });
      if (state.createdLink) await this.deps.run('ip', ['link', 'del', state.link], { allowFailure: true, signal });
      else
        await this.deps.run('ip', ['addr', 'del', `${state.address}/32`, 'dev', state.link], {
          allowFailure: true,
          signal,
        });
    }
    if (state) {
      rmSync(this.deps.stateFile, { force: true });
      this.deps.log.info({ mechanism: state.mechanism }, 'dns host integration uninstalled');
    }
    return this.status([], signal);
  }

  /** Brings the hosts block up to date with these VMs (call whenever VMs or their addresses change). */
  sync(vms: readonly DnsVmEntry[]): void {
    const state = this.readState();
    if (state?.mechanism !== 'hosts') return; // resolved asks the DNS server, which reads live state
    const text = this.readHosts(state.hostsFile);
    if (!findBlock(text, state.hostsFile)) {
      this.deps.log.warn({ hostsFile: state.hostsFile }, 'banger block missing from the hosts file; adding it back');
      const r = insertBlock(text, blockLines(vms));
      this.writeState({ ...state, addedNewline: r.addedNewline });
      this.writeHosts(text, r.text, state.hostsFile);
      return;
    }
    this.writeHosts(text, replaceBlock(text, blockLines(vms)), state.hostsFile);
  }

  /** `ADDR`, or `ADDR:PORT` when banger's DNS server is not on port 53. */
  private resolvedServer(address: string): string {
    const port = this.deps.dnsPort ?? 53;
    return port === 53 ? address : `${address}:${port}`;
  }

  /** Re-applies an installed integration after a reboot or a daemon restart. */
  async reapply(vms: readonly DnsVmEntry[], signal?: AbortSignal): Promise<void> {
    const state = this.readState();
    if (state) await this.apply(state, vms, signal);
  }

  async status(vms: readonly DnsVmEntry[], signal?: AbortSignal): Promise<DnsStatus> {
    const state = this.readState();
    const active = await resolvedActive(this.deps.run, this.deps.resolvedRuntimeDir, signal);
    const names = blockLines(vms).map((l) => {
      const [address, name] = l.split(' ') as [string, string];
      return { name, address };
    });
    const base = { resolvedActive: active, dnsAddress: this.deps.dnsAddress, names };
    if (!state)
      return { ...base, installed: false, mechanism: null, detail: 'not installed: run `banger dns install`' };
    if (state.mechanism === 'hosts') {
      let detail: string;
      try {
        detail =
          existsSync(state.hostsFile) && findBlock(this.readHosts(state.hostsFile), state.hostsFile) !== undefined
            ? `names are kept in a block of ${state.hostsFile}`
            : `the banger block is missing from ${state.hostsFile}; the daemon adds it back at the next change`;
      } catch (e) {
        if (!(e instanceof BangerError)) throw e;
        detail = `${e.message}; ${e.hint ?? ''}`;
      }
      return { ...base, installed: true, mechanism: 'hosts', hostsFile: state.hostsFile, detail };
    }
    return {
      ...base,
      installed: true,
      mechanism: 'resolved',
      link: state.link,
      detail: `systemd-resolved sends *.vm queries to ${this.resolvedServer(state.address)} (routing domain ~vm on link ${state.link})`,
    };
  }

  private async apply(state: InstallState, vms: readonly DnsVmEntry[], signal?: AbortSignal): Promise<void> {
    if (state.mechanism === 'hosts') {
      this.sync(vms);
      return;
    }
    const run = this.deps.run;
    if (!(await this.linkExists(signal))) await run('ip', ['link', 'add', state.link, 'type', 'dummy'], { signal });
    // resolved ignores links without an address of global scope; 127/8 addresses default to host scope.
    const addr = await run('ip', ['-4', '-o', 'addr', 'show', 'dev', state.link], { signal });
    if (!addr.stdout.includes(` ${state.address}/`))
      await run('ip', ['addr', 'add', `${state.address}/32`, 'dev', state.link, 'scope', 'global'], { signal });
    await run('ip', ['link', 'set', state.link, 'up'], { signal });
    const server = this.resolvedServer(state.address);
    const dns = await run('resolvectl', ['dns', state.link, server], { signal, allowFailure: true });
    if (dns.code !== 0)
      throw new BangerError(
        ErrorCode.FailedPrecondition,
        `systemd-resolved refused banger's DNS server ${server}: ${dns.stderr.trim() || `exit ${dns.code}`}`,
        {
          hint: server.includes(':')
            ? 'systemd-resolved before version 246 only uses port 53: set dns.port to 53 in config.json, or upgrade systemd'
            : 'check `resolvectl status` and `journalctl -u systemd-resolved`',
        },
      );
    await run('resolvectl', ['domain', state.link, '~vm'], { signal });
    // Never the default route: only .vm goes to banger (older resolvectl lacks the verb; ~vm alone implies it).
    await run('resolvectl', ['default-route', state.link, 'false'], { signal, allowFailure: true });
  }

  private async linkExists(signal?: AbortSignal): Promise<boolean> {
    const r = await this.deps.run('ip', ['link', 'show', 'dev', this.link], { allowFailure: true, signal });
    return r.code === 0;
  }

  private readState(): InstallState | undefined {
    if (!existsSync(this.deps.stateFile)) return undefined;
    try {
      const s = JSON.parse(readFileSync(this.deps.stateFile, 'utf8')) as InstallState;
      if (s.mechanism === 'hosts' || s.mechanism === 'resolved') return s;
    } catch (e) {
      throw new BangerError(ErrorCode.Internal, `cannot read ${this.deps.stateFile}: ${(e as Error).message}`, {
        hint: 'undo the DNS integration by hand (banger block in /etc/hosts, or `resolvectl revert banger-dns`), then delete that file',
        cause: e,
      });
    }
    return undefined;
  }

  private writeState(s: InstallState): void {
    durableWrite(this.deps.stateFile, JSON.stringify(s, null, 2) + '\n', { mode: 0o600 });
  }

  /** The hosts file's bytes as latin1; first puts back a backup that an interrupted in-place rewrite left. */
  private readHosts(file = this.deps.hostsFile): string {
    if (recoverInterrupted(file))
      this.deps.log.warn({ hostsFile: file }, 'restored the hosts file from the backup of an interrupted rewrite');
    return existsSync(file) ? readFileSync(file).toString('latin1') : '';
  }

  private writeHosts(before: string, after: string, file = this.deps.hostsFile): void {
    if (before === after) return;
    try {
      // /etc/hosts is a bind mount in containers, where only an in-place rewrite (after a backup) can work.
      durableWrite(file, Buffer.from(after, 'latin1'), {
        inPlaceFallback: true,
        onInPlace: (reason) => this.deps.log.warn({ hostsFile: file }, reason),
      });
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS')
        throw new BangerError(ErrorCode.FailedPrecondition, `cannot write ${file}: ${(e as Error).message}`, {
          hint: 'bangerd must run as root to edit the hosts file',
          cause: e,
        });
      throw e;
    }
  }
}
