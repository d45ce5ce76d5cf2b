import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Disk } from '@vd/core';

/**
 * A small HTTP server exporting one `Disk` with range requests: what the transport talks to.
 * (A real deployment would put an object store or a web server here.)
 */
export async function serveDisk(disk: Disk, path = '/disk.img'): Promise<{ url: string; close: () => Promise<void> }> {
  const server: Server = createServer((req, res) => {
    handle(disk, path, req, res).catch((err) => {
      if (!res.headersSent) res.writeHead(500).end(String((err as Error).message));
      else res.destroy();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http+range://127.0.0.1:${port}${path}`,
    close: () =>
      new Promise((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

const RANGE = /^bytes=(\d+)-(\d+)$/;
const CONTENT_RANGE = /^bytes (\d+)-(\d+)\/(\d+)$/;

async function body(req: IncomingMessage, max: number): Promise<Buffer | undefined> {
  const parts: Buffer[] = [];
  let n = 0;
  for await (const c of req) {
    n += (c as Buffer).length;
    if (n > max) return undefined;
    parts.push(c as Buffer);
  }
  return Buffer.concat(parts);
}

async function handle(disk: Disk, path: string, req: IncomingMessage, res: ServerResponse): Promise<void> {
  if (req.url !== path) return void res.writeHead(404).end();
  const allow = disk.capabilities.readOnly ? 'GET, HEAD' : 'GET, HEAD, PUT';
  if (req.method === 'HEAD') {
    return void res.writeHead(200, { 'accept-ranges': 'bytes', 'content-length': disk.size, allow }).end();
  }
  if (req.method === 'GET') {
    const m = RANGE.exec(req.headers.range ?? '');
    const start = m ? Number(m[1]) : Number.NaN;
    const end = m ? Number(m[2]) : Number.NaN;
    if (!(start <= end && end < disk.size) || end - start >= 64 << 20) {
      return void res.writeHead(416, { 'content-range': `bytes */${disk.size}` }).end();
    }
    const data = await disk.read(start, end - start + 1);
    return void res.writeHead(206, { 'content-range': `bytes ${start}-${end}/${disk.size}`, 'content-length': data.length }).end(data);
  }
  if (req.method === 'PUT' && !disk.capabilities.readOnly) {
    const m = CONTENT_RANGE.exec(req.headers['content-range'] ?? '');
    const start = m ? Number(m[1]) : Number.NaN;
    const end = m ? Number(m[2]) : Number.NaN;
    if (!(start <= end && end < disk.size) || Number(m?.[3]) !== disk.size || end - start >= 64 << 20) {
      return void res.writeHead(416).end();
    }
    const data = await body(req, end - start + 1);
    if (!data || data.length !== end - start + 1) return void res.writeHead(400).end('body does not match Content-Range');
    await disk.write(start, data);
    return void res.writeHead(204).end();
  }
  res.writeHead(405, { allow }).end();
}
