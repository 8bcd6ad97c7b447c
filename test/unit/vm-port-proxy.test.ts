/**
 * Guest ports published for the VM's owner only: the kernel's socket table says who opened a loopback
 * connection; the owner's connections reach the guest (here a local echo server stands in for the SSH
 * channel) with both directions and half-closes intact; another user's are closed before anything reaches
 * the guest.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { after, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { GuestPortProxy } from '../../src/daemon/services/vm/port-proxy.js';
import { loopbackPeerUid } from '../../src/daemon/services/peer-uid.js';
import { socketOwner } from '../../src/shared/proc-net.js';
import { silentLogger } from '../../src/shared/logger.js';

const HOST = '127.0.0.1';
const closers: (() => void)[] = [];
after(() => closers.forEach((c) => c()));

test('socketOwner finds the uid of the established socket with those two ends, IPv4 and IPv4-mapped IPv6', () => {
  const tcp = [
    '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode',
    // a listener on 127.77.0.2:8080 (uid 0) and both ends of a connection to it from 127.0.0.1:40000 (uid 1000)
    '   0: 02004D7F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 11 1 0 100 0 0 10 0',
    '   1: 0100007F:9C40 02004D7F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 12 1 0 20 4 0 10 -1',
    '   2: 02004D7F:1F90 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 13 1 0 20 4 0 10 -1',
  ].join('\n');
  const client = { address: '127.0.0.1', port: 40000 };
  const server = { address: '127.77.0.2', port: 8080 };
  assert.equal(socketOwner(tcp, client, server), 1000);
  assert.equal(socketOwner(tcp, server, client), 0);
  assert.equal(socketOwner(tcp, { address: '127.0.0.1', port: 40001 }, server), undefined);
  const tcp6 = '   0: 0000000000000000FFFF00000100007F:9C40 0000000000000000FFFF000002004D7F:1F90 01 00000000:00000000 00:00000000 00000000  1001        0 14';
  assert.equal(socketOwner(tcp6, client, server), 1001);
  // A client that shut down writing (FIN_WAIT2) still has its owner; a listening row is not a connection, and a
  // TIME_WAIT row says uid 0 whoever owned the socket.
  assert.equal(socketOwner(tcp.replace(/ 01 (0+:0+ 00:0+ 0+ {2}1000)/, ' 05 $1'), client, server), 1000);
  assert.equal(socketOwner(tcp.replace(/ 01 (0+:0+ 00:0+ 0+ {2}1000)/, ' 0A $1'), client, server), undefined);
  assert.equal(socketOwner(tcp.replace(/ 01 (0+:0+ 00:0+ 0+) {2}1000/, ' 06 $1     0'), client, server), undefined);
});

test('loopbackPeerUid: the uid of the process that connected, read from /proc/net/tcp', async () => {
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(0, HOST, r));
  closers.push(() => server.close());
  const accepted = new Promise<net.Socket>((r) => server.once('connection', r));
  const c = net.connect((server.address() as net.AddressInfo).port, HOST);
  closers.push(() => c.destroy());
  assert.equal(await loopbackPeerUid(await accepted), process.getuid!());
});

/** A stand-in for the guest side: echoes in upper case, ends its side when the client ends. */
async function upperEchoGuest(): Promise<{ port: number; dials: () => number }> {
  const s = net.createServer({ allowHalfOpen: true }, (c) => {
    const chunks: Buffer[] = [];
    c.on('data', (d: Buffer) => chunks.push(d));
    c.on('end', () => c.end(Buffer.concat(chunks).toString().toUpperCase()));
  });
  await new Promise<void>((r) => s.listen(0, HOST, r));
  closers.push(() => s.close());
  let dials = 0;
  s.on('connection', () => dials++);
  return { port: (s.address() as net.AddressInfo).port, dials: () => dials };
}

/** Sends `text`, shuts down writing, and returns everything read until the server closes. */
function roundTrip(port: number, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = net.connect({ host: HOST, port, allowHalfOpen: true }, () => c.end(text));
    let got = '';
    c.on('data', (d: Buffer) => (got += d.toString()));
    c.on('error', reject);
    c.on('close', () => resolve(got));
  });
}

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, HOST, r));
  const p = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return p;
}

/**
 * A proxy publishing one port (a free one) in front of an upper-case echo guest; `dialed` checks the guest
 * port each connection asks for.
 */
async function published(o: { allowedUids: number[]; peerUid?: () => Promise<number | undefined> }) {
  const guest = await upperEchoGuest();
  const port = await freePort();
  const proxy = new GuestPortProxy({
    log: silentLogger(),
    vmName: 't',
    hostAddress: HOST,
    dial: (p) => {
      assert.equal(p, port, 'the guest port has the published number');
      return Promise.resolve(net.connect(guest.port, HOST));
    },
    allowedUids: new Set(o.allowedUids),
    peerUid: o.peerUid,
  });
  closers.push(() => proxy.close());
  await proxy.add(port);
  return { guest, port, proxy };
}

test("the owner's connection reaches the guest port; a half-close still gets the whole reply", async () => {
  const { port, proxy } = await published({ allowedUids: [process.getuid!()] });
  const big = 'x'.repeat(3 * 1024 * 1024);
  assert.equal(await roundTrip(port, 'hello'), 'HELLO');
  assert.equal((await roundTrip(port, big)).length, big.length);
  await proxy.remove(port);
  await assert.rejects(roundTrip(port, 'again'), /ECONNREFUSED/);
});

test("another user's connection is closed before it reaches the guest", async () => {
  const { guest, port } = await published({ allowedUids: [process.getuid!()], peerUid: async () => 4242 });
  assert.equal(await roundTrip(port, 'secret').catch(() => ''), '');
  assert.equal(guest.dials(), 0);
});

test(
  'a real other user (nobody) gets no byte from a guest port; the owner still does',
  { skip: process.getuid?.() !== 0 ? 'needs root, to connect as another uid' : false },
  async () => {
    const { guest, port } = await published({ allowedUids: [0] });
    const script = `const c=require('net').connect({host:'${HOST}',port:${port},allowHalfOpen:true},()=>c.end('ping'));let g='';c.on('data',d=>g+=d);c.on('error',e=>{console.log('error',e.code);process.exit(0)});c.on('close',()=>{console.log(JSON.stringify(g))})`;
    // Asynchronously: the proxy answers from this process's event loop.
    const child = spawn(process.execPath, ['-e', script], { uid: 65534, gid: 65534, cwd: '/', timeout: 10_000 });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const [code] = (await once(child, 'close')) as [number | null];
    assert.equal(code, 0);
    assert.match(out.trim(), /^(""|error ECONNRESET)$/);
    await sleep(50);
    assert.equal(guest.dials(), 0);
    assert.equal(await roundTrip(port, 'ping'), 'PING');
  },
);
