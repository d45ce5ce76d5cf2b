import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { isVdError } from '@vd/core';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  type BlockDescriptor,
  Chunk,
  ClientStreamDecoder,
  Cmd,
  CmdFlag,
  decodeInfoReply,
  decodeInfoRequest,
  decodeMetaContextReply,
  decodeMetaContextRequest,
  decodeServerReply,
  EXTENDED_REPLY_SIZE,
  encodeBlockStatusChunk,
  encodeClientFlags,
  encodeErrorChunk,
  encodeExportNameReply,
  encodeGreeting,
  encodeHoleChunk,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoRequest,
  encodeInfoString,
  encodeMetaContextReply,
  encodeMetaContextRequest,
  encodeNoneChunk,
  encodeOption,
  encodeOptionReply,
  encodeServerReply,
  Info,
  Opt,
  Rep,
  ReplyFlag,
  type ReplyTargets,
  requestHeaderSize,
  type ServerMessage,
  ServerStreamDecoder,
  STRUCTURED_REPLY_SIZE,
  writeChunkHeader,
  writeDataChunkHeader,
  writeRequestHeader,
  writeSimpleReply,
} from './protocol.js';

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function request(
  extended: boolean,
  flags: number,
  command: number,
  cookie: bigint,
  offset: number,
  length: number,
  payload?: Uint8Array,
): Uint8Array {
  const h = new Uint8Array(requestHeaderSize(extended));
  writeRequestHeader(h, 0, extended, flags, command, cookie, offset, length);
  return payload ? concat([h, payload]) : h;
}

/** Cuts `bytes` at the given positions. */
function cut(bytes: Uint8Array, at: number[]): Uint8Array[] {
  const points = [...new Set(at.filter((p) => p > 0 && p < bytes.length))].sort((a, b) => a - b);
  const out: Uint8Array[] = [];
  let prev = 0;
  for (const p of points) {
    out.push(bytes.slice(prev, p));
    prev = p;
  }
  out.push(bytes.slice(prev));
  return out;
}

// ---- client → server stream

function clientStream(extended: boolean): { bytes: Uint8Array; expected: unknown[] } {
  const payload = new Uint8Array(100).map((_, i) => (i * 7) & 255);
  const go = encodeInfoRequest('disk', [Info.BLOCK_SIZE]);
  const meta = encodeMetaContextRequest('disk', ['base:allocation', 'qemu:dirty-bitmap:b0']);
  const bytes = concat([
    encodeClientFlags(3),
    encodeOption(Opt.LIST),
    encodeOption(Opt.SET_META_CONTEXT, meta),
    encodeOption(Opt.GO, go),
    request(extended, extended ? CmdFlag.PAYLOAD_LEN | CmdFlag.FUA : CmdFlag.FUA, Cmd.WRITE, 0xfedcba9876543210n, 4096, 100, payload),
    request(extended, 0, Cmd.READ, 1n, 2 ** 40, 65536),
    request(extended, CmdFlag.REQ_ONE, Cmd.BLOCK_STATUS, 2n, 0, 2 ** 31),
    request(extended, 0, Cmd.DISC, 3n, 0, 0),
  ]);
  const expected = [
    { kind: 'flags', flags: 3 },
    { kind: 'option', option: Opt.LIST, data: [] },
    { kind: 'option', option: Opt.SET_META_CONTEXT, data: [...meta] },
    { kind: 'option', option: Opt.GO, data: [...go] },
    {
      kind: 'request',
      flags: extended ? 0x21 : 1,
      command: Cmd.WRITE,
      cookie: 0xfedcba9876543210n,
      offset: 4096,
      length: 100,
      payload: [...payload],
    },
    { kind: 'request', flags: 0, command: Cmd.READ, cookie: 1n, offset: 2 ** 40, length: 65536, payload: undefined },
    { kind: 'request', flags: CmdFlag.REQ_ONE, command: Cmd.BLOCK_STATUS, cookie: 2n, offset: 0, length: 2 ** 31, payload: undefined },
    { kind: 'request', flags: 0, command: Cmd.DISC, cookie: 3n, offset: 0, length: 0, payload: undefined },
  ];
  return { bytes, expected };
}

function decodeClient(chunks: Uint8Array[], extended: boolean): unknown[] {
  const d = new ClientStreamDecoder();
  const out: unknown[] = [];
  for (const c of chunks) {
    d.push(c);
    for (let m = d.next(); m; m = d.next()) {
      if (m.kind === 'option') {
        out.push({ ...m, data: [...m.data] });
        if (m.option === Opt.GO) d.enterTransmission(extended);
      } else if (m.kind === 'request') out.push({ ...m, payload: m.payload ? [...m.payload] : undefined });
      else out.push(m);
    }
  }
  expect(d.buffered).toBe(0);
  return out;
}

