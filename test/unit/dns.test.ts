import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import net from 'node:net';
import { execFile, spawnSync } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdirSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import dnsPacket, { type DecodedPacket, type Packet, type RecordType } from 'dns-packet';
import { VmDnsServer, type DnsPeer } from '../../src/daemon/services/dns/server.js';
import { reverseNameToIp, ipToReverseName } from '../../src/daemon/services/dns/packet.js';
import {
  BLOCK_BEGIN,
  BLOCK_END,
  DnsHostIntegration,
  blockLines,
  insertBlock,
  removeBlock,
  replaceBlock,
} from '../../src/daemon/services/dns/host-integration.js';
import type { CommandRunner, RunResult } from '../../src/shared/command.js';
import { silentLogger } from '../../src/shared/logger.js';
import { udpSocketOwner } from '../../src/shared/proc-net.js';
import { loopbackPeerUid, udpPeerUid } from '../../src/daemon/services/peer-uid.js';
import { scratchDir } from '../helpers/scratch.js';

const execFileP = promisify(execFile);

const VMS: Record<string, string> = { 'fix-42': '172.30.0.5', web: '172.30.0.6' };
const lookup = (n: string) => VMS[n];
const reverse = (ip: string) => Object.entries(VMS).find(([, a]) => a === ip)?.[0];

function udpQuery(port: number, msg: Buffer, timeoutMs = 2000): Promise<Buffer | undefined> {
  return new Promise((resolve, reject) => {
    const sock = dgram.createSocket('udp4');
    const timer = setTimeout(() => {
      sock.close();
      resolve(undefined);
    }, timeoutMs);
    sock.on('message', (m) => {
      clearTimeout(timer);
      sock.close();
      resolve(m);
    });
    sock.on('error', (e) => {
      clearTimeout(timer);
      sock.close();
      reject(e);
    });
    sock.send(msg, port, '127.0.0.1');
  });
}

let nextId = 1;
function q(name: string, type: RecordType | 'ANY' = 'A', extra: Partial<Packet> = {}): Packet {
  return {
    type: 'query',
    id: nextId++,
    flags: dnsPacket.RECURSION_DESIRED,
    questions: [{ type: type as RecordType, class: 'IN', name }],
    ...extra,
  };
}

async function ask(port: number, p: Packet): Promise<DecodedPacket & { rcode?: string }> {
  const res = await udpQuery(port, dnsPacket.encode(p));
  assert.ok(res, 'expected a reply');
  return dnsPacket.decode(res) as DecodedPacket & { rcode?: string };
}

