/**
 * Everything the CLI prints goes through here. Results (and --json) go to stdout; progress, notices
 * and errors go to stderr.
 */
import type { Ora } from 'ora';
import type { ProgressEvent } from '../protocol/common.js';
import { EXIT_CODES, ErrorCode, type BangerError } from '../errors/index.js';

export const out = {
  /** A line of result text on stdout. */
  line(s = ''): void {
    process.stdout.write(s + '\n');
  },
  raw(b: Buffer | string): void {
    process.stdout.write(b);
  },
  json(v: unknown): void {
    process.stdout.write(JSON.stringify(v, null, 2) + '\n');
  },
  /** A human message on stderr. */
  info(s: string): void {
    process.stderr.write(s + '\n');
  },
  warn(s: string): void {
    process.stderr.write(`${color('33', 'warning:')} ${s}\n`);
  },
  error(s: string): void {
    process.stderr.write(`${color('31', 'error:')} ${s}\n`);
  },
  errRaw(b: Buffer | string): void {
    process.stderr.write(b);
  },
};

function color(code: string, s: string): string {
  return process.stderr.isTTY && !process.env.NO_COLOR ? `\x1b[${code}m${s}\x1b[0m` : s;
}

/**
 * Prints a BangerError as every command does (its message, then its hint; a cancelled one as just that) and
 * returns its exit code.
 */
export function printBangerError(e: BangerError): number {
  if (e.code === ErrorCode.Cancelled) {
    out.error('cancelled');
    return EXIT_CODES.Cancelled;
  }
  out.error(e.message);
  if (e.hint) out.info(`hint: ${e.hint}`);
  return EXIT_CODES[e.code];
}

/** A table with a header row; columns padded to their widest cell. */
export function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const fmt = (r: string[]) =>
    r
      .map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  return [fmt(headers), ...rows.map(fmt)].join('\n');
}

export type ProgressMode = 'tty' | 'plain' | 'json' | 'quiet';

export function progressMode(opts: { json?: boolean; quiet?: boolean }): ProgressMode {
  if (opts.quiet) return 'quiet';
  if (opts.json) return 'json';
  return process.stderr.isTTY ? 'tty' : 'plain';
}

/**
 * Renders progress events: a spinner on a TTY, one plain line per step otherwise, JSON lines with --json
 * (all on stderr, so stdout stays the command's result).
 */
export class ProgressRenderer {
  private spinner: Ora | undefined;
  private lastBytesLine = 0;
  /** Rate and time left of the byte transfer in progress. */
  private readonly rate = new TransferRate();
  /**
   * When the current step began, per subject ('' for none): each step's time is shown when it ends (image
   * builds take minutes). A fork's VMs each have their own steps, interleaved.
   */
  private readonly stepStarted = new Map<string, number>();

  private constructor(
    private readonly mode: ProgressMode,
    /** The spinner library, loaded only for a terminal (it costs tens of ms of start-up). */
    private readonly ora: typeof import('ora').default | undefined,
  ) {}

  static async create(mode: ProgressMode): Promise<ProgressRenderer> {
    return new ProgressRenderer(mode, mode === 'tty' ? (await import('ora')).default : undefined);
  }

  readonly onEvent = (ev: ProgressEvent): void => {
    switch (this.mode) {
      case 'quiet':
        return;
      case 'json':
        process.stderr.write(JSON.stringify({ progress: ev }) + '\n');
        return;
      case 'plain':
        return this.plain(ev);
      case 'tty':
        return this.tty(ev);
    }
  };

  /** Ends the step of `who` ('' for none), printing how long it took when that was a second or more. */
  private reportStep(who: string): void {
    const took = this.endStep(who);
    if (took) out.info(`    ${who ? `${who}: ` : ''}took ${took}`);
  }

  /** How long the step of `who` that just ended took ("12.3 s"), or undefined for one under a second. */
  private endStep(who = ''): string | undefined {
    const started = this.stepStarted.get(who);
    this.stepStarted.delete(who);
    if (started === undefined) return undefined;
    const s = (Date.now() - started) / 1000;
    return s >= 1 ? `${s.toFixed(1)} s` : undefined;
  }

