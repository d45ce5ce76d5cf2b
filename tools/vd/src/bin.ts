#!/usr/bin/env node
import { main } from './main.js';

// `vd dump --format raw disk | head -c 10` closes the pipe early: that is not an error.
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code === 'EPIPE') process.exit(0);
  throw err;
});

// Set the code rather than calling process.exit, so pending stdout writes are flushed.
process.exitCode = await main(process.argv.slice(2));