// ---- server → client stream

interface Pending {
  buf: Uint8Array;
  offset: number;
}

function serverStream(extended: boolean): { bytes: Uint8Array; expected: unknown[]; reads: Map<number, Pending>; data: Uint8Array } {
  const data = new Uint8Array(300).map((_, i) => (i * 13 + 5) & 255);
  const parts: Uint8Array[] = [
    encodeGreeting(3),
    encodeOptionReply(Opt.SET_META_CONTEXT, Rep.META_CONTEXT, encodeMetaContextReply(7, 'base:allocation')),
    encodeOptionReply(Opt.SET_META_CONTEXT, Rep.ACK),
    encodeOptionReply(Opt.GO, Rep.INFO, encodeInfoExport(2 ** 33, 0x1ed)),
    encodeOptionReply(Opt.GO, Rep.ERR_UNSUP, new TextEncoder().encode('nope')),
    encodeOptionReply(Opt.GO, Rep.ACK),
  ];
  const expected: unknown[] = [
    { kind: 'greeting', flags: 3 },
    {
      kind: 'optionReply',
      option: Opt.SET_META_CONTEXT,
      reply: Rep.META_CONTEXT,
      data: [0, 0, 0, 7, ...new TextEncoder().encode('base:allocation')],
    },
    { kind: 'optionReply', option: Opt.SET_META_CONTEXT, reply: Rep.ACK, data: [] },
    { kind: 'optionReply', option: Opt.GO, reply: Rep.INFO, data: [...encodeInfoExport(2 ** 33, 0x1ed)] },
    { kind: 'optionReply', option: Opt.GO, reply: Rep.ERR_UNSUP, data: [...new TextEncoder().encode('nope')] },
    { kind: 'optionReply', option: Opt.GO, reply: Rep.ACK, data: [] },
  ];
  // READ cookie 10 at disk offset 1_000_000, 300 bytes: DATA [100,300), HOLE [0,50), DATA [50,100).
  const reqOff = 1_000_000;
  const dataChunk = (from: number, to: number, flags: number) => {
    const h = new Uint8Array(48);
    const n = writeDataChunkHeader(h, 0, extended, flags, 10, reqOff, reqOff + from, to - from);
    return concat([h.subarray(0, n), data.subarray(from, to)]);
  };
  parts.push(dataChunk(100, 300, 0));
  expected.push({ kind: 'data', cookie: 10, done: false, offset: reqOff + 100, length: 200 });
  parts.push(encodeHoleChunk(extended, 0, 10, reqOff, reqOff, 50));
  expected.push({ kind: 'hole', cookie: 10, done: false, offset: reqOff, length: 50 });
  parts.push(dataChunk(50, 100, ReplyFlag.DONE));
  expected.push({ kind: 'data', cookie: 10, done: true, offset: reqOff + 50, length: 50 });
  const ext: BlockDescriptor[] = [
    { length: 4096, flags: 0 },
    { length: 2 ** 20, flags: 3 },
  ];
  parts.push(encodeBlockStatusChunk(extended, ReplyFlag.DONE, 11, 0, 7, ext));
  expected.push({ kind: 'blockStatus', cookie: 11, done: true, contextId: 7, extents: ext });
  parts.push(encodeErrorChunk(extended, ReplyFlag.DONE, 12, 0, 5, 'disk on fire ✓'));
  expected.push({ kind: 'error', cookie: 12, done: true, error: 5, message: 'disk on fire ✓', offset: undefined });
  parts.push(encodeErrorChunk(extended, 0, 13, 0, 22, 'bad', 1234));
  expected.push({ kind: 'error', cookie: 13, done: false, error: 22, message: 'bad', offset: 1234 });
  parts.push(encodeNoneChunk(extended, 13, 0));
  expected.push({ kind: 'none', cookie: 13, done: true });
  if (!extended) {
    const s = new Uint8Array(16);
    writeSimpleReply(s, 0, 0, 14);
    parts.push(s, data.subarray(0, 100));
    expected.push({ kind: 'simple', cookie: 14, error: 0 });
    const e = new Uint8Array(16);
    writeSimpleReply(e, 0, 28, 15);
    parts.push(e);
    expected.push({ kind: 'simple', cookie: 15, error: 28 });
  }
  const reads = new Map<number, Pending>([[10, { buf: new Uint8Array(300), offset: reqOff }]]);
  if (!extended) reads.set(14, { buf: new Uint8Array(100), offset: 0 });
  return { bytes: concat(parts), expected, reads, data };
}