describe('VmDnsServer', () => {
  const server = new VmDnsServer({ lookup, reverse, log: silentLogger(), ttl: 7 });
  let port = 0;
  before(async () => {
    const bound = await server.listen([{ host: '127.0.0.1', port: 0 }]);
    port = bound[0]!.port;
    assert.ok(port > 0);
  });
  after(() => server.close());

  test('answers A for NAME.vm with the address, TTL, AA, and the question echoed', async () => {
    const query = q('fix-42.vm');
    const r = await ask(port, query);
    assert.equal(r.id, query.id);
    assert.equal(r.type, 'response');
    assert.equal(r.rcode, 'NOERROR');
    assert.equal(r.flag_aa, true);
    assert.equal(r.flag_rd, true, 'RD is copied from the query');
    assert.equal(r.flag_ra, false, 'not a recursive resolver');
    assert.deepEqual(r.questions, [{ name: 'fix-42.vm', type: 'A', class: 'IN' }]);
    assert.equal(r.answers?.length, 1);
    const a = r.answers![0]!;
    assert.equal(a.type, 'A');
    assert.equal(a.name, 'fix-42.vm');
    assert.equal((a as { data: string }).data, '172.30.0.5');
    assert.equal((a as { ttl: number }).ttl, 7);
  });

  test("names are case-insensitive, and the question keeps the asker's case", async () => {
    const r = await ask(port, q('FIX-42.Vm'));
    assert.equal(r.rcode, 'NOERROR');
    assert.equal(r.questions![0]!.name, 'FIX-42.Vm');
    assert.equal((r.answers![0] as { data: string }).data, '172.30.0.5');
  });

  test('an unknown name under .vm is NXDOMAIN with an SOA for negative caching', async () => {
    const r = await ask(port, q('nope.vm'));
    assert.equal(r.rcode, 'NXDOMAIN');
    assert.equal(r.flag_aa, true);
    assert.equal(r.answers?.length, 0);
    assert.equal(r.authorities?.[0]?.type, 'SOA');
  });

  test('names outside .vm are REFUSED (not a recursive resolver)', async () => {
    const r = await ask(port, q('example.com'));
    assert.equal(r.rcode, 'REFUSED');
    assert.equal(r.answers?.length, 0);
    const v6 = await ask(port, q('1.0.0.0.ip6.arpa', 'PTR'));
    assert.equal(v6.rcode, 'REFUSED');
  });

  test('AAAA (or MX) of a known name is NODATA: NOERROR with no answers', async () => {
    for (const t of ['AAAA', 'MX'] as const) {
      const r = await ask(port, q('fix-42.vm', t));
      assert.equal(r.rcode, 'NOERROR', t);
      assert.equal(r.answers?.length, 0, t);
      assert.equal(r.authorities?.[0]?.type, 'SOA', t);
    }
  });

  test('PTR of a VM address names the VM; an unknown address is NXDOMAIN', async () => {
    const r = await ask(port, q(ipToReverseName('172.30.0.5'), 'PTR'));
    assert.equal(r.rcode, 'NOERROR');
    assert.equal(r.answers?.[0]?.type, 'PTR');
    assert.equal((r.answers![0] as { data: string }).data, 'fix-42.vm');
    const unknown = await ask(port, q('9.9.30.172.in-addr.arpa', 'PTR'));
    assert.equal(unknown.rcode, 'NXDOMAIN');
  });

  test('EDNS queries get an OPT record back', async () => {
    const opt = { type: 'OPT', name: '.', udpPayloadSize: 4096, flags: 0, options: [] } as unknown as NonNullable<
      Packet['additionals']
    >[number];
    const r = await ask(port, q('web.vm', 'A', { additionals: [opt] }));
    assert.equal(r.rcode, 'NOERROR');
    assert.equal((r.answers![0] as { data: string }).data, '172.30.0.6');
    assert.equal(r.additionals?.[0]?.type, 'OPT');
  });

  test('a malformed packet gets no reply and the server keeps answering', async () => {
    assert.equal(await udpQuery(port, Buffer.from('not dns at all'), 300), undefined);
    assert.equal(await udpQuery(port, Buffer.alloc(3), 300), undefined);
    const r = await ask(port, q('fix-42.vm'));
    assert.equal(r.rcode, 'NOERROR');
  });

  test('answers over TCP on the same port', async () => {
    const res = await new Promise<Buffer>((resolve, reject) => {
      const s = net.connect(port, '127.0.0.1', () => s.write(dnsPacket.streamEncode(q('web.vm'))));
      let buf = Buffer.alloc(0);
      s.on('data', (d: Buffer) => {
        buf = Buffer.concat([buf, d]);
        if (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
          s.end();
          resolve(buf);
        }
      });
      s.on('error', reject);
    });
    const r = dnsPacket.streamDecode(res) as DecodedPacket & { rcode?: string };
    assert.equal(r.rcode, 'NOERROR');
    assert.equal((r.answers![0] as { data: string }).data, '172.30.0.6');
  });

  test(
    'dig resolves NAME.vm against it',
    { skip: hasCommand('dig') ? false : 'dig is not installed (apt package dnsutils)' },
    async () => {
      // Asynchronously: the server answers from this process's event loop, which spawnSync would block.
      const r = await execFileP(
        'dig',
        ['@127.0.0.1', '-p', String(port), '+short', '+tries=1', '+time=2', 'fix-42.vm'],
        {
          encoding: 'utf8',
        },
      );
      assert.equal(r.stdout.trim(), '172.30.0.5');
    },
  );
});

test('VmDnsServer listens on several addresses and refuses a taken port with an actionable error', async () => {
  const a = new VmDnsServer({ lookup, reverse, log: silentLogger() });
  const b = new VmDnsServer({ lookup, reverse, log: silentLogger() });
  try {
    const bound = await a.listen([
      { host: '127.0.0.1', port: 0 },
      { host: '127.77.0.1', port: 0 },
    ]);
    assert.equal(bound.length, 2);
    assert.deepEqual(a.addresses(), bound);
    await assert.rejects(
      b.listen([{ host: '127.0.0.1', port: bound[0]!.port }]),
      (e: Error & { code?: string; hint?: string }) => {
        assert.equal(e.code, 'Unavailable');
        assert.match(e.hint ?? '', /another program answers/);
        return true;
      },
    );
    assert.deepEqual(b.addresses(), []);
  } finally {
    await a.close();
    await b.close();
  }
});

