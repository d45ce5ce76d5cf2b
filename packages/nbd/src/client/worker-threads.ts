import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { debug, VdError } from '@vd/core';
import { parseFlag, queryFlag } from './uri.js';

/**
 * The threads that carry worker connections (connection-worker.ts): where their script is, how
 * they start, and the idle ones kept for the next connection. A Node thread costs about 0.1 s of
 * CPU and 0.1-0.5 s to start (it loads the NBD client, and node:tls for TLS, afresh); a disk reopened, a
 * reconnect or the next disk of a backup would pay that each time, and reads run on the first
 * connection alone until the workers join.
 */

/**
 * A built module a worker thread loads: `sibling`, beside the module at `here`; or, run from
 * TypeScript sources (tests), where the sibling is a .ts file a thread cannot load, the package's
 * built copy at `fromSources`. Undefined (and said with `debug`) where it is not built.
 */
export function builtModule(here: string, sibling: string, fromSources: string): URL | undefined {
  const url = new URL(here.endsWith('.ts') ? fromSources : sibling, here);
  if (existsSync(fileURLToPath(url))) return url;
  debug('%s is missing (pnpm build); connections run in the calling thread', fileURLToPath(url));
  return undefined;
}

let entry: URL | null | undefined;

/** The built worker script (looked for once). */
function workerEntry(): URL | undefined {
  if (entry === undefined) entry = builtModule(import.meta.url, './connection-worker.js', '../../dist/client/connection-worker.js') ?? null;
  return entry ?? undefined;
}

/**
 * The process's node options, less those a worker must not inherit: a `@vd/source` export
 * condition (from a test runner) would point its imports at TypeScript files it cannot load, and
 * `--input-type` (from `node --input-type=module -e`) is refused for a worker's file.
 */
function workerArgv(argv: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if ((a === '--conditions' || a === '-C' || a === '--input-type') && i + 1 < argv.length) {
      if (a === '--input-type' || argv[i + 1] === '@vd/source') i++;
      else out.push(a);
    } else if (!a.startsWith('--input-type=') && a !== '--conditions=@vd/source' && a !== '-C=@vd/source') out.push(a);
  }
  return out;
}

/**
 * A worker with the process's node options (see workerArgv). A worker refuses V8 and process-wide
 * flags (--max-old-space-size, --expose-gc, --title, …) that the process was started with: they
 * apply to the whole process already, so those it names are dropped (all options, where the
 * refusal cannot be read).
 */
function startWorker(entry: URL): Worker {
  const argv = workerArgv(process.execArgv);
  try {
    return new Worker(entry, { execArgv: argv });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ERR_WORKER_INVALID_EXEC_ARGV') throw err;
    const listed = /flags: (.*)$/s.exec((err as Error).message)?.[1];
    const refused = new Set(listed?.split(', ') ?? []);
    const kept = argv.filter((a) => !refused.has(a));
    try {
      return new Worker(entry, { execArgv: kept });
    } catch (again) {
      if ((again as NodeJS.ErrnoException).code !== 'ERR_WORKER_INVALID_EXEC_ARGV') throw again;
      return new Worker(entry, { execArgv: [] });
    }
  }
}

/**
 * Whether a disk's connections after the first run in worker threads: the URI's `workers=`, else
 * `option`, else the environment variable `env` (1/0, true/false), else `byDefault`; never where
 * the worker script is not built.
 */
export function workersWanted(location: URL, option: boolean | number | undefined, env: string, byDefault: boolean): boolean {
  const fromEnv = process.env[env];
  const wanted =
    queryFlag(location, 'workers') ??
    (option === undefined ? undefined : option !== false && option !== 0) ??
    (fromEnv ? parseFlag(fromEnv, `${env}=${fromEnv}`) : undefined) ??
    byDefault;
  return wanted && workersAvailable();
}

/** Whether connections can run in worker threads (the worker script is present). */
export function workersAvailable(): boolean {
  return workerEntry() !== undefined;
}

/** At most this many idle threads are kept; each holds its modules and a read-buffer pool. */
const MAX_IDLE = 8;
let idleMs = 10_000;
const idle = new Map<Worker, { timer: NodeJS.Timeout; drop: () => void }>();
let started = 0;
let reused = 0;

/**
 * A thread for a new connection: an idle one, else a new one. Throws where a thread cannot start;
 * undefined where the worker script is not built.
 */
export function takeThread(): Worker | undefined {
  for (const [thread, parked] of idle) {
    idle.delete(thread);
    clearTimeout(parked.timer);
    thread.off('exit', parked.drop).off('error', parked.drop);
    // One that ended before its 'exit' listener was attached (threadId is then -1) would never
    // answer the next connect.
    if (thread.threadId === -1) continue;
    thread.ref();
    reused++;
    return thread;
  }
  const entry = workerEntry();
  if (!entry) return undefined;
  const thread = startWorker(entry);
  started++;
  return thread;
}

/**
 * Keeps a thread whose connection closed gracefully for the next one, for `idleMs`. It does not
 * keep the process alive meanwhile.
 */
export function park(thread: Worker): void {
  if (idle.size >= MAX_IDLE || idleMs <= 0) {
    void thread.terminate();
    return;
  }
  const drop = () => {
    const parked = idle.get(thread);
    if (!parked) return;
    idle.delete(thread);
    clearTimeout(parked.timer);
    void thread.terminate();
  };
  const timer = setTimeout(drop, idleMs);
  timer.unref();
  // An idle thread that fails or ends leaves the pool; its error has no one else to go to.
  thread.on('exit', drop).on('error', drop);
  thread.unref();
  idle.set(thread, { timer, drop });
}

/**
 * How long a thread is kept idle from now on (default 10 s). 0 ends each thread with its
 * connection, and the idle ones at once.
 */
export function setWorkerIdleTime(ms: number): void {
  if (!Number.isSafeInteger(ms) || ms < 0)
    throw new VdError('ERR_VD_INVALID_ARGUMENT', `worker idle time: ${ms} is not a whole number of milliseconds`);
  idleMs = ms;
  if (ms === 0) for (const parked of [...idle.values()]) parked.drop();
}

/** Threads started and reused by worker connections so far in this process, and those idle now. */
export function workerThreadStats(): { started: number; reused: number; idle: number } {
  return { started, reused, idle: idle.size };
}
