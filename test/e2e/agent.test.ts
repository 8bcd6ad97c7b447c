/**
 * The guest agent on real VMs: `vm exec` and workspace transfers behave the same over the agent and over SSH
 * (a VM booted with --no-agent), durable sessions driven like a JSONL coding agent, stats that agree with the guest's /proc,
 * guest ports forwarded from what the agent pushes (polled over SSH without an agent).
 * Two VMs are shared by the steps; each step leaves them running and clean for the next.
 */
import { after, before, describe } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { lstatSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { execFileSync, spawn } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { CLI, E2E_HOME, REPO_ROOT, banger, bangerChild, bangerOk, e2eSteps } from '../helpers/cli.js';
import { connect } from '../../src/client/index.js';
import { QmpClient } from '../../src/daemon/vmm/qemu/qmp.js';
import { Paths } from '../../src/shared/paths.js';
import { git, isolateGitConfig, makeFixtureRepo } from '../helpers/workspace-repo.js';

const AGENT_VM = 'e2e-agent';
const SSH_VM = 'e2e-agent-ssh';
const { step, printConsolesIfFailed } = e2eSteps();
isolateGitConfig();

interface Session {
  name: string;
  state: string;
  exitCode: number | null;
  stdoutBytes: number;
  attachedBy: string | null;
}

const sha = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');

function daemonPid(): number {
  return Number(readFileSync(join(E2E_HOME, 'bangerd.pid'), 'utf8').trim());
}

async function sessions(vm: string): Promise<Session[]> {
  return JSON.parse((await bangerOk(['vm', 'session', 'list', vm, '--json'])).stdout) as Session[];
}

async function waitFor<T>(what: string, fn: () => Promise<T | undefined>, ms = 60_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(300);
  }
}

