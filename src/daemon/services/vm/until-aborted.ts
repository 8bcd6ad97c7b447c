import { BangerError, ErrorCode } from '../../../errors/index.js';

/** `p`, or a Cancelled error as soon as `signal` aborts (`p` itself goes on for its other waiters). */
export function untilAborted<T>(p: Promise<T>, signal: AbortSignal | undefined, message: string): Promise<T> {
  if (!signal) return p;
  if (signal.aborted) return Promise.reject(new BangerError(ErrorCode.Cancelled, message));
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(new BangerError(ErrorCode.Cancelled, message));
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(e instanceof Error ? e : new Error(String(e)));
      },
    );
  });
}
