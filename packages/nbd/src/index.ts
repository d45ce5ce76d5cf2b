export * as protocol from './protocol.js';
