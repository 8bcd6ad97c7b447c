/**
 * Against OpenSSH with a ControlMaster connection into the same guest (`ssh ... true`), in one run:
 * - the CLI: `banger vm exec VM -- true`;
 * - the API: `vm.exec(VM, ['true'])` on an open client;
 * - a session: send a 1 KiB JSONL line to the JSONL echo program and wait for its reply line;
 * - session output streaming of a 256 MiB file (BENCH_STREAM_MIB) against `ssh VM cat FILE`;
 * - the CLI in a workspace (1,000 files, no mise config) against `ssh VM 'cd WORKSPACE && true'`;
 * - the guest agent's idle RSS (the budget: 48 MiB) against the guest's own Node started with the
 *   agent's flags and malloc settings, doing nothing but listen on a unix socket.
 * Usage: npm run build && node --import tsx bench/exec.ts [runs]
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { HOME, REPO, agentUp, banger, makeBigRepo, median, report, sh, timeIt } from './common.js';
import { connect } from '../src/client/index.js';

const runs = Number(process.argv[2] ?? 15);
const IDLE_S = 25;
/** Uncounted rounds before each CLI comparison (see cliExecVsSsh). */
const WARMUPS = 5;

/**
 * The agent's RSS after it has idled, and that of a bare Node beside it: the same binary, node flags and
 * MALLOC_* settings (read from the agent's /proc entry), running only `net.createServer().listen()`.
 */
