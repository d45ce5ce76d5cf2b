import { basename } from 'node:path';
import type { Disk } from '@vd/core';
import { type NbdExport, NbdServer } from '@vd/nbd';
import { tlsUri } from '@vd/nbdssl';
import type { Command } from 'commander';
import type { Context } from '../context.js';
import { openDiskArg } from '../disk-arg.js';
import { usageError } from '../errors.js';
import { printLines } from '../output.js';
import { serveDatastore } from '../serve-datastore.js';
import { addTlsOptions, serverTlsFromOptions, type TlsCliOptions } from '../serve-tls.js';

// The server reads disks on libuv's thread pool; four threads starve a busy NBD client. This only
// takes effect if nothing has used the pool yet, which holds while commands are being loaded.
process.env.UV_THREADPOOL_SIZE ??= '16';

interface ServeOptions extends TlsCliOptions {
  listen?: string;
  socket?: string;
  readOnly?: boolean;
  name: string[];
  datastore?: string;
  api?: string;
  tokenFile?: string;
}

export function define(cmd: Command, ctx: Context): void {
  addTlsOptions(cmd)
    .option('--listen <host:port>', 'TCP address to listen on (default 127.0.0.1:10809; port 0 picks a free one)')
    .option('--socket <path>', 'unix socket to listen on instead of TCP (a stale socket of a killed server is replaced)')
    .option('--read-only', 'refuse writes')
    .option('--name <export>', 'export name for the next disk, in order (repeatable; default: the file name)', collect, [])
    .option(
      '--datastore <dir>',
      'serve every disk of DIR read-write under its file name, change-tracked, with snapshots (instead of <disk...>)',
    )
    .option('--api <host:port>', 'with --datastore: the control API (snapshots, changed areas) on HOST:PORT; HTTPS when TLS is on')
    .option('--token-file <file>', 'with --api: the bearer token clients must send (default: a new one in DIR/.vd-host/api-token)')
    .addHelpText(
      'after',
      `
Prints the URI of every export, then serves until Ctrl-C (in-flight requests finish first).
Started by systemd or libnbd socket activation (LISTEN_FDS), it serves the inherited socket.
With --socket, a socket file left by a server that was killed is removed first; a path where a
server still listens, or one that is not a socket, is refused and left alone.
Reads of raw files and VMDKs (with their redo-log parents; not compressed grains) go from the
page cache to the socket with sendfile (no copy through the server) when the optional
@vd/sparse addon is built and TLS is off; VD_NBD_ZEROCOPY=0 turns that off.

Examples:
  vd serve disk.vmdk
  vd serve --socket /tmp/nbd.sock --read-only --name base base.vmdk
  vd serve --listen 0.0.0.0:10809 a.img b.vmdk
  vd serve --datastore /srv/disks --api 127.0.0.1:8080 --token-file ./token
  nbdcopy -- [ vd serve disk.vmdk ] out.raw`,
    )
    .action(async (args: string[], opts: ServeOptions) => {
      if (opts.listen && opts.socket) throw usageError('give either --listen or --socket, not both');
      if (opts.datastore !== undefined && args.length > 0) throw usageError('give either --datastore or disks, not both');
      if (opts.datastore === undefined && args.length === 0) throw usageError('name the disks to export, or --datastore DIR');
      if (opts.datastore === undefined && (opts.api || opts.tokenFile)) throw usageError('--api and --token-file go with --datastore');
      if (opts.datastore !== undefined) {
        const where = opts.socket ? { path: opts.socket } : opts.listen ? parseHostPort(opts.listen) : { host: '127.0.0.1', port: 10809 };
        const api = opts.api ? parseHostPort(opts.api) : undefined;
        const run = { ...opts, datastore: opts.datastore, listen: where, api, env: ctx.io.env as NodeJS.ProcessEnv };
        return serveDatastore(ctx, run, () => untilAborted(ctx.signal));
      }
      if (opts.name.length > args.length) throw usageError(`${opts.name.length} names for ${args.length} disks`);
      const listen = opts.listen ? parseHostPort(opts.listen) : { host: '127.0.0.1', port: 10809 };
      const disks: Disk[] = [];
      try {
        const exports: NbdExport[] = [];
        for (const [i, arg] of args.entries()) {
          const disk = await openDiskArg(arg, { readOnly: opts.readOnly === true, signal: ctx.signal });
          disks.push(disk);
          exports.push({ name: opts.name[i] ?? defaultName(arg, i, args), disk, ...(opts.readOnly ? { readOnly: true } : {}) });
        }
        const tls = await serverTlsFromOptions(opts, (line) => ctx.io.stderr.write(`${line}\n`));
        const server = new NbdServer({ exports, tls });
        const activated = await server.listenSystemd(ctx.io.env as NodeJS.ProcessEnv);
        if (activated === 0) {
          const address = await server.listen(opts.socket ? { path: opts.socket } : listen);
          for (const e of exports) printLines(ctx, uriFor(tls ? tlsUri(address) : address.uri, e.name));
        }
        await untilAborted(ctx.signal);
        await server.close();
      } finally {
        await Promise.allSettled(disks.map((d) => d.close()));
      }
    });
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

function parseHostPort(s: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(s);
  const port = m ? Number(m[3]) : Number.NaN;
  if (!m || !Number.isInteger(port) || port < 0 || port > 65535)
    throw usageError(`--listen wants HOST:PORT, e.g. 127.0.0.1:10809, not ${JSON.stringify(s)}`);
  return { host: m[1] ?? (m[2] || '0.0.0.0'), port };
}

/** The file name, so `vd serve a.img b.vmdk` exports `a.img` and `b.vmdk`; the first also answers ''. */
function defaultName(arg: string, i: number, all: string[]): string {
  const name = basename(arg.replace(/[?#].*$/, '')) || `disk${i}`;
  return all.findIndex((a) => basename(a) === name) === i ? name : `${name}.${i}`;
}

/** The server's URI names the first export; give each export its own. */
function uriFor(first: string, name: string): string {
  const u = new URL(first);
  u.pathname = `/${encodeURIComponent(name)}`;
  return u.href;
}

function untilAborted(signal: AbortSignal | undefined): Promise<void> {
  if (!signal) return new Promise(() => {});
  if (signal.aborted) return Promise.resolve();
  return new Promise((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
}
