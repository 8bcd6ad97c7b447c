import { InvalidArgumentError } from 'commander';
import type { RequestType } from 'vscode-jsonrpc';
import type { BangerClient } from '../client/client.js';
import { Paths } from '../shared/paths.js';
import { ProgressRenderer, progressMode, out } from './output.js';

/** What every command gets: where state lives, a lazily started daemon connection, Ctrl-C as a signal. */
export class CliContext {
  readonly paths = Paths.fromEnv();
  private clientP: Promise<BangerClient> | undefined;
  /** Exit code a command asks for (vm exec/run: the guest command's). */
  exitCode = 0;
  /**
   * Set while a guest command runs without a terminal: the first Ctrl-C goes to it as SIGINT (the
   * command decides what it means); the next one cancels.
   */
  onInterrupt: (() => void) | undefined;

  constructor(readonly signal: AbortSignal) {}

  // The client (JSON-RPC, protocol schemas) is imported on first use: --version, help and host-only
  // commands never pay for it.
  client(): Promise<BangerClient> {
    this.clientP ??= import('../client/launcher.js').then(({ connectOrStart }) =>
      connectOrStart(this.paths, () => out.info('starting bangerd...'), undefined, (m) => out.info(`note: ${m}`)),
    );
    return this.clientP;
  }

  /** Connects only if a daemon is running already; undefined otherwise. */
  async existingClient(): Promise<BangerClient | undefined> {
    const { BangerClient } = await import('../client/client.js');
    try {
      return await BangerClient.connect(this.paths.socket);
    } catch {
      return undefined;
    }
  }

  /** Calls a method, rendering its progress events per --json/TTY. */
  async call<P, R>(type: RequestType<P, R, unknown>, params: P, opts: { json?: boolean; progress?: boolean } = {}): Promise<R> {
    const client = await this.client();
    if (!opts.progress) return client.call(type, params, { signal: this.signal });
    const r = await ProgressRenderer.create(progressMode({ json: opts.json }));
    try {
      const res = await client.call(type, params, { signal: this.signal, onProgress: r.onEvent });
      r.finish(true);
      return res;
    } catch (e) {
      r.finish(false);
      throw e;
    }
  }

  close(): void {
    void this.clientP?.then((c) => c.close(), () => undefined);
  }
}

/** Parses sizes like 512, 512M, 2G, 1.5GiB into MiB. */
export function parseMib(_flag: string, v: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*(m|mb|mib|g|gb|gib|t|tb|tib)?$/i.exec(v.trim());
  if (!m) throw new InvalidArgumentError(`expected a size like 512M or 2G, got '${v}'`);
  const n = Number(m[1]);
  const unit = (m[2] ?? 'm').toLowerCase()[0];
  const mib = unit === 'g' ? n * 1024 : unit === 't' ? n * 1024 * 1024 : n;
  return Math.round(mib);
}

export function parseIntFlag(_flag: string, v: string, min = 1, max?: number): number {
  const n = Number(v);
  if (Number.isInteger(n) && n >= min && (max === undefined || n <= max)) return n;
  const want = max !== undefined ? `whole number from ${min} to ${max}` : min === 0 ? 'whole number, 0 or more' : 'positive whole number';
  throw new InvalidArgumentError(`expected a ${want}, got '${v}'`);
}
