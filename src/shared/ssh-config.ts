import { BangerError, ErrorCode, invalidArgument } from '../errors/index.js';
import { dnsName } from '../protocol/names.js';

/**
 * `banger ssh-config`: the block banger adds to a user's ~/.ssh/config, and the file that block Includes.
 * Everything here is pure text in, text out; the CLI does the file I/O.
 *
 * The block sits at the TOP of the user's file because OpenSSH scopes an `Include` written after a
 * `Host`/`Match` line to that block, and because the first value OpenSSH obtains for a setting wins.
 * It is inserted before the user's first byte and removed again as whole lines, so the user's content,
 * whatever its line endings and whether or not it ends with a newline, comes back byte for byte:
 *
 *   # >>> banger managed block: do not edit (banger ssh-config uninstall removes it) >>>
 *   # banger created this file; uninstall deletes it if nothing else is in it       <- only if it did
 *   Include /var/lib/banger/ssh/config
 *   # <<< banger <<<
 *
 * How uninstall knows banger created the file: install writes the "banger created this file" line into
 * the block when there was no file (and "... and its directory" when it also had to create the
 * directory). Uninstall deletes the file only when that line is there AND nothing but the block is left;
 * an empty file that existed before install stays an empty file.
 */

export const BLOCK_BEGIN = '# >>> banger managed block: do not edit (banger ssh-config uninstall removes it) >>>';
export const BLOCK_END = '# <<< banger <<<';
const CREATED_FILE = '# banger created this file; uninstall deletes it if nothing else is in it';
const CREATED_FILE_AND_DIR =
  '# banger created this file and its directory; uninstall deletes both if nothing else is in them';

const BEGIN_PREFIX = '# >>> banger managed block';
const CREATED_PREFIX = '# banger created this file';

/** What install had to create: recorded in the block so uninstall can put things back as they were. */
export type CreatedByBanger = 'nothing' | 'file' | 'file-and-dir';

export interface InstallOptions {
  /** Install also created the file's directory (~/.ssh); only meaningful when content is null. */
  createdDir?: boolean;
}

/**
 * The user's config with banger's block at the top. `content` null means the file does not exist.
 * Idempotent: with the block already there (anywhere in the file), returns the content unchanged when the
 * block is current, or with just the block rewritten in place (e.g. a different include path).
 */
export function installBlock(content: string | null, includePath: string, opts: InstallOptions = {}): string {
  if (content === null) return renderBlock('\n', opts.createdDir ? 'file-and-dir' : 'file', includePath);
  const found = findBlock(content);
  if (!found) return renderBlock(detectEol(content), 'nothing', includePath) + content;
  const block = renderBlock(found.eol, found.created, includePath);
  return content.slice(0, found.start) + block + content.slice(found.end);
}

/**
 * The user's config without banger's block(s), byte for byte what it was before install (plus whatever the
 * user changed outside the block since). Null: delete the file, because banger created it and nothing
 * else is in it. Content without a block comes back unchanged.
 */
export function uninstallBlock(content: string): string | null {
  let rest = content;
  let created: CreatedByBanger = 'nothing';
  for (let found = findBlock(rest); found; found = findBlock(rest)) {
    if (found.created !== 'nothing') created = found.created;
    rest = rest.slice(0, found.start) + rest.slice(found.end);
  }
  return created !== 'nothing' && rest === '' ? null : rest;
}

/** Whether the content holds banger's block. */
export function hasBlock(content: string | null): boolean {
  return content !== null && findBlock(content) !== undefined;
}

/** What install created, per the block's record; 'nothing' when there is no block or the file pre-existed. */
export function createdByBanger(content: string): CreatedByBanger {
  return findBlock(content)?.created ?? 'nothing';
}

/** The path the block Includes, or undefined without a block. */
export function includedPath(content: string): string | undefined {
  return findBlock(content)?.includePath;
}

interface FoundBlock {
  /** Offset of the begin marker line's first character. */
  start: number;
  /** Offset just past the end marker line's terminator (or the end of the content). */
  end: number;
  eol: '\n' | '\r\n';
  created: CreatedByBanger;
  includePath: string | undefined;
}

/** Lines with their offsets; `text` excludes the terminator (\n or \r\n), `next` is past it. */
function* lines(content: string): Generator<{ start: number; text: string; eol: '\n' | '\r\n' | ''; next: number }> {
  let start = 0;
  while (start < content.length) {
    const nl = content.indexOf('\n', start);
    if (nl < 0) {
      yield { start, text: content.slice(start), eol: '', next: content.length };
      return;
    }
    const crlf = nl > start && content[nl - 1] === '\r';
    yield { start, text: content.slice(start, crlf ? nl - 1 : nl), eol: crlf ? '\r\n' : '\n', next: nl + 1 };
    start = nl + 1;
  }
}

function findBlock(content: string): FoundBlock | undefined {
  let begin: { start: number; eol: '\n' | '\r\n' | '' } | undefined;
  let created: CreatedByBanger = 'nothing';
  let includePath: string | undefined;
  for (const l of lines(content)) {
    const t = l.text.trim();
    if (!begin) {
      if (t.startsWith(BEGIN_PREFIX)) begin = { start: l.start, eol: l.eol };
      continue;
    }
    if (t === BLOCK_END) return { start: begin.start, end: l.next, eol: begin.eol || '\n', created, includePath };
    if (t.startsWith(CREATED_PREFIX)) created = t === CREATED_FILE_AND_DIR ? 'file-and-dir' : 'file';
    else if (/^include\s/i.test(t)) includePath = unquote(t.replace(/^include\s+/i, ''));
  }
  if (begin)
    throw new BangerError(
      ErrorCode.FailedPrecondition,
      `banger's block in the ssh config has no end marker '${BLOCK_END}'`,
      {
        hint: `edit the file by hand: delete the lines from '${BLOCK_BEGIN}' to where banger's block ended, then run the command again`,
      },
    );
  return undefined;
}

