import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { access } from 'node:fs/promises';
import { basename } from 'node:path';

/**
 * Helpers for interop tests against real peers (qemu-img, nbdkit, libnbd tools). A missing peer
 * skips the test on a developer machine; with `VD_REQUIRE_PEERS=1` (set in CI) the test runs and
 * fails loudly instead, so CI can never pass by skipping.
 */

const found = new Map<string, boolean>();

/** True when `cmd` is on PATH. The name is passed as an argument, never spliced into shell text. */
export function hasPeer(cmd: string): boolean {
  let ok = found.get(cmd);
  if (ok === undefined) {
    try {
      execFileSync('sh', ['-c', 'command -v "$1"', 'sh', cmd], { stdio: 'ignore' });
      ok = true;
    } catch {
      ok = false;
    }
    found.set(cmd, ok);
  }
  return ok;
}

/** True when missing peers must fail tests rather than skip them (`VD_REQUIRE_PEERS=1`). */
export function peerRequired(): boolean {
  return process.env.VD_REQUIRE_PEERS === '1';
}

/**
 * For `describe.skipIf(skipWithoutPeers('qemu-img', 'qemu-nbd'))`: true when a peer is missing
 * and peers are not required.
 */
export function skipWithoutPeers(...cmds: string[]): boolean {
  return !peerRequired() && !cmds.every(hasPeer);
}

/**
 * The environment peers run in: `/usr/bin` first on PATH, so libnbd's tools (nbdsh, nbdinfo's
 * python bits) find the distribution's python3 and libraries rather than another copy on PATH,
 * and libnbd's debug chatter off.
 */
export const peerEnv: NodeJS.ProcessEnv = { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}`, LIBNBD_DEBUG: '0' };

export interface StartPeerOptions {
  /** The unix socket the peer listens on (its `-U` / `-k` argument): the URI names it. */
  socket: string;
  /**
   * The pid file the peer writes once it accepts connections (default `<socket>.pid`). For
   * nbdkit and qemu-nbd its flag (`-P FILE`, `--pid-file=FILE`) is added unless `args` already
   * name the file; any other command must be told to write it by `args`.
   */
  pidFile?: string;
  /** Added to `peerEnv` for this peer. */
  env?: NodeJS.ProcessEnv;
  /** How long to wait for the peer to listen, in ms (default 20 000). */
  timeout?: number;
  /** The export the URI names (default: the default export, ''). */
  exportName?: string;
  /** `nbds+unix://` instead of `nbd+unix://` in the URI (a peer started with `--tls=require`). */
  tls?: boolean;
  /**
   * Registers the peer's `stop` with the test runner, e.g. `afterAll` or vitest's
   * `onTestFinished`, so a failing test cannot leave it running. (Every peer still running when
   * the process exits is killed in any case.)
   */
  teardown?: (stop: () => Promise<void>) => void;
}

export interface Peer {
  readonly child: ChildProcess;
  /** `nbd+unix:///<export>?socket=<socket>` (or `nbds+unix`). */
  readonly uri: string;
  /** What the peer wrote to stderr so far. */
  readonly stderr: string;
  /** Ends the peer (SIGTERM, SIGKILL after 5 s) and resolves once it has exited; safe to call twice. */
  stop(): Promise<void>;
}

/** Peers not yet stopped, killed when the process exits. */
const running = new Set<ChildProcess>();
let exitHook = false;

/**
 * Starts an NBD server process (nbdkit with `-f`, qemu-nbd) on a unix socket and resolves once it
 * accepts connections: when its pid file and socket both exist. Both peers write the pid file only
 * after listen(); the socket file alone appears at bind(), when a connect is still refused, and
 * probing with a connection would use up qemu-nbd's only one. A peer that exits before it listens,
 * or does not listen within `timeout`, rejects with its stderr; one that dies later, not by
 * `stop()`, has its exit status and stderr written to this process's stderr.
 */
export async function startPeer(cmd: string, args: readonly string[], opts: StartPeerOptions): Promise<Peer> {
  const pidFile = opts.pidFile ?? `${opts.socket}.pid`;
  const name = basename(cmd);
  const named = args.some((a) => a.includes(pidFile));
  const pidArgs = named ? [] : name === 'nbdkit' ? ['-P', pidFile] : name === 'qemu-nbd' ? [`--pid-file=${pidFile}`] : [];
  const child = spawn(cmd, [...pidArgs, ...args], { env: { ...peerEnv, ...opts.env }, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => {
    stderr += d;
  });
  let stopping = false;
  let listening = false;
  let spawnError: Error | undefined;
  const exited = new Promise<void>((resolve) => {
    child.once('exit', (code, signal) => {
      running.delete(child);
      if (!stopping && listening && (code !== 0 || signal !== null)) {
        process.stderr.write(`peer ${name} (${opts.socket}) died: ${signal ?? `exit code ${code}`}\n${stderr}\n`);
      }
      resolve();
    });
    // A command that cannot be spawned (ENOENT) emits 'error' and no 'exit'.
    child.once('error', (err) => {
      spawnError = err;
      running.delete(child);
      resolve();
    });
  });
  running.add(child);
  if (!exitHook) {
    exitHook = true;
    process.once('exit', () => {
      for (const c of running) c.kill('SIGKILL');
    });
  }
  const stop = async () => {
    stopping = true;
    if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
      child.kill('SIGTERM');
      const hard = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(hard);
    }
    running.delete(child);
  };
  opts.teardown?.(stop);

  const timeout = opts.timeout ?? 20_000;
  const deadline = Date.now() + timeout;
  for (;;) {
    if (spawnError) throw new Error(`${cmd} could not be started: ${spawnError.message}`);
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`${cmd} exited (${child.signalCode ?? `exit code ${child.exitCode}`}) before listening on ${opts.socket}: ${stderr}`);
    }
    if ((await exists(pidFile)) && (await exists(opts.socket))) break;
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`${cmd} did not listen on ${opts.socket} within ${timeout} ms: ${stderr}`);
    }
    await new Promise((r) => setTimeout(r, 25));
  }
  listening = true;
  const scheme = opts.tls ? 'nbds+unix' : 'nbd+unix';
  return {
    child,
    uri: `${scheme}:///${encodeURIComponent(opts.exportName ?? '')}?socket=${encodeURIComponent(opts.socket)}`,
    get stderr() {
      return stderr;
    },
    stop,
  };
}

function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}
