/**
 * The worker thread side of a `WorkerConnection` (see worker-connection.ts): one socket, one TLS
 * session and one NbdConnection at a time, driven by messages from the main thread. Read data
 * lands in buffers of this thread's pool and is transferred (not copied) to the main thread, which
 * copies it into the caller's buffer and hands the buffer back. After a graceful disconnect the
 * thread waits for its next `connect` (worker-threads.ts), keeping its modules and buffers.
 */
import { parentPort } from 'node:worker_threads';
import { DEFAULT_CLIENT_IN_FLIGHT } from '../protocol.js';
// The connection module alone, not the package's index (which brings the server too): each
// worker loads its modules afresh, and this halves its start-up CPU.
import { type HandshakeOptions, NbdConnection } from './connection.js';
import { type FromWorker, serializeError, type ToWorker, type WorkerSetup, type WorkerUpgradeFn } from './worker-protocol.js';

const port = parentPort!;
const post = (m: FromWorker, transfer: ArrayBuffer[] = []) => port.postMessage(m, transfer);

/**
 * Free read buffers by size, so the next read does not fault in fresh pages. Bounded by count (the
 * requests one connection has in flight) and by bytes: 32 MiB requests must not pin 512 MiB.
 */
const pool = new Map<number, ArrayBuffer[]>();
let pooled = 0;
let pooledBytes = 0;
let poolLimit = DEFAULT_CLIENT_IN_FLIGHT;
const poolBytes = 64 << 20;

function take(length: number): ArrayBuffer {
  const b = pool.get(length)?.pop();
  if (b) {
    pooled--;
    pooledBytes -= b.byteLength;
    return b;
  }
  return new ArrayBuffer(length);
}

function give(buf: ArrayBuffer): void {
  if (pooled >= poolLimit || pooledBytes + buf.byteLength > poolBytes) return;
  const list = pool.get(buf.byteLength);
  if (list) list.push(buf);
  else pool.set(buf.byteLength, [buf]);
  pooled++;
  pooledBytes += buf.byteLength;
}

/** The connection this thread serves now; none while it waits to be handed the next one. */
let conn: NbdConnection | undefined;

async function connect(setup: WorkerSetup): Promise<void> {
  poolLimit = setup.handshake.maxInFlight ?? DEFAULT_CLIENT_IN_FLIGHT;
  const hs: HandshakeOptions = { ...setup.handshake };
  let opened: NbdConnection;
  try {
    if (setup.upgrade) {
      const { workerUpgrade } = (await import(setup.upgrade.module)) as { workerUpgrade: WorkerUpgradeFn };
      hs.tls = workerUpgrade(setup.upgrade.options, (peer) => post({ t: 'peer', peer }));
    }
    opened = await NbdConnection.open(setup.target, hs);
  } catch (err) {
    post({ t: 'fail', error: serializeError(err) });
    process.exit(0);
  }
  opened.onDeath((err) => {
    post({ t: 'dead', error: serializeError(err) });
    // Let the message leave before the thread ends.
    setImmediate(() => process.exit(0));
  });
  conn = opened;
  post({ t: 'open', info: opened.info });
}

const answer = (id: number, p: Promise<unknown>) =>
  p.then(
    (value) => post({ t: 'done', id, value }),
    (err) => post({ t: 'err', id, error: serializeError(err) }),
  );

port.on('message', (m: ToWorker) => {
  if (m.t === 'connect') {
    void connect(m.setup);
    return;
  }
  if (m.t === 'recycle') {
    give(m.buf);
    return;
  }
  // The main thread sends requests only between 'open' and 'disconnect'.
  const c = conn!;
  switch (m.t) {
    case 'read': {
      const buf = take(m.length);
      c.read(m.offset, new Uint8Array(buf, 0, m.length), m.flags).then(
        () => post({ t: 'done', id: m.id, buf }, [buf]),
        (err) => {
          give(buf);
          post({ t: 'err', id: m.id, error: serializeError(err) });
        },
      );
      return;
    }
    case 'write':
      answer(m.id, c.write(m.offset, new Uint8Array(m.data), m.flags));
      return;
    case 'flush':
      answer(m.id, c.flush());
      return;
    case 'trim':
      answer(m.id, c.trim(m.offset, m.length, m.flags));
      return;
    case 'zero':
      answer(m.id, c.zero(m.offset, m.length, m.flags));
      return;
    case 'cache':
      answer(m.id, c.cache(m.offset, m.length));
      return;
    case 'blockStatus':
      answer(m.id, c.blockStatus(m.offset, m.length, m.flags));
      return;
    case 'disconnect':
      // Graceful: the connection's death callback does not run, and the thread stays for reuse.
      c.disconnect().finally(() => {
        conn = undefined;
        post({ t: 'released' });
      });
      return;
  }
});
