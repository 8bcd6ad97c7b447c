import type { CommandRunner, RunOptions, RunResult } from './command.js';

/**
 * A command's output read record by record as it arrives (git's `-z` listings, `rev-list` lines), so a
 * listing of 100,000 paths is never held whole: read at once it is several copies of the listing (the
 * chunks, their concatenation, the string), and every substring of that string keeps all of it alive.
 * Here each field is decoded from the bytes on its own, into a string of its own.
 */

/** One record: `buf[start, end)`, without its separator. Only valid during the call. */
export type RecordHandler = (buf: Buffer, start: number, end: number) => void;

/** Cuts a byte stream into `sep`-terminated records; empty records are skipped, a last unterminated one is not. */
export function recordSplitter(sep: number, onRecord: RecordHandler): { push(chunk: Buffer): void; end(): void } {
  let rest: Buffer | null = null;
  return {
    push(chunk) {
      const buf = rest === null ? chunk : Buffer.concat([rest, chunk]);
      let start = 0;
      for (let i = buf.indexOf(sep); i !== -1; i = buf.indexOf(sep, start)) {
        if (i > start) onRecord(buf, start, i);
        start = i + 1;
      }
      // A copy: a view would keep the whole chunk alive until the next one.
      rest = start < buf.length ? Buffer.from(buf.subarray(start)) : null;
    },
    end() {
      if (rest !== null) onRecord(rest, 0, rest.length);
      rest = null;
    },
  };
}

export const NUL = 0;
export const NEWLINE = 0x0a;

/**
 * Runs a command and hands each record of its stdout to `onRecord` as it arrives. With `maxBytes`, a
 * listing longer than that is not read further and the result says `truncated` (callers refuse it).
 * The records of a command that fails are handed on too: the caller checks the result's code.
 */
export async function runRecords(
  run: CommandRunner,
  cmd: string,
  args: readonly string[],
  sep: number,
  onRecord: RecordHandler,
  opts: Omit<RunOptions, 'onStdout' | 'maxOutputBytes'> & { maxBytes?: number },
): Promise<RunResult> {
  const { maxBytes, ...rest } = opts;
  const split = recordSplitter(sep, onRecord);
  let bytes = 0;
  let over = false;
  const r = await run(cmd, args, {
    ...rest,
    onStdout: (chunk) => {
      bytes += chunk.length;
      if (maxBytes !== undefined && bytes > maxBytes) over = true;
      if (!over) split.push(chunk);
    },
  });
  if (!over) split.end();
  return over ? { ...r, truncated: { stdout: true, stderr: r.truncated?.stderr ?? false } } : r;
}

/** `buf[start, end)` as text (UTF-8, as runCommand decodes output; invalid bytes become U+FFFD). */
export function text(buf: Buffer, start: number, end: number): string {
  return buf.toString('utf8', start, end);
}
