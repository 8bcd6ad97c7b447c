import { randomUUID } from 'node:crypto';
import type { Readable, Writable } from 'node:stream';
import { BangerError, ErrorCode } from '../errors/index.js';
import { ExecNotifications, VmMethods, type EXEC_SIGNALS } from '../protocol/vm.js';
import type { BangerClient } from './client.js';

/** Where a stream of guest output goes: a callback or a writable stream (written as is, no backpressure). */
export type OutputSink = ((data: Buffer) => void) | Writable;

export interface TerminalSize {
  rows: number;
  cols: number;
  /** TERM in the guest; default xterm-256color. */
  term?: string;
}

export interface ExecStreamRequest {
  vm: string;
  argv: string[];
  /** Guest working directory; default: the VM's workspace, if it has one. */
  cwd?: string;
  /** Allocate a pseudo-terminal of this size (stdout and stderr then arrive merged as stdout). */
  tty?: TerminalSize;
  /** Whether stdin will be written; without it the command's stdin is closed at once. */
  stdin: boolean;
  onStdout: (data: Buffer) => void;
  onStderr: (data: Buffer) => void;
  signal?: AbortSignal;
}

/** A command running in a VM. */
export interface ExecHandle {
  /** The guest command's exit code, once it ends. Rejects with a BangerError (Cancelled when aborted). */
  readonly exitCode: Promise<number>;
  /** Writes to the command's stdin (only with `stdin: true`). */
  write(data: Buffer | string): void;
  /** Closes the command's stdin. */
  end(): void;
  /** Tells a tty command its terminal changed size. */
  resize(rows: number, cols: number): void;
  /** Delivers a signal to the command (the CLI's first Ctrl-C sends SIGINT). */
  signal(name: (typeof EXEC_SIGNALS)[number]): void;
}

/**
 * Starts `vm.exec` and routes its exec/* notifications: the one streaming path under both the CLI's
 * `vm exec`/`vm run` and the API's `vm.exec`.
 */
export function startExec(client: BangerClient, req: ExecStreamRequest): ExecHandle {
  const execId = randomUUID();
  const sub = client.onStream(ExecNotifications.output, execId, (m) => m.execId, (m) => {
    const data = Buffer.from(m.data, 'base64');
    if (m.stream === 'stdout') req.onStdout(data);
    else req.onStderr(data);
  });
  const tty = req.tty ? { rows: req.tty.rows, cols: req.tty.cols, term: req.tty.term ?? 'xterm-256color' } : undefined;
  const exitCode = client
    .call(VmMethods.exec, { name: req.vm, execId, argv: req.argv, cwd: req.cwd, tty, stdin: req.stdin }, { signal: req.signal })
    .then((r) => r.exitCode)
    .finally(() => sub.dispose());
  return {
    exitCode,
    write: (data) => {
      const b = typeof data === 'string' ? Buffer.from(data) : data;
      if (b.length > 0) client.notify(ExecNotifications.stdin, { execId, data: b.toString('base64') });
    },
    end: () => client.notify(ExecNotifications.stdin, { execId, eof: true }),
    resize: (rows, cols) => client.notify(ExecNotifications.resize, { execId, rows, cols }),
    signal: (name) => client.notify(ExecNotifications.signal, { execId, signal: name }),
  };
}

export interface ExecOptions {
  cwd?: string;
  /** A pseudo-terminal: true for 24x80, or a size. */
  tty?: boolean | TerminalSize;
  /** The command's stdin; without it stdin is closed at once. A Readable is streamed until it ends. */
  stdin?: Buffer | string | Readable;
  /** Output goes here instead of into the result's buffers. */
  onStdout?: OutputSink;
  onStderr?: OutputSink;
  /** Most bytes kept per stream in the result (default 64 MiB); more ends the command with ResourceExhausted. */
  maxBuffer?: number;
  signal?: AbortSignal;
}

export interface ExecResult {
  /** The guest command's exit code (128+N after signal N). */
  code: number;
  /** What the command wrote, unless an onStdout/onStderr sink took it. */
  stdout: Buffer;
  stderr: Buffer;
}

const DEFAULT_MAX_BUFFER = 64 * 1024 * 1024;

function toSink(s: OutputSink): (d: Buffer) => void {
  return typeof s === 'function' ? s : (d) => void s.write(d);
}

/** Runs a command to completion; a non-zero exit code is a result, not an error. */
export async function execCollect(client: BangerClient, vm: string, argv: string[], opts: ExecOptions = {}): Promise<ExecResult> {
  const max = opts.maxBuffer ?? DEFAULT_MAX_BUFFER;
  const ac = new AbortController();
  const onAbort = () => ac.abort();
  if (opts.signal?.aborted) throw new BangerError(ErrorCode.Cancelled, 'cancelled');
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  let overflow: BangerError | undefined;
  const collector = (name: string) => {
    const parts: Buffer[] = [];
    let size = 0;
    const push = (d: Buffer) => {
      if (overflow) return;
      size += d.length;
      if (size > max) {
        overflow = new BangerError(ErrorCode.ResourceExhausted, `the command wrote more than ${max} bytes to ${name}`, {
          hint: 'pass onStdout/onStderr to stream the output, or a larger maxBuffer',
        });
        ac.abort();
        return;
      }
      parts.push(d);
    };
    return { push, get: () => Buffer.concat(parts) };
  };
  const out = collector('stdout');
  const err = collector('stderr');
  const tty = opts.tty === true ? { rows: 24, cols: 80 } : opts.tty || undefined;
  const stdin = opts.stdin;
  const h = startExec(client, {
    vm,
    argv,
    cwd: opts.cwd,
    tty,
    stdin: stdin !== undefined,
    onStdout: opts.onStdout ? toSink(opts.onStdout) : out.push,
    onStderr: opts.onStderr ? toSink(opts.onStderr) : err.push,
    signal: ac.signal,
  });
  let cleanupStdin = () => undefined as void;
  if (typeof stdin === 'string' || Buffer.isBuffer(stdin)) {
    h.write(stdin);
    h.end();
  } else if (stdin) {
    const onData = (d: Buffer | string) => h.write(d);
    const onEnd = () => h.end();
    stdin.on('data', onData);
    stdin.once('end', onEnd);
    cleanupStdin = () => {
      stdin.off('data', onData);
      stdin.off('end', onEnd);
    };
  }
  try {
    const code = await h.exitCode;
    return { code, stdout: out.get(), stderr: err.get() };
  } catch (e) {
    throw overflow ?? e;
  } finally {
    cleanupStdin();
    opts.signal?.removeEventListener('abort', onAbort);
  }
}