test('reverse names parse only canonical full IPv4 reverse names', () => {
  assert.equal(reverseNameToIp('5.0.30.172.in-addr.arpa'), '172.30.0.5');
  assert.equal(reverseNameToIp('5.0.30.172.IN-ADDR.ARPA.'), '172.30.0.5');
  assert.equal(reverseNameToIp('0.30.172.in-addr.arpa'), undefined);
  assert.equal(reverseNameToIp('05.0.30.172.in-addr.arpa'), undefined);
  assert.equal(reverseNameToIp('256.0.30.172.in-addr.arpa'), undefined);
});

// ---------------- hosts file editors ----------------

const LINES = ['172.30.0.5 fix-42.vm'];
const BLOCK = `${BLOCK_BEGIN}\n172.30.0.5 fix-42.vm\n${BLOCK_END}\n`;

describe('hosts block editors', () => {
  test('insert appends the block; a file without a trailing newline gets one, and remove takes it back', () => {
    const orig = '127.0.0.1 localhost\n::1 localhost';
    const ins = insertBlock(orig, LINES);
    assert.equal(ins.addedNewline, true);
    assert.equal(ins.text, `${orig}\n${BLOCK}`);
    assert.equal(removeBlock(ins.text, ins.addedNewline), orig);
  });

  test('insert into a file ending in a newline, or an empty file, restores exactly', () => {
    for (const orig of ['127.0.0.1 localhost\n', '', '\n\n# comment\r\n']) {
      const ins = insertBlock(orig, LINES);
      assert.equal(ins.addedNewline, false);
      assert.equal(ins.text, orig + BLOCK);
      assert.equal(removeBlock(ins.text, false), orig);
    }
  });

  test('inserting twice is inserting once', () => {
    const once = insertBlock('127.0.0.1 localhost\n', LINES).text;
    assert.equal(insertBlock(once, LINES).text, once);
  });

  test('replace rewrites only the block, keeping lines the user added before and after it', () => {
    const text = `a\n${BLOCK}b\tc  \nno-newline`;
    const replaced = replaceBlock(text, ['172.30.0.9 other.vm', '172.30.0.5 fix-42.vm']);
    assert.equal(
      replaced,
      `a\n${BLOCK_BEGIN}\n172.30.0.9 other.vm\n172.30.0.5 fix-42.vm\n${BLOCK_END}\nb\tc  \nno-newline`,
    );
    assert.equal(replaceBlock('no block\n', LINES), 'no block\n');
    // Removing a block that is no longer last keeps the newline before it.
    assert.equal(removeBlock(`x\n${BLOCK}y\n`, true), 'x\ny\n');
  });

  test('block lines: sorted, lower-cased, only IPv4 and valid labels', () => {
    assert.deepEqual(
      blockLines([
        { name: 'Zed', address: '10.0.0.3' },
        { name: 'abc', address: '10.0.0.2' },
        { name: 'down', address: null },
        { name: 'v6', address: 'fd00::1' },
        { name: 'bad name', address: '10.0.0.4' },
        { name: 'x\n1.2.3.4 evil', address: '10.0.0.5' },
      ]),
      ['10.0.0.2 abc.vm', '10.0.0.3 zed.vm'],
    );
  });
});

// ---------------- host integration (hosts mechanism, temp files) ----------------

function noRun(): CommandRunner {
  return async (cmd, args) => {
    throw new Error(`unexpected command: ${cmd} ${args.join(' ')}`);
  };
}

