import { mkdirSync, openSync } from 'node:fs';
import { dirname } from 'node:path';
import { pino, type Logger as PinoLogger } from 'pino';

export type Logger = PinoLogger;

/** The daemon's one logger: JSON lines appended to `file` (mode 0600). */
export function fileLogger(file: string, level = process.env.BANGER_LOG_LEVEL ?? 'info'): Logger {
  // Opened here, synchronously: a destination still opening when the process exits early (a bad config,
  // another daemon already running) makes pino's exit flush throw instead of exiting with the real error.
  mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
  const fd = openSync(file, 'a', 0o600);
  return pino({ level, base: { pid: process.pid } }, pino.destination({ dest: fd, sync: false }));
}

/** A logger that drops everything: for unit tests and pure code paths. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
