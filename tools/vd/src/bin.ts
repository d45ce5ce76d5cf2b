#!/usr/bin/env node
import { setMaxListeners } from 'node:events';
import { processIo } from './io.js';
import { main } from './main.js';

// `vd dump --format raw disk | head -c 10` closes the pipe early: that is not an error.
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code === 'EPIPE') process.exit(0);
  throw err;
});

// The first Ctrl-C asks the running command to stop and clean up (a half-made convert target is
// removed); a second one exits at once.
const stop = new AbortController();
// Every request in flight listens on it (a copy keeps dozens going): not a leak.
setMaxListeners(4096, stop.signal);
const onSignal = (signal: NodeJS.Signals) => {
  if (stop.signal.aborted) process.exit(130);
  stop.abort(new Error(`interrupted by ${signal}`));
};
process.on('SIGINT', onSignal);
process.on('SIGTERM', onSignal);

// Set the code rather than calling process.exit, so pending stdout writes are flushed.
process.exitCode = await main(process.argv.slice(2), { ...processIo(), signal: stop.signal });
