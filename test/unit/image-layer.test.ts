import assert from 'node:assert/strict';
import { readdirSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, it } from 'node:test';
import type { CommandRunner } from '../../src/shared/command.js';
import {
  LayerCache,
  layerBaseKey,
  layerKey,
  layersToPrune,
  layerTarCreateArgs,
  layerTarExtractArgs,
  pickLayer,
  type LayerBase,
  type LayerManifest,
} from '../../src/daemon/services/image/layers.js';
import {
  BOOTSTRAP_OPTIONS,
  includedPackages,
  layeredMmdebstrapArgs,
  mmdebstrapArgs,
  planBootstrap,
} from '../../src/daemon/services/image/bootstrap.js';
import { scratchDir } from '../helpers/scratch.js';

const base: LayerBase = {
  suite: 'bookworm',
  mirror: 'http://deb.debian.org/debian',
  variant: 'minbase',
  architecture: 'amd64',
  options: BOOTSTRAP_OPTIONS,
};
const NOW = new Date('2026-12-02T12:00:00Z');
const ago = (h: number) => new Date(NOW.getTime() - h * 3600_000).toISOString();
const manifest = (packages: string[], o: Partial<LayerManifest> = {}): LayerManifest => ({
  key: layerKey(base, packages),
  baseKey: layerBaseKey(base),
  base,
  packages: [...packages].sort(),
  createdAt: ago(1),
  usedAt: ago(1),
  sizeBytes: 1,
  ...o,
});
const silent = { info: () => undefined, warn: () => undefined };

void describe('layer keys', () => {
  void it('do not depend on package order or duplicates', () => {
    assert.equal(layerKey(base, ['git', 'curl', 'git']), layerKey(base, ['curl', 'git']));
  });
  void it('change with everything the bootstrap depends on', () => {
    const k = layerKey(base, ['git']);
    assert.notEqual(layerKey(base, ['git', 'curl']), k);
    assert.notEqual(layerKey({ ...base, suite: 'trixie' }, ['git']), k);
    assert.notEqual(layerKey({ ...base, mirror: 'http://mirror.example/debian' }, ['git']), k);
    assert.notEqual(layerKey({ ...base, variant: 'apt' }, ['git']), k);
    assert.notEqual(layerKey({ ...base, architecture: 'arm64' }, ['git']), k);
    assert.notEqual(layerKey({ ...base, options: [...base.options, '--dpkgopt=path-exclude=/x/*'] }, ['git']), k);
  });
});

void describe('pickLayer', () => {
  const wanted = ['a', 'b', 'c', 'd'];
  void it('takes the largest cached set the wanted set contains', () => {
    const small = manifest(['a']);
    const big = manifest(['a', 'b', 'c']);
    assert.equal(pickLayer([small, big], base, wanted, NOW)?.key, big.key);
  });
  void it('never takes a layer holding a package not asked for', () => {
    assert.equal(pickLayer([manifest(['a', 'x'])], base, wanted, NOW), undefined);
  });
  void it('never takes a layer of another suite, mirror or option set', () => {
    const other = { ...manifest(['a']), baseKey: layerBaseKey({ ...base, suite: 'trixie' }) };
    assert.equal(pickLayer([other], base, wanted, NOW), undefined);
  });
  void it('skips layers older than the maximum age', () => {
    assert.equal(pickLayer([manifest(['a'], { createdAt: ago(24 * 8) })], base, wanted, NOW), undefined);
  });
  void it('prefers the most recently used of equal sizes', () => {
    const older = manifest(['a', 'b'], { usedAt: ago(5) });
    const newer = manifest(['a', 'c'], { usedAt: ago(2) });
    assert.equal(pickLayer([older, newer], base, wanted, NOW)?.key, newer.key);
  });
  void it('takes an exact match', () => {
    const exact = manifest(wanted);
    assert.equal(pickLayer([manifest(['a']), exact], base, wanted, NOW)?.key, exact.key);
  });
});

void describe('layersToPrune', () => {
  void it('keeps the most recently used few and drops old ones', () => {
    const ls = [
      manifest(['a'], { usedAt: ago(1) }),
      manifest(['b'], { usedAt: ago(2) }),
      manifest(['c'], { usedAt: ago(3) }),
      manifest(['d'], { usedAt: ago(4) }),
      manifest(['e'], { createdAt: ago(24 * 30), usedAt: ago(0) }),
    ];
    assert.deepEqual(layersToPrune(ls, NOW, 3).sort(), [ls[3]!.key, ls[4]!.key].sort());
  });
});

