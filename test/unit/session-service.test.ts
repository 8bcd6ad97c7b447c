import { strict as assert } from 'node:assert';
import { describe, it } from 'node:test';
import { BangerError, ErrorCode } from '../../src/errors/index.js';
import type { SessionInfo } from '../../src/protocol/session.js';
import { SessionService, type AgentSource } from '../../src/daemon/services/session/service.js';
import type { AgentClient } from '../../src/daemon/guest/agent-client.js';
import type { VmRecord } from '../../src/daemon/store/repos/vms.js';
import { silentLogger } from '../../src/shared/logger.js';

/**
 * A guest whose session `s1` ends `endsAfterMs` after a signal it heeds (null: never; SIGKILL ends it at once),
 * on a fake clock: the service's waits advance the clock instead of taking time.
 */
function guest(opts: {
  heeds: (sig: string) => boolean;
  endsAfterMs: number | null;
  running?: boolean;
  /** false: not even SIGKILL ends it (a process in uninterruptible sleep). */
  killable?: boolean;
}) {
  let now = 0;
  let endsAt: number | null = null;
  let endedBy: string | null = opts.running === false ? 'SIGTERM' : null;
  const signals: Array<{ sig: string; at: number }> = [];
  const info = (): SessionInfo => {
    if (endedBy === null && endsAt !== null && now >= endsAt) endedBy = signals.at(-1)!.sig;
    const running = endedBy === null;
    return {
      name: 's1',
      pid: running ? 42 : null,
      state: running ? 'running' : 'exited',
      exitCode: null,
      signal: running ? null : endedBy,
      argv: ['agent'],
      tty: false,
      cwd: '/root',
      startedAt: '2026-12-06T00:00:00.000Z',
      endedAt: running ? null : '2026-12-06T00:00:01.000Z',
      stdoutBytes: 0,
      stderrBytes: 0,
      capBytes: 1 << 20,
      capped: false,
      attachedBy: null,
    };
  };
  const agent = {
    sessionStop: (_name: string, sig: string) => {
      if (info().state === 'running') {
        signals.push({ sig, at: now });
        if ((sig === 'SIGKILL' && opts.killable !== false) || opts.heeds(sig)) {
          const after = sig === 'SIGKILL' ? 0 : opts.endsAfterMs;
          if (after !== null) endsAt = Math.min(endsAt ?? Infinity, now + after);
        }
      }
      return Promise.resolve(info());
    },
    sessionShow: () => Promise.resolve(info()),
  } as unknown as AgentClient;
  const vms: AgentSource = {
    agent: () => Promise.resolve({ vm: { name: 'dev' } as VmRecord, agent, features: new Set(['sessions']) }),
  };
  const clock = {
    now: () => now,
    sleep: (ms: number) => {
      now += ms;
      return Promise.resolve();
    },
  };
  const svc = new SessionService({ vms, log: silentLogger(), clock });
  return { svc, signals, now: () => now };
}

describe('session stop', () => {
  it('waits for a session that ends after its signal, and sends nothing more', async () => {
    const g = guest({ heeds: (s) => s === 'SIGINT', endsAfterMs: 2_000 });
    const s = await g.svc.stop({ vm: 'dev', session: 's1', signal: 'SIGINT' });
    assert.equal(s.state, 'exited');
    assert.equal(s.signal, 'SIGINT');
    assert.deepEqual(s.sent, ['SIGINT']);
    assert.deepEqual(g.signals, [{ sig: 'SIGINT', at: 0 }]);
    assert.ok(g.now() >= 2_000 && g.now() < 2_200, `it returned soon after the end (at ${g.now()} ms)`);
  });

  it('sends SIGKILL to a session still running after the timeout (SIGTERM by default)', async () => {
    const g = guest({ heeds: () => false, endsAfterMs: null });
    const s = await g.svc.stop({ vm: 'dev', session: 's1', timeoutSeconds: 3 });
    assert.equal(s.state, 'exited');
    assert.equal(s.signal, 'SIGKILL');
    assert.deepEqual(s.sent, ['SIGTERM', 'SIGKILL']);
    assert.deepEqual(g.signals, [
      { sig: 'SIGTERM', at: 0 },
      { sig: 'SIGKILL', at: 3_000 },
    ]);
  });

  it('with timeout 0 sends SIGKILL at once to a session that did not end', async () => {
    const g = guest({ heeds: () => true, endsAfterMs: 5_000 });
    const s = await g.svc.stop({ vm: 'dev', session: 's1', timeoutSeconds: 0 });
    assert.equal(s.signal, 'SIGKILL');
    assert.deepEqual(
      g.signals.map((x) => x.sig),
      ['SIGTERM', 'SIGKILL'],
    );
  });

  it('without waiting only signals, and returns the session still running', async () => {
    const g = guest({ heeds: () => false, endsAfterMs: null });
    const s = await g.svc.stop({ vm: 'dev', session: 's1', signal: 'SIGHUP', wait: false });
    assert.equal(s.state, 'running');
    assert.deepEqual(s.sent, ['SIGHUP']);
    assert.deepEqual(g.signals, [{ sig: 'SIGHUP', at: 0 }]);
    assert.equal(g.now(), 0);
  });

  it('returns an ended session as it is, signalling nothing (safe to retry)', async () => {
    const g = guest({ heeds: () => true, endsAfterMs: 0, running: false });
    const s = await g.svc.stop({ vm: 'dev', session: 's1' });
    assert.equal(s.state, 'exited');
    assert.deepEqual(s.sent, []);
    assert.deepEqual(g.signals, []);
  });

  it('fails with a timeout, naming the session, when even SIGKILL does not end it', async () => {
    const g = guest({ heeds: () => false, endsAfterMs: null, killable: false });
    await assert.rejects(g.svc.stop({ vm: 'dev', session: 's1', timeoutSeconds: 1 }), (e: unknown) => {
      assert.ok(e instanceof BangerError);
      assert.equal(e.code, ErrorCode.DeadlineExceeded);
      assert.match(e.message, /session s1 in VM 'dev' is still running 5 s after SIGKILL/);
      return true;
    });
    assert.deepEqual(
      g.signals.map((x) => x.sig),
      ['SIGTERM', 'SIGKILL'],
    );
  });
});

