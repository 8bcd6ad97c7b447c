import { constants } from 'node:os';
import { InvalidArgumentError } from 'commander';
import type { SessionFrom } from '../../../client/session.js';
import type { SessionInfo, VmStats } from '../../../protocol/session.js';
import { formatBytes, table } from '../../output.js';
import { escapeForTerminal } from '../../../shared/terminal-text.js';

/** The pieces of `vm session` and `vm stats` that are pure: flag parsing and the human tables. */

/** `--from start|end|OFFSET`: where reading a session's output starts. */
export function parseFrom(v: string): SessionFrom {
  if (v === 'start' || v === 'end') return v;
  if (/^\d+$/.test(v) && Number.isSafeInteger(Number(v))) return Number(v);
  throw new InvalidArgumentError(`expected start, end or a byte offset (a whole number), got '${v}'`);
}

/** `--env K=V`, repeatable: collects into one record; a later K wins. */
export function collectEnv(v: string, prev: Record<string, string> = {}): Record<string, string> {
  const eq = v.indexOf('=');
  const key = eq === -1 ? v : v.slice(0, eq);
  if (eq === -1 || !/^[A-Za-z_][A-Za-z0-9_]*$/.test(key))
    throw new InvalidArgumentError(`expected NAME=VALUE with NAME of letters, digits and _, got '${v}'`);
  return { ...prev, [key]: v.slice(eq + 1) };
}

/** `--signal`: TERM, SIGTERM, sigterm or 15, as the SIGNAME the protocol takes. */
export function parseSignal(v: string): string {
  const upper = v.toUpperCase();
  const signals = constants.signals as Record<string, number>;
  if (/^\d+$/.test(v)) {
    const name = Object.keys(signals).find((k) => signals[k] === Number(v));
    if (name) return name;
  } else {
    const name = upper.startsWith('SIG') ? upper : `SIG${upper}`;
    if (name in signals) return name;
  }
  throw new InvalidArgumentError(`expected a signal like TERM, SIGKILL or 9, got '${v}'`);
}

/**
 * What `vm session send` writes: TEXT and a newline (none with -n), or stdin as is for `-` or no TEXT
 * (a JSONL agent reads one message per line, so the newline is the default).
 */
export function sendPayload(text: string | undefined, noNewline: boolean): { stdin: true } | { stdin: false; data: string } {
  if (text === undefined || text === '-') return { stdin: true };
  return { stdin: false, data: noNewline ? text : `${text}\n` };
}

/** A session's state as a person reads it: running, exited N, killed SIGNAL, ended: vm stopped. */
export function sessionState(s: SessionInfo): string {
  if (s.state === 'running') return 'running';
  if (s.state === 'ended') return 'ended: vm stopped';
  if (s.signal) return `killed ${escapeForTerminal(s.signal)}`;
  return `exited ${s.exitCode ?? '?'}`;
}

function outputBytes(s: SessionInfo): string {
  return `${formatBytes(s.stdoutBytes + s.stderrBytes)}${s.capped ? ' (capped)' : ''}`;
}

/** `vm session list`; argv and names come through the guest agent, so they are escaped. */
export function sessionsTable(sessions: readonly SessionInfo[]): string {
  return table(
    ['NAME', 'PID', 'STATE', 'OUTPUT', 'STARTED', 'COMMAND'],
    sessions.map((s) => [
      escapeForTerminal(s.name),
      s.pid === null ? '-' : String(s.pid),
      sessionState(s),
      outputBytes(s),
      escapeForTerminal(s.startedAt),
      escapeForTerminal(s.argv.join(' ')),
    ]),
  );
}

export function sessionDetails(s: SessionInfo): string {
  const rows: [string, string][] = [
    ['Name', escapeForTerminal(s.name)],
    ['State', sessionState(s)],
    ['PID', s.pid === null ? '-' : String(s.pid)],
    ['Command', escapeForTerminal(s.argv.join(' '))],
    ['Terminal', s.tty ? 'yes' : 'no'],
    ['Directory', s.cwd === null ? '-' : escapeForTerminal(s.cwd)],
    ['Started', escapeForTerminal(s.startedAt)],
    ['Ended', s.endedAt === null ? '-' : escapeForTerminal(s.endedAt)],
    ['Stdout', `${s.stdoutBytes} bytes`],
    ['Stderr', `${s.stderrBytes} bytes`],
    ['Kept', `up to ${formatBytes(s.capBytes)} per stream${s.capped ? ' (reached: later output was dropped)' : ''}`],
    ['Attached', s.attachedBy === null ? '-' : escapeForTerminal(s.attachedBy)],
  ];
  const w = Math.max(...rows.map((r) => r[0].length));
  return rows.map(([k, v]) => `${(k + ':').padEnd(w + 1)} ${v}`).join('\n');
}

/** A guest exit status as our exit code: the code, or 128+N after signal N (as a shell reports it). */
export function exitCodeOf(s: SessionInfo): number | undefined {
  if (s.exitCode !== null) return s.exitCode;
  if (s.signal) {
    const n = (constants.signals as Record<string, number>)[s.signal];
    return n === undefined ? 128 : 128 + n;
  }
  return undefined;
}

/** Uptime as `3d4h`, `2h5m`, `4m10s`, `12s`. */
export function formatUptime(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (d > 0) return `${d}d${h}h`;
  if (h > 0) return `${h}h${m}m`;
  if (m > 0) return `${m}m${s % 60}s`;
  return `${s}s`;
}

function diskCell(st: VmStats, mount: string): string {
  const d = st.disks.find((x) => x.mount === mount);
  return d ? `${formatBytes(d.usedBytes)} / ${formatBytes(d.freeBytes)}` : '-';
}

/** A VM whose stats could not be read: its name and why. */
export interface StatsFailure {
  name: string;
  error: string;
}

/**
 * `vm stats`, one line per VM (like `docker stats`): CPU %, memory used / available, load, root and work
 * disk used / free, network received / sent, uptime, sessions running / total. The agent reports every
 * field, so strings are escaped.
 */
export function statsTable(rows: readonly (VmStats | StatsFailure)[]): string {
  return table(
    ['NAME', 'CPU %', 'MEM USED / AVAIL', 'LOAD', 'ROOT USED / FREE', 'WORK USED / FREE', 'NET RX / TX', 'UPTIME', 'SESSIONS'],
    rows.map((r) => {
      // Why it failed goes to stderr (statsFailureLines): a long message here would widen every column.
      if ('error' in r) return [escapeForTerminal(r.name), ...Array<string>(8).fill('-')];
      return [
        escapeForTerminal(r.name),
        r.cpuPercent.toFixed(1),
        `${formatBytes(r.memory.usedBytes)} / ${formatBytes(r.memory.availableBytes)}`,
        r.load.map((l) => l.toFixed(2)).join(' '),
        diskCell(r, '/'),
        diskCell(r, '/root'),
        `${formatBytes(r.network.rxBytes)} / ${formatBytes(r.network.txBytes)}`,
        formatUptime(r.uptimeSeconds),
        `${r.sessions.running} / ${r.sessions.total}`,
      ];
    }),
  );
}

/** Why the `-` rows of statsTable have no figures, one line each. */
export function statsFailureLines(rows: readonly (VmStats | StatsFailure)[]): string[] {
  return rows.flatMap((r) => ('error' in r ? [`${escapeForTerminal(r.name)}: ${escapeForTerminal(r.error)}`] : []));
}
