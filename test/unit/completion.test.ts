/**
 * Shell completion's pure parts: the scripts cover every command, alias and flag of the real program; which
 * names each argument asks for; the VM filters; the bash and fish walks (with a stub `banger` standing in
 * for the daemon); and the fast path giving up silently when no daemon answers.
 */
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { Command } from 'commander';
import { completionScript, fullProgram } from '../../src/cli/commands/completion.js';
import { completeNames, vmNames } from '../../src/cli/completion/names.js';
import { completionNodes, kindOf, vmFilterFor } from '../../src/cli/completion/spec.js';
import { CliContext } from '../../src/cli/context.js';
import { scratchDir } from '../helpers/scratch.js';

const run = promisify(execFile);
const dir = scratchDir('banger-completion-');
after(() => rmSync(dir, { recursive: true, force: true }));
const program = await fullProgram(new CliContext(new AbortController().signal));
const nodes = completionNodes(program);
const node = (path: string) => {
  const n = nodes.find((x) => x.spellings.includes(path));
  assert.ok(n, `a node for '${path}'`);
  return n;
};

/** Every command below the program, with its path. */
function walk(cmd: Command, path: string[] = []): { path: string[]; cmd: Command }[] {
  return cmd.commands.flatMap((c) => [{ path: [...path, c.name()], cmd: c }, ...walk(c, [...path, c.name()])]);
}

/** A stand-in `banger` (in a directory of its own, for PATH) that records its arguments and prints `names`. */
function stub(names: string[]): { bin: string; binDir: string; calls: string } {
  const binDir = mkdtempSync(join(dir, 'bin-'));
  const calls = join(binDir, 'calls');
  const bin = join(binDir, 'banger');
  writeFileSync(bin, `#!/bin/sh\necho "$*" >> '${calls}'\nprintf '%s\\n' ${names.map((n) => `'${n}'`).join(' ')}\n`);
  chmodSync(bin, 0o755);
  return { bin, binDir, calls };
}

const scripts = { bash: join(dir, 'banger.bash'), fish: join(dir, 'banger.fish'), zsh: join(dir, 'banger.zsh') };
for (const [shell, p] of Object.entries(scripts)) writeFileSync(p, completionScript(program, shell as 'bash' | 'zsh' | 'fish'));

async function bash(words: string[]): Promise<string[]> {
  const { stdout } = await run('bash', [
    '--norc',
    '-c',
    'source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMPREPLY=(); _banger; printf "%s\\n" "${COMPREPLY[@]}"',
    'bash',
    scripts.bash,
    ...words,
  ]);
  return stdout.split('\n').filter(Boolean);
}

void describe('completion scripts', () => {
  void it('cover every command, alias and flag of the program', () => {
    const bash = readFileSync(scripts.bash, 'utf8');
    const fish = readFileSync(scripts.fish, 'utf8');
    const commands = walk(program);
    assert.ok(commands.length > 40, 'the whole program was loaded');
    for (const { path, cmd } of commands) {
      const n = node(path.join(' '));
      for (const alias of cmd.aliases()) assert.ok(node([...path.slice(0, -1), alias].join(' ')) === n, `alias ${alias}`);
      for (const o of cmd.options) for (const f of [o.short, o.long]) if (f) assert.ok(n.flags.includes(f), `${path.join(' ')} ${f}`);
      assert.equal(n.args.length, cmd.registeredArguments.length);
      const parent = path.length === 1 ? node('') : node(path.slice(0, -1).join(' '));
      assert.ok(parent.subcommands.includes(path.at(-1)!), `${path.join(' ')} is offered under its parent`);
      for (const script of [bash, fish]) {
        assert.ok(script.includes(`'${path.join(' ')}'`), `${path.join(' ')} in the scripts`);
        for (const f of n.flags) assert.ok(script.includes(f), f);
      }
    }
    assert.deepEqual(node('').flags, ['-V', '--version', '-h', '--help']);
    assert.equal(node('').subcommands[0], 'vm', '--help order');
  });

  void it('give each argument the names it takes', () => {
    assert.deepEqual(node('vm exec').args, ['vm:running', 'files...']);
    assert.deepEqual(node('vm ssh').args, ['vm:running', 'files...']);
    assert.deepEqual(node('vm start').args, ['vm:stopped']);
    assert.deepEqual(node('vm stop').args, ['vm:running...']);
    assert.deepEqual(node('vm rm').args, ['vm...']);
    assert.deepEqual(node('vm show').args, ['vm']);
    assert.deepEqual(node('vm stats').args, ['vm:running']);
    assert.deepEqual(node('vm session logs').args, ['vm:running', 'session']);
    assert.deepEqual(node('vm workspace prepare').args, ['vm:running', 'files']);
    assert.deepEqual(node('image rm').args, ['image']);
    assert.deepEqual(node('completion').args, ['one-of:bash,zsh,fish']);
    assert.deepEqual(node('vm create').valueFlags.find((v) => v.flag === '--image')?.kind, 'image');
    assert.deepEqual(node('vm run').valueFlags.find((v) => v.flag === '--vmm')?.kind, 'one-of:auto,qemu,firecracker');
    assert.equal(node('vm session start').valueFlags.find((v) => v.flag === '--name')?.kind, 'files', 'a new name: nothing to offer');
  });

  void it('map argument names and commands to kinds', () => {
    assert.equal(vmFilterFor('vm session attach'), 'running');
    assert.equal(vmFilterFor('vm start'), 'stopped');
    assert.equal(vmFilterFor('vm restart'), 'any');
    assert.equal(vmFilterFor('vm stopx'), 'any', 'a prefix matches whole words only');
    assert.equal(kindOf('vm', undefined, 'vm logs'), 'vm');
    assert.equal(kindOf('vm', undefined, 'vm exec'), 'vm:running');
    assert.equal(kindOf('image', undefined, 'x'), 'image');
    assert.equal(kindOf('name', undefined, 'x'), 'files');
    assert.equal(kindOf('x', ['a', 'b'], 'x'), 'one-of:a,b');
    assert.throws(() => kindOf('x', ['a b'], 'x'), /not a plain word/);
  });

  void it('offer running VMs, stopped ones, or all', () => {
    const vms = ['created', 'starting', 'running', 'stopping', 'stopped', 'error'].map((state) => ({ name: state, state }));
    assert.deepEqual(vmNames(vms, 'running'), ['running']);
    assert.deepEqual(vmNames(vms, 'stopped'), ['created', 'stopped', 'error']);
    assert.equal(vmNames(vms, 'any').length, 6);
  });
});

