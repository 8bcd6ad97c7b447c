import { z } from 'zod';

/**
 * The pieces the agent protocol's messages are built from, shared by `agent.ts` and `agent-sessions.ts`: the
 * signals a message may name, and the zod schemas of request and channel ids, byte counts, a terminal's size
 * and bounded text. They live apart from `agent.ts` because it imports `agent-sessions.ts`: were that to
 * import them from `agent.ts`, whichever of the two loaded first would meet the other half-initialised.
 */

/** Signals the daemon may forward to a guest process. */
export const AGENT_SIGNALS = [
  'SIGTERM',
  'SIGKILL',
  'SIGINT',
  'SIGHUP',
  'SIGQUIT',
  'SIGUSR1',
  'SIGUSR2',
  'SIGCONT',
  'SIGSTOP',
] as const;
export type AgentSignal = (typeof AGENT_SIGNALS)[number];

export const requestId = z.number().int().min(0).max(0x7fffffff);
/** Chosen by the daemon, unique among the connection's open channels. */
export const channelId = z.number().int().min(1).max(0xffffffff);
export const byteCount = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);
/** A terminal's size. */
export const windowSize = z.object({ cols: z.number().int().min(1).max(65535), rows: z.number().int().min(1).max(65535) });
/** Text of at most `max` characters. */
export const text = (max: number) => z.string().max(max);
