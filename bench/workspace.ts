/**
 * Workspace import and export against what a person would do with git, tar and OpenSSH.
 *  - prepare: `banger vm workspace prepare` of a ~4,000-file / ~32 MB and a ~20,000-file / ~200 MB committed repo vs
 *    `git ls-files -z | tar --null -T - -c | ssh guest tar -x` (files only: no history, no git repo), once
 *    the guest agent, which carries banger's transfers, answers;
 *  - re-sync: a second `prepare` of a ~4,800-file / ~25 MB repo after one file was edited on the host
 *    vs the first (full) import of it: the ratio re-sync/full (the issue asks for at most 0.1x);
 *  - export: `banger vm workspace export` after ~100 files changed in the guest vs
 *    `ssh guest 'git add -A && git diff --cached --binary'` on a copy of the workspace.
 * Usage: npm run build && node --import tsx bench/workspace.ts [prepare runs] [export runs] [sections]
 * (sections: comma-separated of prepare,resync,export; default all three; prepare-4k: the 4,000-file prepare alone).
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLI, HOME, agentUp, banger, median, report, sh, timeIt } from './common.js';

const prepareRuns = Number(process.argv[2] ?? 3);
const exportRuns = Number(process.argv[3] ?? 5);
const sections = new Set((process.argv[4] ?? 'prepare,resync,export').split(','));
const name = 'bench-ws';
const work = mkdtempSync(join(tmpdir(), 'bench-ws-'));
const repo = join(work, 'repo');
const ctl = join(work, 'ssh');
mkdirSync(ctl);

/** `files` text files of 1-9 KB in nested directories, and `binaries` random binaries of 1 MB. */
function makeRepo(repo: string, files: number, binaries: number): number {
  mkdirSync(repo);
  let bytes = 0;
  for (let i = 0; i < files; i++) {
    const dir = join(repo, 'src', `d${i % 20}`, `e${i % 199}`);
    mkdirSync(dir, { recursive: true });
    const lines: string[] = [];
    const size = 1024 + ((i * 7919) % 8192);
    for (let n = 0; n < size; n += 61) lines.push(randomBytes(45).toString('base64'));
    const text = lines.join('\n') + '\n';
    writeFileSync(join(dir, `f${i}.txt`), text);
    bytes += text.length;
  }
  mkdirSync(join(repo, 'assets'));
  for (let i = 0; i < binaries; i++) {
    const b = randomBytes(1 << 20);
    writeFileSync(join(repo, 'assets', `blob${i}.bin`), b);
    bytes += b.length;
  }
  const env = {
    GIT_AUTHOR_NAME: 'bench',
    GIT_AUTHOR_EMAIL: 'b@localhost',
    GIT_COMMITTER_NAME: 'bench',
    GIT_COMMITTER_EMAIL: 'b@localhost',
  };
  sh('git', ['-C', repo, 'init', '-q', '-b', 'main']);
  sh('git', ['-C', repo, 'add', '-A']);
  sh('git', ['-C', repo, 'commit', '-q', '-m', 'bench'], { env });
  return bytes;
}

function deleteVm(): void {
  try {
    banger(['vm', 'delete', '--force', name]);
  } catch {
    /* not there */
  }
}