/**
 * With `borrowed`, every chunk arrives in one reused buffer, as the client's socket reads do:
 * released after its messages are taken, then scribbled over before the next read.
 */
function decodeServer(chunks: Uint8Array[], extended: boolean, reads: Map<number, Pending>, borrowed = false): unknown[] {
  const d = new ServerStreamDecoder();
  const targets: ReplyTargets = {
    simpleTarget: (cookie, error) => (error === 0 ? reads.get(cookie)?.buf : undefined),
    dataTarget: (cookie, offset, length) => {
      const r = reads.get(cookie);
      if (!r || offset < r.offset || offset + length > r.offset + r.buf.length) throw new Error('bad target');
      return r.buf.subarray(offset - r.offset, offset - r.offset + length);
    },
  };
  const out: unknown[] = [];
  const shared = new Uint8Array(Math.max(1, ...chunks.map((c) => c.length)));
  for (const c of chunks) {
    const input = borrowed ? shared.subarray(0, c.length) : c;
    if (borrowed) input.set(c);
    d.push(input);
    for (let m: ServerMessage | undefined = d.next(); m; m = d.next()) {
      if (m.kind === 'optionReply') {
        out.push({ ...m, data: [...m.data] });
        if (m.option === Opt.GO && m.reply === Rep.ACK) d.enterTransmission(extended, targets);
      } else out.push(m);
    }
    if (borrowed) {
      d.releaseInput();
      shared.fill(0xaa);
    }
  }
  expect(d.buffered).toBe(0);
  return out;
}

describe.each([false, true])('split-chunk decoding (extended headers: %s)', (extended) => {
  it('client stream: every single cut gives the same messages', () => {
    const { bytes, expected } = clientStream(extended);
    for (let i = 0; i <= bytes.length; i++) expect(decodeClient(cut(bytes, [i]), extended)).toEqual(expected);
  });

  it('client stream: byte by byte', () => {
    const { bytes, expected } = clientStream(extended);
    expect(decodeClient(cut(bytes, [...bytes.keys()]), extended)).toEqual(expected);
  });

  it('server stream: every single cut gives the same messages and the same read data', () => {
    const { bytes, expected, data } = serverStream(extended);
    for (let i = 0; i <= bytes.length; i++) {
      const { reads } = serverStream(extended);
      expect(decodeServer(cut(bytes, [i]), extended, reads)).toEqual(expected);
      const want = data.slice();
      want.fill(0, 0, 50);
      expect(Buffer.compare(reads.get(10)!.buf, want)).toBe(0);
      if (!extended) expect(Buffer.compare(reads.get(14)!.buf, data.subarray(0, 100))).toBe(0);
    }
  });

  it('property: any cuts decode to the same messages when each read lands in one reused buffer', () => {
    const s = serverStream(extended);
    fc.assert(
      fc.property(fc.array(fc.nat(s.bytes.length), { maxLength: 40 }), (sc) => {
        const { reads } = serverStream(extended);
        expect(decodeServer(cut(s.bytes, sc), extended, reads, true)).toEqual(s.expected);
      }),
      { numRuns: 200 },
    );
  });

  it('property: any cuts decode to the same messages', () => {
    const c = clientStream(extended);
    const s = serverStream(extended);
    fc.assert(
      fc.property(fc.array(fc.nat(c.bytes.length), { maxLength: 40 }), fc.array(fc.nat(s.bytes.length), { maxLength: 40 }), (cc, sc) => {
        expect(decodeClient(cut(c.bytes, cc), extended)).toEqual(c.expected);
        const { reads } = serverStream(extended);
        expect(decodeServer(cut(s.bytes, sc), extended, reads)).toEqual(s.expected);
      }),
      { numRuns: 200 },
    );
  });
});

