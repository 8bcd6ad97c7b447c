import { pino, type Logger as PinoLogger } from 'pino';

export type Logger = PinoLogger;

/** The daemon's one logger: JSON lines appended to `file` (mode 0600). */
export function fileLogger(file: string, level = process.env.BANGER_LOG_LEVEL ?? 'info'): Logger {
  return pino({ level, base: { pid: process.pid } }, pino.destination({ dest: file, mkdir: true, sync: false, mode: 0o600 }));
}

/** A logger that drops everything: for unit tests and pure code paths. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