function run(cmd: string, args: string[], cwd?: string): void {
  const r = spawnSync(cmd, args, {
    cwd,
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, BANGER_HOME: HOME },
  });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.stderr.toString()}`);
}

const mbps = (bytes: number, ms: number) => (bytes / (1 << 20) / (ms / 1000)).toFixed(1);

deleteVm();
try {
  const t0 = Date.now();
  const big = sections.has('prepare') || sections.has('export');
  const bytes = big ? makeRepo(repo, 19_900, 100) : 0;
  if (big)
    process.stdout.write(
      `repo: 20,000 files, ${(bytes / (1 << 20)).toFixed(0)} MiB, committed (${((Date.now() - t0) / 1000).toFixed(1)} s to make)\n`,
    );
  banger(['vm', 'run', '--name', name, '--', 'true']);
  const vm = JSON.parse(banger(['vm', 'show', name, '--json'])) as {
    id: string;
    network: { hostAddress: string; sshPort: number };
  };
  const sshArgs = [
    '-i',
    join(HOME, 'ssh', 'id_ed25519'),
    '-o',
    'IdentitiesOnly=yes',
    '-o',
    `UserKnownHostsFile=${join(HOME, 'vms', vm.id, 'known_hosts')}`,
    '-o',
    'StrictHostKeyChecking=yes',
    '-o',
    `HostKeyAlias=${name}.vm`,
    '-o',
    'ControlMaster=auto',
    '-o',
    `ControlPath=${ctl}/cm`,
    '-o',
    'ControlPersist=300',
    '-p',
    String(vm.network.sshPort),
    `root@${vm.network.hostAddress}`,
  ];
  const ssh = (cmd: string) => sh('ssh', [...sshArgs, cmd]);
  ssh('true'); // the master connection, like the one banger's daemon holds
  // Imports go through the guest agent once it answers (Node takes seconds to start under TCG, and its start
  // would share the guest's CPUs with the first runs).
  await agentUp(name);

  /**
   * `vm workspace prepare` of `dir` against `git ls-files | tar | ssh tar -x`, alternated, `prepareRuns` each,
   * after `warmups` rounds of both that are not counted (a guest just booted runs every program's first time
   * at a fraction of its speed under TCG: the first 4,000-file round took twice the second, on both sides).
   */
  // Each round imports to a guest path of its own: to the path of the round before (removed), banger would first
  // try a re-sync, find the path gone and then import in full, a detour a user's first import never takes.
  let round = 0;
  let lastImport = '/root/ws-banger';
  const comparePrepare = (label: string, dir: string, size: number, warmups = 0) => {
    const b: number[] = [];
    const base: number[] = [];
    for (let i = -warmups; i < prepareRuns; i++) {
      ssh('rm -rf /root/ws-banger* /root/ws-base; sync');
      lastImport = `/root/ws-banger-${++round}`;
      const bt = timeIt(() => run(CLI, ['vm', 'workspace', 'prepare', name, dir, '--guest-path', lastImport]));
      const baset = timeIt(() =>
        run(
          'sh',
          [
            '-c',
            'git ls-files -z | tar --null -T - -c | ssh "$@" "mkdir -p /root/ws-base && tar -x -C /root/ws-base"',
            'sh',
            ...sshArgs,
          ],
          dir,
        ),
      );
      if (i < 0) continue;
      b.push(bt);
      base.push(baset);
    }
    report(`workspace prepare (${label})`, b, base, 'git ls-files | tar | ssh tar -x');
    const bt = Number(mbps(size, median(b)));
    const baset = Number(mbps(size, median(base)));
    process.stdout.write(
      `  throughput: banger ${bt} MiB/s, baseline ${baset} MiB/s; banger/baseline throughput ${(bt / baset).toFixed(2)}x\n`,
    );
  };
  if (sections.has('prepare') || sections.has('prepare-4k')) {
    // The two sizes: ~4,000 files / ~32 MB (text and a few binaries), then the 20,000-file repo.
    const mid = join(work, 'mid');
    const midBytes = makeRepo(mid, 3_988, 12);
    process.stdout.write(`repo: 4,000 files, ${(midBytes / (1 << 20)).toFixed(0)} MiB, committed\n`);
    comparePrepare('4,000 files', mid, midBytes, 1);
    if (sections.has('prepare')) comparePrepare('20,000 files', repo, bytes);
    // The export section below exports from the 20,000-file import (before the re-sync section imports another
    // repository, which would become the VM's workspace).
  }

  if (sections.has('export')) {
    if (!sections.has('prepare'))
      run(CLI, ['vm', 'workspace', 'prepare', name, repo, '--guest-path', '/root/ws-banger']);
    // ~100 text files changed in the guest; the baseline works on a copy so banger's export is unchanged.
    ssh(
      `cd ${lastImport} && git ls-files 'src/*.txt' | head -n 100 | while read -r f; do echo changed >> "$f"; done && rm -rf /root/ws-copy && cp -a ${lastImport} /root/ws-copy`,
    );
    // Banger must export the workspace the baseline copied: its patch names the 100 files.
    const patch = spawnSync(CLI, ['vm', 'workspace', 'export', name], { env: { ...process.env, BANGER_HOME: HOME } });
    const files = (patch.stdout.toString().match(/^diff --git /gm) ?? []).length;
    if (patch.status !== 0 || files !== 100) throw new Error(`the export gave ${files} files, not the 100 changed (exit ${patch.status})`);
    const e: number[] = [];
    const ebase: number[] = [];
    for (let i = 0; i < exportRuns; i++) {
      e.push(timeIt(() => run(CLI, ['vm', 'workspace', 'export', name])));
      ssh('cd /root/ws-copy && git reset -q');
      ebase.push(
        timeIt(() => run('ssh', [...sshArgs, 'cd /root/ws-copy && git add -A && git diff --cached --binary'])),
      );
    }
    report('workspace export (100 changed files)', e, ebase, "ssh 'git add -A && git diff --cached'");
  }

  if (sections.has('resync')) {
    // One file edited in a ~4,800-file repo: the second prepare sends only it.
    const small = join(work, 'small');
    const smallBytes = makeRepo(small, 4_800, 0);
    process.stdout.write(`repo: 4,800 files, ${(smallBytes / (1 << 20)).toFixed(0)} MiB, committed\n`);
    const full: number[] = [];
    const resync: number[] = [];
    const prep = (...extra: string[]) =>
      run(process.execPath, [
        CLI,
        'vm',
        'workspace',
        'prepare',
        name,
        small,
        '--guest-path',
        '/root/ws-resync',
        ...extra,
      ]);
    for (let i = 0; i < prepareRuns; i++) {
      ssh('rm -rf /root/ws-resync; sync');
      full.push(timeIt(() => prep('--full')));
      writeFileSync(join(small, 'src', 'd0', 'e0', 'f0.txt'), `edited ${i}\n`);
      resync.push(timeIt(() => prep()));
    }
    report('workspace re-sync (1 of 4,800 files edited)', resync, full, 'first (full) prepare');
  }
} finally {
  try {
    sh('ssh', ['-o', `ControlPath=${ctl}/cm`, '-O', 'exit', 'x']);
  } catch {
    /* master already gone */
  }
  deleteVm();
  rmSync(work, { recursive: true, force: true });
}