/** The line ending of the content's first line; \n for content without any. */
export function detectEol(content: string): '\n' | '\r\n' {
  const nl = content.indexOf('\n');
  return nl > 0 && content[nl - 1] === '\r' ? '\r\n' : '\n';
}

function renderBlock(eol: string, created: CreatedByBanger, includePath: string): string {
  if (!includePath.startsWith('/'))
    throw invalidArgument(
      `the ssh include path must be absolute, got '${includePath}'`,
      'set BANGER_HOME to an absolute path',
    );
  const lines = [BLOCK_BEGIN];
  if (created === 'file') lines.push(CREATED_FILE);
  if (created === 'file-and-dir') lines.push(CREATED_FILE_AND_DIR);
  // Include expands globs and a leading ~ but no %-tokens (OpenSSH 9.x).
  lines.push(`Include ${sshArg(includePath, false)}`, BLOCK_END);
  return lines.map((l) => l + eol).join('');
}

// ---------- the included file ----------

export interface VmSshEntry {
  /** VM name; `ssh NAME.vm` reaches it. */
  name: string;
  /** Host address its SSH port is forwarded on (loopback). */
  hostAddress: string;
  sshPort: number;
}

export interface VmSshIncludeOptions {
  /** banger's private key, used for every VM. */
  identityFile: string;
  /** The known_hosts file renderKnownHosts wrote: each VM's pinned host key. */
  knownHostsFile: string;
  vms: VmSshEntry[];
}

/**
 * The ssh_config file that banger's block Includes. One `Host NAME.vm` block per VM gives its address and
 * port (so `ssh NAME.vm` works without DNS) and `HostKeyAlias NAME.vm`, so OpenSSH looks the host key up
 * under the name the known_hosts file pins it as, whatever address and port the VM has today. Then
 * `Host *.vm` sets what every VM shares, including no agent or X11 forwarding into the untrusted guest.
 * VMs are sorted by name so the same set renders the same bytes.
 */
export function renderVmSshInclude(opts: VmSshIncludeOptions): string {
  const out = [
    '# Written by banger; it is rewritten whenever VMs change, so edits here are lost.',
    '# Your ~/.ssh/config Includes it (banger ssh-config install).',
    '',
  ];
  for (const vm of [...opts.vms].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
    checkVmName(vm.name);
    if (!/^[0-9A-Za-z.:]+$/.test(vm.hostAddress))
      throw invalidArgument(`VM '${vm.name}': bad host address '${vm.hostAddress}'`);
    if (!Number.isInteger(vm.sshPort) || vm.sshPort <= 0 || vm.sshPort > 65535)
      throw invalidArgument(`VM '${vm.name}': bad SSH port ${vm.sshPort}`);
    out.push(
      `Host ${dnsName(vm.name)}`,
      `  HostName ${vm.hostAddress}`,
      `  Port ${vm.sshPort}`,
      `  HostKeyAlias ${dnsName(vm.name)}`,
      '',
    );
  }
  out.push(
    'Host *.vm',
    '  User root',
    // IdentityFile and UserKnownHostsFile expand %-tokens: a literal % is written %%.
    `  IdentityFile ${sshArg(opts.identityFile, true)}`,
    '  IdentitiesOnly yes',
    `  UserKnownHostsFile ${sshArg(opts.knownHostsFile, true)}`,
    '  StrictHostKeyChecking yes',
    // The guest is untrusted: it must not get the user's ssh-agent (it could sign with the user's keys
    // while the session lasts) nor an X11 display (it could read keystrokes and screens). This block
    // sits before the user's own settings, so these values win over a `Host *` that turns either on.
    '  ForwardAgent no',
    '  ForwardX11 no',
  );
  return out.join('\n') + '\n';
}

/** The known_hosts file: `NAME.vm <public key>` per VM, sorted by name. */
export function renderKnownHosts(vms: { name: string; hostPublicKey: string }[]): string {
  return [...vms]
    .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
    .map((vm) => {
      checkVmName(vm.name);
      const key = vm.hostPublicKey.trim();
      if (!key || /[\r\n]/.test(key)) throw invalidArgument(`VM '${vm.name}': bad host public key`);
      return `${vm.name}.vm ${key}\n`;
    })
    .join('');
}

function checkVmName(name: string): void {
  // A Host pattern and a known_hosts name: no whitespace, wildcards, commas or negation.
  if (!/^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$/.test(name))
    throw invalidArgument(`invalid VM name '${name}' for the ssh config`);
}

/** An ssh_config argument: bare when plain, else double-quoted. */
function sshArg(value: string, expandsTokens: boolean): string {
  if ([...value].some((c) => c === '"' || c === '\\' || c < ' ' || c === '\x7f'))
    throw invalidArgument(
      `cannot write ${JSON.stringify(value)} into an ssh config: it holds a quote, backslash or control character`,
      'use a BANGER_HOME path without such characters',
    );
  const v = expandsTokens ? value.replaceAll('%', '%%') : value;
  return /^[A-Za-z0-9._/+@:,=%-]+$/.test(v) ? v : `"${v}"`;
}

function unquote(s: string): string {
  return s.length >= 2 && s.startsWith('"') && s.endsWith('"') ? s.slice(1, -1) : s;
}
