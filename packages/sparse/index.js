import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const binding = require('./build/Release/sparse.node');

export const seekData = binding.seekData;
export const seekHole = binding.seekHole;
export const punchHole = binding.punchHole;
