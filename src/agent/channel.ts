import type { AgentErrorCode, StreamKind } from '../protocol/agent.js';

/** What a channel may send back to the daemon, bound to its channel id. */
export interface ChannelIo {
  sendData(stream: StreamKind, payload: Buffer): void;
  /** Grants the daemon `bytes` more on the channel's stdin; 0 is ignored. */
  sendCredit(stream: StreamKind, bytes: number): void;
  sendExit(code: number | null, signal: string | null): void;
}

/** A request failed in a way the daemon should be told about: becomes an error reply with this code. */
export class AgentFailure extends Error {
  constructor(
    readonly code: AgentErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'AgentFailure';
  }
}
