// A disk host in its own process, for the crash test: prints one JSON line with its addresses,
// then serves until killed.
import { ApiServer, DiskHost } from '../src/index.js';

const [datastore, token] = process.argv.slice(2);
const host = await DiskHost.open({ datastore: datastore! });
const nbd = await host.listen({ host: '127.0.0.1', port: 0 });
const api = new ApiServer(host, { token: token! });
const { url } = await api.listen();
process.stdout.write(`${JSON.stringify({ nbd: nbd.uri, api: url })}\n`);
process.on('SIGTERM', async () => {
  await api.close();
  await host.close();
  process.exit(0);
});