describe('round trips of option payloads', () => {
  const name = fc.string({ maxLength: 40 }).filter((s) => !s.includes('\0'));
  it('INFO/GO requests', () => {
    fc.assert(
      fc.property(name, fc.array(fc.integer({ min: 0, max: 0xffff }), { maxLength: 10 }), (n, infos) => {
        expect(decodeInfoRequest(encodeInfoRequest(n, infos))).toEqual({ name: n, infos });
      }),
    );
  });
  it('meta context requests', () => {
    fc.assert(
      fc.property(name, fc.array(name, { maxLength: 8 }), (n, queries) => {
        expect(decodeMetaContextRequest(encodeMetaContextRequest(n, queries))).toEqual({ name: n, queries });
      }),
    );
  });
  it('replies', () => {
    fc.assert(
      fc.property(name, name, fc.nat(), (n, d, id) => {
        expect(decodeServerReply(encodeServerReply(n, d))).toEqual({ name: n, description: d });
        if (n.length > 0) expect(decodeMetaContextReply(encodeMetaContextReply(id, n))).toEqual({ id, name: n });
        expect(decodeInfoReply(encodeInfoString(Info.NAME, n))).toEqual({ info: Info.NAME, name: n });
      }),
    );
    fc.assert(
      fc.property(fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }), fc.integer({ min: 0, max: 0xffff }), (size, flags) => {
        expect(decodeInfoReply(encodeInfoExport(size, flags))).toEqual({ info: Info.EXPORT, size, flags });
      }),
    );
    expect(decodeInfoReply(encodeInfoBlockSize(1, 4096, 2 ** 25))).toEqual({
      info: Info.BLOCK_SIZE,
      minimum: 1,
      preferred: 4096,
      maximum: 2 ** 25,
    });
  });
  it('rejects a meta context count larger than the data', () => {
    const b = encodeMetaContextRequest('x', []);
    new DataView(b.buffer).setUint32(5, 0xffffffff);
    expect(() => decodeMetaContextRequest(b)).toThrow(/count/);
  });
  it('EXPORT_NAME reply block', () => {
    const d = new ServerStreamDecoder();
    d.push(encodeGreeting(1));
    expect(d.next()).toEqual({ kind: 'greeting', flags: 1 });
    d.expectExportName(false);
    d.push(encodeExportNameReply(2 ** 40, 0x43, false));
    expect(d.next()).toEqual({ kind: 'exportName', size: 2 ** 40, flags: 0x43 });
    expect(d.buffered).toBe(0);
  });
});

function expectProtocolError(f: () => unknown, re?: RegExp): void {
  let caught: unknown;
  try {
    f();
  } catch (e) {
    caught = e;
  }
  expect(isVdError(caught, 'ERR_VD_PROTOCOL'), String(caught)).toBe(true);
  if (re) expect(String((caught as Error).message)).toMatch(re);
}

/**
 * Reads `bytes` as the server's socket does with payload buffers (`enterTransmission` with an
 * allocator): each read takes the next of `sizes` bytes (at least 1), straight into the payload
 * due when the decoder offers one, else into one reused buffer, released after its messages are
 * taken and scribbled over before the next read. Where `drains` says false, messages are left
 * queued after that read, as when the server pauses at its in-flight limit.
 */
function decodeClientReads(
  bytes: Uint8Array,
  extended: boolean,
  sizes: number[],
  drains: boolean[] = [],
): { out: unknown[]; direct: number; allocated: number } {
  const d = new ClientStreamDecoder();
  const out: unknown[] = [];
  const shared = new Uint8Array(bytes.length);
  let direct = 0;
  let allocated = 0;
  let pos = 0;
  for (let i = 0; pos < bytes.length; i++) {
    const want = Math.max(1, sizes.length ? sizes[i % sizes.length]! : bytes.length);
    const target = d.directTarget();
    if (target) {
      const n = Math.min(want, target.length, bytes.length - pos);
      target.set(bytes.subarray(pos, pos + n));
      d.filledDirect(n);
      direct += n;
      pos += n;
    } else {
      const n = Math.min(want, bytes.length - pos);
      const input = shared.subarray(0, n);
      input.set(bytes.subarray(pos, pos + n));
      d.push(input);
      pos += n;
    }
    const drain = pos === bytes.length || (drains[i % Math.max(1, drains.length)] ?? true);
    for (let m = drain ? d.next() : undefined; m; m = d.next()) {
      if (m.kind === 'option') {
        out.push({ ...m, data: [...m.data] });
        if (m.option === Opt.GO)
          d.enterTransmission(extended, (n) => {
            allocated++;
            return new Uint8Array(n).fill(0xee);
          });
      } else if (m.kind === 'request') out.push({ ...m, payload: m.payload ? [...m.payload] : undefined });
      else out.push(m);
    }
    d.releaseInput();
    shared.fill(0xaa);
  }
  expect(d.buffered).toBe(0);
  return { out, direct, allocated };
}

