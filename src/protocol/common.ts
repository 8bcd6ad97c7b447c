import { z } from 'zod';
import { NotificationType, ProgressType, RequestType } from 'vscode-jsonrpc';
import type { WireErrorData } from '../errors/wire.js';

/**
 * What every noun of the RPC surface shares: the enum tuples (one spelling of each choice, reused by the
 * CLI's `.choices()`, the config schema and the store), progress events, and the descriptor classes that
 * carry a method's name together with the schemas of its params and result.
 */

/** The virtual machine monitors a VM can run under. */
export const VMM_NAMES = ['qemu', 'firecracker'] as const;
export type VmmName = (typeof VMM_NAMES)[number];
/** What a user may ask for: a VMM, or `auto` (Firecracker where it can run, else QEMU). */
export const VMM_CHOICES = ['auto', ...VMM_NAMES] as const;
export type VmmChoice = (typeof VMM_CHOICES)[number];

/** Hardware acceleration a boot used: KVM, or QEMU's software emulation (TCG). */
export const ACCELS = ['kvm', 'tcg'] as const;
export type Accel = (typeof ACCELS)[number];
/** What a user may ask for: an accelerator, or `auto` (probe KVM, fall back to TCG). */
export const ACCEL_CHOICES = ['auto', ...ACCELS] as const;
export type AccelChoice = (typeof ACCEL_CHOICES)[number];

/** loopback: user networking behind a per-VM 127.77.x.y address; tap: a tap on banger's bridge (root). */
export const NETWORK_MODES = ['loopback', 'tap'] as const;
export type NetworkMode = (typeof NETWORK_MODES)[number];

export const VM_STATES = ['created', 'starting', 'running', 'stopping', 'stopped', 'error'] as const;
export type VmState = (typeof VM_STATES)[number];

export const IMAGE_STATUSES = ['building', 'ready', 'failed'] as const;
export type ImageStatus = (typeof IMAGE_STATUSES)[number];

/** A unit of progress of a long operation; the CLI renders it as a spinner/bar, plain lines or JSON lines. */
export const progressEventSchema = z.discriminatedUnion('kind', [
  z.object({
    kind: z.literal('step'),
    step: z.string(),
    index: z.number(),
    total: z.number(),
    detail: z.string().optional(),
    /** What the step is of, when one request makes several things side by side (a fork's VMs). */
    subject: z.string().optional(),
  }),
  z.object({
    kind: z.literal('bytes'),
    step: z.string(),
    done: z.number(),
    total: z.number().optional(),
    files: z.number().optional(),
  }),
  z.object({ kind: z.literal('notice'), message: z.string() }),
  z.object({ kind: z.literal('log'), line: z.string() }),
]);
export type ProgressEvent = z.infer<typeof progressEventSchema>;

/** Progress events travel as `$/progress` notifications under the request's progress token. */
export const progressType = new ProgressType<ProgressEvent>();

/** The params field of every method that reports progress. */
export const withProgress = {
  /** Token under which the daemon reports ProgressEvents for this request. */
  progressToken: z.string().optional(),
};
export interface WithProgress {
  progressToken?: string;
}

/** A method's params: a schema, or null for a method that takes none. */
export type ParamsSchema = z.ZodTypeAny | null;
/** What a caller sends (before defaults are applied). */
export type ParamsIn<S extends ParamsSchema> = S extends z.ZodTypeAny ? z.input<S> : void;
/** What a handler receives (after validation). */
export type ParamsOut<S extends ParamsSchema> = S extends z.ZodTypeAny ? z.output<S> : void;

/**
 * One RPC method, declared once and imported by both ends: its wire name (`noun.verb`), the schema the
 * daemon validates params with at the boundary, and the shape of its result.
 */
export class RpcMethod<S extends ParamsSchema, R> extends RequestType<ParamsIn<S>, R, WireErrorData> {
  constructor(
    method: string,
    readonly params: S,
    readonly result: z.ZodType<R, z.ZodTypeDef, unknown>,
  ) {
    super(method);
  }
}

export function method<S extends ParamsSchema, R>(
  name: string,
  params: S,
  result: z.ZodType<R, z.ZodTypeDef, unknown>,
): RpcMethod<S, R> {
  return new RpcMethod(name, params, result);
}

/** A notification (no reply) with the schema its receiver validates it with. */
export class RpcNotification<S extends z.ZodTypeAny> extends NotificationType<z.input<S>> {
  constructor(
    method: string,
    readonly params: S,
  ) {
    super(method);
  }
}

