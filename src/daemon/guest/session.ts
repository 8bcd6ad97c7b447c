import type { Readable, Writable } from 'node:stream';

/** Options for one command run in a guest over the VM's SSH connection. */
export interface GuestExecOptions {
  /** Bytes fed to the command's stdin; ended when the stream ends. Omitted: stdin is closed at once. */
  stdin?: Readable;
  /** About how many bytes `stdin` carries, when the caller knows: a small stdin may take a cheaper way (bulk.ts). */
  stdinBytes?: number;
  /** Where stdout/stderr go as they arrive. Omitted: collected and returned. */
  stdout?: Writable;
  stderr?: Writable;
  /** Allocate a pseudo-terminal. */
  pty?: { rows: number; cols: number; term: string };
  env?: Record<string, string>;
  signal?: AbortSignal;
  /** Called once the command started, with controls for it (window size changes of a pty). */
  onStart?: (control: GuestExecControl) => void;
}

/** Controls of a running guest command. */
export interface GuestExecControl {
  resize(rows: number, cols: number): void;
  /** Delivers a signal (`SIGINT`...) to the command. */
  signal(name: string): void;
}

export interface GuestExecResult {
  /** The command's exit status; 128+N when it died of signal N. */
  code: number;
  /** Collected output when no stdout/stderr stream was given. */
  stdout: Buffer;
  stderr: Buffer;
}

/**
 * A connection to a running guest. `command` is a shell command line run by the guest's /bin/sh as root:
 * callers quote with guest/shell.ts `shq`.
 */
export interface GuestSession {
  exec(command: string, opts?: GuestExecOptions): Promise<GuestExecResult>;
}

/** The most output collected from one guest command that no stream consumes (stdout and stderr together). */
export const MAX_COLLECTED_BYTES = 16 * 1024 * 1024;

/**
 * Collects the output of a guest command nobody streams, up to `max` bytes over both streams: the guest
 * decides how much it writes. Past the cap `stop` is called once and the rest is dropped.
 */
export class OutputCollector {
  readonly stdout: Buffer[] = [];
  readonly stderr: Buffer[] = [];
  private total = 0;
  overflowed = false;

  constructor(
    private readonly stop: () => void,
    readonly max = MAX_COLLECTED_BYTES,
  ) {}

  sink(into: 'stdout' | 'stderr'): (d: Buffer) => void {
    return (d) => {
      this.total += d.length;
      if (this.total > this.max) {
        if (!this.overflowed) this.stop();
        this.overflowed = true;
        return;
      }
      this[into].push(d);
    };
  }
}