describe.each([false, true])('WRITE payloads in buffers of their own (extended headers: %s)', (extended) => {
  const big = new Uint8Array(5000).map((_, i) => (i * 11 + 3) & 255);
  const stream = () => {
    const c = clientStream(extended);
    const flags = extended ? CmdFlag.PAYLOAD_LEN : 0;
    const tail = concat([
      request(extended, flags, Cmd.WRITE, 9n, 0, big.length, big),
      request(extended, flags, Cmd.WRITE, 10n, 512, 1, big.subarray(0, 1)),
    ]);
    const disc = c.bytes.length - requestHeaderSize(extended);
    const bytes = concat([c.bytes.subarray(0, disc), tail, c.bytes.subarray(disc)]);
    const write = (cookie: bigint, offset: number, payload: Uint8Array) => ({
      kind: 'request',
      flags,
      command: Cmd.WRITE,
      cookie,
      offset,
      length: payload.length,
      payload: [...payload],
    });
    const expected = [...c.expected.slice(0, -1), write(9n, 0, big), write(10n, 512, big.subarray(0, 1)), c.expected.at(-1)];
    return { bytes, expected };
  };

  it('property: any read sizes, with messages at times left queued, give the same messages, payloads partly read straight into their buffers', () => {
    const { bytes, expected } = stream();
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 1, max: 700 }), { maxLength: 30 }),
        fc.array(fc.boolean(), { maxLength: 10 }),
        (sizes, drains) => {
          const { out, allocated } = decodeClientReads(bytes, extended, sizes, drains);
          expect(out).toEqual(expected);
          expect(allocated).toBe(3);
        },
      ),
      { numRuns: 300 },
    );
  });

  it('reads a payload straight into its buffer once its header is in, and counts it as buffered meanwhile', () => {
    const { bytes, expected } = stream();
    const { out, direct } = decodeClientReads(bytes, extended, [64]);
    expect(out).toEqual(expected);
    // All but what came in the reads that carried the headers.
    expect(direct).toBeGreaterThan(big.length - 64);
    const d = new ClientStreamDecoder();
    d.enterTransmission(extended, (n) => new Uint8Array(n));
    const h = request(extended, extended ? CmdFlag.PAYLOAD_LEN : 0, Cmd.WRITE, 1n, 0, 100);
    d.push(concat([h, big.subarray(0, 10)]));
    expect(d.next()).toBeUndefined();
    expect(d.buffered).toBe(h.length + 10);
    const t = d.directTarget()!;
    expect(t.length).toBe(90);
    t.set(big.subarray(10, 100));
    d.filledDirect(90);
    expect(d.buffered).toBe(h.length + 100);
    // Complete but not taken yet: no empty target, which a reader would take for the end of the stream.
    expect(d.directTarget()).toBeUndefined();
    expect(() => d.filledDirect(1)).toThrow(expect.objectContaining({ code: 'ERR_VD_PROTOCOL' }));
    expect(d.next()).toMatchObject({ kind: 'request', command: Cmd.WRITE, length: 100 });
    expect(d.buffered).toBe(0);
    expect(() => d.filledDirect(1)).toThrow(expect.objectContaining({ code: 'ERR_VD_PROTOCOL' }));
  });

  it('checks the payload length against the limit before it allocates', () => {
    const d = new ClientStreamDecoder({ maxPayload: 1000 });
    let allocated = 0;
    d.enterTransmission(extended, (n) => {
      allocated++;
      return new Uint8Array(n);
    });
    d.push(request(extended, extended ? CmdFlag.PAYLOAD_LEN : 0, Cmd.WRITE, 1n, 0, 1001));
    expect(() => d.next()).toThrow(expect.objectContaining({ code: 'ERR_VD_PROTOCOL' }));
    expect(allocated).toBe(0);
  });
});

describe('zero-copy receive', () => {
  it('offers the caller buffer while read data is due, and accepts bytes read straight into it', () => {
    const into = new Uint8Array(1000);
    const d = new ServerStreamDecoder();
    d.enterTransmission(false, { simpleTarget: () => undefined, dataTarget: (_c, o, n) => into.subarray(o, o + n) });
    expect(d.directTarget()).toBeUndefined();
    const h = new Uint8Array(28);
    writeDataChunkHeader(h, 0, false, ReplyFlag.DONE, 1, 0, 0, 1000);
    const payload = new Uint8Array(1000).map((_, i) => i & 255);
    d.push(concat([h, payload.subarray(0, 100)]));
    expect(d.next()).toBeUndefined();
    const t = d.directTarget()!;
    expect(t.length).toBe(900);
    t.set(payload.subarray(100, 600));
    d.filledDirect(500);
    expect(d.next()).toBeUndefined();
    d.push(payload.subarray(600));
    expect(d.directTarget()).toBeUndefined();
    expect(d.next()).toEqual({ kind: 'data', cookie: 1, done: true, offset: 0, length: 1000 });
    expect(Buffer.compare(into, payload)).toBe(0);
    expect(() => d.filledDirect(1)).toThrow();
  });
});

// ---- payloadDue: the read lookahead's view of a reply stream

/** One reply of a stream in transmission; `due` for a chunk whose payload payloadDue announces. */
interface Reply {
  bytes: Uint8Array;
  due: boolean;
  /** Read data a simple reply carries (its target's length). */
  simpleData?: number;
}