function agentRss(): void {
  const find = `a=; for p in $(pgrep -x node); do case "$(tr '\\0' ' ' </proc/$p/cmdline)" in *agent.mjs*) a=$p;; esac; done
[ -n "$a" ] || { echo 'no guest agent process' >&2; exit 1; }`;
  const start = `${find}
flags=$(tr '\\0' '\\n' </proc/$a/cmdline | sed -n '2,$p' | sed '/agent\\.mjs$/,$d')
env=$(tr '\\0' '\\n' </proc/$a/environ | grep '^MALLOC_')
rm -f /run/bench-bare-node.sock
setsid env $env node $flags -e 'require("net").createServer().listen("/run/bench-bare-node.sock")' </dev/null >/dev/null 2>&1 &
echo $!`;
  const bare = sh('ssh', [...sshArgs, start]).trim();
  if (!/^\d+$/.test(bare)) throw new Error(`the bare node did not start: ${bare}`);
  sh('sleep', [String(IDLE_S)]);
  const read = `${find}
for p in $a ${bare}; do sed -n 's/^VmRSS:[[:space:]]*\\([0-9]*\\) kB$/\\1/p' /proc/$p/status; done
kill ${bare}; rm -f /run/bench-bare-node.sock`;
  const [agent, node] = sh('ssh', [...sshArgs, read]).trim().split('\n').map((kb) => Number(kb) / 1024);
  if (!agent || !node) throw new Error('could not read the RSS of the agent and of the bare node');
  process.stdout.write(
    `guest agent idle RSS (${IDLE_S} s after start of the baseline)\n` +
      `  banger-agent ${agent.toFixed(1)} MiB; bare node, same flags, one listening socket ${node.toFixed(1)} MiB;` +
      ` agent/bare ${(agent / node).toFixed(2)}x (budget 48 MiB)\n`,
  );
}
const name = 'bench-exec';
try {
  banger(['vm', 'delete', '--force', name]);
} catch {
  /* not there */
}
banger(['vm', 'run', '--name', name, '--', 'true']);
const t = JSON.parse(banger(['vm', 'show', name, '--json'])) as {
  id: string;
  accel: string | null;
  network: { hostAddress: string; sshPort: number };
};
const ctl = mkdtempSync(join(tmpdir(), 'bench-ssh-'));
const sshArgs = [
  '-i', join(HOME, 'ssh', 'id_ed25519'),
  '-o', 'IdentitiesOnly=yes',
  '-o', `UserKnownHostsFile=${join(HOME, 'vms', t.id, 'known_hosts')}`,
  '-o', 'StrictHostKeyChecking=yes',
  '-o', `HostKeyAlias=${name}.vm`,
  '-o', 'ControlMaster=auto',
  '-o', `ControlPath=${ctl}/cm`,
  '-o', 'ControlPersist=120',
  '-p', String(t.network.sshPort),
  `root@${t.network.hostAddress}`,
];
try {
  sh('ssh', [...sshArgs, 'true']); // opens the master connection, like banger's daemon already holds one
  // `vm exec` uses SSH until the guest agent answers (Node takes seconds to start under TCG): what follows
  // measures the agent path.
  await agentUp(name);
  // Both sides run in this guest: with ASLR off (TCG's default, config qemu.tcgGuestAslr) a process starts in
  // a fraction of the time, ssh's `true` included.
  const aslr = sh('ssh', [...sshArgs, 'cat /proc/sys/kernel/randomize_va_space']).trim();
  process.stdout.write(`guest: ${t.accel ?? '?'}, kernel.randomize_va_space=${aslr}\n`);
  agentRss();
  /**
   * CLI `vm exec NAME -- true` against ssh running `sshCommand`, alternated, after `WARMUPS` rounds of both that
   * are not counted: under TCG a guest runs each code path's first few times at a fraction of its speed (code
   * not yet translated), and the agent just started; ssh's master connection is already warm.
   */
  const cliExecVsSsh = (label: string, sshCommand: string, baseLabel: string) => {
    const b: number[] = [];
    const base: number[] = [];
    for (let i = -WARMUPS; i < runs; i++) {
      const bt = timeIt(() => banger(['vm', 'exec', name, '--', 'true']));
      const st = timeIt(() => sh('ssh', [...sshArgs, sshCommand]));
      if (i < 0) continue;
      b.push(bt);
      base.push(st);
    }
    report(label, b, base, baseLabel);
  };
  cliExecVsSsh('vm exec -- true (CLI)', 'true', 'ssh -o ControlMaster=auto true');

  const api = await connect({ home: HOME });
  await api.vm.exec(name, ['true']); // warm: the daemon's agent connection
  const a: number[] = [];
  const base2: number[] = [];
  for (let i = 0; i < runs; i++) {
    let t0 = performance.now();
    await api.vm.exec(name, ['true']);
    a.push(performance.now() - t0);
    t0 = performance.now();
    sh('ssh', [...sshArgs, 'true']);
    base2.push(performance.now() - t0);
  }
  report("API vm.exec(VM, ['true']) on an open client", a, base2, 'ssh -o ControlMaster=auto true');

  await api.vm.exec(name, ['sh', '-c', 'cat > /root/jsonl-echo.mjs'], {
    stdin: readFileSync(join(REPO, 'test/fixtures/jsonl-echo.mjs')),
  });
  await api.session.start(name, { name: 'echo', argv: ['node', '/root/jsonl-echo.mjs'] });
  const line = JSON.stringify({ id: 0, pad: 'x'.repeat(1000) }) + '\n';
  const replies = api.session.logs(name, 'echo', { from: 'end', follow: true })[Symbol.asyncIterator]();
  let buffered = '';
  const nextReply = async () => {
    for (;;) {
      const nl = buffered.indexOf('\n');
      if (nl >= 0) {
        buffered = buffered.slice(nl + 1);
        return;
      }
      const r = await replies.next();
      if (r.done) throw new Error('the echo session ended');
      buffered += r.value.data.toString('utf8');
    }
  };
  await api.session.send(name, 'echo', line); // warm: the program starts
  await nextReply();
  const s: number[] = [];
  const base3: number[] = [];
  for (let i = 0; i < runs; i++) {
    let t0 = performance.now();
    await api.session.send(name, 'echo', line);
    await nextReply();
    s.push(performance.now() - t0);
    t0 = performance.now();
    sh('ssh', [...sshArgs, 'true']);
    base3.push(performance.now() - t0);
  }
  report('session send -> reply, 1 KiB JSONL line (API)', s, base3, 'ssh -o ControlMaster=auto true');
  await replies.return?.();

  // Session output streaming: a session that cats a file, read from offset 0 until it ends, against
  // `ssh VM cat FILE` to /dev/null. Both read the file from the guest's page cache after a first cat.
  const mib = Number(process.env.BENCH_STREAM_MIB ?? 256);
  await api.vm.exec(name, ['sh', '-c', `head -c ${mib}M /dev/urandom > /root/stream.bin && cat /root/stream.bin > /dev/null`]);
  const st: number[] = [];
  const base4: number[] = [];
  for (let i = 0; i < 3; i++) {
    let t0 = performance.now();
    const sname = `stream${i}`;
    await api.session.start(name, { name: sname, argv: ['cat', '/root/stream.bin'], maxOutputBytes: (mib + 1) * 1024 * 1024 });
    let got = 0;
    for await (const chunk of api.session.logs(name, sname, { from: 0, follow: true })) got += chunk.data.length;
    st.push(performance.now() - t0);
    if (got !== mib * 1024 * 1024) throw new Error(`the session streamed ${got} bytes, not ${mib} MiB`);
    await api.session.rm(name, sname);
    t0 = performance.now();
    const r = spawnSync('ssh', [...sshArgs, 'cat /root/stream.bin'], { stdio: ['ignore', 'ignore', 'pipe'] });
    if (r.status !== 0) throw new Error(`ssh cat failed: ${r.stderr.toString()}`);
    base4.push(performance.now() - t0);
  }
  report(`session output streaming, ${mib} MiB, start to last byte (API)`, st, base4, 'ssh cat FILE > /dev/null');
  process.stdout.write(`  throughput: banger ${(mib / (median(st) / 1000)).toFixed(1)} MiB/s, ssh ${(mib / (median(base4) / 1000)).toFixed(1)} MiB/s\n`);
  await api.close();

  // Last, as it gives the VM a workspace (later execs would run there): `vm exec` in a workspace without mise
  // config, the developer's loop. The CLI checks the host repo's HEAD, the agent decides against `mise exec`.
  const repo = join(ctl, 'repo');
  makeBigRepo(repo, 1000, 4);
  banger(['vm', 'workspace', 'prepare', name, repo, '--guest-path', '/root/ws']);
  cliExecVsSsh('vm exec -- true in a workspace without mise config (CLI)', 'cd /root/ws && true', "ssh 'cd WORKSPACE && true'");
} finally {
  try {
    sh('ssh', ['-o', `ControlPath=${ctl}/cm`, '-O', 'exit', 'x']);
  } catch {
    /* master already gone */
  }
  rmSync(ctl, { recursive: true, force: true });
  banger(['vm', 'delete', '--force', name]);
}
