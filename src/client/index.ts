/**
 * The `banger` package's public API: `import { connect } from 'banger'`.
 * The CLI is a thin skin over the same client; see README's "API" section.
 */
export {
  Banger,
  connect,
  type ConnectOptions,
  type ExecOptions,
  type ExecResult,
  type SessionAttachment,
  type SessionChunk,
  type SessionFrom,
  type SessionOutput,
  type SessionStartOptions,
  type Signalled,
  type VmCreateOptions,
  type VmRunOptions,
  type VmRunResult,
  type WithProgressEvents,
  type WorkspaceExport,
} from './api.js';
export { BangerClient, type CallOptions } from './client.js';
export type { SessionEnd } from './session.js';
export { BangerError, ErrorCode, EXIT_CODES, isBangerError } from '../errors/index.js';
export type { ProgressEvent } from '../protocol/common.js';
export type { SessionInfo, SessionStopResult, VmStats, OutputStream } from '../protocol/session.js';
export type { VmInfo, VmCreateParams, VmSyncInfo } from '../protocol/vm.js';
export type { WorkspaceCompareResult, WorkspaceInfo, WorkspacePrepareResult } from '../protocol/workspace.js';