describe('session start', () => {
  /** The sessionStart requests a VM (with a workspace at `guestPath`, or none) gets. */
  function starts(guestPath: string | null) {
    const requests: Array<Record<string, unknown>> = [];
    const agent = {
      sessionStart: (o: Record<string, unknown>) => {
        requests.push(o);
        return Promise.resolve({ name: 's1' } as SessionInfo);
      },
    } as unknown as AgentClient;
    const vm = { name: 'dev', workspace: guestPath === null ? null : { guestPath } } as VmRecord;
    const svc = new SessionService({
      vms: { agent: () => Promise.resolve({ vm, agent, features: new Set(['sessions']) }) },
      log: silentLogger(),
    });
    return { svc, requests };
  }

  it('runs in the workspace, under mise where its config applies, as a root login, with the given variables over it', async () => {
    const { svc, requests } = starts('/root/app');
    await svc.start({ vm: 'dev', argv: ['pi', '--mode', 'rpc'], env: { LANG: 'de_DE.UTF-8', DEBUG: '1' } });
    const r = requests[0]!;
    assert.equal(r.cwd, '/root/app');
    assert.equal(r.mise, true);
    const env = r.env as Record<string, string>;
    assert.equal(env.HOME, '/root');
    assert.equal(env.USER, 'root');
    assert.equal(env.PWD, '/root/app');
    assert.equal(env.LANG, 'de_DE.UTF-8', "the caller's variables win");
    assert.equal(env.DEBUG, '1');
    assert.equal(env.TERM, undefined, 'no terminal, no TERM of its own');
  });

  it('with a directory given, or no workspace, runs there (home by default) without mise; a terminal gets a TERM', async () => {
    const a = starts('/root/app');
    await a.svc.start({ vm: 'dev', argv: ['sh'], cwd: '/tmp', tty: true });
    assert.equal(a.requests[0]!.cwd, '/tmp');
    assert.equal(a.requests[0]!.mise, undefined);
    assert.equal((a.requests[0]!.env as Record<string, string>).TERM, 'xterm-256color');
    await a.svc.start({ vm: 'dev', argv: ['sh'], cwd: 'src' });
    assert.equal(a.requests[1]!.cwd, '/root/app/src', 'a relative directory is taken from the workspace');
    assert.equal(a.requests[1]!.mise, undefined);
    const b = starts(null);
    await b.svc.start({ vm: 'dev', argv: ['sh'], tty: true, env: { TERM: 'screen' } });
    assert.equal(b.requests[0]!.cwd, '/root');
    assert.equal(b.requests[0]!.mise, undefined);
    assert.equal((b.requests[0]!.env as Record<string, string>).TERM, 'screen');
  });
});

describe('an unknown session', () => {
  /** A guest whose agent rejects every operation on a session with `error`. */
  function unknown(error: BangerError) {
    const fail = () => Promise.reject(error);
    const agent = { sessionShow: fail, sessionRm: fail, sessionLogs: fail, sessionAttach: fail } as unknown as AgentClient;
    const vms: AgentSource = {
      agent: () => Promise.resolve({ vm: { name: 'dev' } as VmRecord, agent, features: new Set(['sessions']) }),
    };
    return new SessionService({ vms, log: silentLogger() });
  }
  const agentsWords = new BangerError(ErrorCode.NotFound, 'guest agent of VM dev: no session nope in the guest');

  it('is named with its VM, and the hint lists that VM’s sessions (exit 65)', async () => {
    const svc = unknown(agentsWords);
    const named = (e: unknown) => {
      assert.ok(e instanceof BangerError);
      assert.equal(e.code, ErrorCode.NotFound);
      assert.equal(e.message, "VM 'dev' has no session 'nope'");
      assert.match(e.hint ?? '', /`banger vm session list dev`/);
      return true;
    };
    await assert.rejects(svc.show('dev', 'nope'), named);
    await assert.rejects(svc.rm('dev', 'nope'), named);
    await assert.rejects(svc.stop({ vm: 'dev', session: 'nope' }), named);
    await assert.rejects(svc.logs({ vm: 'dev', session: 'nope' }, () => Promise.resolve()), named);
    await assert.rejects(svc.attach({ vm: 'dev', session: 'nope' }, () => Promise.resolve(), () => {}), named);
  });

  it('leaves other failures as the agent said them', async () => {
    const down = new BangerError(ErrorCode.Unavailable, 'the guest agent of VM dev closed the connection');
    await assert.rejects(unknown(down).show('dev', 'nope'), (e) => e === down);
  });
});
