/** The options of AgentClient (agent-client.ts): the client's own, and those of its calls. */

export interface AgentClientOptions {
  /** Names the VM in error messages, e.g. `"dev"`. */
  label?: string;
  /** Deadline of a request's reply (for `writeFile`, counted from the end of the content). Default 15 s. */
  requestTimeoutMs?: number;
  /** Why the connection was dropped, for the daemon's log. */
  log?: (message: string) => void;
}

export interface RequestOptions {
  signal?: AbortSignal;
  timeoutMs?: number;
}

export interface AgentExecOptions extends RequestOptions {
  /** Exactly one of `argv`, `shell` (a line for `/bin/sh -c`) and `prespawned` (a process held by `prespawn`). */
  argv?: string[];
  shell?: string;
  prespawned?: string;
  env?: Record<string, string>;
  cwd?: string;
  /** Give the process a stdin stream (otherwise it reads /dev/null). */
  stdin?: boolean;
  /** Run under a terminal of this size; its output then all comes on `stdout`. */
  pty?: { cols: number; rows: number };
  /** With argv: under `mise exec` where mise's config may apply (protocol/mise.ts); needs the agent's `mise` feature. */
  mise?: boolean;
}

export interface AgentSessionStartOptions extends RequestOptions {
  /** Default: the agent picks `sN`. */
  name?: string;
  argv: string[];
  tty?: boolean;
  size?: { cols: number; rows: number };
  cwd?: string;
  env?: Record<string, string>;
  /** Per-stream cap on kept output; default: the agent's. */
  capBytes?: number;
  /** Under `mise exec` where mise's config applies in `cwd` (an older agent ignores it). */
  mise?: boolean;
}
