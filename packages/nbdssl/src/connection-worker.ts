/**
 * The worker thread side of a `WorkerConnection` (see worker-connection.ts): one socket, one TLS
 * session and one NbdConnection, driven by messages from the main thread. Read data lands in
 * buffers of this thread's pool and is transferred (not copied) to the main thread, which copies
 * it into the caller's buffer and hands the buffer back.
 */
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import { parentPort, workerData } from 'node:worker_threads';
import type { HandshakeOptions, NbdConnection } from '@vd/nbd';
import { DEFAULT_MAX_IN_FLIGHT } from '@vd/nbd/protocol';
import { clientUpgrade } from './client-tls.js';
import { type FromWorker, serializeError, type ToWorker, type WorkerSetup } from './worker-protocol.js';

// Each worker loads its modules afresh, and @vd/nbd's index brings the server too: the connection
// module alone (from the built package) halves a worker's start-up CPU; @vd/nbd/protocol, which
// that module loads anyway, costs nothing more. (require.resolve, not import.meta.resolve: Node 20
// before 20.6 lacks the latter.)
const nbdIndex = pathToFileURL(createRequire(import.meta.url).resolve('@vd/nbd'));
const { NbdConnection: Connection } = (await import(new URL('./client/connection.js', nbdIndex).href)) as typeof import('@vd/nbd');

const port = parentPort!;
const setup = workerData as WorkerSetup;
const post = (m: FromWorker, transfer: ArrayBuffer[] = []) => port.postMessage(m, transfer);

/**
 * Free read buffers by size, so the next read does not fault in fresh pages. Bounded by count (the
 * requests one connection has in flight) and by bytes: 32 MiB requests must not pin 512 MiB.
 */
const pool = new Map<number, ArrayBuffer[]>();
let pooled = 0;
let pooledBytes = 0;
const poolLimit = setup.handshake.maxInFlight ?? DEFAULT_MAX_IN_FLIGHT;
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

async function main(): Promise<void> {
  const hs: HandshakeOptions = { ...setup.handshake };
  if (setup.tls) hs.tls = clientUpgrade(setup.tls, (peer) => post({ t: 'peer', peer }));
  let conn: NbdConnection;
  try {
    conn = await Connection.open(setup.target, hs);
  } catch (err) {
    post({ t: 'fail', error: serializeError(err) });
    process.exit(0);
  }
  conn.onDeath((err) => {
    post({ t: 'dead', error: serializeError(err) });
    // Let the message leave before the thread ends.
    setImmediate(() => process.exit(0));
  });
  const answer = (id: number, p: Promise<unknown>) =>
    p.then(
      (value) => post({ t: 'done', id, value }),
      (err) => post({ t: 'err', id, error: serializeError(err) }),
    );
  port.on('message', (m: ToWorker) => {
    switch (m.t) {
      case 'read': {
        const buf = take(m.length);
        conn.read(m.offset, new Uint8Array(buf, 0, m.length), m.flags).then(
          () => post({ t: 'done', id: m.id, buf }, [buf]),
          (err) => {
            give(buf);
            post({ t: 'err', id: m.id, error: serializeError(err) });
          },
        );
        return;
      }
      case 'recycle':
        give(m.buf);
        return;
      case 'write':
        answer(m.id, conn.write(m.offset, new Uint8Array(m.data), m.flags));
        return;
      case 'flush':
        answer(m.id, conn.flush());
        return;
      case 'trim':
        answer(m.id, conn.trim(m.offset, m.length, m.flags));
        return;
      case 'zero':
        answer(m.id, conn.zero(m.offset, m.length, m.flags));
        return;
      case 'cache':
        answer(m.id, conn.cache(m.offset, m.length));
        return;
      case 'blockStatus':
        answer(m.id, conn.blockStatus(m.offset, m.length, m.flags));
        return;
      case 'disconnect':
        conn.disconnect().finally(() => process.exit(0));
        return;
    }
  });
  post({ t: 'open', info: conn.info });
}

void main();