void describe('tar and mmdebstrap arguments', () => {
  void it('keep numeric owners, xattrs (file capabilities) and ACLs, and can leave /dev out', () => {
    const c = layerTarCreateArgs('/r', '/l/x.tar.zst');
    for (const a of ['--numeric-owner', '--xattrs', '--xattrs-include=*', '--acls']) assert.ok(c.includes(a), a);
    const x = layerTarExtractArgs('/l/x.tar.zst', '/r', true);
    for (const a of ['--numeric-owner', '--same-owner', '--same-permissions', '--exclude=./dev/*']) assert.ok(x.includes(a), a);
    assert.ok(!layerTarExtractArgs('/l/x.tar.zst', '/r', false).includes('--exclude=./dev/*'));
  });
  void it('install only the missing packages, with the same options, before the apt cache is synced out', () => {
    const args = layeredMmdebstrapArgs({
      suite: 'bookworm',
      mirror: 'http://deb.debian.org/debian',
      extra: ['sl', "we'ird"],
      targetDir: '/x/rootfs.d',
      aptCacheDir: '/c/apt',
    });
    assert.equal(args[0], '--variant=custom');
    assert.ok(args.includes('--skip=check/empty'));
    assert.ok(!args.some((a) => a.startsWith('--include')));
    const install = args.findIndex((a) => a.includes('apt-get --yes'));
    assert.match(args[install]!, /^--customize-hook=chroot "\$1" env DEBIAN_FRONTEND=noninteractive .*install -- sl 'we'\\''ird'$/);
    assert.ok(install < args.indexOf('--customize-hook=sync-out /var/cache/apt/archives /c/apt'));
    assert.ok(args.indexOf('--setup-hook=sync-in /c/apt /var/cache/apt/archives/') >= 0);
    const full = mmdebstrapArgs({ suite: 'bookworm', mirror: 'm', packages: [], targetDir: '/t' });
    for (const o of BOOTSTRAP_OPTIONS) {
      assert.ok(args.includes(o), o);
      assert.ok(full.includes(o), o);
    }
    assert.deepEqual(args.slice(-3), ['bookworm', '/x/rootfs.d', 'http://deb.debian.org/debian']);
  });
});

void describe('LayerCache', () => {
  let dir: string;
  let clock: Date;
  /** `tar --create` writes "TREE:<dir>" to its --file; `fail` makes it die half-way. */
  let fail: boolean;
  let calls: string[][];
  const run: CommandRunner = async (cmd, args) => {
    calls.push([cmd, ...args]);
    const file = args.find((a) => a.startsWith('--file='))?.slice('--file='.length);
    if (args[0] === '--create' && file) {
      writeFileSync(file, 'half a tree');
      if (fail) throw new Error('tar: killed');
      writeFileSync(file, `TREE:${args.find((a) => a.startsWith('--directory='))}`);
    }
    return { stdout: '', stderr: '', code: 0 };
  };
  const cache = () => new LayerCache({ dir, run, log: silent, now: () => clock });

  beforeEach(() => {
    dir = scratchDir('banger-layers-');
    clock = NOW;
    fail = false;
    calls = [];
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  void it('saves a layer that a superset build then finds', async () => {
    const c = cache();
    const saved = await c.save(base, ['git', 'curl'], '/b/rootfs.d');
    assert.deepEqual(readdirSync(dir).sort(), [`${saved.key}.json`, `${saved.key}.tar.zst`]);
    assert.equal((await c.find(base, ['curl', 'git', 'sl']))?.key, saved.key);
    assert.equal(await c.find(base, ['curl']), undefined);
  });

  void it('leaves no layer behind when the tarball write fails, and keeps the previous one', async () => {
    const c = cache();
    const old = await c.save(base, ['git'], '/b/rootfs.d');
    fail = true;
    await assert.rejects(c.save(base, ['git', 'curl'], '/b/rootfs.d'), /killed/);
    assert.deepEqual(readdirSync(dir).sort(), [`${old.key}.json`, `${old.key}.tar.zst`]);
    assert.equal((await c.find(base, ['git', 'curl']))?.key, old.key);
  });

  void it('never uses a half-written layer of a killed build, and prunes it once stale', async () => {
    const key = layerKey(base, ['git']);
    writeFileSync(join(dir, '.tmp-abc.tar.zst'), 'half');
    writeFileSync(join(dir, `${key}.tar.zst`), 'renamed but no manifest yet');
    clock = new Date();
    const c = cache();
    assert.equal(await c.find(base, ['git']), undefined);
    await c.prune();
    assert.equal(readdirSync(dir).length, 2, 'fresh files may belong to a build still saving');
    const old = new Date(clock.getTime() - 3600_000);
    for (const n of readdirSync(dir)) utimesSync(join(dir, n), old, old);
    await c.prune();
    assert.deepEqual(readdirSync(dir), []);
  });

  void it('keeps only the most recently used layers', async () => {
    const c = cache();
    const keys: string[] = [];
    for (const [i, p] of ['a', 'b', 'c', 'd'].entries()) {
      clock = new Date(NOW.getTime() + i * 1000);
      keys.push((await c.save(base, [p], '/r')).key);
    }
    assert.deepEqual((await c.list()).map((l) => l.key).sort(), keys.slice(1).sort());
  });

  void it('restores with the extract arguments and marks the layer used', async () => {
    const c = cache();
    const saved = await c.save(base, ['git'], '/b/rootfs.d');
    clock = new Date(NOW.getTime() + 60_000);
    await c.restore(saved, join(dir, 'out'), { withoutDev: true });
    const extract = calls.find((a) => a[1] === '--extract');
    assert.deepEqual(extract?.slice(1), layerTarExtractArgs(join(dir, `${saved.key}.tar.zst`), join(dir, 'out'), true));
    assert.equal((await c.list())[0]?.usedAt, clock.toISOString());
  });

  void it('plans a restore plus the missing packages, a restore alone, or a full bootstrap', async () => {
    const c = cache();
    const pkgs = includedPackages({ packages: [] });
    assert.deepEqual((await planBootstrap(c, base, pkgs, silent)).steps, ['bootstrap rootfs', 'save base layer']);
    await c.save(base, pkgs, '/r');
    const plus = await planBootstrap(c, base, [...pkgs, 'sl'], silent);
    assert.deepEqual(plus.steps, ['restore base layer', 'install extra packages']);
    assert.deepEqual(plus.extra, ['sl']);
    assert.deepEqual((await planBootstrap(c, base, pkgs, silent)).steps, ['restore base layer']);
    assert.deepEqual((await planBootstrap(c, base, pkgs, silent, { noCache: true })).steps, ['bootstrap rootfs', 'save base layer']);
    assert.deepEqual((await planBootstrap(undefined, base, pkgs, silent)).steps, ['bootstrap rootfs']);
  });
});
