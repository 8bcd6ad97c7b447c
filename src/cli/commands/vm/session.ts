import { hostname } from 'node:os';
import type { Command } from 'commander';
import type { SessionFrom } from '../../../client/session.js';
import { BangerError, ErrorCode } from '../../../errors/index.js';
import type { SessionInfo } from '../../../protocol/session.js';
import { parseIntFlag, parseMib, type CliContext } from '../../context.js';
import { out } from '../../output.js';
import { escapeForTerminal } from '../../../shared/terminal-text.js';
import {
  collectEnv,
  exitCodeOf,
  parseFrom,
  parseSignal,
  sendPayload,
  sessionDetails,
  sessionState,
  sessionsTable,
} from './session-format.js';

/** The session protocol and client, imported when a session command runs: parsing `vm exec` never loads them. */
async function sessions() {
  const [protocol, client] = await Promise.all([import('../../../protocol/session.js'), import('../../../client/session.js')]);
  return { ...protocol, ...client };
}

/** Ctrl-]: detaches from a terminal session (as telnet does); every other byte goes to the session. */
export const DETACH_BYTE = 0x1d;

export function register(vm: Command, ctx: CliContext): void {
  const session = vm
    .command('session')
    .description('processes kept by the guest (agents, servers) that outlive the CLI, with durable output')
    .addHelpText(
      'after',
      `
A session runs under the VM's guest agent: it keeps running when the CLI exits, and everything it writes
is kept on the work disk under byte offsets, so output can be read again from any offset.

Examples:
  banger vm session start dev --name agent -- pi --mode rpc
  banger vm session send dev agent '{"type":"prompt","message":"run the tests"}'
  banger vm session logs dev agent --follow
  banger vm session attach dev agent        (Ctrl-] detaches; the session keeps running)
  banger vm session stop dev agent && banger vm session rm dev agent`,
    );

  session
    .command('start')
    .description(
      'start a command as a session and return at once; like `vm exec`, it runs as root with a login\'s environment, in the workspace (with its mise tools) unless --cwd',
    )
    .argument('<vm>', 'VM name')
    .argument('<command...>', 'the command and its arguments (put them after --)')
    .option('--name <name>', 'session name (default: generated)')
    .option('--tty', 'give it a terminal (for interactive programs; stdout and stderr merge)')
    .option('--cwd <dir>', "directory in the guest to run in (default: the VM's workspace, else /root; a relative one is taken from there)")
    .option('--env <NAME=VALUE>', 'environment variable (repeatable)', collectEnv)
    .option('--max-output <size>', 'output kept per stream on the work disk, e.g. 512M or 2G (default 64M); later output is dropped', (v) =>
      parseMib('--max-output', v),
    )
    .option('--json', 'print the session as JSON')
    .addHelpText('after', '\nPrints the session name on stdout.\n\nExample:\n  banger vm session start dev --name agent --env DEBUG=1 -- pi --mode rpc')
    .action(
      async (
        vmName: string,
        argv: string[],
        o: { name?: string; tty?: boolean; cwd?: string; env?: Record<string, string>; maxOutput?: number; json?: boolean },
      ) => {
        const { SessionMethods } = await sessions();
        const maxOutputBytes = o.maxOutput === undefined ? undefined : o.maxOutput * 1024 * 1024;
        // A terminal session starts at this terminal's size (an attach later makes it follow the attaching one).
        const size = o.tty && process.stdout.isTTY ? { rows: process.stdout.rows, cols: process.stdout.columns } : undefined;
        // A terminal session is for this terminal: its programs are told what it is, as `vm exec -t`'s are.
        const env = o.tty && process.env.TERM ? { TERM: process.env.TERM, ...o.env } : o.env;
        const s = await ctx.call(SessionMethods.start, { vm: vmName, name: o.name, argv, tty: o.tty, size, cwd: o.cwd, env, maxOutputBytes });
        if (o.json) return out.json(s);
        out.line(s.name);
        out.info(
          `started ${escapeForTerminal(s.name)} in ${vmName}${s.pid === null ? '' : ` (pid ${s.pid})`}; ` +
            `output: banger vm session logs ${vmName} ${escapeForTerminal(s.name)} --follow`,
        );
      },
    );

  session
    .command('list')
    .alias('ls')
    .description("list a VM's sessions: name, pid, state, output kept")
    .argument('<vm>', 'VM name')
    .option('--json', 'print the sessions as JSON')
    .action(async (vmName: string, o: { json?: boolean }) => {
      const { SessionMethods } = await sessions();
      const list = await ctx.call(SessionMethods.list, { vm: vmName });
      if (o.json) return out.json(list);
      if (list.length === 0) return out.info(`${vmName} has no sessions: start one with \`banger vm session start ${vmName} -- CMD\``);
      out.line(sessionsTable(list));
    });

  session
    .command('show')
    .description("show a session's details")
    .argument('<vm>', 'VM name')
    .argument('<session>', 'session name')
    .option('--json', 'print as JSON')
    .action(async (vmName: string, name: string, o: { json?: boolean }) => {
      const { SessionMethods } = await sessions();
      const s = await ctx.call(SessionMethods.show, { vm: vmName, session: name });
      if (o.json) out.json(s);
      else out.line(sessionDetails(s));
    });

  session
    .command('attach')
    .description('follow a session and forward stdin to it (one client at a time); detaching keeps it running')
    .argument('<vm>', 'VM name')
    .argument('<session>', 'session name')
    .option('--from <start|end|offset>', 'where the output shown starts (default end)', parseFrom)
    .addHelpText(
      'after',
      `
Detach: Ctrl-] in a terminal session; Ctrl-C in a session without a terminal (the session gets no signal:
use \`banger vm session stop\` for that). Ctrl-D closes the session's stdin.
Exits with the session's exit code if it ends while attached, 0 on detach.

Example:
  banger vm session attach dev shell --from start`,
    )
    .action(async (vmName: string, name: string, o: { from?: SessionFrom }) => {
      ctx.exitCode = await attach(ctx, vmName, name, o.from ?? 'end');
    });

  session
    .command('send')
    .description("write to a session's stdin: TEXT and a newline, or stdin as is")
    .argument('<vm>', 'VM name')
    .argument('<session>', 'session name')
    .argument('[text]', "the text; '-' or nothing: read stdin and send it unchanged")
    .option('-n, --no-newline', 'do not add a newline after TEXT')
    .option('--json', 'print the result as JSON')
    .addHelpText(
      'after',
      `
Examples:
  banger vm session send dev agent '{"type":"prompt","message":"hi"}'    one JSON line
  cat prompts.jsonl | banger vm session send dev agent -                  a file, streamed`,
    )
    .action(async (vmName: string, name: string, text: string | undefined, o: { newline: boolean; json?: boolean }) => {
      const p = sendPayload(text, !o.newline);
      const { sessionSend } = await sessions();
      const client = await ctx.client();
      const r = await sessionSend(client, vmName, name, p.stdin ? process.stdin : p.data, { signal: ctx.signal });
      if (o.json) out.json(r);
    });

  session
    .command('logs')
    .description("print a session's kept output (stdout unless --stderr), from a byte offset")
    .argument('<vm>', 'VM name')
    .argument('<session>', 'session name')
    .option('--from <start|end|offset>', 'byte offset to start at (default start)', parseFrom)
    .option('-f, --follow', 'keep printing new output until the session ends')
    .option('--stderr', 'the stderr stream instead of stdout')
    .option('--json', 'JSON lines: {stream, offset, data (base64)} per chunk, then {end} with the offsets to resume from')
    .addHelpText('after', '\nExample:\n  banger vm session logs dev agent --from 4096 --follow')
    .action(async (vmName: string, name: string, o: { from?: SessionFrom; follow?: boolean; stderr?: boolean; json?: boolean }) => {
      const { sessionLogs } = await sessions();
      const client = await ctx.client();
      const stream = o.stderr ? 'stderr' : 'stdout';
      const logs = sessionLogs(client, vmName, name, { from: o.from ?? 'start', stream, follow: o.follow, signal: ctx.signal });
      for await (const c of logs) {
        if (o.json) out.line(JSON.stringify({ stream: c.stream, offset: c.offset, data: c.data.toString('base64') }));
        else out.raw(c.data);
      }
      const end = await logs.end;
      if (o.json) out.line(JSON.stringify({ end }));
      else if (process.stderr.isTTY)
        out.info(`[${sessionState(end.session)}; resume with --from ${stream === 'stdout' ? end.stdoutOffset : end.stderrOffset}]`);
    });

  session
    .command('stop')
    .description(
      "end a session: its process group gets SIGTERM (or --signal), then SIGKILL if it has not ended within --timeout; returns once it has ended",
    )
    .argument('<vm>', 'VM name')
    .argument('<session>', 'session name')
    .option('--signal <sig>', 'the first signal: TERM, INT, KILL, HUP... or a number', parseSignal)
    .option('--timeout <seconds>', 'how long it may take to end before SIGKILL (default 10; 0: at once)', (v) =>
      parseIntFlag('--timeout', v, 0, 3600),
    )
    .option('--no-wait', 'only send the signal and return (no SIGKILL; the session may still be running)')
    .option('--json', 'print the session as JSON')
    .addHelpText(
      'after',
      `
Examples:
  banger vm session stop dev agent                 # SIGTERM; SIGKILL after 10 s if it is still running
  banger vm session stop dev agent --signal INT && banger vm session rm dev agent
  banger vm session stop dev agent --signal HUP --no-wait   # a signal that does not end it`,
    )
    .action(async (vmName: string, name: string, o: { signal?: string; timeout?: number; wait: boolean; json?: boolean }) => {
      const { SessionMethods, SESSION_STOP_TIMEOUT_SECONDS } = await sessions();
      const s = await ctx.call(SessionMethods.stop, {
        vm: vmName,
        session: name,
        signal: o.signal,
        timeoutSeconds: o.timeout,
        wait: o.wait,
      });
      if (o.json) return out.json(s);
      const [first, kill] = s.sent;
      let note = '';
      if (first === undefined) note = ' (it had already ended)';
      else if (kill !== undefined) note = ` (it had not ended ${o.timeout ?? SESSION_STOP_TIMEOUT_SECONDS} s after ${first})`;
      else if (s.state === 'running') note = ` (sent ${first})`;
      out.info(`${escapeForTerminal(s.name)}: ${sessionState(s)}${note}`);
    });

  session
    .command('rm')
    .description('remove an exited session and its kept output')
    .argument('<vm>', 'VM name')
    .argument('<session>', 'session name')
    .action(async (vmName: string, name: string) => {
      const { SessionMethods } = await sessions();
      const r = await ctx.call(SessionMethods.rm, { vm: vmName, session: name });
      out.info(`removed ${escapeForTerminal(r.removed)}`);
    });
}

