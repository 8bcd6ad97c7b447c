/**
 * The one error type banger raises for anything a user or caller can act on.
 * Codes are a closed set (like containerd/errdefs); every message should say what to do next,
 * and `hint` carries the next command when there is one.
 */
export const ErrorCode = {
  InvalidArgument: 'InvalidArgument',
  NotFound: 'NotFound',
  AlreadyExists: 'AlreadyExists',
  FailedPrecondition: 'FailedPrecondition',
  Conflict: 'Conflict',
  Unavailable: 'Unavailable',
  Cancelled: 'Cancelled',
  DeadlineExceeded: 'DeadlineExceeded',
  ResourceExhausted: 'ResourceExhausted',
  Unimplemented: 'Unimplemented',
  Internal: 'Internal',
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

export const ERROR_CODES: readonly ErrorCode[] = Object.values(ErrorCode);

export interface BangerErrorOptions {
  hint?: string;
  cause?: unknown;
}

export class BangerError extends Error {
  readonly code: ErrorCode;
  readonly hint: string | undefined;

  constructor(code: ErrorCode, message: string, options: BangerErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'BangerError';
    this.code = code;
    this.hint = options.hint;
  }
}

export function isBangerError(e: unknown): e is BangerError {
  return e instanceof BangerError;
}

export const invalidArgument = (message: string, hint?: string) =>
  new BangerError(ErrorCode.InvalidArgument, message, { hint });
export const notFound = (message: string, hint?: string) => new BangerError(ErrorCode.NotFound, message, { hint });
export const alreadyExists = (message: string, hint?: string) =>
  new BangerError(ErrorCode.AlreadyExists, message, { hint });
export const failedPrecondition = (message: string, hint?: string) =>
  new BangerError(ErrorCode.FailedPrecondition, message, { hint });
export const conflict = (message: string, hint?: string) => new BangerError(ErrorCode.Conflict, message, { hint });
export const unavailable = (message: string, hint?: string) =>
  new BangerError(ErrorCode.Unavailable, message, { hint });
export const cancelled = (message = 'cancelled') => new BangerError(ErrorCode.Cancelled, message);
export const internal = (message: string, cause?: unknown) =>
  new BangerError(ErrorCode.Internal, message, { cause });

/** Wraps anything thrown into a BangerError, keeping BangerErrors as they are. */
export function toBangerError(e: unknown): BangerError {
  if (e instanceof BangerError) return e;
  if (e instanceof Error && e.name === 'AbortError') return cancelled();
  const message = e instanceof Error ? e.message : String(e);
  return new BangerError(ErrorCode.Internal, message, { cause: e });
}

/**
 * Exit codes of the `banger` command for its own failures. They sit in 64..79 (BSD sysexits range,
 * rarely used by ordinary programs) and 125, the way `docker run` keeps its own failures apart from
 * the container command's exit status. `vm run` and `vm exec` otherwise exit with the guest command's code.
 */
export const EXIT_CODES: Record<ErrorCode, number> = {
  InvalidArgument: 64,
  NotFound: 65,
  AlreadyExists: 66,
  FailedPrecondition: 67,
  Conflict: 68,
  Unavailable: 69,
  Cancelled: 130,
  DeadlineExceeded: 70,
  ResourceExhausted: 71,
  Unimplemented: 72,
  Internal: 125,
};
