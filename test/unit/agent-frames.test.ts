import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  AGENT_MAX_SYNC_SKIP,
  AGENT_STREAM_WINDOW,
  AGENT_SYNC,
  FRAME_HEADER_BYTES,
  FrameKind,
} from '../../src/protocol/agent.js';
import { FrameDecoder, FrameError, encodeCredit, encodeFrame } from '../../src/protocol/agent-frames.js';
import { InboundWindow, OutboundWindow } from '../../src/protocol/agent-flow.js';

test('frames split at every byte boundary decode to the same frames', () => {
  const bytes = Buffer.concat([
    Buffer.from(AGENT_SYNC),
    encodeFrame(FrameKind.Control, 0, Buffer.from('{"type":"hello"}')),
    encodeFrame(FrameKind.Stdout, 7, Buffer.alloc(1000, 1)),
    encodeFrame(FrameKind.Stdout, 7),
    encodeCredit(3, FrameKind.Stdin, 4096),
  ]);
  const dec = new FrameDecoder({ sync: true });
  const frames = [];
  for (let i = 0; i < bytes.length; i++) frames.push(...dec.push(bytes.subarray(i, i + 1)));
  assert.deepEqual(
    frames.map((f) => [f.kind, f.channel, f.payload.length]),
    [
      [0, 0, 16],
      [2, 7, 1000],
      [2, 7, 0],
      [4, 3, 5],
    ],
  );
  assert.equal(frames[0].payload.toString(), '{"type":"hello"}');
  assert.equal(dec.bufferedBytes, 0);
});

test('an oversized frame is refused from its header, before its body is kept', () => {
  const dec = new FrameDecoder({ sync: false, maxFrame: 1024 });
  const header = Buffer.alloc(FRAME_HEADER_BYTES);
  header.writeUInt32BE(1025, 0);
  assert.throws(() => dec.push(header), FrameError);
  assert.equal(dec.bufferedBytes, 0);
});

test('bytes before the greeting are skipped, up to a cap', () => {
  const dec = new FrameDecoder({ sync: true });
  const junk = Buffer.from([0xb4, 0x42, 0x41, 0x00, 0xb4, 0xb4, 0x42]);
  const frame = encodeFrame(FrameKind.Control, 0, Buffer.from('{}'));
  const frames = dec.push(Buffer.concat([junk, Buffer.from(AGENT_SYNC), frame]));
  assert.equal(frames.length, 1);
  const capped = new FrameDecoder({ sync: true });
  assert.throws(() => capped.push(Buffer.alloc(AGENT_MAX_SYNC_SKIP + 16, 0x20)), /greeting/);
});

test('an outbound stream sends no more than its credit, resumes when granted, and drops no byte', () => {
  const sent: number[] = [];
  const total = () => sent.reduce((a, b) => a + b, 0);
  const win = new OutboundWindow((b) => sent.push(b.length));
  let drained = false;
  assert.equal(win.write(Buffer.alloc(AGENT_STREAM_WINDOW + 1000)), false);
  assert.equal(total(), AGENT_STREAM_WINDOW);
  // A writer that hands more before its callback (a source that emitted after being paused): queued behind.
  assert.equal(
    win.write(Buffer.alloc(1), () => (drained = true)),
    false,
  );
  win.end();
  win.grant(10);
  assert.equal(drained, false);
  assert.equal(win.finished, false);
  win.grant(991);
  assert.equal(drained, true);
  assert.equal(win.finished, true);
  assert.equal(total(), AGENT_STREAM_WINDOW + 1001, 'every byte written was sent');
  assert.equal(sent.at(-1), 0); // the end of the stream, after the data
});

test('an inbound stream refuses bytes past its credit and grants in batches', () => {
  const win = new InboundWindow();
  assert.equal(win.accept(AGENT_STREAM_WINDOW), true);
  assert.equal(win.accept(1), false);
  assert.equal(win.consumed(100), 0);
  assert.equal(win.consumed(AGENT_STREAM_WINDOW / 4), AGENT_STREAM_WINDOW / 4 + 100);
  assert.equal(win.accept(AGENT_STREAM_WINDOW / 4 + 100), true);
  assert.equal(win.accept(1), false);
});