/** The exit code for a session that ended while attached; a VM that stopped under it is an error. */
function endedExitCode(vmName: string, s: SessionInfo): number {
  const code = exitCodeOf(s);
  if (code !== undefined) {
    out.info(`${escapeForTerminal(s.name)}: ${sessionState(s)}`);
    return code;
  }
  throw new BangerError(ErrorCode.Unavailable, `${vmName} stopped while ${s.name} was running`, {
    hint: `its output is kept: banger vm session logs ${vmName} ${s.name}`,
  });
}

async function attach(ctx: CliContext, vmName: string, name: string, from: SessionFrom): Promise<number> {
  const { SessionMethods, sessionAttach } = await sessions();
  const client = await ctx.client();
  const info = await client.call(SessionMethods.show, { vm: vmName, session: name }, { signal: ctx.signal });
  const stdin = process.stdin;
  const rawMode = info.tty && stdin.isTTY;
  const att = sessionAttach(client, vmName, name, {
    from,
    client: `banger CLI, pid ${process.pid} on ${hostname()}`,
    onOutput: (c) => (c.stream === 'stdout' ? out.raw(c.data) : out.errRaw(c.data)),
  });
  // Ctrl-C (SIGINT reaches us only outside raw mode) detaches: the session is not ours to interrupt.
  const onAbort = () => att.detach();
  ctx.signal.addEventListener('abort', onAbort, { once: true });
  const onData = (d: Buffer) => {
    const at = rawMode ? d.indexOf(DETACH_BYTE) : -1;
    if (at === -1) return att.write(d);
    att.write(d.subarray(0, at));
    att.detach();
  };
  // Only a person's Ctrl-D closes the session's stdin; a script's empty or finished stdin leaves it open.
  const onEnd = () => stdin.isTTY && att.end();
  // A tty session takes this terminal's size now and follows its changes.
  const onResize = () => {
    if (process.stdout.rows && process.stdout.columns) att.resize(process.stdout.rows, process.stdout.columns);
  };
  const followSize = info.tty && process.stdout.isTTY;
  if (followSize) {
    onResize();
    process.stdout.on('resize', onResize);
  }
  if (rawMode) stdin.setRawMode(true);
  stdin.on('data', onData);
  stdin.once('end', onEnd);
  stdin.resume();
  if (rawMode) out.info('[attached; Ctrl-] detaches]');
  try {
    const r = await att.done;
    if (r.detached) {
      if (rawMode) stdin.setRawMode(false);
      out.info(`\n[detached; ${escapeForTerminal(name)} keeps running]`);
      return 0;
    }
    return endedExitCode(vmName, r.end.session);
  } finally {
    ctx.signal.removeEventListener('abort', onAbort);
    if (followSize) process.stdout.off('resize', onResize);
    stdin.off('data', onData);
    stdin.off('end', onEnd);
    if (rawMode && stdin.isRaw) stdin.setRawMode(false);
    stdin.pause();
    stdin.unref?.();
  }
}
