/**
 * Keeping watch on a VM's guest agent connection. Over virtio-serial the host socket stays open when the
 * guest's agent dies, so silence is the only sign, and without a watch a command running through a dead agent
 * would wait forever. Silence alone is not enough, though: a software-emulated guest on a loaded host can stop
 * for most of a minute (the guest kernel then logs soft lockups), and dropping its agent would fail every
 * command running through it. So an agent that misses its hello is dropped only when the guest answers SSH.
 */
export interface AgentPingDeps {
  /** Resolves when the agent answers a hello within `timeoutMs`; rejects otherwise. */
  hello(timeoutMs: number): Promise<unknown>;
  /** Whether the guest runs a command over SSH within `timeoutMs`. */
  guestAnswers(timeoutMs: number): Promise<boolean>;
  /** The connection is closed or the VM is going away: the watch ends. */
  gone(): boolean;
  /** The VM is parked (paused by its pool): a hello sent just before goes unanswered, and is no sign. */
  parked(): boolean;
  /** Closes the agent's connection (the next command reconnects, or uses SSH). */
  drop(reason: string): void;
  warn(message: string): void;
}

export interface AgentPingOptions {
  intervalMs: number;
  /** For the hello, and again for the SSH probe that follows a missed one. */
  timeoutMs: number;
}

/** Pings every `intervalMs`, one ping at a time, until `gone()`; returns a function that stops it. */
export function watchAgent(deps: AgentPingDeps, opts: AgentPingOptions): () => void {
  let busy = false;
  const timer = setInterval(() => {
    if (deps.gone()) return clearInterval(timer);
    if (busy || deps.parked()) return;
    busy = true;
    void pingOnce(deps, opts.timeoutMs).finally(() => (busy = false));
  }, opts.intervalMs);
  timer.unref();
  return () => clearInterval(timer);
}

/** One ping: what it did, for tests and logs. */
export async function pingOnce(deps: AgentPingDeps, timeoutMs: number): Promise<'answered' | 'dropped' | 'stalled' | 'skipped'> {
  const answered = await deps.hello(timeoutMs).then(
    () => true,
    () => false,
  );
  if (answered) return 'answered';
  if (deps.gone() || deps.parked()) return 'skipped';
  const guest = await deps.guestAnswers(timeoutMs).catch(() => false);
  if (deps.gone() || deps.parked()) return 'skipped';
  if (!guest) {
    deps.warn('neither the guest agent nor SSH answers (a stalled guest): its agent connection is kept');
    return 'stalled';
  }
  deps.drop('the guest agent stopped answering while the guest answers SSH; dropping its connection');
  return 'dropped';
}