void describe('the bash script', () => {
  void it('completes commands, flags and choices without running banger', async () => {
    const s = stub(['never']);
    assert.deepEqual(await bash([s.bin, 'vm', 'ex']), ['exec']);
    assert.deepEqual(await bash([s.bin, 'vm', 'session', 's']), ['start', 'show', 'send', 'stop']);
    assert.deepEqual(await bash([s.bin, 'vm', 'exec', '--t']), ['--tty']);
    assert.deepEqual(await bash([s.bin, 'vm', 'create', '--vmm', '']), ['auto', 'qemu', 'firecracker']);
    assert.deepEqual(await bash([s.bin, '--version', 'comp']), ['completion']);
    assert.equal(existsSync(s.calls), false, 'no banger process ran');
  });

  void it('asks for the names each position takes, past flags and their values', async () => {
    const s = stub(['dev', 'devbox', 'web']);
    assert.deepEqual(await bash([s.bin, 'vm', 'exec', '-w', '/root', 'de']), ['dev', 'devbox']);
    assert.deepEqual(await bash([s.bin, 'vm', 'start', '']), ['dev', 'devbox', 'web']);
    assert.deepEqual(await bash([s.bin, 'vm', 'stop', 'dev', 'w']), ['web'], 'a variadic argument repeats');
    assert.deepEqual(await bash([s.bin, 'vm', 'session', 'logs', 'dev', '--from', '0', 'w']), ['web']);
    assert.deepEqual(await bash([s.bin, 'vm', 'run', '--image', '']), ['dev', 'devbox', 'web']);
    assert.deepEqual(await bash([s.bin, 'vm', 'show', 'dev', '']), [], 'show takes one VM');
    assert.deepEqual(await bash([s.bin, 'vm', 'exec', 'dev', '--', 'w']), [], 'after -- comes the guest command');
    assert.deepEqual(readFileSync(s.calls, 'utf8').trim().split('\n'), [
      '__complete vm running',
      '__complete vm stopped',
      '__complete vm running',
      '__complete session dev',
      '__complete image',
    ]);
  });

  void it('offers hostile names as plain text, never evaluated', async () => {
    const marker = join(dir, 'evaluated');
    const s = stub([`$(touch ${marker})`, '`touch x`']);
    const got = await bash([s.bin, 'vm', 'show', '']);
    assert.deepEqual(got, [`$(touch ${marker})`, '`touch x`']);
    assert.equal(existsSync(marker), false);
  });
});

void describe('the fish script', () => {
  void it('walks the same tree', async (t) => {
    const has = await run('fish', ['--version']).then(() => true, () => false);
    if (!has) return t.skip('fish is not installed');
    const s = stub(['dev', 'web']);
    const complete = async (line: string) =>
      (
        await run('fish', ['--no-config', '-c', `source ${scripts.fish}; complete -C'${line}'`], {
          env: { ...process.env, PATH: `${s.binDir}:${process.env.PATH}` },
        })
      ).stdout
        .split('\n')
        .filter(Boolean)
        .sort();
    assert.deepEqual(await complete('banger vm ex'), ['exec']);
    assert.deepEqual(await complete('banger vm session show dev '), ['dev', 'web']);
    assert.deepEqual(readFileSync(s.calls, 'utf8').trim(), '__complete session dev');
  });
});

void describe('__complete', () => {
  void it('prints nothing when no daemon runs, or when it does not answer in time', async () => {
    assert.deepEqual(await completeNames(['vm', 'any'], join(dir, 'no.sock')), []);
    const silent = net.createServer(() => undefined);
    const sock = join(dir, 'silent.sock');
    await new Promise<void>((r) => silent.listen(sock, r));
    try {
      const started = Date.now();
      assert.deepEqual(await completeNames(['vm', 'any'], sock, 200), []);
      assert.ok(Date.now() - started < 5000, 'gave up instead of hanging');
    } finally {
      silent.close();
    }
  });
});