function tempHome() {
  const dir = scratchDir('banger-dns-');
  return {
    dir,
    hosts: join(dir, 'hosts'),
    state: join(dir, 'dns.json'),
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}

describe('DnsHostIntegration with the hosts file', () => {
  test('install, sync and uninstall leave the rest of the file byte for byte', async () => {
    const t = tempHome();
    try {
      const orig = Buffer.from('127.0.0.1\tlocalhost\n# caf\xe9 non-UTF-8 byte\n10.0.0.1 host', 'latin1');
      writeFileSync(t.hosts, orig, { mode: 0o644 });
      const dns = new DnsHostIntegration({
        stateFile: t.state,
        hostsFile: t.hosts,
        dnsAddress: '127.77.0.1',
        run: noRun(),
        log: silentLogger(),
        forceMechanism: 'hosts',
      });
      assert.equal(dns.installed(), false);

      const s = await dns.install([{ name: 'fix-42', address: '172.30.0.5' }]);
      assert.equal(s.installed, true);
      assert.equal(s.mechanism, 'hosts');
      assert.deepEqual(s.names, [{ name: 'fix-42.vm', address: '172.30.0.5' }]);
      const installed = readFileSync(t.hosts);
      assert.deepEqual(installed, Buffer.concat([orig, Buffer.from('\n' + BLOCK)]));

      await dns.install([{ name: 'fix-42', address: '172.30.0.5' }]);
      assert.deepEqual(readFileSync(t.hosts), installed, 'install twice = once');

      dns.sync([
        { name: 'fix-42', address: '172.30.0.7' },
        { name: 'web', address: '172.30.0.6' },
      ]);
      assert.deepEqual(
        readFileSync(t.hosts),
        Buffer.concat([orig, Buffer.from(`\n${BLOCK_BEGIN}\n172.30.0.7 fix-42.vm\n172.30.0.6 web.vm\n${BLOCK_END}\n`)]),
      );

      const u = await dns.uninstall();
      assert.equal(u.installed, false);
      assert.deepEqual(readFileSync(t.hosts), orig, 'uninstall restores exactly');
      assert.equal(existsSync(t.state), false);
      dns.sync([{ name: 'fix-42', address: '172.30.0.7' }]);
      assert.deepEqual(readFileSync(t.hosts), orig, 'sync does nothing when not installed');
      await dns.uninstall();
      assert.deepEqual(readFileSync(t.hosts), orig, 'uninstall twice = once');
    } finally {
      t.cleanup();
    }
  });

  test(
    'getent resolves NAME.vm through NSS files (hosts file bind-mounted in a throwaway mount namespace)',
    {
      skip:
        process.getuid?.() !== 0
          ? 'needs root for unshare -m'
          : !hasCommand('unshare') || !hasCommand('getent')
            ? 'needs unshare and getent'
            : false,
    },
    async () => {
      const t = tempHome();
      try {
        writeFileSync(t.hosts, readFileSync('/etc/hosts'));
        const dns = new DnsHostIntegration({
          stateFile: t.state,
          hostsFile: t.hosts,
          dnsAddress: '127.77.0.1',
          run: noRun(),
          log: silentLogger(),
          forceMechanism: 'hosts',
        });
        await dns.install([{ name: 'fix-42', address: '172.30.0.5' }]);
        // NSS reads only files here, so a name that is not in the block never becomes a real DNS query.
        const nss = join(t.dir, 'nsswitch.conf');
        writeFileSync(nss, 'hosts: files\n');
        const getent = (name: string) =>
          spawnSync(
            'unshare',
            [
              '-m',
              'sh',
              '-c',
              'mount --bind "$1" /etc/hosts && mount --bind "$2" /etc/nsswitch.conf && exec getent hosts "$3"',
              'sh',
              t.hosts,
              nss,
              name,
            ],
            { encoding: 'utf8' },
          );
        const r = getent('fix-42.vm');
        assert.equal(r.status, 0, r.stderr);
        assert.match(r.stdout, /^172\.30\.0\.5\s+fix-42\.vm$/m);
        dns.sync([{ name: 'fix-42', address: '172.30.0.9' }]);
        assert.match(getent('FIX-42.vm').stdout, /^172\.30\.0\.9\s/m);
        await dns.uninstall();
        assert.equal(getent('fix-42.vm').status, 2, 'unknown after uninstall');
      } finally {
        t.cleanup();
      }
    },
  );
});

// ---------------- host integration (systemd-resolved mechanism, fake runner) ----------------

test('with systemd-resolved: install puts ~vm on a dummy link, uninstall reverts and deletes it', async () => {
  const t = tempHome();
  try {
    const calls: string[] = [];
    let linkExists = false;
    const ok = (stdout = ''): RunResult => ({ code: 0, stdout, stderr: '' });
    const run: CommandRunner = async (cmd, args) => {
      const c = `${cmd} ${args.join(' ')}`;
      calls.push(c);
      if (c === 'resolvectl status') return ok();
      if (c === 'ip link show dev banger-dns')
        return linkExists ? ok() : { code: 1, stdout: '', stderr: 'does not exist' };
      if (c === 'ip link add banger-dns type dummy') linkExists = true;
      if (c === 'ip link del banger-dns') linkExists = false;
      return ok();
    };
    mkdirSync(join(t.dir, 'resolve'));
    writeFileSync(t.hosts, '127.0.0.1 localhost\n');
    const dns = new DnsHostIntegration({
      stateFile: t.state,
      hostsFile: t.hosts,
      dnsAddress: '127.77.0.1',
      run,
      log: silentLogger(),
      resolvedRuntimeDir: join(t.dir, 'resolve'),
    });
    const s = await dns.install([]);
    assert.equal(s.mechanism, 'resolved');
    assert.equal(s.link, 'banger-dns');
    for (const c of [
      'ip link add banger-dns type dummy',
      'ip addr add 127.77.0.1/32 dev banger-dns scope global',
      'ip link set banger-dns up',
      'resolvectl dns banger-dns 127.77.0.1',
      'resolvectl domain banger-dns ~vm',
    ])
      assert.ok(calls.includes(c), `expected '${c}' in ${calls.join('; ')}`);
    assert.equal(readFileSync(t.hosts, 'utf8'), '127.0.0.1 localhost\n', 'the hosts file is not touched');
    calls.length = 0;
    await dns.uninstall();
    assert.deepEqual(
      calls.filter((c) => !c.startsWith('resolvectl status')),
      ['resolvectl revert banger-dns', 'ip link del banger-dns'],
    );
    assert.equal(linkExists, false);
  } finally {
    t.cleanup();
  }
});

function hasCommand(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

describe("a user daemon's DNS server answers its owner only", () => {
  test('udpSocketOwner: the socket bound to that address wins over a wildcard one', () => {
    const udp = [
      '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops',
      '  1: 00000000:9C40 00000000:0000 07 00000000:00000000 00:00000000 00000000  1001        0 1 2 0 0',
      '  2: 0100007F:9C40 00000000:0000 07 00000000:00000000 00:00000000 00000000  1000        0 2 2 0 0',
      '  3: 00000000:9C41 00000000:0000 07 00000000:00000000 00:00000000 00000000  1002        0 3 2 0 0',
    ].join('\n');
    assert.equal(udpSocketOwner(udp, { address: '127.0.0.1', port: 40000 }), 1000);
    assert.equal(udpSocketOwner(udp, { address: '127.0.0.2', port: 40000 }), 1001);
    assert.equal(udpSocketOwner(udp, { address: '127.0.0.1', port: 40001 }), 1002);
    assert.equal(udpSocketOwner(udp, { address: '127.0.0.1', port: 40002 }), undefined);
  });

  test(
    'over UDP and TCP: the owner gets the address, another user (nobody) is told of no VM',
    { skip: process.getuid?.() !== 0 ? 'needs root, to ask as another uid' : false },
    async () => {
      // As a daemon of uid 0 that is not root's would be set up: the owner here is this process (root).
      const mayAsk = async (peer: DnsPeer) =>
        (peer.socket ? await loopbackPeerUid(peer.socket) : await udpPeerUid(peer.address, peer.port)) === 0;
      const server = new VmDnsServer({ lookup, reverse, log: silentLogger(), mayAsk });
      const [bound] = await server.listen([{ host: '127.0.0.1', port: 0 }]);
      try {
        const mine = await ask(bound!.port, q('fix-42.vm'));
        assert.deepEqual(mine.answers?.map((a) => (a as { data: unknown }).data), ['172.30.0.5']);
        const script = (proto: 'udp' | 'tcp') =>
          proto === 'udp'
            ? `const s=require('dgram').createSocket('udp4');s.on('message',m=>{console.log(m.toString('base64'));s.close()});s.send(Buffer.from('${dnsPacket.encode(q('fix-42.vm')).toString('base64')}','base64'),${bound!.port},'127.0.0.1')`
            : `const c=require('net').connect(${bound!.port},'127.0.0.1',()=>c.write(Buffer.from('${dnsPacket.streamEncode(q('fix-42.vm')).toString('base64')}','base64')));let b=Buffer.alloc(0);c.on('data',d=>{b=Buffer.concat([b,d]);if(b.length>=2&&b.length>=2+b.readUInt16BE(0)){console.log(b.toString('base64'));c.destroy()}})`;
        for (const proto of ['udp', 'tcp'] as const) {
          const r = await execFileP(process.execPath, ['-e', script(proto)], { uid: 65534, gid: 65534, cwd: '/', timeout: 10_000 });
          const raw = Buffer.from(r.stdout.trim(), 'base64');
          const reply = (proto === 'udp' ? dnsPacket.decode(raw) : dnsPacket.streamDecode(raw)) as DecodedPacket & { rcode?: string };
          assert.equal(reply.rcode, 'NXDOMAIN', proto);
          assert.deepEqual(reply.answers ?? [], [], proto);
        }
      } finally {
        await server.close();
      }
    },
  );
});