const arbReply = (extended: boolean, cookie: number): fc.Arbitrary<Reply> => {
  const kinds: fc.Arbitrary<Reply>[] = [
    fc.constant({ bytes: encodeNoneChunk(extended, cookie, 0), due: true }),
    fc
      .tuple(fc.nat(2 ** 40), fc.integer({ min: 1, max: 2 ** 31 }))
      .map(([offset, length]) => ({ bytes: encodeHoleChunk(extended, 0, cookie, 0, offset, length), due: true })),
    fc
      .array(fc.record({ length: fc.integer({ min: 1, max: 2 ** 31 }), flags: fc.nat(3) }), { minLength: 1, maxLength: 20 })
      .map((ext) => ({ bytes: encodeBlockStatusChunk(extended, ReplyFlag.DONE, cookie, 0, 1, ext), due: true })),
    fc
      .tuple(fc.integer({ min: 1, max: 200 }), fc.string({ maxLength: 60 }), fc.option(fc.nat(2 ** 40), { nil: undefined }))
      .map(([errno, message, offset]) => ({
        bytes: encodeErrorChunk(extended, ReplyFlag.DONE, cookie, 0, errno, message, offset),
        due: true,
      })),
    fc.integer({ min: 1, max: 300 }).map((n) => {
      const h = new Uint8Array(48);
      const size = writeDataChunkHeader(h, 0, extended, ReplyFlag.DONE, cookie, 0, 0, n);
      return { bytes: concat([h.subarray(0, size), new Uint8Array(n).fill(cookie & 255)]), due: false };
    }),
  ];
  if (!extended) {
    kinds.push(
      fc.tuple(fc.nat(300), fc.boolean()).map(([n, failed]) => {
        const h = new Uint8Array(16);
        writeSimpleReply(h, 0, failed ? 5 : 0, cookie);
        return failed || n === 0 ? { bytes: h, due: false } : { bytes: concat([h, new Uint8Array(n)]), due: false, simpleData: n };
      }),
    );
  }
  return fc.oneof(...kinds);
};

const arbReplies = (extended: boolean): fc.Arbitrary<Reply[]> =>
  fc.integer({ min: 1, max: 8 }).chain((n) => fc.tuple(...Array.from({ length: n }, (_, i) => arbReply(extended, i + 1))));

describe.each([false, true])('payloadDue (extended headers: %s)', (extended) => {
  const headerSize = extended ? EXTENDED_REPLY_SIZE : STRUCTURED_REPLY_SIZE;

  it('property: after any cuts, the rest of a non-data chunk whose header is in, else 0', () => {
    fc.assert(
      fc.property(arbReplies(extended), fc.array(fc.nat(4000), { maxLength: 30 }), (replies, cuts) => {
        const d = new ServerStreamDecoder();
        const simple = new Map(replies.flatMap((r, i) => (r.simpleData ? [[i + 1, r.simpleData] as const] : [])));
        d.enterTransmission(extended, {
          simpleTarget: (cookie, error) => (error === 0 && simple.has(cookie) ? new Uint8Array(simple.get(cookie)!) : undefined),
          dataTarget: (_cookie, _offset, length) => new Uint8Array(length),
        });
        const bytes = concat(replies.map((r) => r.bytes));
        const starts = replies.map((_, i) => replies.slice(0, i).reduce((a, r) => a + r.bytes.length, 0));
        let pushed = 0;
        let decoded = 0;
        for (const c of cut(bytes, cuts)) {
          d.push(c);
          pushed += c.length;
          while (d.next()) decoded++;
          const r = replies[decoded];
          const received = r ? pushed - starts[decoded]! : 0;
          const want = r?.due && received >= headerSize ? r.bytes.length - received : 0;
          expect(d.payloadDue()).toBe(want);
        }
        expect(decoded).toBe(replies.length);
      }),
      { numRuns: 300 },
    );
  });

  it('is 0 before transmission, over the chunk limit, and for a header of the kind not negotiated', () => {
    const before = new ServerStreamDecoder();
    before.push(encodeBlockStatusChunk(extended, ReplyFlag.DONE, 1, 0, 1, [{ length: 512, flags: 0 }]).subarray(0, headerSize));
    expect(before.payloadDue()).toBe(0);

    const limited = new ServerStreamDecoder({ maxChunkPayload: 100 });
    limited.enterTransmission(extended, { simpleTarget: () => undefined, dataTarget: () => new Uint8Array(0) });
    const big = encodeErrorChunk(extended, ReplyFlag.DONE, 1, 0, 5, 'x'.repeat(200));
    limited.push(big.subarray(0, headerSize));
    expect(limited.payloadDue()).toBe(0);
    expectProtocolError(() => limited.next(), /limit/);

    // The other kind of header, alone in its chunk of input (a compact one under extended headers
    // is shorter than the header expected: reading its length past the end must not throw).
    const other = new ServerStreamDecoder();
    other.enterTransmission(extended, { simpleTarget: () => undefined, dataTarget: () => new Uint8Array(0) });
    const h = new Uint8Array(48);
    const n = writeChunkHeader(h, 0, !extended, ReplyFlag.DONE, Chunk.ERROR, 1, 0, 100);
    other.push(h.slice(0, n));
    expect(other.payloadDue()).toBe(0);
    expectProtocolError(() => other.next(), /extended headers/);
  });
});