/** `banger vm session attach AGENT_VM NAME` as a child, once the session says it is attached. */
async function attachedCli(name: string) {
  const child = spawn(process.execPath, [CLI, 'vm', 'session', 'attach', AGENT_VM, name], {
    env: { ...process.env, BANGER_HOME: E2E_HOME },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  await waitFor(`the attach to hold ${name}`, async () =>
    (await sessions(AGENT_VM)).find((s) => s.name === name)?.attachedBy ? true : undefined,
  );
  return child;
}

void describe('guest agent: exec on both channels, sessions, stats (real VMs)', { timeout: 1_500_000 }, () => {
  before(async () => {
    await banger(['vm', 'delete', '--force', AGENT_VM, SSH_VM]);
    await bangerOk(['vm', 'create', '--name', AGENT_VM, '--start', '--cpus', '1', '--memory', '768M'], 0, { timeoutMs: 900_000 });
    await bangerOk(['vm', 'create', '--name', SSH_VM, '--start', '--no-agent', '--cpus', '1', '--memory', '512M'], 0, {
      timeoutMs: 900_000,
    });
    // The agent starts a few seconds after sshd (Node under TCG); stats need it, so they tell when it answers.
    await waitFor('the guest agent to answer', async () => ((await banger(['vm', 'stats', AGENT_VM])).code === 0 ? true : undefined), 120_000);
    // The JSONL fixture, as a coding agent's RPC program would be installed in the guest.
    await bangerOk(['vm', 'exec', AGENT_VM, '--', 'sh', '-c', 'cat > /root/jsonl-echo.mjs'], 0, {
      input: readFileSync(join(REPO_ROOT, 'test/fixtures/jsonl-echo.mjs'), 'utf8'),
    });
  });

  after(async () => {
    printConsolesIfFailed();
    await banger(['vm', 'delete', '--force', AGENT_VM, SSH_VM]);
  });

  step('vm show names the channel: the agent where it runs, SSH where the guest has none', async () => {
    const a = JSON.parse((await bangerOk(['vm', 'show', AGENT_VM, '--json'])).stdout) as { channel: string; agent: boolean };
    const s = JSON.parse((await bangerOk(['vm', 'show', SSH_VM, '--json'])).stdout) as { channel: string; agent: boolean };
    assert.deepEqual([a.channel, a.agent], ['agent', true]);
    assert.deepEqual([s.channel, s.agent], ['ssh', false]);
    assert.match((await bangerOk(['vm', 'show', AGENT_VM])).stdout, /Channel:\s+guest agent/);
    // It says why: this VM was made with --no-agent (its image has the agent), not that the image lacks one.
    assert.match((await bangerOk(['vm', 'show', SSH_VM])).stdout, /Channel:\s+ssh \(created with --no-agent: no sessions or stats\)/);
  });

  step("a cold-booted VM's clock is the host's to within 0.25 s once its agent answers (the RTC alone leaves it up to 1 s behind)", async () => {
    const b = await connect({ home: E2E_HOME });
    try {
      // The guest's time lies between what the host read just before and just after the exec.
      let last = '';
      await waitFor('the guest clock to be set', async () => {
        const t0 = Date.now();
        const r = await b.vm.exec(AGENT_VM, ['date', '+%s%N']);
        const t1 = Date.now();
        const guest = Number(r.stdout.toString().trim()) / 1e6;
        last = `guest ${guest.toFixed(0)}, host ${t0}..${t1}`;
        return guest >= t0 - 250 && guest <= t1 + 250 ? true : undefined;
      }, 30_000).catch((e: Error) => assert.fail(`${e.message}: ${last}`));
    } finally {
      await b.close();
    }
  });

  for (const vm of [AGENT_VM, SSH_VM]) {
    step(`exec over ${vm === AGENT_VM ? 'the agent' : 'SSH'}: exit code verbatim, streams apart, stdin, quoting, cwd`, async () => {
      const r = await banger(['vm', 'exec', vm, '--', 'sh', '-c', 'echo out; echo err >&2; exit 7']);
      assert.equal(r.code, 7);
      assert.equal(r.stdout, 'out\n');
      assert.match(r.stderr, /^err$/m);
      assert.doesNotMatch(r.stdout, /err/);
      const cat = await bangerOk(['vm', 'exec', vm, '--', 'sh', '-c', 'cat | sha256sum'], 0, { input: 'x'.repeat(300_000) });
      assert.equal(cat.stdout.split(' ')[0], sha('x'.repeat(300_000)));
      // Bulk binary stdin: thousands of the agent port's 4 KiB buffers, every byte value, in order.
      const blob = randomBytes(16 << 20);
      const big = await bangerOk(['vm', 'exec', vm, '--', 'sh', '-c', 'cat | sha256sum'], 0, { input: blob });
      assert.equal(big.stdout.split(' ')[0], sha(blob));
      const q = await bangerOk(['vm', 'exec', vm, '--', 'printf', '[%s]', "it's", 'a b', '$HOME']);
      assert.equal(q.stdout, "[it's][a b][$HOME]");
      assert.equal((await bangerOk(['vm', 'exec', vm, '--', 'pwd'])).stdout.trim(), '/root');
      const killed = await banger(['vm', 'exec', vm, '--', 'sh', '-c', 'kill -TERM $$']);
      assert.equal(killed.code, 143, 'death by SIGTERM is 128+15, as a shell reports it');
    });
  }

  step('Ctrl-C (SIGINT to the CLI) reaches the guest command as SIGINT over the agent', async () => {
    const child = spawn(process.execPath, [CLI, 'vm', 'exec', AGENT_VM, '--', 'sh', '-c', "trap 'echo got-int; exit 42' INT; echo armed; sleep 60 >/dev/null 2>&1 & wait"], {
      env: { ...process.env, BANGER_HOME: E2E_HOME },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    await waitFor('the trap to be armed', async () => (out.includes('armed') ? true : undefined), 30_000);
    child.kill('SIGINT');
    const code = await new Promise<number | null>((r) => child.on('close', (c) => r(c)));
    assert.match(out, /got-int/);
    assert.equal(code, 42);
  });

  step('a reader that goes away (`vm exec VM -- yes | head -1`): the CLI leaves with 141 and no trace, and the guest command ends', async () => {
    const { child, result } = bangerChild(['vm', 'exec', AGENT_VM, '--', 'sh', '-c', 'exec yes banger-epipe']);
    // The first output, then the reader is gone, as `head -1` is once it has its line.
    await new Promise((r) => child.stdout!.once('data', r));
    child.stdout!.destroy();
    const r = await result;
    assert.equal(r.code, 141);
    assert.equal(r.stderr, '', 'no stack trace');
    await waitFor('the guest command to end', async () => {
      const left = await banger(['vm', 'exec', AGENT_VM, '--', 'pgrep', '-f', 'yes banger-epipe']);
      return left.code === 1 ? true : undefined;
    }, 30_000);
  });

  step('stats agree with the guest /proc', async () => {
    const s = JSON.parse((await bangerOk(['vm', 'stats', AGENT_VM, '--json'])).stdout) as {
      vcpus: number;
      memory: { totalBytes: number; availableBytes: number };
      uptimeSeconds: number;
      disks: { mount: string; totalBytes: number }[];
    };
    const proc = (await bangerOk(['vm', 'exec', AGENT_VM, '--', 'sh', '-c', 'nproc; grep MemTotal /proc/meminfo; cut -d" " -f1 /proc/uptime; df -B1 --output=size /root | tail -1'])).stdout.trim().split('\n');
    assert.equal(s.vcpus, Number(proc[0]));
    assert.equal(s.memory.totalBytes, Number(/(\d+)/.exec(proc[1]!)![1]) * 1024);
    assert.ok(Math.abs(s.uptimeSeconds - Number(proc[2])) < 30, `uptime ${s.uptimeSeconds} vs ${proc[2]}`);
    assert.equal(s.disks.find((d) => d.mount === '/root')?.totalBytes, Number(proc[3]));
    const noAgent = await banger(['vm', 'stats', SSH_VM]);
    assert.equal(noAgent.code, 67, 'a VM without an agent has no stats: precondition');
    assert.match(noAgent.stderr, /was created with --no-agent: sessions and stats need the guest agent\nhint: create a VM without --no-agent/);
  });

  step('a JSONL agent session: two concurrent senders of 1,000 lines each get 2,000 intact replies', async () => {
    await bangerOk(['vm', 'session', 'start', AGENT_VM, '--name', 'echo', '--', 'node', '/root/jsonl-echo.mjs']);
    const lines = (who: string) => Array.from({ length: 1000 }, (_, i) => JSON.stringify({ id: `${who}-${i}`, pad: 'p'.repeat(200) })).join('\n') + '\n';
    const [a, b] = await Promise.all([
      banger(['vm', 'session', 'send', AGENT_VM, 'echo', '-'], { input: lines('a') }),
      banger(['vm', 'session', 'send', AGENT_VM, 'echo', '-'], { input: lines('b') }),
    ]);
    assert.equal(a.code, 0, a.stderr);
    assert.equal(b.code, 0, b.stderr);
    const out = await waitFor('2,000 replies', async () => {
      const r = await bangerOk(['vm', 'session', 'logs', AGENT_VM, 'echo', '--from', '0']);
      return r.stdout.split('\n').filter(Boolean).length >= 2000 ? r.stdout : undefined;
    }, 180_000);
    const replies = out.split('\n').filter(Boolean).map((l) => JSON.parse(l) as { echo: { id: string; pad: string }; seq: number });
    assert.equal(replies.length, 2000);
    assert.equal(new Set(replies.map((r) => r.echo.id)).size, 2000, 'every line arrived once, none torn');
    assert.ok(replies.every((r) => r.echo.pad.length === 200));
    // One send is delivered whole: each sender's 1,000 lines are contiguous in the reply order.
    const firstB = replies.findIndex((r) => r.echo.id.startsWith('b-'));
    const firstA = replies.findIndex((r) => r.echo.id.startsWith('a-'));
    const start = Math.min(firstA, firstB);
    assert.ok(replies.slice(start, start + 1000).every((r) => r.echo.id[0] === replies[start]!.echo.id[0]));
  });

  step('every byte survives kill -9 of bangerd while a session streams: logs --from 0 has it all', async () => {
    const gen = 'i=0; while [ $i -lt 30000 ]; do echo "line $i of the durable output test"; i=$((i+1)); done';
    let expected = '';
    for (let i = 0; i < 30000; i++) expected += `line ${i} of the durable output test\n`;
    await bangerOk(['vm', 'session', 'start', AGENT_VM, '--name', 'durable', '--', 'sh', '-c', `sleep 2; ${gen}`]);
    const follower = spawn(process.execPath, [CLI, 'vm', 'session', 'logs', AGENT_VM, 'durable', '--follow'], {
      env: { ...process.env, BANGER_HOME: E2E_HOME },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let seen = 0;
    follower.stdout.on('data', (d: Buffer) => (seen += d.length));
    await waitFor('output to stream', async () => (seen > 0 ? true : undefined), 60_000);
    process.kill(daemonPid(), 'SIGKILL');
    await new Promise((r) => follower.on('close', r));
    const done = await waitFor('the session to exit', async () => {
      const s = (await sessions(AGENT_VM)).find((x) => x.name === 'durable');
      return s?.state === 'exited' ? s : undefined;
    }, 180_000);
    assert.equal(done.exitCode, 0);
    const all = await bangerOk(['vm', 'session', 'logs', AGENT_VM, 'durable', '--from', '0']);
    assert.equal(sha(all.stdout), sha(expected), `got ${all.stdout.length} bytes, expected ${expected.length}`);
    const tail = await bangerOk(['vm', 'session', 'logs', AGENT_VM, 'durable', '--from', '1000']);
    assert.equal(tail.stdout, expected.slice(1000), 'from an offset: exactly the bytes from there');
  });

  step('attach is exclusive, send works while attached, and the session outlives the attached CLI', async () => {
    await bangerOk(['vm', 'session', 'start', AGENT_VM, '--name', 'cat', '--', 'cat']);
    const holder = await attachedCli('cat');
    let held = '';
    holder.stdout.on('data', (d: Buffer) => (held += d.toString()));
    const second = await banger(['vm', 'session', 'attach', AGENT_VM, 'cat']);
    assert.equal(second.code, 68, second.stderr);
    assert.match(second.stderr, /attached/i);
    await bangerOk(['vm', 'session', 'send', AGENT_VM, 'cat', 'sent while attached']);
    holder.stdin.write('typed into the attach\n');
    await waitFor('both lines to reach the attached terminal', async () =>
      held.includes('sent while attached') && held.includes('typed into the attach') ? true : undefined,
    );
    holder.kill('SIGKILL');
    await new Promise((r) => holder.on('close', r));
    const after = await waitFor('the attach to be released', async () => {
      const s = (await sessions(AGENT_VM)).find((x) => x.name === 'cat');
      return s && s.attachedBy === null ? s : undefined;
    });
    assert.equal(after.state, 'running', 'the CLI died; the session did not');
    await bangerOk(['vm', 'session', 'stop', AGENT_VM, 'cat']);
  });

  step("a terminal session starts at the size it is given and follows an attached client's resizes", async () => {
    const b = await connect({ home: E2E_HOME });
    try {
      // Prints the terminal size at the start and after each SIGWINCH.
      await b.session.start(AGENT_VM, {
        name: 'tty',
        tty: true,
        size: { rows: 31, cols: 101 },
        argv: ['sh', '-c', 'stty size; trap "stty size" WINCH; while :; do sleep 0.1; done'],
      });
      const logs = async () => (await bangerOk(['vm', 'session', 'logs', AGENT_VM, 'tty'])).stdout;
      await waitFor('the starting size', async () => ((await logs()).includes('31 101') ? true : undefined));
      const att = b.session.attach(AGENT_VM, 'tty', { from: 'end' });
      att.resize(47, 163);
      await waitFor('the new size', async () => ((await logs()).includes('47 163') ? true : undefined));
      att.detach();
      assert.deepEqual(await att.done, { detached: true });
      // The CLI detaches on Ctrl-C without a terminal: exit 0, the session runs on.
      const cli = await attachedCli('tty');
      let err = '';
      cli.stderr.on('data', (d: Buffer) => (err += d.toString()));
      cli.kill('SIGINT');
      const code = await new Promise<number | null>((r) => cli.on('close', (c) => r(c)));
      assert.equal(code, 0, err);
      assert.match(err, /detached; tty keeps running/);
      assert.equal((await sessions(AGENT_VM)).find((x) => x.name === 'tty')?.state, 'running');
      await bangerOk(['vm', 'session', 'stop', AGENT_VM, 'tty']);
    } finally {
      await b.close();
    }
  });

  step('--max-output caps what a session keeps, and show says the cap was reached', async () => {
    await bangerOk(['vm', 'session', 'start', AGENT_VM, '--name', 'capped', '--max-output', '1M', '--', 'head', '-c', '3000000', '/dev/zero']);
    const done = await waitFor('the capped session to exit', async () => {
      const s = (await sessions(AGENT_VM)).find((x) => x.name === 'capped');
      return s?.state === 'exited' ? s : undefined;
    }, 120_000);
    assert.equal(done.exitCode, 0);
    const shown = JSON.parse((await bangerOk(['vm', 'session', 'show', AGENT_VM, 'capped', '--json'])).stdout) as {
      capBytes: number;
      capped: boolean;
      stdoutBytes: number;
    };
    assert.equal(shown.capBytes, 1024 * 1024);
    assert.equal(shown.capped, true);
    assert.match((await bangerOk(['vm', 'session', 'show', AGENT_VM, 'capped'])).stdout, /up to 1\.0 MiB per stream \(reached/);
    const kept = await banger(['vm', 'session', 'logs', AGENT_VM, 'capped', '--from', '0']);
    assert.equal(kept.stdout.length, 1024 * 1024, 'exactly the cap is kept');
    await bangerOk(['vm', 'session', 'rm', AGENT_VM, 'capped']);
  });

  step('session stop returns once the session has ended: `stop --signal INT && rm` works for one that cleans up first; one that ignores SIGTERM gets SIGKILL after --timeout', async () => {
    const ready = (name: string) =>
      waitFor(`${name} to be ready`, async () =>
        (await banger(['vm', 'session', 'logs', AGENT_VM, name])).stdout.includes('ready') ? true : undefined,
      );
    // Takes a second to clean up after SIGINT: `stop` used to return at once, and the README's `rm` then failed (67).
    await bangerOk(['vm', 'session', 'start', AGENT_VM, '--name', 'tidy', '--', 'sh', '-c', 'trap "sleep 1; echo cleaned; exit 3" INT; echo ready; while :; do sleep 0.2; done']);
    await ready('tidy');
    const stopped = await bangerOk(['vm', 'session', 'stop', AGENT_VM, 'tidy', '--signal', 'INT']);
    assert.match(stopped.stderr, /^tidy: exited 3$/m);
    await bangerOk(['vm', 'session', 'rm', AGENT_VM, 'tidy']);

    await bangerOk(['vm', 'session', 'start', AGENT_VM, '--name', 'stubborn', '--', 'sh', '-c', 'trap "" TERM; echo ready; while :; do sleep 0.2; done']);
    await ready('stubborn');
    const killed = await bangerOk(['vm', 'session', 'stop', AGENT_VM, 'stubborn', '--timeout', '1']);
    assert.match(killed.stderr, /^stubborn: killed SIGKILL \(it had not ended 1 s after SIGTERM\)$/m);
    const again = JSON.parse((await bangerOk(['vm', 'session', 'stop', AGENT_VM, 'stubborn', '--json'])).stdout) as Session & {
      sent: string[];
      signal: string | null;
    };
    assert.deepEqual(again.sent, [], 'stopping an ended session again sends nothing');
    assert.equal(again.signal, 'SIGKILL');
    await bangerOk(['vm', 'session', 'rm', AGENT_VM, 'stubborn']);
  });

  step('bad session input: a bad name 64, an unknown session 65, a send to an exited session 67', async () => {
    assert.equal((await banger(['vm', 'session', 'start', AGENT_VM, '--name', 'bad/name', '--', 'true'])).code, 64);
    const unknown = await banger(['vm', 'session', 'logs', AGENT_VM, 'no-such-session']);
    assert.equal(unknown.code, 65);
    assert.match(unknown.stderr, new RegExp(`has no session 'no-such-session'[\\s\\S]*banger vm session list ${AGENT_VM}`));
    await bangerOk(['vm', 'session', 'start', AGENT_VM, '--name', 'brief', '--', 'true']);
    await waitFor('it to exit', async () => ((await sessions(AGENT_VM)).find((s) => s.name === 'brief')?.state === 'exited' ? true : undefined));
    assert.equal((await banger(['vm', 'session', 'send', AGENT_VM, 'brief', 'hello'])).code, 67);
    await bangerOk(['vm', 'session', 'rm', AGENT_VM, 'brief']);
  });

  step('a guest server is forwarded within seconds and unforwarded after it exits: pushed by the agent, polled over SSH without one', async () => {
    interface Net { hostAddress: string; forwardedPorts: number[]; portWatch: string | null }
    const net = async (vm: string) =>
      (JSON.parse((await bangerOk(['vm', 'show', vm, '--json'])).stdout) as { network: Net }).network;
    const get = async (url: string) => {
      try {
        return (await fetch(url, { signal: AbortSignal.timeout(2000) })).status;
      } catch {
        return null;
      }
    };
    for (const [vm, source] of [[AGENT_VM, 'agent'], [SSH_VM, 'ssh']] as const) {
      assert.equal((await net(vm)).portWatch, source, `${vm}: ports come from the ${source}`);
      await bangerOk(['vm', 'exec', vm, '--', 'sh', '-c',
        'mkdir -p /tmp/www && cd /tmp/www && (setsid nohup python3 -m http.server 8123 --bind 0.0.0.0 </dev/null >/dev/null 2>&1 &)']);
      const { hostAddress } = await net(vm);
      const t0 = Date.now();
      await waitFor(`${vm}: ${hostAddress}:8123 from the host`, async () => ((await get(`http://${hostAddress}:8123/`)) === 200 ? true : undefined), 30_000);
      // python3 itself takes seconds to start under TCG; the forward follows within a second or two of it listening.
      process.stderr.write(`${vm}: reachable ${Date.now() - t0} ms after the start command returned (${source})\n`);
      assert.deepEqual((await net(vm)).forwardedPorts, [8123]);
      await bangerOk(['vm', 'exec', vm, '--', 'sh', '-c', 'pkill -f "http.serve[r] 8123"; true']);
      await waitFor(`${vm}: the forward of 8123 to go`, async () => ((await net(vm)).forwardedPorts.length === 0 ? true : undefined), 15_000);
      assert.equal(await get(`http://${hostAddress}:8123/`), null, 'nothing answers on the host any more');
      assert.equal((await net(vm)).portWatch, source, 'still the same source');
    }
  });

  step('a guest agent killed with kill -9 is started again by init and serves again: nothing of it keeps the port', async () => {
    // Over SSH, so the command does not go down with the agent; the pattern matches the agent's own command line only.
    const r = await bangerOk(['vm', 'ssh', AGENT_VM, '--', "pkill -9 -f '^node .*/agent[.]mjs' && sleep 1 && ps -eo ppid=,comm= | awk '$2 == \"cat\" && $1 == 1' | wc -l"]);
    assert.equal(r.stdout.trim(), '0', 'no reader of the port outlived the agent');
    const deadline = Date.now() + 120_000;
    for (;;) {
      if ((await banger(['vm', 'stats', AGENT_VM, '--json'])).code === 0) break;
      assert.ok(Date.now() < deadline, 'the agent serves again within 120 s');
      await sleep(1000);
    }
    const counted = await bangerOk(['vm', 'exec', AGENT_VM, '--', 'wc', '-c'], 0, { input: Buffer.alloc(1 << 20, 7) });
    assert.equal(counted.stdout.trim(), '1048576');
  });

  step('a guest stalled for 25 s (its CPUs stopped, as a loaded host can do to an emulated guest) keeps its agent: the command running through it ends well', async () => {
    const { id } = JSON.parse((await bangerOk(['vm', 'show', AGENT_VM, '--json'])).stdout) as { id: string };
    const logBefore = readFileSync(join(E2E_HOME, 'logs', 'bangerd.log'), 'utf8').length;
    const cmd = banger(['vm', 'exec', AGENT_VM, '--', 'sh', '-c', 'sleep 3; echo survived'], { timeoutMs: 180_000 });
    await sleep(1000);
    const qmp = await QmpClient.connect(new Paths(E2E_HOME).vm(id).qmpSocket);
    try {
      await qmp.execute('stop');
      await sleep(25_000); // more than the daemon's hello timeout (10 s) and SSH probe (10 s) together
      await qmp.execute('cont');
    } finally {
      qmp.close();
    }
    const r = await cmd;
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'survived\n');
    const logged = readFileSync(join(E2E_HOME, 'logs', 'bangerd.log'), 'utf8').slice(logBefore).split('\n');
    assert.ok(logged.some((l) => l.includes(`"vm":"${AGENT_VM}"`) && l.includes('stalled guest')), 'the daemon saw the agent go silent and kept it');
    assert.ok(!logged.some((l) => l.includes(`"vm":"${AGENT_VM}"`) && l.includes('dropping its connection')));
  });

  // These leave each VM with a workspace (its commands then run in it): they come after the steps that
  // expect none, and before the hostile agent, which leaves the agent VM without its agent.
  for (const vm of [AGENT_VM, SSH_VM]) {
    step(`workspace import and export over ${vm === AGENT_VM ? 'the agent' : 'SSH'}: the host's HEAD and edits in the guest, the guest's edits back as a patch`, async () => {
      const fallbacks = () => (readFileSync(join(E2E_HOME, 'logs', 'bangerd.log'), 'utf8').match(/failed before the transfer started/g) ?? []).length;
      const before = fallbacks();
      const { channel } = JSON.parse((await bangerOk(['vm', 'show', vm, '--json'])).stdout) as { channel: string };
      assert.equal(channel, vm === AGENT_VM ? 'agent' : 'ssh');
      const repo = makeFixtureRepo();
      const ws = '/root/ws-channel';
      // The guest kernel counts what arrived on each virtio-serial port (debugfs): the import's data comes on the
      // bulk port with the agent, and not at all without it.
      const bulkReceived = async () =>
        Number(
          (
            await bangerOk(['vm', 'exec', vm, '--', 'sh', '-c',
              'mountpoint -q /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug; ' +
              'sed -n "s/^bytes_received: //p" $(grep -l "^name: banger.bulk$" /sys/kernel/debug/virtio-ports/*)'])
          ).stdout.trim(),
        );
      const bulkBefore = await bulkReceived();
      // With every sshd of the agent's guest stopped, a transfer that went over SSH would hang: this one must not.
      const sshd = (sig: string) => bangerOk(['vm', 'exec', vm, '--', 'pkill', `-${sig}`, '-x', 'sshd']);
      if (vm === AGENT_VM) await sshd('STOP');
      try {
        await bangerOk(['vm', 'workspace', 'prepare', vm, repo, '--guest-path', ws], 0, { timeoutMs: vm === AGENT_VM ? 120_000 : 600_000 });
      } finally {
        if (vm === AGENT_VM) await sshd('CONT');
      }
      const inGuest = async (cmd: string) => (await bangerOk(['vm', 'exec', vm, '--', 'sh', '-c', `cd ${ws} && ${cmd}`])).stdout;
      const trackedBytes = git(repo, 'ls-files', '-z').split('\0').filter(Boolean).reduce((n, f) => n + (lstatSync(join(repo, f), { throwIfNoEntry: false })?.size ?? 0), 0);
      const bulkGrew = (await bulkReceived()) - bulkBefore;
      if (vm === AGENT_VM) assert.ok(bulkGrew >= trackedBytes, `the bulk port carried ${bulkGrew} bytes, the tracked files are ${trackedBytes}`);
      else assert.equal(bulkGrew, 0, 'without the agent the bulk port is not used');
      assert.equal((await inGuest('git rev-parse HEAD')).trim(), git(repo, 'rev-parse', 'HEAD').trim());
      // The host's edits are the guest's unstaged ones; a file the host only staged arrives as a new file.
      const hostEdits = git(repo, 'status', '--porcelain', '-uno').split('\n').filter((l) => !l.startsWith('A ')).join('\n');
      assert.equal(await inGuest('git status --porcelain -uno'), hostEdits);
      assert.equal(await inGuest('cat staged.txt'), 'staged but not committed\n');
      assert.equal(await inGuest('ls -a | grep -c "^.env" || true'), '0\n', 'untracked files stay on the host');
      await inGuest(`echo 'guest edit' >> README.md && printf 'made in the guest\\n' > 'from guest.txt'`);
      const patch = (await bangerOk(['vm', 'workspace', 'export', vm])).stdout;
      execFileSync('git', ['apply'], { cwd: repo, input: patch });
      assert.equal(readFileSync(join(repo, 'README.md'), 'utf8'), 'hello\nsecond\nuncommitted edit\nguest edit\n');
      assert.equal(readFileSync(join(repo, 'from guest.txt'), 'utf8'), 'made in the guest\n');
      assert.equal(fallbacks(), before, 'no transfer fell back from the agent to SSH');
    });
  }

  step('a hostile agent (an oversized frame, then endless output) costs its VM only: the daemon keeps serving', async () => {
    const hostile = [
      'import glob, os, struct',
      "dev = ['/dev/' + p.split('/')[-2] for p in glob.glob('/sys/class/virtio-ports/*/name') if open(p).read().strip() == 'banger.0'][0]",
      'fd = os.open(dev, os.O_RDWR)',
      "os.write(fd, bytes([0xB4, 0x42, 0x41, 0x4E, 0x47, 0x45, 0x52, 0x01]) + struct.pack('>IBI', 0x7FFFFFFF, 0, 0) + b'x' * 65536)",
      'while True:',
      "    os.write(fd, b'y' * 65536)",
    ].join('\n');
    // Keep init from restarting the real agent while the hostile one holds the port. The swap runs in its own
    // session a second after this command returns, so the command itself does not go down with the agent.
    // The pkill pattern matches the agent's command line and not its own shell's (a plain `agent.mjs` did:
    // pkill ended the shell, and the hostile program never ran).
    await bangerOk(['vm', 'exec', AGENT_VM, '--', 'sh', '-c', 'cat > /run/hostile.py'], 0, { input: hostile });
    await bangerOk(['vm', 'exec', AGENT_VM, '--', 'sh', '-c',
      `printf '#!/bin/sh\\nexec sleep 100000\\n' > /run/idle-agent && chmod +x /run/idle-agent && mount --bind /run/idle-agent /usr/lib/banger/run-agent && (setsid sh -c 'sleep 1; pkill -f "^node .*/agent[.]mjs"; sleep 1; exec python3 /run/hostile.py' </dev/null >/dev/null 2>&1 &)`,
    ]);
    await bangerOk(['vm', 'exec', SSH_VM, '--', 'true']);
    await sleep(5000);
    // The hostile program did get the port: the daemon dropped that VM's connection over its frame.
    const logged = readFileSync(join(E2E_HOME, 'logs', 'bangerd.log'), 'utf8').split('\n');
    assert.ok(
      logged.some((l) => l.includes(`"vm":"${AGENT_VM}"`) && /exceeds the \d+-byte cap/.test(l)),
      'the daemon saw the oversized frame',
    );
    const t0 = Date.now();
    const list = await bangerOk(['vm', 'list', '--json']);
    assert.ok(Date.now() - t0 < 10_000, 'the daemon answers at once');
    assert.ok((JSON.parse(list.stdout) as { name: string }[]).some((v) => v.name === AGENT_VM));
    assert.equal((await bangerOk(['vm', 'exec', SSH_VM, '--', 'echo', 'other vm fine'])).stdout, 'other vm fine\n');
    // The VM itself still answers: exec falls back to SSH when its agent misbehaves.
    assert.equal((await bangerOk(['vm', 'exec', AGENT_VM, '--', 'echo', 'still here'], 0, { timeoutMs: 120_000 })).stdout, 'still here\n');
    const rss = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${daemonPid()}/status`, 'utf8'))![1]) * 1024;
    assert.ok(rss < 400 * 1024 * 1024, `bangerd RSS ${rss} stays bounded`);
  });
});
