import { BangerError, ERROR_CODES, ErrorCode } from './index.js';

/**
 * JSON-RPC error codes for each BangerError code. Server-defined errors live in -32000..-32099.
 * Mapping happens only here: the daemon's rpc layer calls toWire, the client calls fromWire.
 */
export const WIRE_CODES: Record<ErrorCode, number> = {
  InvalidArgument: -32001,
  NotFound: -32002,
  AlreadyExists: -32003,
  FailedPrecondition: -32004,
  Conflict: -32005,
  Unavailable: -32006,
  Cancelled: -32800, // JSON-RPC's RequestCancelled, so generic clients understand it
  DeadlineExceeded: -32007,
  ResourceExhausted: -32008,
  Unimplemented: -32009,
  Internal: -32010,
};

export interface WireErrorData {
  bangerCode: ErrorCode;
  hint?: string;
}

export interface WireError {
  code: number;
  message: string;
  data: WireErrorData;
}

export function toWire(e: BangerError): WireError {
  const data: WireErrorData = { bangerCode: e.code };
  if (e.hint !== undefined) data.hint = e.hint;
  return { code: WIRE_CODES[e.code], message: e.message, data };
}

const BY_WIRE = new Map<number, ErrorCode>(ERROR_CODES.map((c) => [WIRE_CODES[c], c]));

/** Rebuilds a BangerError from a JSON-RPC error; unknown codes become Internal. */
export function fromWire(err: { code: number; message: string; data?: unknown }): BangerError {
  const data = (err.data ?? {}) as Partial<WireErrorData>;
  let code: ErrorCode = ErrorCode.Internal;
  if (typeof data.bangerCode === 'string' && (ERROR_CODES as readonly string[]).includes(data.bangerCode)) {
    code = data.bangerCode;
  } else {
    code = BY_WIRE.get(err.code) ?? ErrorCode.Internal;
    if (err.code === -32602) code = ErrorCode.InvalidArgument;
    if (err.code === -32601) code = ErrorCode.Unimplemented;
  }
  return new BangerError(code, err.message, { hint: typeof data.hint === 'string' ? data.hint : undefined });
}