describe('bad input', () => {
  it('wrong magic fails and the decoder stays failed', () => {
    const d = new ClientStreamDecoder();
    d.push(encodeClientFlags(1));
    d.next();
    const bad = encodeOption(Opt.LIST);
    bad[0] = 0;
    d.push(bad);
    expectProtocolError(() => d.next(), /IHAVEOPT/);
    expectProtocolError(() => d.next());
    expectProtocolError(() => d.push(encodeOption(Opt.LIST)));
  });

  it('oversized option and payload lengths fail on the header, before the data arrives', () => {
    const d = new ClientStreamDecoder({ maxOptionData: 1024 });
    d.push(encodeClientFlags(1));
    d.next();
    d.push(encodeOption(Opt.GO, new Uint8Array(2000)).subarray(0, 16));
    expectProtocolError(() => d.next(), /limit/);

    const r = new ClientStreamDecoder({ maxPayload: 1 << 20 });
    r.enterTransmission(false);
    r.push(request(false, 0, Cmd.WRITE, 1n, 0, 0xffffffff));
    expectProtocolError(() => r.next(), /limit/);

    const x = new ClientStreamDecoder();
    x.enterTransmission(true);
    x.push(request(true, CmdFlag.PAYLOAD_LEN, Cmd.WRITE, 1n, 0, 2 ** 50));
    expectProtocolError(() => x.next(), /limit/);
  });

  it('server-side limits: option reply and chunk lengths', () => {
    const d = new ServerStreamDecoder({ maxOptionReply: 100 });
    d.push(encodeGreeting(1));
    d.next();
    d.push(encodeOptionReply(Opt.LIST, Rep.SERVER, new Uint8Array(200)).subarray(0, 20));
    expectProtocolError(() => d.next(), /limit/);

    const c = new ServerStreamDecoder({ maxChunkPayload: 1000 });
    c.enterTransmission(false, { simpleTarget: () => undefined, dataTarget: () => new Uint8Array(0) });
    const h = new Uint8Array(20);
    writeChunkHeader(h, 0, false, 1, Chunk.BLOCK_STATUS, 1, 0, 0xfffffff0);
    c.push(h);
    expectProtocolError(() => c.next(), /limit/);
  });

  it('a data chunk the client refuses fails the stream', () => {
    const c = new ServerStreamDecoder();
    c.enterTransmission(false, {
      simpleTarget: () => undefined,
      dataTarget: () => {
        throw new Error('reply for a request never sent');
      },
    });
    const h = new Uint8Array(28);
    writeDataChunkHeader(h, 0, false, 1, 99, 0, 0, 2 ** 31);
    c.push(h);
    expectProtocolError(() => c.next(), /never sent/);
  });

  it('malformed chunks', () => {
    const mk = (type: number, payload: Uint8Array, flags = 1, extended = false) => {
      const c = new ServerStreamDecoder();
      c.enterTransmission(extended, { simpleTarget: () => undefined, dataTarget: () => new Uint8Array(0) });
      const h = new Uint8Array(32);
      const n = writeChunkHeader(h, 0, extended, flags, type, 1, 0, payload.length);
      c.push(concat([h.subarray(0, n), payload]));
      return () => c.next();
    };
    expectProtocolError(mk(Chunk.NONE, new Uint8Array(0), 0), /DONE/);
    expectProtocolError(mk(Chunk.NONE, new Uint8Array(4)));
    expectProtocolError(mk(Chunk.OFFSET_HOLE, new Uint8Array(12)), /size 0/);
    expectProtocolError(mk(Chunk.BLOCK_STATUS, new Uint8Array(4)));
    expectProtocolError(mk(Chunk.BLOCK_STATUS, new Uint8Array(12), 1, true), /extended/);
    expectProtocolError(mk(Chunk.BLOCK_STATUS_EXT, new Uint8Array(24)), /without extended/);
    expectProtocolError(mk(Chunk.ERROR, new Uint8Array(6)), /error 0/);
    expectProtocolError(mk(Chunk.ERROR, new Uint8Array([0, 0, 0, 5, 0, 9, 1])), /expected/);
    expectProtocolError(mk(77, new Uint8Array(0)), /unknown/);
    // An unknown type with bit 15 set is an error reply, not a protocol error.
    expect(mk(0x8077, new Uint8Array([0, 0, 0, 5, 0, 0]))()).toMatchObject({ kind: 'error', error: 5 });
  });

  it('fuzz: random bytes give messages or ERR_VD_PROTOCOL, never another exception', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), fc.boolean(), fc.boolean(), fc.boolean(), (bytes, extended, greeted, alloc) => {
        let largest = 0;
        for (const d of [
          new ClientStreamDecoder({ maxOptionData: 4096, maxPayload: 4096 }),
          new ServerStreamDecoder({ maxOptionReply: 4096, maxChunkPayload: 4096 }),
        ]) {
          if (d instanceof ClientStreamDecoder) {
            // With payload buffers, as the server decodes: each at most the payload limit. (Checked
            // after the run: the decoder turns what its allocator throws into a protocol error.)
            const buffer = (n: number) => {
              largest = Math.max(largest, n);
              return new Uint8Array(n);
            };
            if (greeted) d.enterTransmission(extended, alloc ? buffer : undefined);
          } else if (greeted) {
            d.enterTransmission(extended, {
              simpleTarget: () => new Uint8Array(8),
              dataTarget: (_c, _o, n) => new Uint8Array(Math.min(n, 4096)),
            });
          }
          try {
            d.push(bytes);
            while (d.next()) {
              // drain
            }
          } catch (e) {
            if (!isVdError(e, 'ERR_VD_PROTOCOL')) throw e;
          }
        }
        expect(largest).toBeLessThanOrEqual(4096);
      }),
      { numRuns: 2000 },
    );
  });

  it('fuzz: request headers with random fields and random bytes after them, into payload buffers: requests or ERR_VD_PROTOCOL, buffers never above the limit', () => {
    fc.assert(
      fc.property(
        fc.boolean(),
        fc.array(fc.record({ flags: fc.nat(0xffff), command: fc.nat(12), length: fc.oneof(fc.nat(5000), fc.nat(2 ** 32 - 1)) }), {
          minLength: 1,
          maxLength: 4,
        }),
        fc.uint8Array({ maxLength: 6000 }),
        fc.array(fc.integer({ min: 1, max: 3000 }), { maxLength: 8 }),
        (extended, heads, tail, sizes) => {
          const bytes = concat([...heads.map((h) => request(extended, h.flags, h.command, 1n, 0, h.length)), tail]);
          const d = new ClientStreamDecoder({ maxPayload: 4096 });
          let largest = 0;
          d.enterTransmission(extended, (n) => {
            largest = Math.max(largest, n);
            return new Uint8Array(n);
          });
          try {
            // Fed as the server's socket feeds it: direct into the payload when one is due.
            let pos = 0;
            for (let i = 0; pos < bytes.length; i++) {
              const want = sizes.length ? sizes[i % sizes.length]! : bytes.length;
              const target = d.directTarget();
              const n = Math.min(want, bytes.length - pos, target?.length ?? Number.POSITIVE_INFINITY);
              if (target) {
                target.set(bytes.subarray(pos, pos + n));
                d.filledDirect(n);
              } else d.push(bytes.subarray(pos, pos + n));
              pos += n;
              for (let m = d.next(); m; m = d.next()) expect(m.kind).toBe('request');
            }
          } catch (e) {
            if (!isVdError(e, 'ERR_VD_PROTOCOL')) throw e;
          }
          expect(largest).toBeLessThanOrEqual(4096);
        },
      ),
      { numRuns: 1000 },
    );
  });

  it('replays the fuzz corpus', () => {
    const dir = join(import.meta.dirname, '../test/fixtures/fuzz');
    const files = readdirSync(dir).filter((f) => f.endsWith('.bin'));
    expect(files.length).toBeGreaterThan(0);
    for (const f of files) {
      const bytes = readFileSync(join(dir, f));
      const side = f.startsWith('client-') ? new ClientStreamDecoder() : new ServerStreamDecoder();
      if (side instanceof ClientStreamDecoder && f.includes('-tx-')) side.enterTransmission(f.includes('-ext-'));
      if (side instanceof ServerStreamDecoder && f.includes('-tx-')) {
        side.enterTransmission(f.includes('-ext-'), { simpleTarget: () => undefined, dataTarget: () => new Uint8Array(0) });
      }
      let error: unknown;
      try {
        side.push(bytes);
        while (side.next()) {
          // drain
        }
      } catch (e) {
        error = e;
      }
      expect(isVdError(error, 'ERR_VD_PROTOCOL'), `${f}: ${String(error)}`).toBe(true);
    }
  });
});