  private plain(ev: ProgressEvent): void {
    if (ev.kind === 'step') {
      const who = ev.subject ?? '';
      // The steps of several things begin once the request's own step (a fork's snapshot) has ended.
      if (who) this.reportStep('');
      this.reportStep(who);
      this.stepStarted.set(who, Date.now());
      out.info(`==> ${who ? `${who} ` : ''}[${ev.index}/${ev.total}] ${ev.step}${ev.detail ? `: ${ev.detail}` : ''}`);
    }
    else if (ev.kind === 'notice') out.info(`note: ${ev.message}`);
    else if (ev.kind === 'bytes') {
      const now = Date.now();
      if (now - this.lastBytesLine < 2000 && ev.done !== ev.total) return;
      this.lastBytesLine = now;
      out.info(`    ${this.bytesText(ev)}`);
    }
  }

  private tty(ev: ProgressEvent): void {
    if (ev.kind === 'notice') {
      if (this.spinner) this.spinner.clear();
      out.info(`note: ${ev.message}`);
      this.spinner?.render();
      return;
    }
    if (ev.kind === 'log') return;
    if (ev.kind === 'step' && ev.subject !== undefined) {
      // Steps of several things at once (a fork's VMs) interleave: a line each, as without a terminal.
      if (this.spinner) this.succeed();
      this.spinner = undefined;
      return this.plain(ev);
    }
    const text =
      ev.kind === 'step'
        ? `[${ev.index}/${ev.total}] ${ev.step}${ev.detail ? ` ${dim(ev.detail)}` : ''}`
        : this.bytesText(ev);
    const ora = this.ora;
    if (!ora) return;
    if (!this.spinner) this.spinner = ora({ text, stream: process.stderr, discardStdin: false }).start();
    else if (ev.kind === 'step' && !this.spinner.text.startsWith(`[${ev.index}/`)) {
      this.succeed();
      this.spinner = ora({ text, stream: process.stderr, discardStdin: false }).start();
    } else this.spinner.text = text;
    if (ev.kind === 'step' && !this.stepStarted.has('')) this.stepStarted.set('', Date.now());
  }

  /** `import: 12.0 MiB / 200.0 MiB, 1200 files, 4.1 MiB/s, about 46 s left`. */
  private bytesText(ev: Extract<ProgressEvent, { kind: 'bytes' }>): string {
    const { perSecond, secondsLeft } = this.rate.update(ev.step, ev.done, ev.total);
    return [
      `${ev.step}: ${formatBytes(ev.done)}${ev.total ? ` / ${formatBytes(ev.total)}` : ''}`,
      ev.files !== undefined ? `${ev.files} file${ev.files === 1 ? '' : 's'}` : undefined,
      perSecond !== undefined ? `${formatBytes(perSecond)}/s` : undefined,
      secondsLeft !== undefined ? `about ${formatSeconds(secondsLeft)} left` : undefined,
    ]
      .filter((x) => x !== undefined)
      .join(', ');
  }

  private succeed(): void {
    const took = this.endStep();
    this.spinner?.succeed(took ? `${this.spinner.text} ${dim(`(${took})`)}` : undefined);
  }

  /** Ends the display: the last step is marked done (with its time), or failed. */
  finish(ok: boolean): void {
    if (ok)
      for (const who of [...this.stepStarted.keys()]) {
        // A spinner's own line says how long its step took.
        if (who === '' && this.spinner) continue;
        this.reportStep(who);
      }
    if (!this.spinner) return;
    if (ok) this.succeed();
    else this.spinner.fail();
    this.spinner = undefined;
  }
}

function dim(s: string): string {
  return `\x1b[2m${s}\x1b[0m`;
}

/**
 * Rate of a byte transfer from its progress events: bytes since the first event over the time since,
 * shown once a second has passed; the time left from that rate and the total (none without a total).
 */
export class TransferRate {
  private step: string | undefined;
  private first = { at: 0, done: 0 };

  constructor(private readonly now: () => number = Date.now) {}

  update(step: string, done: number, total?: number): { perSecond?: number; secondsLeft?: number } {
    const now = this.now();
    if (step !== this.step || done < this.first.done) {
      this.step = step;
      this.first = { at: now, done };
      return {};
    }
    const seconds = (now - this.first.at) / 1000;
    if (seconds < 1 || done === this.first.done) return {};
    const perSecond = (done - this.first.done) / seconds;
    const secondsLeft = total !== undefined && total > done ? (total - done) / perSecond : undefined;
    return { perSecond, secondsLeft };
  }
}

/** `45 s`, `3 min 20 s`. */
export function formatSeconds(s: number): string {
  const r = Math.ceil(s);
  return r < 60 ? `${r} s` : `${Math.floor(r / 60)} min ${r % 60} s`;
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}
